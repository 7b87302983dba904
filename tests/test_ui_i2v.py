"""The image-to-video tab of the Gradio app, through its API (gradio_client) and its controller: the start (and
end) image kept, the shared settings, the default inpaint model, and the errors that write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from easyanimate.generation import GenerationRequest, KnownContent
from easyanimate.ui import EasyAnimateController, UIError, WeightChoice

from .helpers import INPAINT, MODEL, MOTION_MODULE, decode, served_app, write_i2v_models, write_images

SMALL = {"width": 64, "height": 64, "frames": 4, "steps": 2, "sampler": "DPM++", "cfg_scale": 6.0}


@pytest.fixture(scope="module")
def i2v_models(tmp_path_factory) -> Path:
    return write_i2v_models(tmp_path_factory.mktemp("ui_i2v"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    return write_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("samples")


@pytest.fixture(scope="module")
def served(i2v_models, samples):
    with served_app(i2v_models, samples) as running:
        yield running


def call_i2v(client: Client, start, end=None, model=INPAINT, seed=7, **overrides):
    """The image-to-video endpoint, as the README documents it."""
    return client.predict(model=model, start_image=handle_file(str(start)) if start else None,
                          end_image=handle_file(str(end)) if end else None, long_video="windows",
                          prompt="a red circle moving left", negative_prompt="", seed=seed,
                          **{**SMALL, **overrides}, api_name="/generate_i2v")


def logs(samples: Path) -> list[dict]:
    (log,) = samples.glob("Gradio-*/logs.json")
    return json.loads(log.read_text())


@pytest.mark.slow
def test_api_image_to_video_writes_a_video_and_records_the_image(served, samples, images):
    _, client = served
    video, image, seed, status = call_i2v(client, images["start"], images["end"], seed=11)
    codec, frames = decode(video)
    assert codec == "h264" and len(frames) == 4 and image is None and seed == 11
    assert f"Loaded: model {INPAINT}" in status
    record = logs(samples)[-1]
    assert record["image"] and record["end_image"] and record["model"].endswith(INPAINT)
    assert (record["frames"], record["steps"]) == (4, 2)


@pytest.mark.slow
def test_api_long_video_by_extension(served, samples, images):
    _, client = served
    video, _, _, _ = client.predict(model=INPAINT, start_image=handle_file(str(images["wide"])), end_image=None,
                                    long_video="extension", prompt="a red circle", negative_prompt="", seed=1,
                                    **{**SMALL, "frames": 10}, context_frames=4, context_overlap=1,
                                    api_name="/generate_i2v")
    assert len(decode(video)[1]) == 10
    assert logs(samples)[-1]["long_video"] == "extension"


@pytest.mark.slow
def test_api_errors_are_messages_and_the_app_keeps_serving(served, samples, images):
    _, client = served
    before = set(samples.rglob("*.mp4"))
    with pytest.raises(AppError, match="No start image"):
        call_i2v(client, None)
    with pytest.raises(AppError, match="is a text-to-video model: image-to-video needs an inpaint model"):
        call_i2v(client, images["start"], model=MODEL)
    with pytest.raises(AppError):
        call_i2v(client, images["broken"])  # not an image: refused by the image box or by the controller
    with pytest.raises(AppError, match='is an inpaint model: use it in the "Image to video" tab'):
        client.predict(model=INPAINT, motion_module="none", base_model="none", lora="none", lora_alpha=0.55,
                       prompt="a red circle", negative_prompt="", seed=1, **SMALL, api_name="/generate")
    assert set(samples.rglob("*.mp4")) == before
    assert call_i2v(client, images["start"])[2] == 7


@pytest.mark.slow
def test_selecting_an_inpaint_model_applies_its_defaults(served):
    _, client = served
    sampler, steps, width, height, frames, cfg, prompt, negative, window, overlap, long_video, status = client.predict(
        model=INPAINT, prompt="", api_name="/select_inpaint_model")
    assert (sampler, steps, width, height, frames, cfg) == ("DPM++", 5, 64, 64, 8, 6.0)
    assert prompt == "a red circle moving left" and long_video == "windows" and f"model {INPAINT}" in status


def test_the_tab_starts_on_the_shipped_inpaint_model_and_generates_from_an_image(tmp_path):
    models = write_i2v_models(tmp_path)
    images = write_images(tmp_path)
    controller = EasyAnimateController(models, tmp_path / "samples", device="cpu")
    choice = controller.inpaint_choice()
    assert (choice.model, choice.motion_module) == (INPAINT, f"{INPAINT}_mm.safetensors")
    request = GenerationRequest("a red circle", negative_prompt="", steps=2, seed=3, height=64, width=64, frames=3)
    result = controller.generate(choice, request, known=KnownContent(image=images["wide"]))
    assert result.path.is_file() and result.record["image"] == str(images["wide"])
    with pytest.raises(UIError, match="is an inpaint model"):
        controller.generate(choice, request)
    with pytest.raises(UIError, match="cannot read image"):
        controller.generate(choice, request, known=KnownContent(image=images["broken"]))
    with pytest.raises(UIError, match="is a text-to-video model"):
        controller.generate(WeightChoice(MODEL, MOTION_MODULE), request, known=KnownContent(image=images["start"]))
    assert len(list((tmp_path / "samples").rglob("*.mp4"))) == 1
    assert EasyAnimateController(tmp_path / "empty", tmp_path / "s", device="cpu").inpaint_choice() == WeightChoice()
