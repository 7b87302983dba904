"""Every way weights enter or leave the video transformer, in one place.

* :func:`read_state_dict` — the one reader of weight files (safetensors; pickle formats only through
  ``torch.load(weights_only=True)``): every file is checked to hold finite floating-point tensors.
* :func:`load_transformer_from_2d` — a PixArt diffusers folder (``transformer/config.json`` +
  weights) into the video model; only the motion-module keys may be missing.
* :func:`load_motion_module` — ``easyanimate_v1_mm.safetensors`` (original key names, with or
  without the ``pos_encoder.pe`` tables); a file that records what it was built with
  (:class:`MotionModuleSpec` in its safetensors metadata) must match the model in what its weight
  shapes cannot show: head count, grid, position-table length.
* :func:`load_transformer_checkpoint` — a personalized / full transformer state dict such as
  ``easyanimate_portrait.safetensors`` (the 603 PixArt keys, optionally motion-module keys too).
* :func:`build_video_transformer` — the load order of the original: 2D base, personalized
  checkpoint, motion module; then fresh motion modules where no file provided them.
* :func:`widen_patch_embedding` — an inpaint model (``2 * C + 1`` input channels) from a ``C``-channel
  checkpoint: the checkpoint's patch-embedding weights go to the first ``C`` input channels and the
  mask and masked-video channels start at zero, so the new model computes what the checkpoint did.
* :func:`motion_module_state_dict` / :func:`save_motion_module` — cut the motion module out (with its
  :class:`MotionModuleSpec` when it comes from a model).

Nothing is loaded with ``strict=False`` silently: keys are compared first, the expected gaps are
stated in code, and anything else raises a :class:`WeightLoadError` naming the keys.

Memory. The model is built with its parameters and position tables on ``meta`` (no memory, no random
initialisation), files are read into memory of their own (``pread``, not a mapping of the file), and each
file's tensors become what they fill (``load_state_dict(assign=True)``, cast to its dtype): a load holds
one copy of the weights, not a randomly initialised model plus the file. Motion modules that no file
provides are then built as the constructor builds them (zero output projection: the identity), and
position tables that no file provides are computed.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..config import ConfigError, TransformerAdditionalKwargs, transformer_kwargs_for_model
from ..files import write_safetensors
from .motion_module import get_motion_module, sinusoid_table

logger = logging.getLogger(__name__)

MOTION_MODULE_MARKER = ".attn_temporal."
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# Buffers that are a fixed function of their shape: a file may leave them out.
COMPUTED_BUFFERS = re.compile(r"(\.pos_encoder\.pe|^t_pos\.pe)$")


class WeightLoadError(ValueError):
    """A weight file that is missing, unreadable, or does not fit the model."""


@dataclass
class LoadReport:
    """What one load did; ``str()`` gives the line that is logged."""

    source: str
    kind: str
    loaded: int
    computed_buffers_kept: int = 0
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"loaded {self.loaded} tensors ({self.kind}) from {self.source}"
        if self.computed_buffers_kept:
            text += f"; {self.computed_buffers_kept} position tables not in the file were computed"
        return text + "".join(f"; {note}" for note in self.notes)


# --------------------------------------------------------------------------------------------
# Reading files


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weight file: safetensors, or a pickle through ``torch.load(weights_only=True)``.

    A top-level ``"state_dict"`` entry is unwrapped. Missing, truncated or corrupt files raise a
    :class:`WeightLoadError` that says so.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightLoadError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        try:  # pread: tensors that own their memory; mmap-backed ones would tie the model to the file
            state = load_file(str(path), backend="pread")
        except (SafetensorError, OSError, ValueError) as error:
            raise WeightLoadError(f"{path} is not a readable safetensors file (truncated or corrupt?): {error}") from error
    elif path.suffix in PICKLE_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for bad pickles
            raise WeightLoadError(f"{path} could not be read with torch.load(weights_only=True) "
                                  f"(corrupt, or it holds more than tensors): {error}") from error
        if isinstance(state, Mapping) and "state_dict" in state:
            state = state["state_dict"]
    else:
        raise WeightLoadError(f"{path}: unknown weight format {path.suffix!r}; expected .safetensors "
                              f"or one of {', '.join(PICKLE_SUFFIXES)}")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightLoadError(f"{path} does not hold a flat mapping of tensor names to tensors")
    check_weights(state, str(path))
    return dict(state)


def check_weights(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise a :class:`WeightLoadError` naming the first tensor that is not floating point or not finite.

    Loading casts to the model's dtype, so an integer or boolean tensor would load with every value
    changed, and a NaN would surface only as a black video after a whole generation.
    """
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            raise WeightLoadError(f"{source}: tensor {key!r} is {str(tensor.dtype).removeprefix('torch.')}; "
                                  "weights must be floating point (a file of weights, not of indices or masks)")
        if not _all_finite(tensor):
            raise WeightLoadError(f"{source}: tensor {key!r} holds NaN or infinite values; the file is damaged "
                                  "or came from a diverged training run")


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value is finite, without a tensor-sized temporary (a whole model's worth while loading): a NaN
    makes the minimum and maximum NaN, and an infinity is one of them."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def describe_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    """Say in words what a state dict looks like (LoRA, motion module, PixArt transformer, ...)."""
    keys = list(state)
    if not keys:
        return "an empty file"
    blocks = {int(m.group(1)) for k in keys if (m := re.match(r"transformer_blocks\.(\d+)\.", k))}
    width = _width_of(state)
    shape = f"{len(blocks)} blocks, width {width}" if blocks and width else "unknown size"
    motion = [k for k in keys if MOTION_MODULE_MARKER in k]
    if any(".lora_down." in k or ".lora_A." in k or ".lora_up." in k for k in keys):
        return f"a LoRA file ({len(keys)} tensors, keys such as {keys[0]!r})"
    if motion and len(motion) == len(keys):
        return f"a motion-module file ({len(keys)} tensors, {shape})"
    if "adaln_single.linear.weight" in state:
        kind = "a video transformer with motion modules" if motion else "a PixArt (2D) transformer"
        return f"{kind} ({len(keys)} tensors, {shape})"
    return f"an unrecognised state dict ({len(keys)} tensors, keys such as {', '.join(keys[:3])})"


def _width_of(state: Mapping[str, torch.Tensor]) -> int | None:
    for key, tensor in state.items():
        if key.endswith(("attn1.to_q.weight", "temporal_transformer.proj_in.weight")):
            return int(tensor.shape[0])
    return None


# --------------------------------------------------------------------------------------------
# Comparing a state dict with a model


@dataclass
class KeyComparison:
    """Missing, unexpected and shape-mismatched keys of a state dict against a model."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]


def compare_keys(model: torch.nn.Module, state: Mapping[str, torch.Tensor],
                 expected_keys: Iterable[str] | None = None) -> KeyComparison:
    """Compare ``state`` against the model's state dict (or the subset ``expected_keys``)."""
    model_state = model.state_dict()
    expected = set(model_state if expected_keys is None else expected_keys)
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(model_state))
    mismatched = [(k, tuple(state[k].shape), tuple(model_state[k].shape))
                  for k in sorted(set(state) & set(model_state)) if state[k].shape != model_state[k].shape]
    return KeyComparison(missing, unexpected, mismatched)


def _raise_if_bad(comparison: KeyComparison, source: str, state: Mapping[str, torch.Tensor],
                  expected: str, allowed_missing: re.Pattern | None = None) -> list[str]:
    """Raise a WeightLoadError naming what does not fit; return the allowed missing keys."""
    allowed = [k for k in comparison.missing if allowed_missing is not None and allowed_missing.search(k)]
    missing = [k for k in comparison.missing if k not in allowed]
    problems = []
    if comparison.mismatched:
        problems.append(f"{len(comparison.mismatched)} shape mismatches (file vs model), e.g. "
                        + "; ".join(f"{k}: {a} vs {b}" for k, a, b in comparison.mismatched[:3]))
    if missing:
        problems.append(f"{len(missing)} missing keys, e.g. {', '.join(missing[:5])}")
    if comparison.unexpected:
        problems.append(f"{len(comparison.unexpected)} unexpected keys, e.g. {', '.join(comparison.unexpected[:5])}")
    if problems:
        raise WeightLoadError(f"{source} does not fit: it looks like {describe_state_dict(state)}; "
                              f"expected {expected}. " + ". ".join(problems))
    return allowed


def is_motion_key(key: str) -> bool:
    """A motion-module entry: its name contains ``.attn_temporal.``."""
    return MOTION_MODULE_MARKER in key


def load_checked_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Put an already checked ``state`` (a subset of the model's keys) into ``model``.

    Entries that hold memory are copied into (device and dtype kept, as ``load_state_dict`` does); entries
    still on ``meta`` (the model was built empty) take the file's tensor itself, cast to their dtype.
    """
    targets = model.state_dict()
    empty = {k: v.to(targets[k].dtype) for k, v in state.items() if targets[k].is_meta}
    model.load_state_dict({k: v for k, v in state.items() if k not in empty}, strict=False)
    if empty:
        model.load_state_dict(empty, strict=False, assign=True)


def empty_model(cls: type, config: Mapping[str, Any]) -> torch.nn.Module:
    """``cls`` built from ``config`` with its parameters and computed position tables on ``meta``: no memory and no
    random initialisation for what the files will replace. :func:`fill_missing` completes it."""
    with init_empty_weights(include_buffers=False):
        model = cls.from_config(dict(config))
    for name, buffer in list(model.named_buffers()):
        if COMPUTED_BUFFERS.search(name):
            owner, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(owner), attribute, buffer.to("meta"))
    return model


def fill_missing(model: torch.nn.Module, source: str) -> None:
    """Complete a model that the files did not fill: every motion module still on ``meta`` is built as the
    constructor builds it (random weights, zero output projection: the identity), every position table still on
    ``meta`` is computed; anything else still empty raises a :class:`WeightLoadError`."""
    config = model.config
    for block in getattr(model, "transformer_blocks", ()):
        motion = getattr(block, "attn_temporal", None)
        if motion is not None and any(p.is_meta for p in motion.parameters()):
            width = config.num_attention_heads * config.attention_head_dim
            block.attn_temporal = get_motion_module(width, config.motion_module_type, dict(config.motion_module_kwargs))
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta and COMPUTED_BUFFERS.search(name):
            owner, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(owner), attribute, sinusoid_table(*buffer.shape[1:]).to(buffer.dtype))
    empty = [k for k, v in itertools.chain(model.named_parameters(), model.named_buffers()) if v.is_meta]
    if empty:
        raise WeightLoadError(f"{source} left {len(empty)} tensors without values, e.g. {', '.join(empty[:5])}")


# --------------------------------------------------------------------------------------------
# Loaders


def load_transformer_from_2d(cls: type, pretrained_model_path: str | Path, subfolder: str | None = "transformer",
                             transformer_additional_kwargs: Mapping[str, Any] | TransformerAdditionalKwargs | None = None,
                             inpaint: bool | None = None):
    """Build a video transformer from a 2D PixArt folder; see ``Transformer3DModel.from_pretrained_2d``.

    Its motion modules and position tables are left on ``meta``: a motion-module file or checkpoint fills them,
    else :func:`fill_missing` builds them (:func:`build_video_transformer` does both).
    """
    folder = Path(pretrained_model_path) / (subfolder or "")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise WeightLoadError(f"no transformer config at {config_path}: expected a diffusers PixArt folder "
                              f"with transformer/config.json and transformer/{WEIGHT_FILES[0]}")
    config = _pixart_config(config_path, cls)
    config["in_channels"] = _input_channels(config, inpaint, str(config_path))
    extras = _extras_dict(transformer_additional_kwargs)
    model = empty_model(cls, {**config, **extras})
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise WeightLoadError(f"no transformer weights in {folder}: expected {' or '.join(WEIGHT_FILES)}")
    state = read_state_dict(weights)
    notes = widen_patch_embedding(state, model, str(weights))
    expected = [k for k in model.state_dict() if not is_motion_key(k)]
    comparison = compare_keys(model, state, expected)
    # Stated gap: a 2D checkpoint has no motion modules, and t_pos.pe is computed.
    _raise_if_bad(comparison, str(weights), state, "the PixArt keys of the configured video transformer",
                  allowed_missing=COMPUTED_BUFFERS)
    load_checked_state(model, state)
    if model.has_motion_module:
        notes.append("motion modules start fresh (zero output projection)")
    report = LoadReport(str(weights), "PixArt transformer", len(state), notes=notes)
    logger.info("%s", report)
    return model


def _input_channels(config: Mapping[str, Any], inpaint: bool | None, source: str) -> int:
    """``in_channels`` of the model to build from a checkpoint's config: as the config says (``inpaint`` None), or
    an inpaint model's (True; widened from a text-to-video checkpoint), or a text-to-video model's (False)."""
    from .transformer3d import _latent_channels, inpaint_in_channels

    channels = config.get("in_channels", 4)
    latent = _latent_channels(channels, config.get("out_channels", 8))
    if inpaint is False and channels == inpaint_in_channels(latent):
        raise WeightLoadError(f"{source} is an inpaint model ({channels} input channels: latents, mask and "
                              f"masked-video latents), not a text-to-video model ({latent}): load it with "
                              "EasyAnimateInpaintPipeline (predict_i2v.py)")
    return inpaint_in_channels(latent) if inpaint else channels


PATCH_EMBEDDING = "pos_embed.proj.weight"


def widen_patch_embedding(state: dict[str, torch.Tensor], model: torch.nn.Module, source: str) -> list[str]:
    """Fit a text-to-video checkpoint's patch embedding to an inpaint model, in place; returns the notes to report.

    The stated gap between the two: an inpaint model's ``pos_embed.proj.weight`` is ``(D, 2C + 1, p, p)``, a
    text-to-video checkpoint's ``(D, C, p, p)``. The checkpoint's weights fill the first ``C`` input channels
    (the noisy latents) and the mask and masked-video channels are zero, so at the first step the inpaint model
    computes exactly what the checkpoint did, whatever the masked video. The reverse (an inpaint checkpoint into
    a text-to-video model) raises a :class:`WeightLoadError` that says which model it is.
    """
    weight, target = state.get(PATCH_EMBEDDING), model.state_dict().get(PATCH_EMBEDDING)
    if weight is None or target is None or weight.shape == target.shape:
        return []
    latent = getattr(model, "latent_channels", None)
    if latent is None or weight.shape[0] != target.shape[0] or weight.shape[2:] != target.shape[2:]:
        return []  # a size mismatch of another kind: the key comparison names it
    if getattr(model, "is_inpaint", False) and weight.shape[1] == latent:
        widened = weight.new_zeros(target.shape)
        widened[:, :latent] = weight
        state[PATCH_EMBEDDING] = widened
        return [f"inpaint model from a text-to-video checkpoint: {target.shape[1] - latent} mask and masked-video "
                "input channels added at zero"]
    if not getattr(model, "is_inpaint", False) and weight.shape[1] > latent:
        raise WeightLoadError(f"{source} is an inpaint checkpoint ({weight.shape[1]} input channels: latents, mask and "
                              f"masked-video latents); this model is a text-to-video model ({latent} input channels). "
                              "Load it into an inpaint model (EasyAnimateInpaintPipeline, predict_i2v.py; inpaint=True "
                              "when building from a PixArt folder)")
    return []


def _pixart_config(path: Path, cls: type) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise WeightLoadError(f"{path} is not valid JSON: {error}") from error
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    accepted = set(cls._get_init_keys(cls)) - {"self"}
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise ConfigError(f"{path}: unknown transformer config keys {unknown}; this model takes "
                          f"{', '.join(sorted(accepted))}")
    return config


def _extras_dict(extras: Mapping[str, Any] | TransformerAdditionalKwargs | None) -> dict[str, Any]:
    if extras is None:
        return {}
    if isinstance(extras, TransformerAdditionalKwargs):
        return transformer_kwargs_for_model(extras)
    return dict(extras)


@dataclass(frozen=True)
class MotionModuleSpec:
    """What a motion module was built with, recorded in the safetensors metadata of the files saved here.

    The weight shapes show the width and the number of blocks, and the position-table length only when
    the tables are in the file; they never show the head count or whether the module attends over 2x2
    grids. A motion module run with another head count loads without a shape error and changes the
    output, so these are compared before loading (:meth:`mismatch`).
    """

    num_attention_heads: int
    num_transformer_block: int
    position_table_length: int  # 0: no position encoding
    motion_module_type: str
    width: int
    block_size: int = 2  # grid neighbourhood of "VanillaGrid" (n x n tokens); files before it was recorded: 2

    KEYS = ("num_attention_heads", "num_transformer_block", "position_table_length", "motion_module_type", "width")
    OPTIONAL_KEYS = ("block_size",)

    @classmethod
    def of_settings(cls, motion_module_type: str, motion_module_kwargs: Mapping[str, Any] | Any,
                    width: int) -> MotionModuleSpec:
        """From a model yaml's ``motion_module_type`` and ``motion_module_kwargs`` (dict or dataclass) and the
        transformer's width."""
        kwargs = motion_module_kwargs if isinstance(motion_module_kwargs, Mapping) else vars(motion_module_kwargs)
        table = kwargs.get("temporal_position_encoding_max_len", 4096) if kwargs.get("temporal_position_encoding") else 0
        return cls(kwargs.get("num_attention_heads", 8), kwargs.get("num_transformer_block", 2), table,
                   motion_module_type, width, kwargs.get("block_size", 2))

    @classmethod
    def of_model(cls, model: torch.nn.Module) -> MotionModuleSpec | None:
        """From a :class:`Transformer3DModel`'s config; None for a model without motion modules."""
        config = getattr(model, "config", None)
        if config is None or getattr(config, "basic_block_type", None) != "motionmodule":
            return None
        width = config.num_attention_heads * config.attention_head_dim
        return cls.of_settings(config.motion_module_type, dict(config.motion_module_kwargs or {}), width)

    @classmethod
    def of_file(cls, path: str | Path) -> MotionModuleSpec | None:
        """From a safetensors file's metadata; None when the file does not record it (e.g. the released v1 file)."""
        if Path(path).suffix != ".safetensors":
            return None
        try:
            with safe_open(str(path), "pt") as file:
                metadata = file.metadata() or {}
        except (SafetensorError, OSError):
            return None  # read_state_dict reports an unreadable file
        if not all(key in metadata for key in cls.KEYS):
            return None
        try:
            return cls(int(metadata["num_attention_heads"]), int(metadata["num_transformer_block"]),
                       int(metadata["position_table_length"]), metadata["motion_module_type"], int(metadata["width"]),
                       int(metadata.get("block_size", 2)))
        except ValueError as error:
            raise WeightLoadError(f"{path}: unreadable motion-module metadata {metadata}: {error}") from error

    def to_metadata(self) -> dict[str, str]:
        return {key: str(getattr(self, key)) for key in (*self.KEYS, *self.OPTIONAL_KEYS)}

    def describe(self) -> str:
        table = f"a {self.position_table_length}-frame position table" if self.position_table_length else "no position table"
        grid = f" ({self.block_size}x{self.block_size})" if self.motion_module_type == "VanillaGrid" else ""
        return (f"{self.num_attention_heads} heads, {self.num_transformer_block} block(s), {table}, "
                f"{self.motion_module_type}{grid}, width {self.width}")

    def mismatch(self, other: MotionModuleSpec) -> list[str]:
        """What ``other`` differs in that weight shapes would not show: heads, grid, position-table length."""
        return [key for key in ("num_attention_heads", "motion_module_type", "block_size", "position_table_length")
                if getattr(self, key) != getattr(other, key)]


def check_motion_module_spec(path: str | Path, expected: MotionModuleSpec | None, model_label: str = "this model") -> None:
    """Raise a WeightLoadError when the file records a build that ``expected`` cannot run as it was trained."""
    recorded = MotionModuleSpec.of_file(path)
    if recorded is None or expected is None or not recorded.mismatch(expected):
        return
    raise WeightLoadError(f"{path} was built with {recorded.describe()}; {model_label} has motion modules with "
                          f"{expected.describe()} (it differs in {', '.join(recorded.mismatch(expected))}): use the "
                          "model yaml the motion module was trained with (--config, or --config_path in training)")


def load_motion_module(model: torch.nn.Module, path: str | Path) -> LoadReport:
    """Load a motion-module file into ``model``; every motion-module key must be in the file.

    The ``pos_encoder.pe`` tables may be absent (they are computed). Anything that is not
    motion-module weights of this model's size raises a :class:`WeightLoadError`, and so does a file whose
    recorded :class:`MotionModuleSpec` differs from the model's in head count, grid or position-table length.
    """
    if not getattr(model, "has_motion_module", False):
        raise WeightLoadError("this transformer has no motion modules (basic_block_type is not "
                              "'motionmodule'); a motion-module file cannot be loaded into it")
    check_motion_module_spec(path, MotionModuleSpec.of_model(model))
    state = read_state_dict(path)
    expected = [k for k in model.state_dict() if is_motion_key(k)]
    foreign = [k for k in state if not is_motion_key(k)]
    if foreign:
        raise WeightLoadError(f"{path} is not a motion-module file: it looks like {describe_state_dict(state)}; "
                              f"expected only '...attn_temporal...' keys ({len(expected)} for this model)")
    comparison = compare_keys(model, state, expected)
    kept = _raise_if_bad(comparison, str(path), state,
                         f"the {len(expected)} motion-module keys of this model", allowed_missing=COMPUTED_BUFFERS)
    load_checked_state(model, state)
    report = LoadReport(str(path), "motion module", len(state), computed_buffers_kept=len(kept))
    logger.info("%s", report)
    return report


def load_transformer_checkpoint(model: torch.nn.Module, path: str | Path) -> LoadReport:
    """Load a personalized / full transformer checkpoint (e.g. ``easyanimate_portrait.safetensors``).

    All PixArt keys must be present. Motion-module keys are optional, but if the file has any it
    must have all of them (a half motion module would silently mix two models).
    """
    state = read_state_dict(path)
    notes = widen_patch_embedding(state, model, str(path))
    model_keys = list(model.state_dict())
    has_motion = any(is_motion_key(k) for k in state)
    expected = [k for k in model_keys if has_motion or not is_motion_key(k)]
    comparison = compare_keys(model, state, expected)
    _raise_if_bad(comparison, str(path), state,
                  "a transformer checkpoint with the PixArt keys of this model", allowed_missing=COMPUTED_BUFFERS)
    load_checked_state(model, state)
    kind = "full video transformer" if has_motion else "PixArt transformer (motion modules kept)"
    report = LoadReport(str(path), kind, len(state), notes=notes)
    logger.info("%s", report)
    return report


def build_video_transformer(cls: type, model_dir: str | Path,
                            transformer_additional_kwargs: Mapping[str, Any] | TransformerAdditionalKwargs | None,
                            transformer_path: str | Path | None = None, motion_module=None,
                            subfolder: str | None = "transformer", inpaint: bool | None = None):
    """The video transformer on the CPU in the original load order: 2D base, personalized checkpoint, motion module.

    Used by generation and training alike. ``motion_module`` is a motion-module file or an
    :class:`~easyanimate.models.motion_adapter.EasyAnimateMotionModule`. Without one the temporal
    layers keep their zero-initialised output projections, so they are identities and every frame is
    made on its own. ``inpaint``: None builds what the folder holds; True an inpaint model (a text-to-video
    folder's patch embedding widened by :func:`widen_patch_embedding`); False refuses an inpaint folder.
    """
    model = load_transformer_from_2d(cls, model_dir, subfolder, transformer_additional_kwargs, inpaint)
    if transformer_path is not None:
        load_transformer_checkpoint(model, transformer_path)
    if hasattr(motion_module, "apply_to"):
        fill_missing(model, str(model_dir))  # apply_to copies into the model's own tensors
        motion_module.apply_to(model)
    elif motion_module is not None:
        load_motion_module(model, motion_module)
    fill_missing(model, str(model_dir))
    return model


# --------------------------------------------------------------------------------------------
# Cutting the motion module out


def motion_module_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The motion-module entries of a full state dict (keys containing ``.attn_temporal.``).

    The original selected the bare substring ``temporal``; the block attribute is matched here
    so unrelated names containing "temporal" are never swept in.
    """
    selected = {k: v for k, v in state.items() if is_motion_key(k)}
    if not selected:
        raise WeightLoadError(f"no motion-module keys ('...attn_temporal...') found: the state dict looks "
                              f"like {describe_state_dict(state)}")
    return selected


def save_motion_module(model_or_state: torch.nn.Module | Mapping[str, torch.Tensor], path: str | Path,
                       include_position_tables: bool = True, dtype: torch.dtype | None = None,
                       spec: MotionModuleSpec | None = None) -> int:
    """Write the motion module with the original key names; returns the number of tensors.

    ``include_position_tables`` keeps the ``pos_encoder.pe`` buffers as the released file does. What the
    module was built with (``spec``, taken from the model when a model is given) goes into the file's
    metadata. The file appears whole or not at all (:func:`easyanimate.files.atomic_write`).
    """
    if isinstance(model_or_state, torch.nn.Module):
        spec = spec or MotionModuleSpec.of_model(model_or_state)
        state = model_or_state.state_dict()
    else:
        state = model_or_state
    selected = motion_module_state_dict(state)
    if not include_position_tables:
        selected = {k: v for k, v in selected.items() if not COMPUTED_BUFFERS.search(k)}
    tensors = {k: (v.to(dtype) if dtype is not None else v).detach().contiguous().cpu() for k, v in selected.items()}
    metadata = {"format": "pt", "content": "easyanimate motion module", **(spec.to_metadata() if spec else {})}
    write_safetensors(path, tensors, metadata=metadata)
    return len(tensors)
