"""What a finished run leaves in ``output_dir``, in the formats generation loads.

* LoRA runs: ``lora.safetensors`` in the original kohya format (transformer, and T5 when trained), and
  the same LoRA as peft adapter folders ``lora_peft/transformer/`` (and ``lora_peft/text_encoder/``),
  which ``peft.PeftModel.from_pretrained`` and ``EasyAnimateV1Pipeline.load_lora_weights`` read;
* otherwise the whole transformer as a diffusers folder ``transformer/``, plus the motion modules when
  they trained, as ``motion_module.safetensors`` (original key names) and as ``motion_module/`` (an
  :class:`~easyanimate.models.EasyAnimateMotionModule` folder: config + weights), plus
  ``pixart_transformer.safetensors`` (the PixArt keys) when any of the image model trained.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..adapters import save_peft_adapter
from ..files import write_safetensors
from ..lora import TEXT_ENCODER, TRANSFORMER, peft_state_dict_to_kohya, save_kohya_lora
from ..models import EasyAnimateMotionModule, Transformer3DModel, save_motion_module
from ..models.loading import is_motion_key
from .components import Components
from .config import TrainConfig


def export_lora(components: Components, config: TrainConfig, path: Path) -> Path:
    """Write the trained LoRA in the original kohya format (transformer, and T5 when trained)."""
    from peft import get_peft_model_state_dict

    tensors = peft_state_dict_to_kohya(get_peft_model_state_dict(components.transformer), TRANSFORMER,
                                       alpha=config.lora.network_alpha)
    if config.lora.train_text_encoder:
        tensors.update(peft_state_dict_to_kohya(get_peft_model_state_dict(components.text_encoder), TEXT_ENCODER,
                                                alpha=config.lora.network_alpha))
    save_kohya_lora(path, tensors,
                    metadata={"rank": str(config.lora.rank), "network_alpha": str(config.lora.network_alpha)})
    return path


def export_peft(components: Components, config: TrainConfig, folder: Path) -> Path:
    """Write the trained LoRA as peft adapter folders: ``folder/transformer/`` (and ``folder/text_encoder/``)."""
    from peft import get_peft_model_state_dict

    models = {TRANSFORMER: components.transformer}
    if config.lora.train_text_encoder:
        models[TEXT_ENCODER] = components.text_encoder
    for component, model in models.items():
        state = get_peft_model_state_dict(model)
        paths = sorted({key.rsplit(".lora_", 1)[0] for key in state})
        target = "^(" + "|".join(re.escape(path) for path in paths) + ")$"  # exact names, as in training
        save_peft_adapter(folder / component, state,
                          {"r": config.lora.rank, "lora_alpha": config.lora.network_alpha, "target_modules": target})
    return folder


def export(components: Components, transformer: Transformer3DModel, config: TrainConfig,
           trainable: list[tuple[str, torch.nn.Parameter]]) -> dict[str, Path]:
    """Final artefacts in ``output_dir``: LoRA file, or transformer folder + motion module / PixArt checkpoint."""
    output_dir = Path(config.output_dir)
    if config.lora is not None:
        return {"lora": export_lora(components, config, output_dir / "lora.safetensors"),
                "lora_peft": export_peft(components, config, output_dir / "lora_peft")}
    transformer.save_pretrained(output_dir / "transformer")
    exports = {"transformer": output_dir / "transformer"}
    if any(is_motion_key(name) for name, _ in trainable):
        save_motion_module(transformer, output_dir / "motion_module.safetensors")
        exports["motion_module"] = output_dir / "motion_module.safetensors"
        EasyAnimateMotionModule.from_transformer(transformer).save_pretrained(output_dir / "motion_module")
        exports["motion_module_folder"] = output_dir / "motion_module"
    # The image model on its own (PixArt keys, no motion modules) whenever any of it trained: the t2i
    # stage, or a video stage that trained more than the motion modules (e.g. cross-attention beside them).
    if any(not is_motion_key(name) for name, _ in trainable):
        state = {k: v.detach().cpu().contiguous() for k, v in transformer.state_dict().items()
                 if not is_motion_key(k)}
        write_safetensors(output_dir / "pixart_transformer.safetensors", state)
        exports["pixart_transformer"] = output_dir / "pixart_transformer.safetensors"
    return exports
