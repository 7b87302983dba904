"""LoRA as peft adapters: the original kohya files and peft adapter folders, interchangeably.

A kohya LoRA (:mod:`easyanimate.lora`) names modules with underscores and stores ``alpha`` per module;
a peft adapter folder holds ``adapter_config.json`` (rank, alpha, target modules, per-module
exceptions) and ``adapter_model.safetensors`` (``base_model.model.<path>.lora_A.weight`` / ``lora_B``).
Both describe the same update ``W + (alpha / rank) * B @ A``. This module converts between them
(:func:`kohya_to_peft`, :func:`save_peft_adapter`) and attaches either kind to a model as a named,
switchable peft adapter (:func:`attach_lora`), so a LoRA trained here also loads with
``peft.PeftModel.from_pretrained`` and with ``EasyAnimateV1Pipeline.load_lora_weights``.
Merging into the weights with an exact unmerge stays :class:`easyanimate.lora.LoraMerger`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .files import write_safetensors
from .lora import LORA_ALPHA, LORA_DOWN, LORA_UP, TEXT_ENCODER, TRANSFORMER, kohya_component, load_lora_state_dict
from .models.loading import read_state_dict

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
_COMPONENT_PREFIXES = {TRANSFORMER: ("lora_unet__", "lora_unet_"), TEXT_ENCODER: ("lora_te_",)}


def kohya_path_map(root: nn.Module) -> dict[str, str | None]:
    """Module path of every kohya name (without prefix) in ``root``; None where two paths share a name."""
    paths: dict[str, str | None] = {}
    for path, _ in root.named_modules():
        if path:
            name = path.replace(".", "_")
            paths[name] = None if name in paths else path
    return paths


def kohya_to_peft(state_dict: Mapping[str, torch.Tensor], root: nn.Module,
                  component: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The modules of ``component`` in a kohya LoRA as a peft state dict and ``LoraConfig`` arguments.

    Returns ``({"<path>.lora_A.weight": down, "<path>.lora_B.weight": up, ...}, config)`` where
    ``config`` holds ``r`` and ``lora_alpha`` (the most common values), ``rank_pattern`` and
    ``alpha_pattern`` for modules that differ, and ``target_modules`` as an exact-path pattern.
    Raises ValueError for names that do not resolve in ``root``.
    """
    paths = kohya_path_map(root)
    peft_state: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    unresolved = []
    for key, tensor in state_dict.items():
        name, _, suffix = key.partition(".")
        if kohya_component(name) != component:
            continue
        stripped = next(name[len(p):] for p in _COMPONENT_PREFIXES[component] if name.startswith(p))
        path = paths.get(stripped)
        if path is None:
            unresolved.append(name)
            continue
        if suffix == LORA_DOWN:
            peft_state[f"{path}.lora_A.weight"] = tensor.flatten(1) if tensor.dim() == 4 else tensor
            ranks[path] = tensor.shape[0]
        elif suffix == LORA_UP:
            peft_state[f"{path}.lora_B.weight"] = tensor.flatten(1) if tensor.dim() == 4 else tensor
        elif suffix == LORA_ALPHA:
            alphas[path] = float(tensor.float().item())
    if unresolved:
        raise ValueError(f"{len(unresolved)} LoRA module name(s) match no layer of the {component}: "
                         f"{sorted(set(unresolved))[:5]}")
    if not ranks:
        return {}, {}
    for path in ranks:
        alphas.setdefault(path, float(ranks[path]))  # no alpha: scale 1, as in the kohya merge
    rank = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    config = {
        "r": rank, "lora_alpha": alpha,
        "target_modules": "^(" + "|".join(re.escape(p) for p in sorted(ranks)) + ")$",
        "rank_pattern": {f"^{re.escape(p)}$": r for p, r in ranks.items() if r != rank},
        "alpha_pattern": {f"^{re.escape(p)}$": a for p, a in alphas.items() if a != alpha},
    }
    return peft_state, config


def save_peft_adapter(folder: str | Path, peft_state: Mapping[str, torch.Tensor], config: Mapping) -> Path:
    """Write a peft adapter folder: ``adapter_config.json`` + ``adapter_model.safetensors``.

    ``peft_state`` has ``<path>.lora_A.weight`` keys (as :func:`kohya_to_peft` or
    ``peft.get_peft_model_state_dict`` give them); ``config`` is ``LoraConfig`` arguments.
    """
    from peft import LoraConfig

    folder = Path(folder)
    lora_config = LoraConfig(**config)
    folder.mkdir(parents=True, exist_ok=True)
    lora_config.save_pretrained(str(folder))
    tensors = {f"{_PEFT_PREFIX}{key}": value for key, value in peft_state.items()}
    write_safetensors(folder / ADAPTER_WEIGHTS, tensors, metadata={"format": "pt"})
    return folder


def read_peft_adapter(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict (``<path>.lora_A.weight`` keys) and ``LoraConfig`` arguments of an adapter folder."""
    folder = Path(folder)
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    state = read_state_dict(folder / ADAPTER_WEIGHTS)
    state = {key.removeprefix(_PEFT_PREFIX): value for key, value in state.items()}
    keep = {"r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "lora_dropout", "bias",
            "use_rslora", "fan_in_fan_out", "init_lora_weights"}
    return state, {key: value for key, value in config.items() if key in keep}


def attach_lora(model: nn.Module, peft_state: Mapping[str, torch.Tensor], config: Mapping,
                adapter_name: str, weight: float = 1.0) -> int:
    """Inject a LoRA into ``model`` as the peft adapter ``adapter_name``, scaled by ``weight``; returns its layer count.

    The base weights are not changed: the adapter can be switched off, rescaled or deleted later
    (:func:`set_lora_weight`, ``peft.tuners.tuners_utils.BaseTunerLayer``). A name already in use is an error.
    """
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    if any(adapter_name in getattr(m, "lora_A", {}) for m in model.modules()):
        raise ValueError(f"an adapter named {adapter_name!r} is already attached; choose another adapter_name")
    lora_config = LoraConfig(**{**config, "init_lora_weights": False})
    inject_adapter_in_model(lora_config, model, adapter_name=adapter_name)
    result = set_peft_model_state_dict(model, dict(peft_state), adapter_name=adapter_name)
    missing = [k for k in result.missing_keys if f".{adapter_name}." in k or k.endswith(adapter_name)]
    if result.unexpected_keys or missing:
        raise ValueError(f"the LoRA does not fit the model: unexpected {result.unexpected_keys[:3]}, "
                         f"missing {missing[:3]}")
    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and adapter_name in m.lora_A]
    for layer in layers:
        layer.to(next(layer.base_layer.parameters()).device)
        layer.set_scale(adapter_name, weight)
    return len(layers)


def set_lora_weight(model: nn.Module, adapter_name: str, weight: float) -> None:
    """Scale an attached adapter: ``weight * alpha / rank`` per layer (0 switches it off)."""
    from peft.tuners.lora import LoraLayer

    for layer in model.modules():
        if isinstance(layer, LoraLayer) and adapter_name in layer.lora_A:
            layer.set_scale(adapter_name, weight)


def read_lora(source: str | Path, models: Mapping[str, nn.Module | None]) -> dict[str, tuple[dict, dict]]:
    """A kohya file or a peft adapter folder as ``{component: (peft_state, config)}``.

    A folder with ``adapter_config.json`` adapts the transformer; a folder with ``transformer/``
    and/or ``text_encoder/`` adapter folders adapts each. Components whose model is None are skipped.
    """
    source = Path(source)
    if source.is_dir():
        found = {TRANSFORMER: source} if (source / ADAPTER_CONFIG).is_file() else {
            component: source / component for component in (TRANSFORMER, TEXT_ENCODER)
            if (source / component / ADAPTER_CONFIG).is_file()}
        if not found:
            raise ValueError(f"{source} holds no peft adapter: expected {ADAPTER_CONFIG} in it, or in its "
                             "transformer/ or text_encoder/ folders")
        return {component: read_peft_adapter(folder) for component, folder in found.items()
                if models.get(component) is not None}
    kohya = load_lora_state_dict(source)
    converted = {component: kohya_to_peft(kohya, model, component) for component, model in models.items()
                 if model is not None}
    return {component: value for component, value in converted.items() if value[0]}
