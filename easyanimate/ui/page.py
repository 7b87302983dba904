"""The Gradio page: model checkpoints, generation settings, result (the layout of the original v1 UI).

The controls start at the generation defaults (:class:`~easyanimate.generation.GenerationRequest`);
selecting a model applies the defaults its folder carries. One deliberate difference: the seed starts
at -1 (a new random seed per generation, as in the original UI), where the scripts default to 43.

Two tabs choose the weights: "Text to video" (model, motion module, base, LoRA) and "Image to video" (an
inpaint model, the start image and an optional end image); the generation settings and the result below
them are shared, and the Generate button is the active tab's. Selecting a model in either tab applies the
defaults its folder carries.

Every handler turns :class:`~easyanimate.ui.controller.UIError` (and any other failure) into a
``gr.Error`` message on the page, so the app keeps serving. The generate events are the API endpoints
``/generate`` and ``/generate_i2v`` (docs/ui.md shows how to call them with ``gradio_client``).
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import random
import threading
from pathlib import Path

import gradio as gr

from ..generation import GenerationRequest, KnownContent
from ..models.motion_module import default_context_overlap
from ..pipelines.pipeline_easyanimate_inpaint import LONG_VIDEO_MODES
from ..schedulers import SAMPLER_NAMES
from .controller import NONE, BusyError, EasyAnimateController, UIError, WeightChoice

logger = logging.getLogger(__name__)

TITLE = "EasyAnimate: Generate your animation easily"
MAX_SIZE = 1024
SIZE_STEP = 32
"""Width/height slider step before a model is loaded: the released grid motion module needs multiples of 32 px
(2x2 grid of patch-2 tokens on 8x latents). Loading a model sets the step to its own pixel multiple
(patch x block_size x 8: 64 for a 4x4 grid, 16 without a grid); the pipeline checks it too."""
MAX_FRAMES = 512  # beyond the trained length, use a temporal window
MAX_SEED = 10**8


def _choices(labels) -> list[str]:
    return [NONE, *labels]


def _message(error: Exception) -> gr.Error:
    """The page message for a failure (unexpected ones are logged with their traceback)."""
    if isinstance(error, UIError):
        return gr.Error(str(error))
    logger.exception("unexpected error in the UI")
    return gr.Error(f"{type(error).__name__}: {error}")


def _whole(value: float | int | None, name: str) -> int:
    """A slider/number value as an int; refuses fractions and blanks."""
    if value is None or float(value) != int(value):
        raise UIError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def _shape_request(width, height, frames, cfg_scale, context_frames, context_overlap) -> GenerationRequest:
    """The size, frames, guidance and window the controls describe (what the memory note needs); fractions and
    blanks are refused."""
    return GenerationRequest(
        height=_whole(height, "Height"), width=_whole(width, "Width"), frames=_whole(frames, "Animation length"),
        guidance_scale=float(cfg_scale), context_frames=_whole(context_frames, "Temporal window") or None,
        context_overlap=_whole(context_overlap, "Window overlap") if context_frames else None)


def _request(prompt, negative_prompt, sampler, steps, width, height, frames, cfg_scale, seed, context_frames,
             context_overlap, v1_sampler_quirks, long_video: str = "windows") -> GenerationRequest:
    """The request the shared setting controls describe; fractions and blanks are refused."""
    return dataclasses.replace(
        _shape_request(width, height, frames, cfg_scale, context_frames, context_overlap),
        prompt=prompt or "", negative_prompt=negative_prompt or "", sampler=sampler,
        steps=_whole(steps, "Sampling steps"), seed=_whole(seed, "Seed"), v1_sampler_quirks=bool(v1_sampler_quirks),
        long_video=long_video)


def control_values(d: GenerationRequest, prompt: str) -> dict:
    """The setting controls' values for the defaults ``d`` (the prompt only when the box is empty)."""
    return {"sampler": d.sampler, "steps": d.steps, "width": d.width, "height": d.height,
            "frames": d.frames, "cfg": d.guidance_scale, "negative_prompt": d.negative_prompt,
            "long_video": d.long_video,
            "context_frames": d.context_frames or 0,  # a model without a window turns windows off
            **({"context_overlap": d.context_overlap if d.context_overlap is not None
                else default_context_overlap(d.context_frames)} if d.context_frames else {}),
            **({"prompt": d.prompt} if not prompt.strip() else {})}


def _status(controller: EasyAnimateController, warnings: list[str]) -> str:
    lines = [controller.describe(), *(f"**Warning:** {w}" for w in warnings)]
    return "\n\n".join(lines)


class PageHandlers:
    """The page's event handlers around one controller (public so that each rule can be tested without a browser)."""

    def __init__(self, controller: EasyAnimateController) -> None:
        self.c = controller

    def _load(self, choice: WeightChoice) -> str:
        """Load ``choice`` now; a running generation defers it (with a message) instead of waiting."""
        try:
            warnings = self.c.load(choice)
        except BusyError as error:
            gr.Info(str(error))
            return _status(self.c, [str(error)])
        except Exception as error:
            raise _message(error) from error
        for warning in warnings:
            gr.Warning(warning)
        return _status(self.c, warnings)

    def select_model(self, model, motion_module, base_model, lora, lora_alpha, prompt):
        """Load a model and apply the defaults its folder carries (size, frames, sampler, weights...)."""
        try:
            defaults = self.c.model_defaults(model)
        except Exception as error:
            raise _message(error) from error
        updates = {}
        if defaults is not None:
            motion_module = self._default_label("motion_modules", defaults.motion_module, motion_module)
            lora = self._default_label("personalized", defaults.lora, lora)
            lora_alpha = defaults.request.lora_weight
            updates = control_values(defaults.request, prompt)
        status = self._load(WeightChoice(model, motion_module, base_model, lora, lora_alpha)) if model != NONE else (
            _status(self.c, []))
        return (motion_module, lora, lora_alpha, *self._settings(updates), status)

    def select_inpaint_model(self, model, prompt):
        """Image-to-video tab: load an inpaint model and apply the defaults its folder carries."""
        try:
            defaults = self.c.model_defaults(model)
            choice = self.c.inpaint_choice(model)
        except Exception as error:
            raise _message(error) from error
        updates = control_values(defaults.request, prompt) if defaults is not None else {}
        status = self._load(choice) if model != NONE else _status(self.c, [])
        return (*self._settings(updates), updates.get("long_video", gr.update()), status)

    def inpaint_defaults(self, model, prompt):
        """Image-to-video tab opened: its model's defaults in the shared settings (nothing is loaded yet)."""
        try:
            defaults = self.c.model_defaults(model) if model != NONE else None
        except Exception as error:
            raise _message(error) from error
        updates = control_values(defaults.request, prompt) if defaults is not None else {}
        return (*self._settings(updates), updates.get("long_video", gr.update()))

    @staticmethod
    def _settings(updates: dict) -> tuple:
        keep = gr.update()
        return tuple(updates.get(name, keep) for name in (
            "sampler", "steps", "width", "height", "frames", "cfg", "prompt", "negative_prompt", "context_frames",
            "context_overlap"))

    def size_steps(self):
        """Width and height sliders step by the loaded model's pixel multiple (32 for v1, 64 for a 4x4 grid)."""
        pipeline = self.c.pipeline
        step = pipeline.pixel_multiple if pipeline is not None else SIZE_STEP
        return gr.update(step=step, minimum=step), gr.update(step=step, minimum=step)

    def _default_label(self, kind: str, relative: str | None, current: str) -> str:
        """The dropdown label of a defaults entry (relative to ``models_dir``) if the scan has it."""
        if relative is None:
            return current
        label = self.c.label_of(kind, self.c.models_dir / relative)
        return label if label != NONE else current

    def switch(self, model, motion_module, base_model, lora, lora_alpha):
        """Motion module, base checkpoint or LoRA changed: apply it now (when a model is loaded)."""
        if model == NONE:
            gr.Info("Please select a pretrained model path first.")
            return _status(self.c, [])
        return self._load(WeightChoice(model, motion_module, base_model, lora, lora_alpha))

    def refresh(self, model, motion_module, base_model, lora):
        """Rescan the models folder; keep each selection that is still there."""
        choices = self.c.refresh()
        keep = lambda value, labels: value if value in labels else NONE  # noqa: E731
        return (gr.update(choices=_choices(choices.models), value=keep(model, choices.models)),
                gr.update(choices=_choices(choices.motion_modules), value=keep(motion_module, choices.motion_modules)),
                gr.update(choices=_choices(choices.personalized), value=keep(base_model, choices.personalized)),
                gr.update(choices=_choices(choices.personalized), value=keep(lora, choices.personalized)))

    def refresh_inpaint(self, model):
        """Rescan the models folder for the image-to-video tab's dropdown; keep its selection if still there."""
        choices = self.c.refresh()
        return gr.update(choices=_choices(choices.models), value=model if model in choices.models else NONE)

    def restore_weights(self):
        """After a failed load: the dropdowns show what is loaded again (nothing, if nothing is)."""
        loaded = self.c.loaded_choice() or WeightChoice()
        return (loaded.model, loaded.motion_module, loaded.base_model, loaded.lora, loaded.lora_weight,
                _status(self.c, []))

    def memory(self, model, width, height, frames, cfg_scale, context_frames=0, context_overlap=0) -> str:
        """Beside the controls: what is wrong with the setting for this model, else what it needs on this device,
        with a warning when the device has less (markdown)."""
        try:
            request = _shape_request(width, height, frames, cfg_scale, context_frames, context_overlap)
            problem = self.c.setting_problem(model, request)
        except Exception as error:  # noqa: BLE001 (a note beside the controls; Generate reports it in full)
            problem = str(error)
        if problem:
            return f"**Check:** {problem}"
        summary, warning = self._memory_advice(model, request)
        return summary + (f"\n\n**Warning:** {warning}" if warning else "")

    def _memory_advice(self, model, request: GenerationRequest):
        """(what the setting needs, a warning or None), computed from the model's configs with nothing loaded. Advice
        only: it never stands in the way of a generation."""
        try:
            advice = self.c.memory_advice(model, request)
        except Exception as error:  # noqa: BLE001 (advice only)
            return f"Memory not estimated: {error}", None
        return ("", None) if advice is None else (advice.summary(), advice.warning())

    def generate(self, model: str, motion_module: str, base_model: str, lora: str, lora_alpha: float, prompt: str,
                 negative_prompt: str, sampler: str, steps: float, width: float, height: float, frames: float,
                 cfg_scale: float, seed: float, context_frames: float = 0, context_overlap: float = 0,
                 v1_sampler_quirks: bool = False, progress=gr.Progress()):  # noqa: B008 (gradio's progress idiom)
        """Generate one video (or an image for 1 frame); yields (video, image, seed used, status) once, at the end.

        The generation runs in a worker thread while this generator waits for it. When the request is
        cancelled (the Stop button, or the visitor leaves), gradio closes the generator; the worker is then
        told to stop at its next denoising step, so the next request does not wait behind it.
        """
        try:
            request = _request(prompt, negative_prompt, sampler, steps, width, height, frames, cfg_scale, seed,
                               context_frames, context_overlap, v1_sampler_quirks)
        except Exception as error:
            raise _message(error) from error
        yield from self._run(model, WeightChoice(model, motion_module, base_model, lora, lora_alpha), request, None,
                             progress)

    def generate_i2v(self, model: str, start_image: str | None, end_image: str | None, long_video: str, prompt: str,
                     negative_prompt: str, sampler: str, steps: float, width: float, height: float, frames: float,
                     cfg_scale: float, seed: float, context_frames: float = 0, context_overlap: float = 0,
                     v1_sampler_quirks: bool = False, progress=gr.Progress()):  # noqa: B008 (gradio's progress idiom)
        """Image-to-video: the start image (and the end image, if given) kept as the first (last) frame; yields
        (video, image, seed used, status) once, at the end, as :meth:`generate`."""
        try:
            if not start_image:
                raise UIError("No start image: upload the first frame under \"Start image\".")
            if model in (None, "", NONE):
                raise UIError("No inpaint model selected: choose one under \"Inpaint model\".")
            if long_video not in LONG_VIDEO_MODES:
                raise UIError(f"Longer videos must be one of {', '.join(LONG_VIDEO_MODES)}, got {long_video!r}")
            request = _request(prompt, negative_prompt, sampler, steps, width, height, frames, cfg_scale, seed,
                               context_frames, context_overlap, v1_sampler_quirks, long_video=long_video)
            known = KnownContent(image=Path(start_image), end_image=Path(end_image) if end_image else None)
            choice = self.c.inpaint_choice(model)
        except Exception as error:
            raise _message(error) from error
        yield from self._run(model, choice, request, known, progress)

    def _run(self, model: str, choice: WeightChoice, request: GenerationRequest, known: KnownContent | None,
             progress):
        """Warn when the device has less memory than ``model`` needs for the request (before the generation
        starts; it still runs, and the status repeats the warning), then generate in a worker thread while waiting
        for it (see :meth:`generate`)."""
        _, memory_warning = self._memory_advice(model, request)
        if memory_warning:
            gr.Warning(memory_warning)
        progress(0, desc="loading weights")
        cancel, outcome = threading.Event(), {}

        def work():
            try:
                outcome["result"] = self.c.generate(
                    choice, request, on_step=lambda done, total: progress((done, total), desc="denoising"),
                    cancel=cancel, known=known)
            except BaseException as error:  # handed to the waiting generator below
                outcome["error"] = error

        # The worker runs in a copy of this request's context, where gradio keeps its progress tracker.
        worker = threading.Thread(target=contextvars.copy_context().run, args=(work,), name="generate", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(timeout=0.5)  # wait for the worker; a cancelled request is closed at the yield
                if worker.is_alive():
                    yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
        finally:
            cancel.set()  # no-op once done; on cancel or disconnect the worker stops at its next step
        if "error" in outcome:
            raise _message(outcome["error"]) from outcome["error"]
        result = outcome["result"]
        for warning in result.warnings:
            gr.Warning(warning)
        is_image = result.path.suffix == ".png"
        status = (_status(self.c, result.warnings + ([memory_warning] if memory_warning else []))
                  + f"\n\nSaved {result.path} (seed {result.seed}).")
        yield None if is_image else str(result.path), str(result.path) if is_image else None, result.seed, status

    @staticmethod
    def show_result(video, image):
        """Show the image box only for a 1-frame result (the generate API returns plain values)."""
        return gr.update(visible=image is None), gr.update(visible=image is not None)


def build_ui(controller: EasyAnimateController) -> gr.Blocks:
    """The page, wired to ``controller``; launch it with ``.queue().launch(...)``."""
    h = PageHandlers(controller)
    choices = controller.choices
    start = controller.initial_choice()  # the released model if present, else the shipped demo model
    inpaint_start = controller.inpaint_choice()  # the shipped inpaint demo model, if present
    defaults = controller.model_defaults(start.model)
    d = defaults.request if defaults is not None else GenerationRequest()
    with gr.Blocks(title=TITLE, analytics_enabled=False) as page:
        gr.Markdown(f"# {TITLE}\n\nText-to-video and image-to-video with a diffusion transformer. Weights are read "
                    f"from `{controller.models_dir}`; results are saved to `{controller.output_dir}`.")
        with gr.Tabs():
            with gr.Tab("Text to video", id="t2v") as t2v_tab:
                with gr.Column(variant="panel"):
                    gr.Markdown("## 1. Model checkpoints (select pretrained model path first)")
                    with gr.Row():
                        model = gr.Dropdown(_choices(choices.models), value=start.model, label="Pretrained Model Path")
                        model_refresh = gr.Button("Refresh", scale=0, min_width=100)
                    with gr.Row():
                        motion_module = gr.Dropdown(_choices(choices.motion_modules), value=start.motion_module,
                                                    label="Select motion module")
                        motion_refresh = gr.Button("Refresh", scale=0, min_width=100)
                    with gr.Row():
                        base_model = gr.Dropdown(_choices(choices.personalized), value=NONE,
                                                 label="Select base Dreambooth model (optional)")
                        lora = gr.Dropdown(_choices(choices.personalized), value=NONE,
                                           label="Select LoRA model (optional)")
                        lora_alpha = gr.Slider(0, 2, value=d.lora_weight, step=0.05, label="LoRA alpha")
                        personalized_refresh = gr.Button("Refresh", scale=0, min_width=100)
                    status = gr.Markdown(_status(controller, []) if start.model == NONE else
                                         f"Selected {start.model}: it loads with the first generation.", label="Status",
                                         elem_id="status")
            with gr.Tab("Image to video", id="i2v") as i2v_tab:
                with gr.Column(variant="panel"):
                    gr.Markdown("## 1. Inpaint model and the frames the video keeps")
                    with gr.Row():
                        i2v_model = gr.Dropdown(_choices(choices.models), value=inpaint_start.model,
                                                label="Inpaint model", elem_id="i2v-model")
                        i2v_refresh = gr.Button("Refresh", scale=0, min_width=100)
                    with gr.Row():
                        start_image = gr.Image(label="Start image", type="filepath", sources=["upload"],
                                               height=240, elem_id="start-image")
                        end_image = gr.Image(label="End image (optional)", type="filepath", sources=["upload"],
                                             height=240, elem_id="end-image")
                    long_video = gr.Radio(list(LONG_VIDEO_MODES), value=d.long_video, label="Longer videos",
                                          info="beyond the temporal window: all frames in overlapping windows, or by "
                                               "repeated extension, each chunk starting from the last frames made")
                    i2v_status = gr.Markdown("Upload the first frame; the inpaint model loads with the first "
                                             "generation." if inpaint_start.model != NONE else
                                             "No inpaint model in the models folder.", elem_id="i2v-status")
        with gr.Column(variant="panel"):
            gr.Markdown("## 2. Configs for Generation")
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt", value=d.prompt if defaults else "")
            negative_prompt = gr.Textbox(label="Negative prompt", lines=2, value=d.negative_prompt)
            with gr.Row():
                with gr.Column():
                    with gr.Row():
                        sampler = gr.Dropdown(SAMPLER_NAMES, value=d.sampler, label="Sampling method")
                        steps = gr.Slider(1, 100, value=d.steps, step=1, label="Sampling steps")
                    width = gr.Slider(SIZE_STEP, MAX_SIZE, value=d.width, step=SIZE_STEP, label="Width")
                    height = gr.Slider(SIZE_STEP, MAX_SIZE, value=d.height, step=SIZE_STEP, label="Height")
                    frames = gr.Slider(1, MAX_FRAMES, value=d.frames, step=1, label="Animation length",
                                       info="frames; 1 gives an image")
                    cfg_scale = gr.Slider(0, 20, value=d.guidance_scale, step=0.1, label="CFG Scale")
                    with gr.Accordion("Longer videos (temporal window)", open=False):
                        context_frames = gr.Slider(0, MAX_FRAMES, value=d.context_frames or 0, step=1,
                                                   label="Temporal window",
                                                   info="frames the motion module sees at once; 0: the whole video")
                        context_overlap = gr.Slider(0, MAX_FRAMES - 1, value=d.context_overlap or 4, step=1,
                                                    label="Window overlap",
                                                    info="frames shared by consecutive windows")
                    v1_quirks = gr.Checkbox(value=d.v1_sampler_quirks, label="Samplers as in the original v1",
                                            info="PNDM's warm-up and DDIM's clipping of latents; off: every sampler "
                                                 "draws the prompted video")
                    with gr.Row():
                        seed = gr.Number(value=-1, precision=0, minimum=-1, label="Seed", info="-1: random")
                        dice = gr.Button("Random", scale=0, min_width=80)
                    with gr.Row():
                        generate = gr.Button("Generate", variant="primary", elem_id="generate")
                        generate_i2v = gr.Button("Generate from the image", variant="primary", elem_id="generate-i2v",
                                                 visible=False)
                        stop = gr.Button("Stop", variant="stop", scale=0, min_width=80, elem_id="stop")
                    memory = gr.Markdown("", elem_id="memory")
                with gr.Column():
                    video = gr.Video(label="Generated Animation", interactive=False, format="mp4", elem_id="result")
                    image = gr.Image(label="Generated Image", interactive=False, visible=False, type="filepath")
                    seed_used = gr.Number(None, label="Seed used", precision=0, interactive=False, elem_id="seed-used")

        weights = [model, motion_module, base_model, lora, lora_alpha]
        settings = [sampler, steps, width, height, frames, cfg_scale, prompt, negative_prompt, context_frames,
                    context_overlap]
        private = {"api_visibility": "private"}
        selecting = model.input(h.select_model, [*weights[:5], prompt],
                                [motion_module, lora, lora_alpha, *settings, status], api_name="select_model")
        setting = [model, width, height, frames, cfg_scale, context_frames, context_overlap]
        # one after the other: the memory note, last, tells a page (and a browser test) that the sizes are set
        selecting.then(h.size_steps, None, [width, height], **private).then(h.memory, setting, memory, **private)
        for control in setting[1:]:
            control.release(h.memory, setting, memory, **private)
        selecting.failure(h.restore_weights, None, [*weights, status], **private)
        for control in (motion_module, base_model, lora):
            control.input(h.switch, weights, status, **private).failure(h.restore_weights, None, [*weights, status],
                                                                         **private)
        lora_alpha.release(h.switch, weights, status, **private)
        for button in (model_refresh, motion_refresh, personalized_refresh):
            button.click(h.refresh, weights[:4], weights[:4], **private)
        page.load(h.refresh, weights[:4], weights[:4], **private)  # a new visitor sees the current files
        page.load(h.memory, setting, memory, **private)
        dice.click(lambda: random.randint(1, MAX_SEED), None, seed, **private)
        generating = generate.click(h.generate, [*weights, prompt, negative_prompt, sampler, steps, width, height,
                                                 frames, cfg_scale, seed, context_frames, context_overlap, v1_quirks],
                                    [video, image, seed_used, status], api_name="generate")
        generating.then(h.show_result, [video, image], [video, image], **private)

        # The image-to-video tab: its own model and Generate button, the shared settings.
        i2v_selecting = i2v_model.input(h.select_inpaint_model, [i2v_model, prompt],
                                        [*settings, long_video, i2v_status], api_name="select_inpaint_model")
        i2v_selecting.then(h.size_steps, None, [width, height], **private)
        i2v_refresh.click(h.refresh_inpaint, i2v_model, i2v_model, **private)
        page.load(h.refresh_inpaint, i2v_model, i2v_model, **private)
        # the tab's Generate button shows once its model's defaults are in the settings
        i2v_tab.select(h.inpaint_defaults, [i2v_model, prompt], [*settings, long_video], **private).then(
            lambda: (gr.update(visible=False), gr.update(visible=True)), None, [generate, generate_i2v], **private)
        t2v_tab.select(lambda: (gr.update(visible=True), gr.update(visible=False)), None, [generate, generate_i2v],
                       **private)
        generating_i2v = generate_i2v.click(
            h.generate_i2v, [i2v_model, start_image, end_image, long_video, prompt, negative_prompt, sampler, steps,
                             width, height, frames, cfg_scale, seed, context_frames, context_overlap, v1_quirks],
            [video, image, seed_used, i2v_status], api_name="generate_i2v")
        generating_i2v.then(h.show_result, [video, image], [video, image], **private)
        stop.click(None, None, None, cancels=[generating, generating_i2v], **private)
    return page
