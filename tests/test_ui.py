"""The Gradio app through its API (gradio_client) and its controller: generation, errors, safety, LoRA switching."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError

from easyanimate.cli import ui as app
from easyanimate.generation import GenerationRequest, generate
from easyanimate.tiny import write_tiny_model
from easyanimate.ui import EasyAnimateController, UIError, WeightChoice, scan_models
from easyanimate.ui.controller import NO_MOTION_MODULE_WARNING, BusyError

from .helpers import LORA, MODEL, MOTION_MODULE, decode, served_app, write_ui_models

SMALL = {"width": 64, "height": 64, "frames": 4, "steps": 2, "sampler": "DPM++", "cfg_scale": 6.0}


@pytest.fixture(scope="module")
def ui_models(tmp_path_factory) -> Path:
    return write_ui_models(tmp_path_factory.mktemp("ui"))


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("samples")


@pytest.fixture(scope="module")
def served(ui_models, samples):
    with served_app(ui_models, samples) as running:
        yield running


@pytest.fixture
def videos(monkeypatch) -> list[torch.Tensor]:
    """The videos the served app generates during a test, before encoding (H.264 under load is not bit-exact)."""
    generated = []

    def recording(*args, **kwargs):
        generated.append(generate(*args, **kwargs))
        return generated[-1]

    monkeypatch.setattr("easyanimate.ui.controller.generate", recording)
    return generated


def call(client: Client, model=MODEL, motion_module=MOTION_MODULE, base_model="none", lora="none", seed=7,
         prompt="a red circle", **overrides):
    """The generate endpoint, as the README documents it."""
    return client.predict(model=model, motion_module=motion_module, base_model=base_model, lora=lora, lora_alpha=0.55,
                          prompt=prompt, negative_prompt="", seed=seed, **{**SMALL, **overrides},
                          api_name="/generate")


def logs(samples: Path) -> list[dict]:
    (log,) = samples.glob("Gradio-*/logs.json")
    return json.loads(log.read_text())


@pytest.mark.slow
def test_api_generates_a_playable_mp4_with_its_log_record(served, samples):
    _, client = served
    video, image, seed, status = call(client, seed=11, prompt="a blue square moving up")
    codec, frames = decode(video)
    assert codec == "h264" and len(frames) == 4 and frames[0].shape == (64, 64, 3)
    assert image is None and seed == 11 and "Loaded: model tiny-easyanimate" in status
    record = logs(samples)[-1]
    assert record["seed"] == 11 and record["prompt"] == "a blue square moving up"
    assert (record["width"], record["height"], record["frames"], record["steps"]) == (64, 64, 4, 2)
    assert record["motion_module"].endswith(MOTION_MODULE) and record["lora"] is None
    (saved,) = samples.glob(f"Gradio-*/{record['file']}")
    assert saved.parent.name == "sample" and len(decode(saved)[1]) == 4


@pytest.mark.slow
def test_seed_minus_one_draws_a_new_seed_each_time_and_records_it(served, samples):
    _, client = served
    seeds = [call(client, seed=-1)[2] for _ in range(2)]
    assert seeds[0] != seeds[1] and min(seeds) >= 0
    assert [r["seed"] for r in logs(samples)[-2:]] == seeds


@pytest.mark.slow
def test_one_frame_gives_an_image(served):
    _, client = served
    video, image, _, _ = call(client, frames=1)
    assert video is None and Path(image).suffix == ".png"


@pytest.mark.slow
def test_no_model_is_an_error_message_and_the_app_keeps_serving(served):
    _, client = served
    with pytest.raises(AppError, match="No model selected"):
        call(client, model="none")
    with pytest.raises(AppError, match="multiples of 32"):
        call(client, width=80)
    assert call(client)[2] == 7


@pytest.mark.slow
def test_a_wrong_weight_file_is_an_error_message_and_changes_nothing(served, videos):
    _, client = served
    call(client, seed=9)
    with pytest.raises(AppError, match="could not load the weights"):
        call(client, base_model=LORA)  # a LoRA is not a transformer checkpoint
    call(client, seed=9)
    assert torch.equal(videos[0], videos[1])


def test_out_of_memory_is_a_message_and_releases_the_lock(ui_models, tmp_path, monkeypatch):
    controller = EasyAnimateController(ui_models, tmp_path, device="cpu")
    request = GenerationRequest("a red circle", steps=2, height=64, width=64, frames=2)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr("easyanimate.ui.controller.generate", out_of_memory)
    with pytest.raises(UIError, match="Out of memory at 64x64, 2 frames"):
        controller.generate(WeightChoice(MODEL, MOTION_MODULE), request)
    assert not controller.busy and not list(tmp_path.rglob("*.mp4"))


@pytest.mark.slow
def test_no_motion_module_warns_that_frames_are_independent(served):
    _, client = served
    assert NO_MOTION_MODULE_WARNING in call(client, motion_module="none")[3]
    assert NO_MOTION_MODULE_WARNING not in call(client)[3]


@pytest.mark.slow
def test_selecting_a_model_applies_the_defaults_its_folder_carries(served):
    _, client = served
    (motion_module, lora, lora_alpha, sampler, steps, width, height, frames, cfg, prompt, negative, window, overlap,
     status) = client.predict(model=MODEL, motion_module="none", base_model="none", lora="none", lora_alpha=1.0,
                              prompt="", api_name="/select_model")
    assert motion_module == MOTION_MODULE and lora == "none" and lora_alpha == 0.55
    assert (sampler, steps, width, height, frames, cfg) == ("DPM++", 5, 64, 64, 8, 6.0)
    assert prompt == "a red circle moving left" and negative == "" and "Loaded: model tiny-easyanimate" in status
    assert window == 0  # a model without a temporal window in its defaults turns the windows off


def test_a_model_with_a_temporal_window_sets_the_window_controls():
    """The long-clip demo model's defaults carry a window: selecting it sets the window and its overlap (the
    pipeline's default overlap when the model names none); the prompt box keeps what the user typed."""
    from easyanimate.generation import GenerationRequest
    from easyanimate.ui.page import control_values

    updates = control_values(GenerationRequest(frames=64, context_frames=16, context_overlap=6), "mine")
    assert (updates["frames"], updates["context_frames"], updates["context_overlap"]) == (64, 16, 6)
    assert "prompt" not in updates
    updates = control_values(GenerationRequest(frames=64, context_frames=16), "")
    assert (updates["context_frames"], updates["context_overlap"]) == (16, 4) and updates["prompt"]


@pytest.mark.slow
def test_model_lists_hold_only_entries_inside_the_models_folder(served, ui_models):
    page, client = served
    choices = scan_models(ui_models)
    assert list(choices.models) == [MODEL]
    assert list(choices.motion_modules) == [MOTION_MODULE]
    assert list(choices.personalized) == [LORA]
    listed = {block.label: block.choices for block in page.blocks.values() if getattr(block, "choices", None)}
    assert [value for _, value in listed["Select motion module"]] == ["none", MOTION_MODULE]
    for label in ("linked_outside.safetensors", "../outside/secret.safetensors", str(ui_models.parent / "outside")):
        with pytest.raises(AppError, match="not in the list of choices"):
            call(client, motion_module=label)
    controller = EasyAnimateController(ui_models, device="cpu")
    for label in ("linked_outside.safetensors", "../outside/secret.safetensors", str(ui_models / "Motion_Module")):
        with pytest.raises(UIError, match="not in"):
            controller.resolve("motion_modules", label)


@pytest.mark.slow
def test_default_server_listens_on_127_0_0_1_only(served):
    page, _ = served
    assert app.parse_args([]).host == "127.0.0.1" and page.server_name == "127.0.0.1"
    addresses = {sock.getsockname()[0] for server in page.server.servers for sock in server.sockets}
    assert addresses == {"127.0.0.1"}


@pytest.mark.slow
def test_lora_none_after_a_lora_restores_the_exact_output(served, videos):
    _, client = served
    for lora in ("none", LORA, "none"):
        call(client, seed=5, lora=lora)
    base, with_lora, again = videos
    assert not torch.equal(base, with_lora) and torch.equal(base, again)


def test_weights_switch_exactly_and_never_during_a_generation(ui_models, tmp_path):
    controller = EasyAnimateController(ui_models, tmp_path, device="cpu")
    plain = WeightChoice(MODEL, MOTION_MODULE)
    controller.load(plain)
    transformer = controller.pipeline.transformer
    original = {k: v.clone() for k, v in transformer.state_dict().items()}
    for choice in (WeightChoice(MODEL, MOTION_MODULE, lora=LORA), WeightChoice(MODEL, "none", lora=LORA),
                   WeightChoice(MODEL, MOTION_MODULE, lora=LORA, lora_weight=1.5), plain):
        controller.load(choice)
    assert controller.pipeline.transformer is transformer
    assert all(torch.equal(v, original[k]) for k, v in transformer.state_dict().items())

    started, release = threading.Event(), threading.Event()

    def hold(done, total):
        started.set()
        release.wait(30)

    request = GenerationRequest("a red circle", negative_prompt="", steps=2, seed=3, height=64, width=64, frames=2)
    results = []
    worker = threading.Thread(target=lambda: results.append(controller.generate(plain, request, on_step=hold)))
    worker.start()
    assert started.wait(30)
    with pytest.raises(BusyError):
        controller.load(WeightChoice(MODEL, "none", lora=LORA))
    release.set()
    worker.join(30)
    assert results and results[0].warnings == [] and controller.describe().count("none") == 2  # base and LoRA
    assert all(torch.equal(v, original[k]) for k, v in transformer.state_dict().items())


@pytest.mark.slow
def test_a_long_video_with_a_temporal_window(served, samples):
    _, client = served
    video, _, _, _ = call(client, frames=12, context_frames=4, context_overlap=1)
    assert len(decode(video)[1]) == 12
    record = logs(samples)[-1]
    assert (record["frames"], record["context_frames"], record["context_overlap"]) == (12, 4, 1)



def test_size_sliders_follow_the_loaded_models_pixel_multiple():
    """A grid with block_size 4 needs multiples of 64 px: once such a model is loaded the sliders step by 64."""
    from types import SimpleNamespace

    from easyanimate.ui.page import SIZE_STEP, PageHandlers

    handlers = PageHandlers(SimpleNamespace(pipeline=None))
    assert all(update["step"] == update["minimum"] == SIZE_STEP == 32 for update in handlers.size_steps())
    handlers = PageHandlers(SimpleNamespace(pipeline=SimpleNamespace(pixel_multiple=64)))
    width, height = handlers.size_steps()
    assert (width["step"], width["minimum"], height["step"], height["minimum"]) == (64, 64, 64, 64)
    assert "value" not in width and "value" not in height


def test_the_page_starts_on_the_shipped_demo_model_when_the_released_weights_are_absent(tmp_path):
    from easyanimate.generation import DEMO_MODEL

    models = tmp_path / "models"
    write_tiny_model(models, name=DEMO_MODEL.split("/")[1])
    controller = EasyAnimateController(models, tmp_path / "samples", device="cpu")
    start = controller.initial_choice()
    assert (start.model, start.motion_module) == ("EasyAnimate-Shapes-Demo", "EasyAnimate-Shapes-Demo_mm.safetensors")
    result = controller.generate(start, GenerationRequest("a red circle", steps=2, height=64, width=64, frames=2))
    assert result.path.is_file()
    assert EasyAnimateController(tmp_path / "empty", tmp_path / "s", device="cpu").initial_choice() == WeightChoice()


def test_after_a_failed_switch_the_loaded_weights_are_what_the_page_shows(ui_models, tmp_path):
    controller = EasyAnimateController(ui_models, tmp_path, device="cpu")
    assert controller.loaded_choice() is None
    controller.load(WeightChoice(MODEL, MOTION_MODULE))
    with pytest.raises(UIError, match="could not load the weights"):
        controller.load(WeightChoice(MODEL, MOTION_MODULE, base_model=LORA))
    assert controller.loaded_choice() == WeightChoice(MODEL, MOTION_MODULE)


def test_a_listed_file_replaced_by_a_link_out_of_the_models_folder_is_refused_when_used(ui_models, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(ui_models, models, symlinks=True)
    controller = EasyAnimateController(models, tmp_path / "samples", device="cpu")
    assert "tiny-easyanimate_mm.safetensors" in controller.choices.motion_modules
    listed = models / "Motion_Module" / "tiny-easyanimate_mm.safetensors"
    outside = tmp_path / "outside.safetensors"
    shutil.move(listed, outside)
    listed.symlink_to(outside)  # swapped after the scan
    with pytest.raises(UIError, match="now points outside"):
        controller.generate(WeightChoice(MODEL, MOTION_MODULE),
                            GenerationRequest("a red circle", steps=2, height=64, width=64, frames=2))
    assert controller.pipeline is None and not controller.busy


def test_a_cancelled_generation_stops_at_the_next_step_saves_nothing_and_frees_the_lock(ui_models, tmp_path):
    from easyanimate.ui.controller import Cancelled

    controller = EasyAnimateController(ui_models, tmp_path, device="cpu")
    cancel, steps = threading.Event(), []

    def on_step(done, total):
        steps.append(done)
        cancel.set()  # the visitor cancels during the first step

    request = GenerationRequest("a red circle", steps=20, height=64, width=64, frames=2)
    with pytest.raises(Cancelled, match="cancelled after 2 of 20 steps"):
        controller.generate(WeightChoice(MODEL, MOTION_MODULE), request, on_step=on_step, cancel=cancel)
    assert steps == [1] and not controller.busy and not list(tmp_path.rglob("*.mp4"))
    assert controller.generate(WeightChoice(MODEL, MOTION_MODULE), GenerationRequest(
        "a red circle", steps=2, height=64, width=64, frames=2)).path.is_file()


@pytest.mark.slow
def test_cancelling_a_request_over_the_api_frees_the_queue_for_the_next(served, samples):
    _, client = served
    before = set(samples.rglob("*.mp4"))
    job = client.submit(model=MODEL, motion_module=MOTION_MODULE, base_model="none", lora="none", lora_alpha=0.55,
                        prompt="a long one", negative_prompt="", seed=1, **{**SMALL, "steps": 100, "frames": 128},
                        api_name="/generate")
    deadline, poll = time.monotonic() + 120, threading.Event()
    while not denoising(job.status()):  # wait until the long request is denoising (a state the test can see)
        assert time.monotonic() < deadline, job.status()
        poll.wait(0.05)
    assert job.cancel()
    started = time.monotonic()
    short = call(client, seed=2)  # would wait for the rest of the 100 steps if the cancelled worker held the lock
    waited = time.monotonic() - started
    new = set(samples.rglob("*.mp4")) - before
    assert [p.name for p in new] == [Path(short[0]).name], new  # the cancelled request wrote nothing
    assert waited < 30, waited  # the 100 steps of 128 frames take minutes here: the next request did not wait


def denoising(status) -> bool:
    return bool(status.progress_data) and status.progress_data[0].desc == "denoising"


def test_a_setting_the_model_cannot_take_is_said_beside_the_controls(ui_models, tmp_path):
    from easyanimate.ui.page import PageHandlers

    controller = EasyAnimateController(ui_models, tmp_path, device="cpu")
    page = PageHandlers(controller)
    note = page.memory(MODEL, 80, 64, 8, 6.0)
    assert note.startswith("**Check:**") and "multiples of 32" in note
    assert "**Check:**" in page.memory(MODEL, 64, 64, 300, 6.0) and "position table" in page.memory(MODEL, 64, 64,
                                                                                                   300, 6.0)
    assert "**Check:**" not in page.memory(MODEL, 64, 64, 8, 6.0)
    assert controller.pipeline is None  # nothing was loaded to say so
