"""LoRA in the original EasyAnimate v1 (kohya-ss) file format: naming, loading, export and merging.

File format (the original v1 LoRANetwork's, from kohya-ss), one entry per adapted layer ``<lora_name>``:

* ``<lora_name>.lora_down.weight`` -- ``[rank, in]`` (``[rank, in, 1, 1]`` for a 1x1 conv),
* ``<lora_name>.lora_up.weight``   -- ``[out, rank]`` (``[out, rank, 1, 1]`` for a 1x1 conv),
* ``<lora_name>.alpha``            -- optional 0-dim scalar; merge scale is ``alpha / rank`` (1.0 if absent).

Names are module paths with dots replaced by underscores behind a component prefix. The
transformer was the *root* module of the original ``LoRANetwork`` (empty name), so its names carry
a double underscore (``lora_unet__transformer_blocks_0_attn1_to_q``); the T5 text encoder's do not
(``lora_te_encoder_block_0_layer_0_SelfAttention_q``).

Our trainer is peft-based; :func:`peft_state_dict_to_kohya` and :func:`save_kohya_lora` export its
adapters in this format so that released files and ours load the same way. :class:`LoraMerger`
merges a file into the weights and restores the exact originals on unmerge (the v1 code subtracted
the product again, which drifts in fp16).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .files import write_safetensors
from .models.loading import WeightLoadError, read_state_dict

logger = logging.getLogger(__name__)

TRANSFORMER = "transformer"
TEXT_ENCODER = "text_encoder"

# Full name prefix per component; the transformer's double underscore comes from its empty root name.
KOHYA_NAME_PREFIXES: dict[str, str] = {TRANSFORMER: "lora_unet__", TEXT_ENCODER: "lora_te_"}

# Prefixes accepted when resolving a name, longest first (single-underscore transformer names are
# what kohya writes for non-root targets; they resolve the same way).
_RESOLVE_PREFIXES: tuple[tuple[str, str], ...] = (
    ("lora_unet__", TRANSFORMER),
    ("lora_unet_", TRANSFORMER),
    ("lora_te_", TEXT_ENCODER),
)

# The original LoRANetwork adapts Linear layers inside these T5 classes (matched by class name).
T5_TARGET_CLASSES: frozenset[str] = frozenset({"T5LayerSelfAttention", "T5LayerFF"})

# Layers of the motion module have this in their path. v1's LoRA network leaves them out unless asked
# (add_lora_in_attn_temporal, False in every v1 script); lora_target_modules(motion_module=True) adds them.
TEMPORAL_MARKER = "attn_temporal"

LORA_DOWN = "lora_down.weight"
LORA_UP = "lora_up.weight"
LORA_ALPHA = "alpha"
_LORA_SUFFIXES = (LORA_DOWN, LORA_UP, LORA_ALPHA)

_IN_MEMORY = "<state dict>"  # source name of a LoRA passed as a dict; never treated as already merged
_MAX_LISTED = 10

_PEFT_KEY = re.compile(r"^(?P<path>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")
_PEFT_MODEL_PREFIX = "base_model.model."


# ----------------------------------------------------------------------------------------------
# Naming
# ----------------------------------------------------------------------------------------------


def _check_component(component: str) -> str:
    """Return ``component`` unchanged, or raise listing the valid component names."""
    if component not in KOHYA_NAME_PREFIXES:
        raise ValueError(f"unknown LoRA component {component!r}; valid: {sorted(KOHYA_NAME_PREFIXES)}")
    return component


def kohya_module_name(module_path: str, component: str) -> str:
    """Kohya LoRA name of the module at ``module_path`` (e.g. ``ff.net.2`` -> ``lora_unet__ff_net_2``)."""
    return KOHYA_NAME_PREFIXES[_check_component(component)] + module_path.replace(".", "_")


def kohya_component(kohya_name: str) -> str | None:
    """Component (``"transformer"`` / ``"text_encoder"``) a kohya name belongs to, or None if unknown."""
    for prefix, component in _RESOLVE_PREFIXES:
        if kohya_name.startswith(prefix):
            return component
    return None


def _strip_prefix(kohya_name: str) -> str:
    """Kohya name without its component prefix; raises ValueError for an unknown prefix."""
    for prefix, _ in _RESOLVE_PREFIXES:
        if kohya_name.startswith(prefix):
            return kohya_name[len(prefix) :]
    valid = [prefix for prefix, _ in _RESOLVE_PREFIXES]
    raise ValueError(f"LoRA name {kohya_name!r} has none of the known prefixes {valid}")


def kohya_name_map(root: nn.Module) -> dict[str, nn.Module | None]:
    """Every sub-module of ``root`` by its kohya name without prefix (``transformer_blocks_0_attn1_to_q``).

    Built once from ``named_modules()``. Two paths that differ only in ``.`` versus ``_`` would share a
    name; such a name maps to None, and resolving it is an error rather than a guess.
    """
    names: dict[str, nn.Module | None] = {}
    for path, module in root.named_modules():
        if not path:
            continue
        name = path.replace(".", "_")
        names[name] = None if name in names and names[name] is not module else module
    return names


def resolve_kohya_module(root: nn.Module, kohya_name: str,
                         names: Mapping[str, nn.Module | None] | None = None) -> nn.Module:
    """The sub-module of ``root`` a kohya LoRA name points to.

    ``names`` is :func:`kohya_name_map` of ``root`` (built here when not given; pass it to resolve
    many names).

    Raises:
        LookupError: if no sub-module of ``root`` has that name, or two do.
        ValueError: if the name has no known prefix.
    """
    remainder = _strip_prefix(kohya_name)
    names = kohya_name_map(root) if names is None else names
    if remainder not in names:
        raise LookupError(f"no module of {type(root).__name__} matches LoRA name {kohya_name!r}")
    found = names[remainder]
    if found is None:
        raise LookupError(f"LoRA name {kohya_name!r} is ambiguous: several modules of {type(root).__name__} "
                          "have paths that read the same with '.' as '_'")
    return found


def is_lora_layer(module: nn.Module) -> bool:
    """Whether the original LoRANetwork adapts this layer type: Linear, or a 1x1 (ungrouped) Conv2d."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1) and module.groups == 1


def _transformer_targets(model: nn.Module, motion_module: bool) -> list[str]:
    """Paths of every LoRA-able layer of a transformer; the motion module's (``attn_temporal``) only if asked."""
    return [
        path
        for path, module in model.named_modules()
        if path and is_lora_layer(module) and (motion_module or TEMPORAL_MARKER not in path)
    ]


def _text_encoder_targets(model: nn.Module) -> list[str]:
    """Paths of the LoRA-able layers inside T5 self-attention and feed-forward sub-layers."""
    paths: list[str] = []
    for parent_path, parent in model.named_modules():
        if type(parent).__name__ not in T5_TARGET_CLASSES:
            continue
        for child_path, child in parent.named_modules():
            if child_path and is_lora_layer(child):
                paths.append(f"{parent_path}.{child_path}" if parent_path else child_path)
    return paths


def lora_target_modules(model: nn.Module, component: str, motion_module: bool = False) -> list[str]:
    """Module paths the original v1 LoRA network adapts, in ``named_modules`` order.

    For ``"transformer"``: every Linear / 1x1 Conv2d outside paths containing ``attn_temporal``
    (286 for the PixArt-XL-2-512 layout); with ``motion_module`` (v1's ``add_lora_in_attn_temporal``, off
    by default as in every v1 script) the motion modules' too: proj_in, the q/k/v/out of each temporal
    attention, the GEGLU feed-forward's two linears and proj_out, 12 more per block in the released
    config. For ``"text_encoder"``: the Linear layers inside ``T5LayerSelfAttention`` and ``T5LayerFF``
    (q, k, v, o, wi_0, wi_1, wo -- 168 for T5-XXL); ``motion_module`` does not apply.
    The list can be passed as peft ``LoraConfig(target_modules=...)``.
    """
    if _check_component(component) == TRANSFORMER:
        return _transformer_targets(model, motion_module)
    return _text_encoder_targets(model)


# ----------------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------------


def _describe_non_lora(keys: list[str]) -> str:
    """Say what a state dict that is not a kohya LoRA looks like, from its keys."""
    sample = ", ".join(keys[:3])
    if any(_PEFT_KEY.match(key) for key in keys):
        return f"looks like a peft/diffusers LoRA (keys such as {sample}); convert it with peft_state_dict_to_kohya"
    if any(TEMPORAL_MARKER in key or "motion_module" in key for key in keys):
        return f"looks like a transformer/motion-module state dict: keys such as {sample}"
    if any(key.startswith(("transformer_blocks.", "pos_embed.", "adaln_single.", "proj_out.")) for key in keys):
        return f"looks like a transformer/motion-module state dict: keys such as {sample}"
    if any(key.startswith(("encoder.block.", "shared.", "encoder.embed_tokens.")) for key in keys):
        return f"looks like a T5 text-encoder state dict: keys such as {sample}"
    return f"has unrecognised keys such as {sample}"


_EXPECTED_FORMAT = (
    "expected a kohya-style LoRA: '<name>.lora_down.weight' [rank, in], '<name>.lora_up.weight' "
    "[out, rank] and optional 0-dim '<name>.alpha', with names like "
    "'lora_unet__transformer_blocks_0_attn1_to_q' or 'lora_te_encoder_block_0_layer_0_SelfAttention_q'"
)


def _group_by_module(state_dict: Mapping[str, torch.Tensor], source: str) -> dict[str, dict[str, torch.Tensor]]:
    """Split kohya keys into ``{lora_name: {suffix: tensor}}``; raise on any key of another format."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    foreign: list[str] = []
    for key, tensor in state_dict.items():
        name, _, suffix = key.partition(".")
        if suffix not in _LORA_SUFFIXES or not isinstance(tensor, torch.Tensor):
            foreign.append(key)
            continue
        groups.setdefault(name, {})[suffix] = tensor
    if foreign:
        raise ValueError(f"{source} is not a LoRA file: it {_describe_non_lora(foreign)}; {_EXPECTED_FORMAT}")
    return groups


def _is_matrix_pair(down: torch.Tensor, up: torch.Tensor) -> bool:
    """Whether down/up are both 2-D, or both 4-D with 1x1 kernels (a 1x1 conv LoRA)."""
    if down.dim() == up.dim() == 2:
        return True
    return down.dim() == up.dim() == 4 and tuple(down.shape[2:]) == tuple(up.shape[2:]) == (1, 1)


def _module_error(name: str, parts: Mapping[str, torch.Tensor]) -> str | None:
    """Why one module entry is malformed (missing/incompatible tensors), or None if it is valid."""
    if LORA_DOWN not in parts or LORA_UP not in parts:
        missing = [suffix for suffix in (LORA_DOWN, LORA_UP) if suffix not in parts]
        return f"{name}: missing {missing}"
    down, up = parts[LORA_DOWN], parts[LORA_UP]
    if not _is_matrix_pair(down, up):
        return f"{name}: lora_down {list(down.shape)} / lora_up {list(up.shape)} are not [rank, in] / [out, rank]"
    if down.shape[0] != up.shape[1]:
        return f"{name}: rank differs between lora_down {tuple(down.shape)} and lora_up {tuple(up.shape)}"
    if LORA_ALPHA in parts and parts[LORA_ALPHA].numel() != 1:
        return f"{name}: alpha must be a scalar, got shape {tuple(parts[LORA_ALPHA].shape)}"
    return None


def validate_kohya_state_dict(state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Raise ValueError unless ``state_dict`` is a well-formed kohya LoRA (see module docstring)."""
    if not state_dict:
        raise ValueError(f"{source} is empty; {_EXPECTED_FORMAT}")
    groups = _group_by_module(state_dict, source)
    problems = [problem for name, parts in groups.items() if (problem := _module_error(name, parts))]
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED])
        raise ValueError(f"{source} has {len(problems)} malformed LoRA module(s): {listed}; {_EXPECTED_FORMAT}")


def load_lora_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load and validate a kohya-format LoRA file (on CPU).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is unreadable, holds non-float or non-finite tensors, or is not a kohya
            LoRA; the message names the file and says what it looks like instead.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    try:
        state_dict = read_state_dict(path)
    except WeightLoadError as error:
        raise ValueError(f"{error}; {_EXPECTED_FORMAT}") from error
    validate_kohya_state_dict(state_dict, source=str(path))
    return state_dict


# ----------------------------------------------------------------------------------------------
# Export (peft -> kohya)
# ----------------------------------------------------------------------------------------------


def _split_peft_key(key: str) -> tuple[str, str]:
    """``(module path, "A"|"B")`` of a peft LoRA key; raises ValueError for other keys."""
    match = _PEFT_KEY.match(key.removeprefix(_PEFT_MODEL_PREFIX))
    if match is None:
        raise ValueError(
            f"not a peft LoRA weight key: {key!r}; expected '<module path>.lora_A.weight' / '.lora_B.weight' "
            "(as returned by peft.get_peft_model_state_dict)"
        )
    return match["path"], match["which"]


def _module_alpha(path: str, alpha: float | None, alphas: Mapping[str, float] | None) -> float:
    """Alpha of one module: its entry in ``alphas`` if any, else ``alpha``; raise if neither is given."""
    if alphas is not None and path in alphas:
        return float(alphas[path])
    if alpha is None:
        raise ValueError(f"no LoRA alpha for module {path!r}: pass alpha= (peft lora_alpha) or an alphas entry")
    return float(alpha)


def peft_state_dict_to_kohya(
    state_dict: Mapping[str, torch.Tensor],
    component: str,
    alpha: float | None = None,
    alphas: Mapping[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Convert peft LoRA weights of one model to kohya keys.

    Args:
        state_dict: ``<path>.lora_A.weight`` [rank, in] / ``<path>.lora_B.weight`` [out, rank] tensors,
            optionally prefixed ``base_model.model.`` (``peft.get_peft_model_state_dict`` output).
        component: ``"transformer"`` (``lora_unet__`` names) or ``"text_encoder"`` (``lora_te_``).
        alpha: peft ``lora_alpha`` for every module; kohya's ``alpha / rank`` then equals peft's scale
            (not with ``use_rslora``).
        alphas: per-module-path overrides (peft ``alpha_pattern`` resolved to full paths).

    Returns:
        ``{name.lora_down.weight, name.lora_up.weight, name.alpha}`` with alpha a float32 0-dim tensor.
    """
    _check_component(component)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        path, which = _split_peft_key(key)
        pairs.setdefault(path, {})[which] = tensor
    kohya: dict[str, torch.Tensor] = {}
    for path, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise ValueError(f"peft LoRA module {path!r} lacks lora_{'B' if 'A' in pair else 'A'}.weight")
        name = kohya_module_name(path, component)
        kohya[f"{name}.{LORA_DOWN}"] = pair["A"].detach()
        kohya[f"{name}.{LORA_UP}"] = pair["B"].detach()
        kohya[f"{name}.{LORA_ALPHA}"] = torch.tensor(_module_alpha(path, alpha, alphas), dtype=torch.float32)
    return kohya


def save_kohya_lora(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Validate and save a kohya LoRA as safetensors.

    Args:
        path: output ``.safetensors`` file.
        tensors: kohya keys (e.g. from :func:`peft_state_dict_to_kohya`).
        metadata: extra string metadata; format information is added (and wins on conflict).
        dtype: cast ``lora_down``/``lora_up`` to this dtype (v1 saved bf16); alphas stay float32
            so that values such as 0.1 are stored exactly as given.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"LoRA files are saved as .safetensors, got {path}")
    validate_kohya_state_dict(tensors, source="LoRA to save")
    out = {
        key: (tensor if dtype is None or key.endswith(LORA_ALPHA) else tensor.to(dtype)).detach().cpu().contiguous()
        for key, tensor in tensors.items()
    }
    modules = {key.partition(".")[0] for key in out}
    info = {
        "format": "pt",
        "lora_format": "kohya-ss",
        "lora_name_prefixes": ",".join(KOHYA_NAME_PREFIXES.values()),
        "lora_num_modules": str(len(modules)),
    }
    write_safetensors(path, out, metadata={**dict(metadata or {}), **info})


# ----------------------------------------------------------------------------------------------
# Merging
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MergedLora:
    """Which LoRA is merged into the weights and how."""

    source: str
    multiplier: float
    transformer_only: bool
    num_modules: int


@dataclass(frozen=True)
class _LoraUpdate:
    """One validated layer update: ``layer.weight += multiplier * scale * up @ down``."""

    name: str
    layer: nn.Module
    down: torch.Tensor
    up: torch.Tensor
    scale: float


def _shape_error(name: str, layer: nn.Module, down: torch.Tensor, up: torch.Tensor) -> str | None:
    """Why ``down``/``up`` cannot update ``layer`` (wrong layer type or shape), or None if they fit."""
    if not is_lora_layer(layer):
        return f"{name}: target is a {type(layer).__name__}, not a Linear or 1x1 Conv2d"
    out_features, in_features = layer.weight.shape[:2]
    rank = down.shape[0]
    if down.shape[1] != in_features or up.shape[0] != out_features:
        return (
            f"{name}: expected lora_down [{rank}, {in_features}] and lora_up [{out_features}, {rank}], "
            f"got {list(down.shape)} and {list(up.shape)}"
        )
    return None


def _duplicate_targets(updates: list[_LoraUpdate]) -> list[str]:
    """Names of updates whose layer an earlier update already targets (e.g. single + double underscore)."""
    seen: set[int] = set()
    duplicates: list[str] = []
    for update in updates:
        if id(update.layer) in seen:
            duplicates.append(update.name)
        seen.add(id(update.layer))
    return duplicates


def _lora_scale(parts: Mapping[str, torch.Tensor]) -> float:
    """``alpha / rank`` (rank = lora_up.shape[1]); 1.0 when the file has no alpha."""
    if LORA_ALPHA not in parts:
        return 1.0
    return float(parts[LORA_ALPHA].float().item()) / parts[LORA_UP].shape[1]


class LoraMerger:
    """Merge kohya LoRA files into a transformer (and T5 text encoder) and restore them exactly.

    On merge every modified weight is first copied to CPU; unmerge copies the originals back, so
    any number of switches between LoRAs and multipliers leaves the base weights bit-identical
    (also in fp16). A LoRA is validated completely before any weight changes.

    Example::

        merger = LoraMerger(pipeline.transformer, pipeline.text_encoder)
        merger.merge("models/Personalized_Model/easyanimate_portrait_lora.safetensors", 0.55)
        merger.unmerge()
    """

    def __init__(self, transformer: nn.Module, text_encoder: nn.Module | None = None) -> None:
        """Args: transformer: the root named by ``lora_unet__``; text_encoder: the root named by ``lora_te_``."""
        self.roots: dict[str, nn.Module | None] = {TRANSFORMER: transformer, TEXT_ENCODER: text_encoder}
        self._names: dict[str, dict[str, nn.Module | None]] = {}
        self._originals: list[tuple[nn.Module, torch.Tensor]] = []
        self._merged: MergedLora | None = None

    @property
    def merged(self) -> MergedLora | None:
        """The LoRA currently merged, or None."""
        return self._merged

    def merge(
        self,
        lora: str | os.PathLike[str] | Mapping[str, torch.Tensor],
        multiplier: float = 1.0,
        transformer_only: bool = False,
    ) -> MergedLora:
        """Merge ``W <- W + multiplier * (alpha / rank) * up @ down`` into every adapted layer.

        Args:
            lora: path of a kohya LoRA file, or an already loaded kohya state dict.
            multiplier: LoRA strength (v1 default 0.55).
            transformer_only: leave the text encoder unchanged even if the file adapts it.

        A different LoRA/multiplier already merged is restored first; the same file with the same
        settings is a no-op. Raises ValueError (weights untouched) if names do not resolve or
        shapes do not fit.
        """
        is_file = not isinstance(lora, Mapping)
        source = str(lora) if is_file else _IN_MEMORY
        if self._merged is not None and self._is_merged(source, float(multiplier), transformer_only):
            logger.info("LoRA %s (multiplier %s) is already merged", source, multiplier)
            return self._merged
        if is_file:
            state_dict = load_lora_state_dict(lora)
        else:
            state_dict = dict(lora)
            validate_kohya_state_dict(state_dict, source=source)
        updates = self._plan(state_dict, source, transformer_only)
        self.unmerge()
        self._apply(updates, float(multiplier))
        self._merged = MergedLora(source, float(multiplier), transformer_only, len(updates))
        logger.info("merged %d LoRA modules from %s with multiplier %s", len(updates), source, multiplier)
        return self._merged

    def _is_merged(self, source: str, multiplier: float, transformer_only: bool) -> bool:
        """Whether this file is merged already with these settings (in-memory dicts never are)."""
        current = self._merged
        if current is None or source == _IN_MEMORY:
            return False
        return (current.source, current.multiplier, current.transformer_only) == (source, multiplier, transformer_only)

    def unmerge(self) -> None:
        """Restore the exact original weights of every layer the current LoRA changed."""
        with torch.no_grad():
            for layer, original in self._originals:
                layer.weight.copy_(original)
        if self._merged is not None:
            logger.info("unmerged LoRA %s", self._merged.source)
        self._originals.clear()
        self._merged = None

    def _plan(self, state_dict: Mapping[str, torch.Tensor], source: str, transformer_only: bool) -> list[_LoraUpdate]:
        """Resolve and shape-check every module of the LoRA; raise before anything is modified."""
        groups = _group_by_module(state_dict, source)
        skipped = self._skipped_text_encoder_names(groups, transformer_only)
        updates: list[_LoraUpdate] = []
        unmatched: list[str] = []
        mismatched: list[str] = []
        for name, parts in groups.items():
            if name in skipped:
                continue
            layer = self._resolve(name)
            if layer is None:
                unmatched.append(name)
                continue
            problem = _shape_error(name, layer, parts[LORA_DOWN].flatten(1), parts[LORA_UP].flatten(1))
            if problem:
                mismatched.append(problem)
                continue
            updates.append(_LoraUpdate(name, layer, parts[LORA_DOWN], parts[LORA_UP], _lora_scale(parts)))
        self._raise_on_problems(source, updates, unmatched, mismatched, len(skipped))
        return updates

    def _skipped_text_encoder_names(self, groups: Mapping[str, object], transformer_only: bool) -> set[str]:
        """Text-encoder names to leave out: all of them if ``transformer_only`` or no encoder is set."""
        names = {name for name in groups if kohya_component(name) == TEXT_ENCODER}
        if not names:
            return set()
        if transformer_only:
            logger.info("transformer_only: leaving %d text-encoder LoRA modules unmerged", len(names))
        elif self.roots[TEXT_ENCODER] is None:
            logger.warning("LoRA adapts the text encoder (%d modules) but none was given; skipping them", len(names))
        else:
            return set()
        return names

    def _resolve(self, name: str) -> nn.Module | None:
        """The layer a kohya name points to, or None if it has no known prefix or does not resolve."""
        component = kohya_component(name)
        root = self.roots.get(component) if component else None
        if root is None:
            return None
        if component not in self._names:
            self._names[component] = kohya_name_map(root)
        try:
            return resolve_kohya_module(root, name, self._names[component])
        except LookupError:
            return None

    @staticmethod
    def _raise_on_problems(
        source: str, updates: list[_LoraUpdate], unmatched: list[str], mismatched: list[str], skipped: int
    ) -> None:
        """Raise one ValueError naming unmatched names, shape mismatches, duplicates or an empty match."""
        messages: list[str] = []
        if unmatched:
            messages.append(
                f"{len(unmatched)} LoRA module name(s) match no layer (first: {unmatched[:_MAX_LISTED]}); "
                f"{len(updates) + len(mismatched)} matched"
            )
        if mismatched:
            messages.append(f"{len(mismatched)} shape mismatch(es): " + "; ".join(mismatched[:_MAX_LISTED]))
        duplicates = _duplicate_targets(updates)
        if duplicates:
            messages.append(f"several LoRA names resolve to the same layer: {duplicates[:_MAX_LISTED]}")
        if not messages and not updates:
            messages.append(f"no LoRA module matched any layer ({skipped} text-encoder modules skipped)")
        if messages:
            raise ValueError(f"cannot merge LoRA {source}: " + " | ".join(messages) + "; no weights were changed")

    def _apply(self, updates: list[_LoraUpdate], multiplier: float) -> None:
        """Back up each target weight on CPU, then add the LoRA product computed in float32."""
        with torch.no_grad():
            for update in updates:
                weight = update.layer.weight
                self._originals.append((update.layer, weight.detach().to("cpu", copy=True)))
                down = update.down.to(weight.device, torch.float32).flatten(1)
                up = update.up.to(weight.device, torch.float32).flatten(1)
                delta = (up @ down).reshape(weight.shape) * (multiplier * update.scale)
                weight.copy_((weight.float() + delta).to(weight.dtype))
