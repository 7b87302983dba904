"""Loading models and generating videos: the one module behind ``predict_t2v.py``, ``predict_i2v.py`` and ``app.py``.

A model is a PixArt diffusers folder under ``models/Diffusion_Transformer`` plus a motion-module file
(``models/Motion_Module``), optionally a personalized base checkpoint and a LoRA
(``models/Personalized_Model``). A model folder may carry ``easyanimate_defaults.yaml`` (its own
size, frame count, sampler, motion module ...) and ``easyanimate_config.yaml`` (its model yaml);
those become the defaults when that model is used.

Generation defaults live in one place, :class:`GenerationRequest`: its field defaults are the original
v1 scripts' settings, a model folder overrides them (:class:`ModelDefaults`), and the command line or
the UI override those (:meth:`GenerationRequest.overridden`).

An inpaint model (image-to-video, inpainting, extension) is selected and loaded the same way; what it keeps
from the user's files is a :class:`KnownContent`. v1 released no inpaint weights, so without an explicit
model the shipped shapes inpaint model is used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import (
    MODEL_CONFIG_FILE,
    MODEL_DEFAULTS_FILE,
    V1_VIDEO_CONFIG,
    ConfigError,
    load_config,
    transformer_kwargs_for_model,
)
from .devices import best_device
from .files import NumberedOutput
from .lora import LoraMerger
from .memory import MEMORY_MODES, estimate_generation_memory
from .models import Transformer3DModel, WeightLoadError
from .pipelines import EasyAnimateInpaintPipeline, EasyAnimatePipeline
from .pipelines.pipeline_easyanimate_inpaint import LONG_VIDEO_MODES, fit_frames
from .schedulers import SAMPLER_NAMES, build_scheduler, switch_sampler
from .video_io import IMAGE_EXTENSIONS, probe_image, probe_video, read_image, read_video_frames, save_image, save_video

logger = logging.getLogger(__name__)

MODELS_DIR = Path("models")
RELEASED_MODEL = "Diffusion_Transformer/PixArt-XL-2-512x512"
RELEASED_MOTION_MODULE = "Motion_Module/easyanimate_v1_mm.safetensors"
RELEASED_CONFIG = V1_VIDEO_CONFIG
# The shipped demo model: what runs when the released weights are absent (it carries its own defaults).
DEMO_MODEL = "Diffusion_Transformer/EasyAnimate-Shapes-Demo"
DEMO_MOTION_MODULE = "Motion_Module/easyanimate_shapes_mm.safetensors"
DEMO_LORA = "Personalized_Model/easyanimate_shapes_dark_lora.safetensors"  # its dark-background style
TINY_MODEL = "Diffusion_Transformer/tiny-easyanimate"  # written by easyanimate.tiny.write_tiny_model (random weights)
# The shipped inpaint demo model (image-to-video, inpainting, extension): v1 released no inpaint weights.
DEMO_INPAINT_MODEL = "Diffusion_Transformer/EasyAnimate-Shapes-Inpaint"
DEFAULTS_FILE = MODEL_DEFAULTS_FILE
CONFIG_FILE = MODEL_CONFIG_FILE

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

_DOWNLOADS = "https://pai-aigc-photog.oss-cn-hangzhou.aliyuncs.com/easyanimate"
MODEL_ZOO = (
    # (where it goes, size, what, download address)
    ("models/Diffusion_Transformer/PixArt-XL-2-512x512/", "11.4 GB tar",
     "PixArt-XL-2-512x512 diffusers folder (transformer, vae, text_encoder, tokenizer, scheduler)",
     f"{_DOWNLOADS}/Diffusion_Transformer/PixArt-XL-2-512x512.tar"),
    ("models/Motion_Module/easyanimate_v1_mm.safetensors", "4.1 GB",
     "EasyAnimate v1 motion module, trained with 80 frames at 12 fps",
     f"{_DOWNLOADS}/Motion_Module/easyanimate_v1_mm.safetensors"),
    ("models/Personalized_Model/easyanimate_portrait.safetensors", "2.3 GB", "portrait base checkpoint (optional)",
     f"{_DOWNLOADS}/Personalized_Model/easyanimate_portrait.safetensors"),
    ("models/Personalized_Model/easyanimate_portrait_lora.safetensors", "654 MB", "portrait LoRA (optional)",
     f"{_DOWNLOADS}/Personalized_Model/easyanimate_portrait_lora.safetensors"),
)


MAX_STEPS = 1000
"""Denoising steps beyond the 1000 training timesteps repeat timesteps and only cost time."""
MAX_SEED = 2**63 - 1


class MissingWeightsError(FileNotFoundError):
    """The weights a generation needs are not where they were expected."""


def model_zoo_text() -> str:
    """The model-zoo table as plain text, for error messages and ``--help``."""
    return "\n".join(f"  {path}  ({size}): {what}\n    {url}" for path, size, what, url in MODEL_ZOO)


# ------------------------------------------------------------------------------------------------
# What to generate


@dataclass
class GenerationRequest:
    """One video to generate, and the one source of generation defaults.

    The field defaults are the original v1 scripts' (DPM++, 30 steps, guidance 6.0, seed 43, 512x512,
    80 frames at 12 fps, LoRA weight 0.55); a model folder's ``easyanimate_defaults.yaml`` overrides
    them. ``seed`` None or -1 draws a random seed (the one used is recorded).
    """

    prompt: str = DEFAULT_PROMPT
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
    """temporal window for videos longer than it (None: the motion module sees the whole video)"""
    context_overlap: int | None = None
    """frames shared by consecutive windows (None: the pipeline's default, a quarter of the window)"""
    lora_weight: float = 0.55
    """multiplier of the LoRA merged into the weights, if one is"""
    v1_sampler_quirks: bool = False
    """PNDM's Runge-Kutta warm-up and DDIM's latent clipping, as the original had them (see schedulers.py)"""
    long_video: str = "windows"
    """inpaint models: videos longer than context_frames in temporal windows, or by repeated "extension" (chunks of
    context_frames, each starting from the last context_overlap frames made)"""
    keep_known: bool = True
    """inpaint models: put the known latents back after every step (the known content comes out as the VAE's
    reconstruction of it); False leaves it to the model"""

    def overridden(self, **values: Any) -> GenerationRequest:
        """A copy with the given fields replaced; a value of None keeps this request's value."""
        return dataclasses.replace(self, **{name: value for name, value in values.items() if value is not None})

    def resolved_seed(self) -> int:
        if self.seed is None or self.seed < 0:
            return random.SystemRandom().randint(0, 2**31 - 1)
        return self.seed

    def validate(self, model: EasyAnimatePipeline | ModelLimits) -> None:
        """Raise a ValueError that names the setting and says what would be right for this model.

        ``model`` is a loaded pipeline, or the :class:`ModelLimits` of a selection, read from its config
        files, so that settings are checked before any weight is loaded.
        """
        limits = model if isinstance(model, ModelLimits) else ModelLimits.of_pipeline(model)
        check_sampler(self.sampler)
        for name in ("steps", "frames", "height", "width", "fps"):
            if not _is_whole(getattr(self, name)):
                raise ValueError(f"{name} must be a whole number, got {getattr(self, name)!r}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be from 1 to {MAX_STEPS} (the diffusion has {MAX_STEPS} timesteps), "
                             f"got {self.steps}")
        if self.sampler == "PNDM" and self.v1_sampler_quirks and self.steps < 4:
            raise ValueError(f"steps={self.steps}: PNDM with its Runge-Kutta warm-up needs at least 4 steps")
        if self.fps < 1:
            raise ValueError(f"fps must be a positive whole number, got {self.fps}")
        if self.seed is not None and not (_is_whole(self.seed) and -1 <= self.seed <= MAX_SEED):
            raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED}, or -1 for a random one, "
                             f"got {self.seed!r}")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("the prompt is empty: say what the video should show")
        if not isinstance(self.negative_prompt, str):
            raise ValueError(f"the negative prompt must be text, got {self.negative_prompt!r}")
        for name in ("guidance_scale", "lora_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0 (1 or less disables guidance), got {self.guidance_scale}")
        m = limits.pixel_multiple
        if self.height < m or self.width < m or self.height % m or self.width % m:
            raise ValueError(f"height and width must be positive multiples of {m} pixels for this model, got "
                             f"{self.width}x{self.height} (e.g. {max(m, self.width // m * m)}x"
                             f"{max(m, self.height // m * m)})")
        if self.frames < 1:
            raise ValueError(f"frames must be at least 1, got {self.frames}")
        if self.long_video not in LONG_VIDEO_MODES:
            raise ValueError(f"long_video must be one of {', '.join(LONG_VIDEO_MODES)}, got {self.long_video!r}")
        if self.long_video == "extension" and not limits.inpaint:
            raise ValueError("long videos by extension need an inpaint model (each chunk starts from known frames); "
                             "a text-to-video model makes long videos in temporal windows")
        self._validate_window(limits)

    def warnings(self, made_for: GenerationRequest) -> list[str]:
        """What to expect when this request is far from what the model makes (``made_for``: its defaults).

        These are not errors: the model runs, but far outside its training it repeats or smears content
        and its motion stalls, which looks like a bug when nothing says so.
        """
        said = []
        area, usual = self.height * self.width, made_for.height * made_for.width
        if area > 4 * usual or 4 * area < usual:
            said.append(f"{self.width}x{self.height} is far from the {made_for.width}x{made_for.height} this model "
                        f"makes: expect {'repeated or striped' if area > usual else 'blurred'} content")
        window = self.context_frames or made_for.context_frames
        if window is None and self.frames > 2 * made_for.frames:
            said.append(f"{self.frames} frames is more than twice the {made_for.frames} this model makes: its motion "
                        f"may stall or drift; a temporal window (--context-frames {made_for.frames}) keeps it")
        return said

    def _validate_window(self, limits: ModelLimits) -> None:
        table = limits.position_table
        if self.context_frames is None:
            if table is not None and self.frames > table:
                raise ValueError(f"frames={self.frames} exceeds the {table} frames of the motion module's position "
                                 f"table; generate at most {table} frames, or longer videos in temporal windows "
                                 "(context_frames, e.g. the length the model was trained on)")
            return
        if not _is_whole(self.context_frames) or self.context_frames < 1:
            raise ValueError(f"the temporal window (context_frames) must be a whole number >= 1, "
                             f"got {self.context_frames!r}")
        if not limits.has_motion_module and self.long_video == "windows":
            raise ValueError("temporal windows need motion modules; this model attends over the whole clip")
        overlap = self.context_overlap if self.context_overlap is not None else self.context_frames // 4
        if not _is_whole(overlap) or not 0 <= overlap < self.context_frames:
            raise ValueError(f"the window overlap must be from 0 to one less than the window, got window "
                             f"{self.context_frames}, overlap {overlap!r}")
        if self.long_video == "extension" and overlap < 1:
            raise ValueError("long videos by extension start each chunk from the last context_overlap frames: "
                             "give an overlap of at least 1")
        if table is not None and self.context_frames > table:
            raise ValueError(f"the temporal window of {self.context_frames} frames exceeds the {table} frames of "
                             "the motion module's position table")


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelLimits:
    """What a model accepts, known from its config files without reading a weight.

    ``pixel_multiple``: height and width must be multiples of it (patch size x grid block size x VAE
    downsampling: 32 for the released model); ``position_table``: frames the motion module's position
    table covers (None without one); ``trained_size``: the pixel size the transformer is configured for.
    """

    pixel_multiple: int
    position_table: int | None
    trained_size: int
    has_motion_module: bool
    inpaint: bool = False
    """an inpaint model (latents, mask and masked-video latents in): image-to-video, inpainting, extension"""

    @classmethod
    def of_configs(cls, transformer_config: Mapping[str, Any], vae_scale_factor: int) -> ModelLimits:
        from .models.transformer3d import _latent_channels, inpaint_in_channels

        c = dict(transformer_config)
        motion = c.get("basic_block_type", "motionmodule") == "motionmodule"
        kwargs = c.get("motion_module_kwargs") or {}
        grid = kwargs.get("block_size", 1) if motion and c.get("motion_module_type") == "VanillaGrid" else 1
        table = kwargs.get("temporal_position_encoding_max_len") if motion and kwargs.get(
            "temporal_position_encoding") else None
        channels = c.get("in_channels", 4)
        inpaint = channels == inpaint_in_channels(_latent_channels(channels, c.get("out_channels", 8)))
        return cls(c.get("patch_size", 2) * grid * vae_scale_factor, table,
                   c.get("sample_size", 64) * vae_scale_factor, motion, inpaint)

    def check_kind(self, model: Path, inpaint: bool) -> None:
        """Raise a ValueError when the model is not the kind a script needs (text-to-video, or inpaint)."""
        if inpaint and not self.inpaint:
            raise ValueError(f"{model} is a text-to-video model; image-to-video, inpainting and extension need an "
                             f"inpaint model (e.g. models/{DEMO_INPAINT_MODEL}); for text-to-video use predict_t2v.py")
        if not inpaint and self.inpaint:
            raise ValueError(f"{model} is an inpaint model (image-to-video, inpainting, extension): use predict_i2v.py")

    @classmethod
    def of_pipeline(cls, pipeline: EasyAnimatePipeline) -> ModelLimits:
        return cls.of_configs(pipeline.transformer.config, pipeline.vae_scale_factor)

    @classmethod
    def of_selection(cls, selection: ModelSelection) -> ModelLimits:
        """Read from the selection's ``transformer/config.json``, model yaml and ``vae/config.json``."""
        folder = selection.model
        try:
            transformer = json.loads((folder / "transformer" / "config.json").read_text())
            vae = json.loads((folder / "vae" / "config.json").read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot read the model's configs in {folder}: {error}") from error
        extras = load_config(selection.config).transformer_additional_kwargs
        if extras is not None:
            transformer.update(dataclasses.asdict(extras))
        return cls.of_configs(transformer, 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1))


def check_sampler(name: str) -> str:
    if name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLER_NAMES)}")
    return name


@dataclass
class ModelDefaults(GenerationRequest):
    """What a model folder's ``easyanimate_defaults.yaml`` says: its generation defaults and its files.

    Every :class:`GenerationRequest` field, plus ``config`` (relative to the model folder) and
    ``motion_module`` and ``lora`` (relative to the models folder).
    """

    config: str | None = None
    motion_module: str | None = None
    lora: str | None = None

    @property
    def request(self) -> GenerationRequest:
        """The generation defaults alone."""
        return GenerationRequest(**{f.name: getattr(self, f.name) for f in dataclasses.fields(GenerationRequest)})


def read_model_defaults(model_dir: Path) -> ModelDefaults:
    """The defaults stored with a model, or the original v1 defaults when it has none."""
    path = Path(model_dir) / DEFAULTS_FILE
    if not path.is_file():
        return ModelDefaults()
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelDefaults), OmegaConf.load(path)))
    except OmegaConfBaseException as error:
        raise ConfigError(f"invalid {path}: {error}") from error


# ------------------------------------------------------------------------------------------------
# Which weights


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
                 lora: str | Path | None = None, use_motion_module: bool = True,
                 inpaint: bool = False) -> ModelSelection:
    """Resolve what to load, falling back to the shipped demo model when the released weights are absent.

    With ``inpaint`` the default is the shipped inpaint demo model (v1 released no inpaint weights).
    Raises :class:`MissingWeightsError` listing every expected path (and the model zoo) when
    something is missing; nothing has been loaded or written at that point.
    """
    models_dir = Path(models_dir)
    explicit = model is not None
    if not explicit and not models_dir.is_dir():
        raise MissingWeightsError(
            f"no models folder at {models_dir.resolve()} (it is looked up from the current folder, {Path.cwd()}): "
            "run from the repository root, or pass --models-dir with the path of the repository's models/ folder, "
            f"which holds the shipped demo model ({DEMO_INPAINT_MODEL if inpaint else DEMO_MODEL}) and is where the "
            "released weights go (model zoo):\n"
            + model_zoo_text())
    model_dir = Path(model) if explicit else models_dir / (DEMO_INPAINT_MODEL if inpaint else RELEASED_MODEL)
    if not explicit and not inpaint and not model_dir.is_dir():
        fallback = next((models_dir / m for m in (DEMO_MODEL, TINY_MODEL) if (models_dir / m).is_dir()), None)
        if fallback is not None:
            logger.warning("released weights not found at %s; using %s and its own defaults", model_dir, fallback)
            model_dir = fallback
    defaults = read_model_defaults(model_dir) if model_dir.is_dir() else ModelDefaults()
    if config is None:
        config = model_dir / defaults.config if defaults.config else RELEASED_CONFIG
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
    """Raise naming every file the selection needs that is not there (nothing has been read yet)."""
    if not selection.config.is_file():
        raise ConfigError(f"config file not found: {selection.config} (expected a yaml such as "
                          "config/easyanimate_video_motion_module_v1.yaml)")
    missing = []
    if not (selection.model / "transformer" / "config.json").is_file():
        missing.append(f"{selection.model}/ (a PixArt diffusers folder with transformer/, vae/, text_encoder/, "
                       "tokenizer/)")
    for label, path in (("motion module", selection.motion_module),
                        ("transformer checkpoint", selection.transformer_path), ("LoRA", selection.lora)):
        if path is not None and path.is_dir():
            raise WeightLoadError(f"{path} is a folder; the {label} is a file (e.g. a .safetensors file in it)")
        if path is not None and not path.is_file():
            missing.append(f"{path} ({label})")
    if missing:
        raise MissingWeightsError(f"missing weights: {'; '.join(missing)}. Download them into place "
                                  "(model zoo):\n" + model_zoo_text())


# ------------------------------------------------------------------------------------------------
# Loading


def build_transformer(selection: ModelSelection) -> Transformer3DModel:
    """The selection's video transformer on the CPU (2D base, personalized checkpoint, motion module)."""
    config = load_config(selection.config)
    return Transformer3DModel.from_pretrained_2d(
        selection.model, subfolder="transformer", transformer_additional_kwargs=config.transformer_additional_kwargs,
        transformer_path=selection.transformer_path, motion_module=selection.motion_module)


def load_pipeline(selection: ModelSelection, sampler: str = "DPM++", device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32, memory_mode: str = "none") -> EasyAnimatePipeline:
    """Load the pipeline in the original order: 2D base, personalized checkpoint, motion module, VAE, T5.

    An inpaint model gives an :class:`~easyanimate.pipelines.EasyAnimateInpaintPipeline`, any other an
    :class:`~easyanimate.pipelines.EasyAnimatePipeline`.

    The scheduler is the sampler ``sampler`` built from the model yaml's ``noise_scheduler_kwargs``;
    :func:`set_sampler` switches it later, keeping that noise schedule.
    """
    device = torch.device(device) if device is not None else best_device()
    if memory_mode not in MEMORY_MODES:
        raise ValueError(f"unknown memory mode {memory_mode!r}; valid: {', '.join(MEMORY_MODES)}")
    if memory_mode in ("model_cpu_offload", "sequential_cpu_offload") and device.type == "cpu":
        raise ValueError(f"memory mode {memory_mode!r} moves weights between the CPU and an accelerator; "
                         "on a CPU-only run use 'none'")
    config = load_config(selection.config)
    transformer = build_transformer(selection)
    if selection.motion_module is None and transformer.has_motion_module:
        logger.warning("no motion module: the motion modules are identities, so every frame is generated "
                       "independently (no temporal coherence)")
    if transformer.dtype != dtype:
        transformer = transformer.to(dtype)
    pipeline_class = EasyAnimateInpaintPipeline if transformer.is_inpaint else EasyAnimatePipeline
    pipeline = pipeline_class.from_pretrained(
        str(selection.model), transformer=transformer, scheduler=build_scheduler(sampler, config.scheduler_kwargs()),
        dtype=dtype)
    pipeline.set_progress_bar_config(desc="denoising")
    apply_memory_mode(pipeline, device, memory_mode)
    return pipeline


def apply_memory_mode(pipeline: EasyAnimatePipeline, device: torch.device, memory_mode: str) -> None:
    """Put the pipeline's models where ``memory_mode`` (a key of :data:`MEMORY_MODES`) keeps them."""
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


def set_sampler(pipeline: EasyAnimatePipeline, sampler: str, v1_quirks: bool = False) -> None:
    """Swap the scheduler by name (the original's table), keeping the current noise schedule."""
    pipeline.scheduler = switch_sampler(pipeline.scheduler, check_sampler(sampler), v1_quirks=v1_quirks)


def apply_lora(pipeline: EasyAnimatePipeline, merger: LoraMerger | None, lora: Path | None,
               weight: float) -> LoraMerger:
    """Merge ``lora`` at ``weight`` (or restore the base when None); exact, however often switched."""
    merger = merger or LoraMerger(pipeline.transformer, pipeline.text_encoder)
    if lora is None:
        merger.unmerge()
    else:
        merger.merge(lora, multiplier=weight)
    return merger


# ------------------------------------------------------------------------------------------------
# The memory a setting needs


def read_model_configs(selection: ModelSelection) -> dict[str, dict[str, Any]]:
    """The selection's ``transformer`` (its ``config.json`` plus the model yaml's kwargs), ``text_encoder`` and
    ``vae`` configs, read from the folder without a weight."""
    configs = {}
    for name in ("transformer", "text_encoder", "vae"):
        path = selection.model / name / "config.json"
        try:
            configs[name] = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot read {path}: {error}") from error
    extras = load_config(selection.config).transformer_additional_kwargs
    configs["transformer"].update(transformer_kwargs_for_model(extras))
    return configs


def device_free_memory(device: torch.device) -> int | None:
    """Bytes this process could use on ``device``: free memory plus what it holds already (CUDA: the caching
    allocator's reserve; CPU: its resident set, which holds the loaded weights); None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device)
    if device.type == "cpu":
        import psutil  # a dependency of accelerate

        return psutil.virtual_memory().available + psutil.Process().memory_info().rss
    return None


@dataclass(frozen=True)
class MemoryAdvice:
    """What a setting needs on a device, computed before anything is loaded (:func:`estimate_memory`).

    ``needed`` and ``by_mode`` (what each memory mode would need) are bytes: on an accelerator the computed peak plus
    the CUDA context margin (:attr:`easyanimate.memory.MemoryEstimate.total_bytes`); on a CPU the computed peak
    with every model in memory, whatever the mode. ``available``: :func:`device_free_memory`.
    """

    needed: int
    available: int | None
    device: str
    memory_mode: str
    by_mode: dict[str, int] = field(default_factory=dict)

    @property
    def enough(self) -> bool:
        """False only when the device is known to have less than the setting needs."""
        return self.available is None or self.needed <= self.available

    def summary(self) -> str:
        """One line: what the setting needs, and what the device has."""
        where = "of memory" if self.device == "cpu" else f"in memory mode {self.memory_mode}"
        has = f" ({_size(self.available)} available)" if self.available is not None else ""
        return f"This setting needs about {_size(self.needed)} {where} on {self.device}{has}."

    def warning(self) -> str | None:
        """What to do when the device has less than the setting needs (None when it has enough, or cannot say)."""
        if self.enough:
            return None
        fitting = [f"{mode} ({_size(need)})" for mode, need in self.by_mode.items()
                   if mode != self.memory_mode and need <= self.available]
        modes = f"; the memory mode {' or '.join(fitting)} would fit" if fitting else ""
        return (f"{self.device} has {_size(self.available)} available but this setting needs about "
                f"{_size(self.needed)}: it may run out of memory{modes}; fewer frames, a smaller size or a temporal "
                "window need less.")


def _size(count: int) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 10**9 else f"{count / 1e6:.0f} MB"


def estimate_memory(selection: ModelSelection, request: GenerationRequest, device: torch.device, dtype: torch.dtype,
                    memory_mode: str = "none") -> MemoryAdvice:
    """The memory ``request`` needs with ``selection`` on ``device``: ``estimate_generation_memory`` from the
    selection's own configs (no weight is read). About 1 s for the released model on one CPU core, then cached per
    config and shape."""
    configs = read_model_configs(selection)

    def need(mode: str) -> int:
        estimate = estimate_generation_memory(
            configs["transformer"], request.height, request.width, request.frames, dtype, mode,
            context_frames=request.context_frames, context_overlap=request.context_overlap,
            guidance=request.guidance_scale > 1, text_encoder_config=configs["text_encoder"], vae_config=configs["vae"])
        return estimate.peak_bytes if device.type == "cpu" else estimate.total_bytes

    if device.type == "cpu":  # one memory holds every model: the mode moves nothing
        return MemoryAdvice(need("none"), device_free_memory(device), "cpu", memory_mode)
    by_mode = {mode: need(mode) for mode in MEMORY_MODES}
    return MemoryAdvice(by_mode[memory_mode], device_free_memory(device), str(device), memory_mode, by_mode)


# ------------------------------------------------------------------------------------------------
# Generating and saving


def generate(pipeline: EasyAnimatePipeline, request: GenerationRequest, seed: int,
             callback_on_step_end=None, known: KnownContent | None = None) -> torch.Tensor:
    """Run the pipeline with the request's sampler; returns the video ``(3, F, H, W)`` in [0, 1] on the CPU.

    With ``known`` (an inpaint pipeline) the video keeps that content; an extension of a video is returned
    whole: the video's frames before the known last ones, then the generated frames.
    """
    set_sampler(pipeline, request.sampler, request.v1_sampler_quirks)
    device = pipeline._execution_device
    generator = torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(seed)
    inputs = known.pipeline_inputs() if known is not None else {}
    extra = {"long_video": request.long_video, "keep_known": request.keep_known} if known is not None else {}
    output = pipeline(prompt=request.prompt, negative_prompt=request.negative_prompt,
                      num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
                      height=request.height, width=request.width, video_length=request.frames,
                      generator=generator, output_type="pt", callback_on_step_end=callback_on_step_end,
                      context_frames=request.context_frames, context_overlap=request.context_overlap,
                      **inputs, **extra)
    video = output.videos[0]
    if known is not None and known.extend is not None:
        earlier = known.earlier_frames()
        if len(earlier):
            earlier = fit_frames(earlier, request.height, request.width, "video")
            video = torch.cat([earlier.transpose(0, 1), video], dim=1)
    return video


@dataclass
class KnownContent:
    """What an inpaint model keeps, from files: ``predict_i2v.py``'s ``--image``, ``--end-image``, ``--video``,
    ``--mask``, ``--box`` and ``--extend``.

    * image-to-video: ``image`` is the first frame, ``end_image`` (optional) the last;
    * inpainting: ``video`` with ``mask`` (an image, or a video of its frame count: white is generated; the
      video's size) or ``box`` ``(left, top, right, bottom)`` in pixels of the generated video;
    * extension: ``video`` and ``extend`` k: its last k frames start the generated frames.

    :meth:`check` reads only headers, so that a wrong file is refused before any weight is loaded.
    """

    image: Path | None = None
    end_image: Path | None = None
    video: Path | None = None
    mask: Path | None = None
    box: tuple[int, int, int, int] | None = None
    extend: int | None = None

    def check(self) -> int | None:
        """Raise a ValueError (an OSError for unreadable files) that says what is wrong; returns the frame count of
        ``video`` (None without one)."""
        if (self.image is None) == (self.video is None):
            raise ValueError("give an image (--image, image-to-video) or a video (--video with --mask or --box to "
                             "inpaint it, or --extend to continue it): exactly one")
        if self.end_image is not None and self.image is None:
            raise ValueError("--end-image goes with --image (first-and-last-frame generation)")
        if self.image is not None:
            for path in (self.image, self.end_image):
                if path is not None:
                    probe_image(path)
            return None
        given = probe_video(self.video).num_frames
        ways = [name for name, value in (("--mask", self.mask), ("--box", self.box), ("--extend", self.extend))
                if value is not None]
        if len(ways) != 1:
            raise ValueError(f"a video is inpainted (--mask or --box) or extended (--extend): give one of them, got "
                             f"{', '.join(ways) or 'none'}")
        if self.extend is not None and not 1 <= self.extend <= given:
            raise ValueError(f"--extend {self.extend}: the known frames must be from 1 to the video's {given} frames")
        if self.mask is not None:
            self._check_mask(given)
        return given

    def _check_mask(self, frames: int) -> None:
        size = probe_video(self.video)
        if self.mask.suffix.lower() in IMAGE_EXTENSIONS:
            (height, width), count = probe_image(self.mask), 1
        else:
            info = probe_video(self.mask)
            (height, width), count = (info.height, info.width), info.num_frames
        if (height, width) != (size.height, size.width):
            raise ValueError(f"the mask {self.mask} is {width}x{height} pixels, the video {size.width}x{size.height}: "
                             "give a mask of the video's size (white where the video is to be generated)")
        if count not in (1, frames):
            raise ValueError(f"the mask {self.mask} has {count} frames, the video {frames}: give one mask image for "
                             "all frames, or a mask video with one frame per frame")

    def check_box(self, width: int, height: int) -> None:
        """The box must lie inside the generated video."""
        if self.box is None:
            return
        left, top, right, bottom = self.box
        if not (0 <= left < right <= width and 0 <= top < bottom <= height):
            raise ValueError(f"--box {left} {top} {right} {bottom} must lie inside the {width}x{height} video to "
                             "generate (left < right, top < bottom)")

    def pipeline_inputs(self) -> dict[str, Any]:
        """The inpaint pipeline's keyword arguments, read from the files."""
        if self.image is not None:
            inputs = {"image": read_image(self.image)}
            if self.end_image is not None:
                inputs["end_image"] = read_image(self.end_image)
            return inputs
        frames = read_video_frames(self.video)
        if self.extend is not None:
            return {"video": frames[len(frames) - self.extend:]}
        inputs = {"video": frames}
        if self.box is not None:
            inputs["box"] = self.box
        if self.mask is not None:
            inputs["mask_video"] = (read_image(self.mask) if self.mask.suffix.lower() in IMAGE_EXTENSIONS
                                    else read_video_frames(self.mask))
        return inputs

    def earlier_frames(self) -> torch.Tensor:
        """With ``extend``: the video's frames before the known last ones, ``(F, 3, H, W)`` in [0, 1]."""
        frames = read_video_frames(self.video)
        return torch.from_numpy(frames[: len(frames) - self.extend]).permute(0, 3, 1, 2).float() / 255

    def record(self) -> dict[str, Any]:
        """The fields for the JSON sidecar."""
        return {"image": _str(self.image), "end_image": _str(self.end_image), "video": _str(self.video),
                "mask": _str(self.mask), "box": list(self.box) if self.box is not None else None,
                "extend": self.extend}


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def save_result(video: torch.Tensor, output_dir: Path, record: dict[str, Any], fps: int,
                formats: tuple[str, ...] = ("mp4",)) -> list[Path]:
    """Write the video (mp4 and/or gif; png for one frame) plus one JSON sidecar with the same base name.

    Files are numbered ``00000001``, ``00000002``, ... after the highest number in the folder; the
    number is claimed first (:class:`~easyanimate.files.NumberedOutput`), so runs writing into one
    folder at once never replace each other's files, and the media files and the sidecar appear
    together or not at all. Returns the media files written.
    """
    exts = (".png",) if video.shape[1] == 1 else tuple(f".{fmt}" for fmt in formats)
    with NumberedOutput.claim(output_dir) as output:
        written = []
        for ext in exts:
            if ext == ".png":
                written.append(output.add(ext, lambda tmp: save_image(video[:, 0], tmp, fmt="png")))
            else:
                written.append(output.add(ext, lambda tmp, ext=ext: save_video(video, tmp, fps=fps, fmt=ext[1:])))
        sidecar = json.dumps({**record, "files": [p.name for p in written]}, indent=2)
        output.add(".json", lambda tmp: tmp.write_text(sidecar, encoding="utf-8"))
    return written


def run_record(request: GenerationRequest, seed: int, selection: ModelSelection, dtype: torch.dtype,
               device: torch.device, memory_mode: str) -> dict[str, Any]:
    """Everything needed to reproduce a video, as stored in its JSON sidecar."""
    return {
        **dataclasses.asdict(request), "seed": seed, "model": str(selection.model), "config": str(selection.config),
        "motion_module": str(selection.motion_module) if selection.motion_module else None,
        "transformer_path": str(selection.transformer_path) if selection.transformer_path else None,
        "lora": str(selection.lora) if selection.lora else None,
        "dtype": str(dtype).removeprefix("torch."), "device": str(device), "memory_mode": memory_mode,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }


__all__ = [
    "DEFAULT_NEGATIVE_PROMPT", "DEFAULT_PROMPT", "MEMORY_MODES", "GenerationRequest", "KnownContent", "MemoryAdvice",
    "MissingWeightsError", "ModelDefaults", "ModelSelection", "WeightLoadError", "apply_lora", "build_transformer",
    "estimate_memory", "generate", "load_pipeline", "read_model_defaults", "run_record", "save_result", "select_model",
    "set_sampler",
]
