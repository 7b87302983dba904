"""What the Gradio page drives: the models found under ``models/``, the loaded pipeline, one generation at a time.

Nothing here imports gradio, so every rule of the page can be tested on its own:

* choices come only from scanning ``<models_dir>``; a choice is a *label* (a folder or file name)
  that maps back to the path the scan found, and anything else is refused;
* seed -1 draws a random seed, and the seed used is returned and written to ``logs.json``;
* LoRA switches go through :class:`~easyanimate.lora.LoraMerger`, so "none" restores the base exactly;
* a label is resolved again when it is used: the real path (symlinks followed) must still lie inside
  ``<models_dir>``, and that real path is what gets loaded, so a file swapped for a link after the
  scan cannot bring in weights from elsewhere;
* generation holds a lock: switching weights while it runs is refused (the page then applies the
  choice at the next generation), so a running generation never sees its weights change;
* a generation can be cancelled (a ``threading.Event``): it stops at the next denoising step, writes
  nothing and frees the lock for the next request;
* image-to-video (the page's second tab) uses the same loaded pipeline with an inpaint model and a
  :class:`~easyanimate.generation.KnownContent`; each tab refuses the other's kind of model with a message.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from ..devices import best_device, resolve_dtype
from ..files import write_text
from ..generation import (
    DEFAULTS_FILE,
    DEMO_INPAINT_MODEL,
    DEMO_MODEL,
    MODELS_DIR,
    RELEASED_MODEL,
    RELEASED_MOTION_MODULE,
    GenerationRequest,
    KnownContent,
    MemoryAdvice,
    MissingWeightsError,
    ModelDefaults,
    ModelLimits,
    ModelSelection,
    apply_lora,
    build_transformer,
    estimate_memory,
    generate,
    load_pipeline,
    read_model_defaults,
    run_record,
    save_result,
    select_model,
)
from ..lora import LoraMerger
from ..models import WeightLoadError
from ..pipelines import EasyAnimatePipeline

logger = logging.getLogger(__name__)

NONE = "none"
"""The label of "nothing selected" in every dropdown; never the name of a scanned entry."""

MODEL_FOLDER = "Diffusion_Transformer"
MOTION_MODULE_FOLDER = "Motion_Module"
PERSONALIZED_FOLDER = "Personalized_Model"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
NO_MOTION_MODULE_WARNING = ("No motion module selected: every frame is generated independently "
                            "(no temporal coherence). Select one under \"Select motion module\".")
SWITCH_DEFERRED = "Busy with a generation or another switch: this choice takes effect with the next generation."


class UIError(ValueError):
    """A problem the page shows to the user as a message (the app keeps serving)."""


class BusyError(UIError):
    """A weight switch was refused because a generation is running."""


class Cancelled(UIError):
    """The generation was cancelled; nothing was written."""


@dataclass(frozen=True)
class ModelChoices:
    """One scan of ``models_dir``: label -> path, for each dropdown."""

    models: dict[str, Path] = field(default_factory=dict)
    motion_modules: dict[str, Path] = field(default_factory=dict)
    personalized: dict[str, Path] = field(default_factory=dict)


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (symlinks followed) lies inside ``root``."""
    try:
        return path.resolve().is_relative_to(root)
    except OSError:
        return False


def _scan_folder(root: Path, folder: str, want_dirs: bool) -> dict[str, Path]:
    """Entries of ``root/folder`` that resolve inside ``root``, by name (hidden entries and "none" skipped)."""
    base = root / folder
    if not base.is_dir() or not _inside(base, root):
        return {}
    found = {}
    for entry in sorted(base.iterdir()):
        if entry.name.startswith(".") or entry.name == NONE or not _inside(entry, root):
            continue
        if want_dirs and entry.is_dir():
            found[entry.name] = entry
        elif not want_dirs and entry.is_file() and entry.suffix.lower() in WEIGHT_SUFFIXES:
            found[entry.name] = entry
    return found


def scan_models(models_dir: str | Path) -> ModelChoices:
    """Scan ``Diffusion_Transformer/*/``, ``Motion_Module/*`` and ``Personalized_Model/*`` of ``models_dir``.

    Entries (or symlinks) that resolve outside ``models_dir`` are ignored.
    """
    root = Path(models_dir).resolve()
    return ModelChoices(_scan_folder(root, MODEL_FOLDER, want_dirs=True),
                        _scan_folder(root, MOTION_MODULE_FOLDER, want_dirs=False),
                        _scan_folder(root, PERSONALIZED_FOLDER, want_dirs=False))


@dataclass(frozen=True)
class WeightChoice:
    """The labels of the weights to use; :data:`NONE` (or None) means none."""

    model: str | None = NONE
    motion_module: str | None = NONE
    base_model: str | None = NONE
    lora: str | None = NONE
    lora_weight: float = GenerationRequest.lora_weight


@dataclass
class GenerationResult:
    """A finished generation: the media file (mp4, or png for one frame), the seed used and its record."""

    path: Path
    seed: int
    record: dict[str, Any]
    warnings: list[str]


@dataclass
class _Loaded:
    """What the pipeline holds now."""

    pipeline: EasyAnimatePipeline
    selection: ModelSelection
    merger: LoraMerger | None = None
    lora: tuple[Path, float] | None = None


class EasyAnimateController:
    """The loaded pipeline and its weights, switched by dropdown labels; generates and saves videos.

    Args:
        models_dir: root holding ``Diffusion_Transformer/``, ``Motion_Module/``, ``Personalized_Model/``.
        samples_dir: results go to ``<samples_dir>/Gradio-<timestamp>/sample/`` plus a ``logs.json``.
        device: default: the best available.
        dtype: ``auto`` (fp16 on accelerators, fp32 on CPU), ``fp32``, ``fp16`` or ``bf16``.
        memory_mode: a key of :data:`easyanimate.generation.MEMORY_MODES`.
    """

    def __init__(self, models_dir: str | Path = MODELS_DIR, samples_dir: str | Path = Path("samples"),
                 device: torch.device | str | None = None, dtype: str = "auto", memory_mode: str = "none") -> None:
        self.models_dir = Path(models_dir)
        self.device = torch.device(device) if device is not None else best_device()
        self.dtype = resolve_dtype(dtype, self.device)
        self.memory_mode = memory_mode
        self.output_dir = (Path(samples_dir) / time.strftime("Gradio-%Y-%m-%dT%H-%M-%S")).resolve()
        self.choices = scan_models(self.models_dir)
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None

    # ------------------------------------------------------------------------------------------
    # Choices

    def refresh(self) -> ModelChoices:
        """Rescan ``models_dir`` (after files were added or removed)."""
        self.choices = scan_models(self.models_dir)
        return self.choices

    def resolve(self, kind: str, label: str | None) -> Path | None:
        """The path the scan found for ``label`` in ``kind`` ("models", "motion_modules", "personalized").

        :data:`NONE`, None and "" give None. A label the current scan does not list raises
        :class:`UIError`; user text is never turned into a path.
        """
        if label is None or label in ("", NONE):
            return None
        where = {"models": MODEL_FOLDER, "motion_modules": MOTION_MODULE_FOLDER,
                 "personalized": PERSONALIZED_FOLDER}[kind]
        found = getattr(self.choices, kind).get(label) or getattr(self.refresh(), kind).get(label)
        if found is None:
            raise UIError(f"{label!r} is not in {self.models_dir / where}; choose one of the listed entries "
                          "(press the refresh button after adding files)")
        real = found.resolve()
        if not real.is_relative_to(self.models_dir.resolve()):
            raise UIError(f"{label!r} now points outside {self.models_dir} (to {real}); only files inside the "
                          "models folder can be used")
        return real

    def label_of(self, kind: str, path: Path | None) -> str:
        """The label of a scanned path, or :data:`NONE` when it is None or not in the scan."""
        if path is None:
            return NONE
        wanted = path.resolve()
        return next((label for label, p in getattr(self.choices, kind).items() if p.resolve() == wanted), NONE)

    def initial_choice(self) -> WeightChoice:
        """What the page starts with: the released model if it is there, else the shipped demo model (with the
        motion module and LoRA weight its defaults name), else nothing."""
        for wanted in (RELEASED_MODEL, DEMO_MODEL):
            label = self.label_of("models", self.models_dir / wanted)
            if label == NONE:
                continue
            defaults = self.model_defaults(label) or ModelDefaults()
            motion = self.label_of("motion_modules",
                                   self.models_dir / (defaults.motion_module or RELEASED_MOTION_MODULE))
            return WeightChoice(label, motion, NONE, NONE, defaults.lora_weight)
        return WeightChoice()

    def inpaint_choice(self, model: str | None = None) -> WeightChoice:
        """The image-to-video tab's weights for ``model`` (default: the shipped inpaint demo model, if present): the
        model with the motion module its defaults name; :data:`NONE` when there is no such model."""
        if model is None:
            model = self.label_of("models", self.models_dir / DEMO_INPAINT_MODEL)
        if model in (None, "", NONE):
            return WeightChoice()
        defaults = self.model_defaults(model) or ModelDefaults()
        motion = self.label_of("motion_modules", self.models_dir / defaults.motion_module) if defaults.motion_module \
            else NONE
        return WeightChoice(model, motion, NONE, NONE, defaults.lora_weight)

    def loaded_choice(self) -> WeightChoice | None:
        """The labels of what is loaded now (None when nothing is): the page goes back to them after a failed switch."""
        if self._loaded is None:
            return None
        s, lora = self._loaded.selection, self._loaded.lora
        return WeightChoice(self.label_of("models", s.model), self.label_of("motion_modules", s.motion_module),
                            self.label_of("personalized", s.transformer_path),
                            self.label_of("personalized", lora[0] if lora else None),
                            lora[1] if lora else GenerationRequest.lora_weight)

    def model_defaults(self, model: str | None) -> ModelDefaults | None:
        """The defaults a model folder carries in ``easyanimate_defaults.yaml``, or None when it has none."""
        folder = self.resolve("models", model)
        if folder is None or not (folder / DEFAULTS_FILE).is_file():
            return None
        try:
            return read_model_defaults(folder)
        except ConfigError as error:
            raise UIError(str(error)) from error

    # ------------------------------------------------------------------------------------------
    # State

    @property
    def busy(self) -> bool:
        """Whether a generation or a weight switch is running."""
        return self._lock.locked()

    @property
    def pipeline(self) -> EasyAnimatePipeline | None:
        return self._loaded.pipeline if self._loaded else None

    def describe(self) -> str:
        """One line saying what is loaded."""
        if self._loaded is None:
            return "No model loaded."
        s, lora = self._loaded.selection, self._loaded.lora
        parts = [f"model {s.model.name}", f"motion module {s.motion_module.name if s.motion_module else NONE}",
                 f"base {s.transformer_path.name if s.transformer_path else NONE}",
                 f"LoRA {f'{lora[0].name} x {lora[1]:g}' if lora else NONE}"]
        return "Loaded: " + ", ".join(parts) + f" ({self.device}, {str(self.dtype).removeprefix('torch.')})."

    @contextmanager
    def _holding(self, wait: bool) -> Iterator[None]:
        if not self._lock.acquire(blocking=wait):
            raise BusyError(SWITCH_DEFERRED)
        try:
            yield
        finally:
            self._lock.release()

    def load(self, choice: WeightChoice, wait: bool = False) -> list[str]:
        """Load the model, motion module, base checkpoint and LoRA of ``choice``; returns warnings.

        With ``wait`` False a running generation makes this raise :class:`BusyError` at once
        (nothing changes); the page then applies the choice at the next generation.
        """
        with self._holding(wait):
            return self._ensure(choice)

    def _ensure(self, choice: WeightChoice) -> list[str]:
        model = self.resolve("models", choice.model)
        motion_module = self.resolve("motion_modules", choice.motion_module)
        base = self.resolve("personalized", choice.base_model)
        lora = self.resolve("personalized", choice.lora)
        if model is None:
            raise UIError("No model selected: choose a \"Pretrained Model Path\" first "
                          f"(folders in {self.models_dir / MODEL_FOLDER}).")
        try:
            selection = select_model(self.models_dir, model=model, motion_module=motion_module, transformer_path=base,
                                     use_motion_module=motion_module is not None)
        except MissingWeightsError as error:
            raise UIError(str(error)) from error
        selection.lora = None  # merged separately, so that switching it is exact
        self._ensure_weights(selection)
        self._ensure_lora(lora, float(choice.lora_weight))
        return [NO_MOTION_MODULE_WARNING] if motion_module is None else []

    def _ensure_weights(self, selection: ModelSelection) -> None:
        """Make the pipeline hold ``selection``; a new motion module or base keeps the VAE and T5 loaded."""
        loaded = self._loaded
        if loaded is not None and _same(loaded.selection, selection, "model", "config"):
            if _same(loaded.selection, selection, "motion_module", "transformer_path"):
                return
            if self.memory_mode != "sequential_cpu_offload":  # its weights live in offload hooks: reload all
                self._reload_transformer(loaded, selection)
                return
        self._loaded = None  # free the old pipeline before the new one takes its memory
        _free_memory()
        try:
            with _out_of_memory_message("while loading the weights"):
                pipeline = load_pipeline(selection, "DPM++", self.device, self.dtype, self.memory_mode)
        except (WeightLoadError, ConfigError, OSError, ValueError) as error:
            raise UIError(f"could not load {selection.model.name}: {error}") from error
        self._loaded = _Loaded(pipeline, selection)

    def _reload_transformer(self, loaded: _Loaded, selection: ModelSelection) -> None:
        """Swap the motion module / base checkpoint in place (the VAE and T5 stay loaded)."""
        try:
            fresh = build_transformer(selection)
        except (WeightLoadError, ConfigError, OSError, ValueError) as error:
            raise UIError(f"could not load the weights: {error}") from error
        if loaded.merger is not None:
            loaded.merger.unmerge()  # its saved originals belong to the weights being replaced
        loaded.lora = None
        with _out_of_memory_message("while loading the weights"):
            loaded.pipeline.transformer.load_state_dict(fresh.state_dict())
        loaded.selection = selection

    def _ensure_lora(self, lora: Path | None, weight: float) -> None:
        """Merge ``lora`` at ``weight`` or restore the base; a LoRA that does not fit changes nothing."""
        loaded = self._loaded
        wanted = (lora, weight) if lora is not None else None
        if loaded.lora == wanted:
            return
        try:
            loaded.merger = apply_lora(loaded.pipeline, loaded.merger, lora, weight)
        except (ValueError, OSError) as error:
            raise UIError(f"could not merge the LoRA {lora.name}: {error}") from error
        loaded.lora = wanted

    def setting_problem(self, model: str | None, request: GenerationRequest) -> str | None:
        """What is wrong with ``request``'s size, frames and window for ``model`` (from its config files, nothing
        loaded), in the words a generation would refuse it with; None when it is fine or no model is chosen."""
        folder = self.resolve("models", model)
        if folder is None:
            return None
        selection = select_model(self.models_dir, model=folder, use_motion_module=False)
        try:
            request.validate(ModelLimits.of_selection(selection))
        except ValueError as error:
            return str(error)
        return None

    def memory_advice(self, model: str | None, request: GenerationRequest) -> MemoryAdvice | None:
        """What ``request`` needs with ``model`` on this device in this memory mode, from the model's config files
        (nothing is loaded; :func:`~easyanimate.generation.estimate_memory`); None without a model."""
        folder = self.resolve("models", model)
        if folder is None:
            return None
        selection = select_model(self.models_dir, model=folder, use_motion_module=False)
        return estimate_memory(selection, request, self.device, self.dtype, self.memory_mode)

    # ------------------------------------------------------------------------------------------
    # Generation

    def generate(self, choice: WeightChoice, request: GenerationRequest,
                 on_step: Callable[[int, int], None] | None = None, fps: int | None = None,
                 cancel: threading.Event | None = None, known: KnownContent | None = None) -> GenerationResult:
        """Load what ``choice`` names (waiting for a running switch), generate, save; the lock is held throughout.

        ``on_step(done, total)`` is called after every denoising step; ``fps`` defaults to the
        model's. With ``known`` (image-to-video) the model must be an inpaint model, without it a
        text-to-video model. Raises :class:`UIError` with a message for the page on bad input, missing
        weights or out-of-memory.
        """
        if known is not None:
            try:
                known.check()
            except (ValueError, OSError) as error:
                raise UIError(str(error)) from error
        with self._holding(wait=True):
            warnings = self._ensure(choice)
            if request.frames == 1:
                warnings = []
            loaded = self._loaded
            _check_kind(loaded.pipeline, choice.model, known is not None)
            request = replace(request, fps=fps or loaded.selection.defaults.request.fps,
                              lora_weight=float(choice.lora_weight))
            try:
                request.validate(loaded.pipeline)
            except ValueError as error:
                raise UIError(str(error)) from error
            warnings += request.warnings(loaded.selection.defaults.request)
            seed = request.resolved_seed()
            with _out_of_memory_message(f"at {request.width}x{request.height}, {request.frames} frames",
                                        "use a smaller size or fewer frames, or "):
                video = generate(loaded.pipeline, request, seed, _step_callback(on_step, cancel), known=known)
            selection = replace(loaded.selection, lora=loaded.lora[0] if loaded.lora else None)
            record = run_record(request, seed, selection, self.dtype, self.device, self.memory_mode)
            if known is not None:
                record.update(known.record())
            (path,) = save_result(video, self.output_dir / "sample", record, request.fps)
            self._append_log({**record, "file": str(path.relative_to(self.output_dir))})
        return GenerationResult(path, seed, record, warnings)

    def _append_log(self, record: dict[str, Any]) -> None:
        """Add a record to ``logs.json`` (a JSON list, rewritten atomically)."""
        log = self.output_dir / "logs.json"
        records = json.loads(log.read_text()) if log.is_file() else []
        records.append(record)
        write_text(log, json.dumps(records, indent=2))


def _check_kind(pipeline: EasyAnimatePipeline, model: str, image_to_video: bool) -> None:
    """Raise a :class:`UIError` when the loaded model is not the kind the tab needs."""
    inpaint = ModelLimits.of_pipeline(pipeline).inpaint
    if image_to_video and not inpaint:
        raise UIError(f"{model} is a text-to-video model: image-to-video needs an inpaint model "
                      f"(such as {DEMO_INPAINT_MODEL.split('/')[-1]}); choose one under \"Inpaint model\"")
    if not image_to_video and inpaint:
        raise UIError(f"{model} is an inpaint model: use it in the \"Image to video\" tab, or choose a "
                      "text-to-video model")


def _same(a: ModelSelection, b: ModelSelection, *fields: str) -> bool:
    return all(getattr(a, name) == getattr(b, name) for name in fields)


def _step_callback(on_step: Callable[[int, int], None] | None, cancel: threading.Event | None):
    """A ``callback_on_step_end`` that reports ``(steps done, total)`` and stops a cancelled generation."""
    if on_step is None and cancel is None:
        return None

    def callback(pipeline, step: int, timestep, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"cancelled after {step + 1} of {pipeline.num_timesteps} steps; nothing was saved")
        if on_step is not None:
            on_step(step + 1, pipeline.num_timesteps)
        return {}

    return callback


@contextmanager
def _out_of_memory_message(when: str, hint: str = "") -> Iterator[None]:
    """Turn an out-of-memory error into a page message (after freeing what can be freed)."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        _free_memory()
        raise UIError(f"Out of memory {when}: {hint}restart the app with --memory-mode model_cpu_offload "
                      "(or sequential_cpu_offload).") from error


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
