"""Loading models and generating videos: the one module behind ``predict_t2v.py`` and ``app.py``.

A model is a PixArt diffusers folder under ``models/Diffusion_Transformer`` plus a motion-module file
(``models/Motion_Module``), optionally a personalized base checkpoint and a LoRA
(``models/Personalized_Model``). A model folder may carry ``easyanimate_defaults.yaml`` (its own
size, frame count, sampler, motion module ...) and ``easyanimate_config.yaml`` (its model yaml);
those become the defaults when that model is used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import ConfigError, EasyAnimateConfig, load_config
from .lora import LoraMerger
from .models import Transformer3DModel, WeightLoadError, load_motion_module, load_transformer_checkpoint
from .pipelines import EasyAnimatePipeline
from .schedulers import SAMPLER_NAMES, build_scheduler
from .video_io import save_image, save_video

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = Path("models")
RELEASED_MODEL = "Diffusion_Transformer/PixArt-XL-2-512x512"
RELEASED_MOTION_MODULE = "Motion_Module/easyanimate_v1_mm.safetensors"
DEMO_MODEL = "Diffusion_Transformer/EasyAnimate-Shapes-Demo"
DEMO_MOTION_MODULE = "Motion_Module/easyanimate_shapes_mm.safetensors"
DEMO_LORA = "Personalized_Model/easyanimate_shapes_dark_lora.safetensors"  # its dark-background style
TINY_MODEL = "Diffusion_Transformer/tiny-easyanimate"  # written by scripts/make_tiny_model.py (random weights)
DEFAULTS_FILE = "easyanimate_defaults.yaml"
CONFIG_FILE = "easyanimate_config.yaml"

DEFAULT_PROMPT = (
    "A snowy forest landscape with a dirt road running through it. The road is flanked by trees covered in "
    "snow, and the ground is also covered in snow. The sun is shining, creating a bright and serene "
    "atmosphere. The road appears to be empty, and there are no people or animals visible in the video. "
    "The style of the video is a natural landscape shot, with a focus on the beauty of the snowy forest "
    "and the peacefulness of the road."
)
DEFAULT_NEGATIVE_PROMPT = (
    "Strange motion trajectory, a poor composition and deformed video, worst quality, normal quality, "
    "low quality, low resolution, duplicate and ugly"
)

# The original README's model zoo: what to put where.
MODEL_ZOO = (
    ("models/Diffusion_Transformer/PixArt-XL-2-512x512/", "11.4 GB tar", "PixArt-XL-2-512x512 diffusers folder "
     "(transformer, vae, text_encoder, tokenizer, scheduler)"),
    ("models/Motion_Module/easyanimate_v1_mm.safetensors", "4.1 GB", "EasyAnimate v1 motion module, "
     "trained with 80 frames at 12 fps"),
    ("models/Personalized_Model/easyanimate_portrait.safetensors", "2.3 GB", "portrait base checkpoint (optional)"),
    ("models/Personalized_Model/easyanimate_portrait_lora.safetensors", "654 MB", "portrait LoRA (optional)"),
)

MEMORY_MODES = {
    "none": "everything on the device",
    "text_encoder_cpu": "T5 runs on the CPU; transformer and VAE on the device",
    "model_cpu_offload": "each model moves to the device only while it runs (diffusers model offload)",
    "sequential_cpu_offload": "weights stream to the device layer by layer (slowest, least memory)",
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class MissingWeightsError(FileNotFoundError):
    """The weights a generation needs are not where they were expected."""


def model_zoo_text() -> str:
    """The model-zoo table as plain text, for error messages and ``--help``."""
    return "\n".join(f"  {path}  ({size}): {what}" for path, size, what in MODEL_ZOO)


def best_device() -> torch.device:
    """CUDA if available, else Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is fp16 on accelerators and fp32 on CPU; else a name from :data:`DTYPES`."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass
class ModelDefaults:
    """Generation defaults a model folder can carry in ``easyanimate_defaults.yaml``.

    ``config`` is relative to the model folder; ``motion_module`` and ``lora`` to the models folder.
    """

    config: str | None = None
    motion_module: str | None = None
    lora: str | None = None
    lora_weight: float = 0.55
    height: int = 512
    width: int = 512
    frames: int = 80
    fps: int = 12
    steps: int = 30
    guidance_scale: float = 6.0
    sampler: str = "DPM++"
    seed: int = 43
    prompt: str = DEFAULT_PROMPT
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    context_frames: int | None = None
    """temporal window for videos longer than it (None: the motion module sees the whole video)"""
    context_overlap: int | None = None
    """frames shared by consecutive windows (None: the pipeline's default, a quarter of the window)"""


def read_model_defaults(model_dir: Path) -> ModelDefaults:
    """The defaults stored with a model, or the original v1 defaults when it has none."""
    path = model_dir / DEFAULTS_FILE
    if not path.is_file():
        return ModelDefaults()
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ModelDefaults), OmegaConf.load(path))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(f"invalid {path}: {error}") from error


@dataclass
class ModelSelection:
    """Which weights to load. Paths are resolved against ``models_dir`` where relative."""

    model: Path
    config: Path
    motion_module: Path | None
    transformer_path: Path | None = None
    lora: Path | None = None
    defaults: ModelDefaults = field(default_factory=ModelDefaults)


def select_model(models_dir: Path = MODELS_DIR, model: str | Path | None = None, config: str | Path | None = None,
                 motion_module: str | Path | None = None, transformer_path: str | Path | None = None,
                 lora: str | Path | None = None, use_motion_module: bool = True) -> ModelSelection:
    """Resolve what to load, falling back to the shipped demo model when the released weights are absent.

    Raises :class:`MissingWeightsError` listing every expected path (and the model zoo) when
    something is missing; nothing has been loaded or written at that point.
    """
    models_dir = Path(models_dir)
    explicit = model is not None
    model_dir = Path(model) if explicit else models_dir / RELEASED_MODEL
    if not explicit and not model_dir.is_dir():
        fallback = next((models_dir / m for m in (DEMO_MODEL, TINY_MODEL) if (models_dir / m).is_dir()), None)
        if fallback is not None:
            logger.warning("released weights not found at %s; using %s and its own defaults", model_dir, fallback)
            model_dir = fallback
    defaults = read_model_defaults(model_dir) if model_dir.is_dir() else ModelDefaults()
    if config is None:
        config = model_dir / defaults.config if defaults.config else REPO_ROOT / "config" / "easyanimate_video_motion_module_v1.yaml"
    if motion_module is None and use_motion_module:
        motion_module = models_dir / (defaults.motion_module or RELEASED_MOTION_MODULE)
    if lora is None and defaults.lora:
        lora = models_dir / defaults.lora
    selection = ModelSelection(model_dir, Path(config), Path(motion_module) if motion_module else None,
                               Path(transformer_path) if transformer_path else None,
                               Path(lora) if lora else None, defaults)
    _check_present(selection)
    return selection


def _check_present(selection: ModelSelection) -> None:
    missing = []
    if not (selection.model / "transformer" / "config.json").is_file():
        missing.append(f"{selection.model}/ (a PixArt diffusers folder with transformer/, vae/, text_encoder/, tokenizer/)")
    for label, path in (("model config", selection.config), ("motion module", selection.motion_module),
                        ("transformer checkpoint", selection.transformer_path), ("LoRA", selection.lora)):
        if path is not None and not path.is_file():
            missing.append(f"{path} ({label})")
    if missing:
        raise MissingWeightsError("missing weights:\n  " + "\n  ".join(missing)
                                  + "\nDownload them into place (model zoo of the original README):\n"
                                  + model_zoo_text())


def build_transformer(selection: ModelSelection, config: EasyAnimateConfig) -> Transformer3DModel:
    """The video transformer on the CPU in the original load order: 2D base, personalized checkpoint, motion module.

    Without a motion module the temporal layers keep their zero-initialised output projections, so
    they are identities and every frame is generated independently.
    """
    transformer = Transformer3DModel.from_pretrained_2d(
        selection.model, subfolder="transformer", transformer_additional_kwargs=config.transformer_additional_kwargs)
    if selection.transformer_path is not None:
        load_transformer_checkpoint(transformer, selection.transformer_path)
    if selection.motion_module is not None:
        load_motion_module(transformer, selection.motion_module)
    return transformer


def load_pipeline(selection: ModelSelection, sampler: str = "DPM++", device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32, memory_mode: str = "none") -> EasyAnimatePipeline:
    """Load the pipeline in the original order: 2D base, personalized checkpoint, motion module, VAE, T5."""
    device = torch.device(device) if device is not None else best_device()
    if memory_mode not in MEMORY_MODES:
        raise ValueError(f"unknown memory mode {memory_mode!r}; valid: {', '.join(MEMORY_MODES)}")
    if memory_mode in ("model_cpu_offload", "sequential_cpu_offload") and device.type == "cpu":
        raise ValueError(f"memory mode {memory_mode!r} moves weights between the CPU and an accelerator; "
                         "on a CPU-only run use 'none'")
    config = load_config(selection.config)
    transformer = build_transformer(selection, config)
    if selection.motion_module is None and transformer.has_motion_module:
        logger.warning("no motion module: the motion modules are identities, so every frame is generated "
                       "independently (no temporal coherence)")
    if transformer.dtype != dtype:
        transformer = transformer.to(dtype)
    pipeline = EasyAnimatePipeline.from_pretrained(
        str(selection.model), transformer=transformer, scheduler=build_scheduler(sampler, config.scheduler_kwargs()),
        dtype=dtype)
    pipeline.set_progress_bar_config(desc="denoising")
    _place(pipeline, device, memory_mode)
    pipeline.easyanimate_config = config
    return pipeline


def _place(pipeline: EasyAnimatePipeline, device: torch.device, memory_mode: str) -> None:
    if memory_mode == "model_cpu_offload":
        pipeline.enable_model_cpu_offload(device=device)
    elif memory_mode == "sequential_cpu_offload":
        pipeline.enable_sequential_cpu_offload(device=device)
    elif memory_mode == "text_encoder_cpu":
        pipeline.transformer.to(device)
        pipeline.vae.to(device)
        if pipeline.text_encoder is not None:
            pipeline.text_encoder.to("cpu", torch.float32)
    else:
        pipeline.to(device)


def set_sampler(pipeline: EasyAnimatePipeline, sampler: str) -> None:
    """Swap the scheduler by name (the original's table), keeping the model yaml's kwargs."""
    pipeline.scheduler = build_scheduler(sampler, pipeline.easyanimate_config.scheduler_kwargs())


@dataclass
class GenerationRequest:
    """One video to generate; ``seed`` None or -1 draws a random seed (the one used is recorded)."""

    prompt: str
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    sampler: str = "DPM++"
    steps: int = 30
    guidance_scale: float = 6.0
    seed: int | None = 43
    height: int = 512
    width: int = 512
    frames: int = 80
    fps: int = 12
    context_frames: int | None = None
    context_overlap: int | None = None

    def resolved_seed(self) -> int:
        if self.seed is None or self.seed < 0:
            return random.SystemRandom().randint(0, 2**31 - 1)
        return self.seed


def check_sampler(name: str) -> str:
    if name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLER_NAMES)}")
    return name


def generate(pipeline: EasyAnimatePipeline, request: GenerationRequest, seed: int,
             callback_on_step_end=None) -> torch.Tensor:
    """Run the pipeline; returns the video ``(3, F, H, W)`` in [0, 1] on the CPU."""
    device = pipeline._execution_device
    generator = torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(seed)
    output = pipeline(prompt=request.prompt, negative_prompt=request.negative_prompt,
                      num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
                      height=request.height, width=request.width, video_length=request.frames,
                      generator=generator, output_type="pt", callback_on_step_end=callback_on_step_end,
                      context_frames=request.context_frames, context_overlap=request.context_overlap)
    return output.videos[0]


def save_result(video: torch.Tensor, output_dir: Path, record: dict[str, Any], fps: int,
                formats: tuple[str, ...] = ("mp4",)) -> list[Path]:
    """Write the video (mp4 and/or gif; png for one frame) plus one JSON sidecar with the same base name.

    Files are numbered ``00000001``, ``00000002``, ... after the highest number in the folder, so
    nothing is ever overwritten. Returns the media files written.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    exts = (".png",) if video.shape[1] == 1 else tuple(f".{fmt}" for fmt in formats)
    stem = _next_stem(output_dir, (*exts, ".json"))
    written = []
    for ext in exts:
        path = output_dir / f"{stem}{ext}"
        if ext == ".png":
            save_image(video[:, 0], path)
        else:
            save_video(video, path, fps=fps)
        written.append(path)
    sidecar = {**record, "files": [p.name for p in written]}
    (output_dir / f"{stem}.json").write_text(json.dumps(sidecar, indent=2))
    return written


def _next_stem(folder: Path, exts: tuple[str, ...]) -> str:
    numbers = [int(p.stem) for p in folder.iterdir() if p.stem.isdigit()]
    number = max(numbers, default=0) + 1
    while any((folder / f"{number:08d}{ext}").exists() for ext in exts):
        number += 1
    return f"{number:08d}"


def run_record(request: GenerationRequest, seed: int, selection: ModelSelection, lora_weight: float,
               dtype: torch.dtype, device: torch.device, memory_mode: str) -> dict[str, Any]:
    """Everything needed to reproduce a video, as stored in its JSON sidecar."""
    return {
        **dataclasses.asdict(request), "seed": seed, "model": str(selection.model), "config": str(selection.config),
        "motion_module": str(selection.motion_module) if selection.motion_module else None,
        "transformer_path": str(selection.transformer_path) if selection.transformer_path else None,
        "lora": str(selection.lora) if selection.lora else None, "lora_weight": lora_weight,
        "dtype": str(dtype).removeprefix("torch."), "device": str(device), "memory_mode": memory_mode,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }


def apply_lora(pipeline: EasyAnimatePipeline, merger: LoraMerger | None, lora: Path | None,
               weight: float) -> LoraMerger:
    """Merge ``lora`` at ``weight`` (or restore the base when None); exact, however often switched."""
    merger = merger or LoraMerger(pipeline.transformer, pipeline.text_encoder)
    if lora is None:
        merger.unmerge()
    else:
        merger.merge(lora, multiplier=weight)
    return merger


__all__ = [
    "DEFAULT_NEGATIVE_PROMPT", "DEFAULT_PROMPT", "MEMORY_MODES", "GenerationRequest", "MissingWeightsError",
    "ModelSelection", "WeightLoadError", "apply_lora", "best_device", "generate", "load_pipeline",
    "build_transformer", "resolve_dtype", "save_result", "select_model", "set_sampler",
]

