"""Helpers shared by the test modules (they import from here, never from one another)."""

from __future__ import annotations

import json
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

import av
import numpy as np
import torch
from diffusers import PixArtTransformer2DModel

from easyanimate.generation import DEMO_INPAINT_MODEL
from easyanimate.models import Transformer3DModel
from easyanimate.tiny import write_tiny_model
from easyanimate.video_io import save_image, save_video

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"

TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
            cross_attention_dim=32, caption_channels=16, sample_size=8)
"""A 2-block PixArt transformer of width 32 (2 heads of 16)."""
TINY_MM = dict(num_attention_heads=2, num_transformer_block=1, attention_block_types=["Temporal_Self"] * 2,
               temporal_position_encoding=True, temporal_position_encoding_max_len=64, block_size=2)
"""The released motion-module settings with 2 heads and a 64-frame position table."""

# The tiny model as the UI lists it (written by easyanimate.tiny.write_tiny_model).
MODEL = "tiny-easyanimate"
MOTION_MODULE = "tiny-easyanimate_mm.safetensors"
LORA = "tiny-easyanimate_lora.safetensors"
INPAINT = DEMO_INPAINT_MODEL.split("/")[-1]
"""The inpaint demo model's folder name, under which the UI tests write a tiny inpaint model."""

EXTRAS = dict(basic_block_type="motionmodule", motion_module_type="VanillaGrid", motion_module_kwargs=TINY_MM)
"""Transformer3DModel arguments that make the tiny PixArt model a video model with a grid motion module."""

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000


def key_list(name: str) -> dict[str, list[int]]:
    """``{key: shape}`` of a vendored key list in ``tests/data`` (``v1_transformer_keys``, ``v1_lora_keys``)."""
    entries = {}
    for line in (DATA / f"{name}.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            entries[key] = [int(size) for size in shape.split(",")] if shape else []
    return entries


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter (zero-initialised projections included) random non-zero values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)


def trained_video_model(seed: int = 1) -> Transformer3DModel:
    """The tiny video model (:data:`EXTRAS`) with random weights everywhere, as a trained one would have."""
    torch.manual_seed(seed)
    model = Transformer3DModel(**TINY, **EXTRAS).eval()
    randomize(model, seed)
    return model


def tiny_pair(seed: int = 0) -> tuple[PixArtTransformer2DModel, Transformer3DModel]:
    """A tiny PixArt image model and the video model built on its weights (fresh motion modules)."""
    torch.manual_seed(seed)
    image_model = PixArtTransformer2DModel(**TINY).eval()
    video_model = Transformer3DModel(**TINY, motion_module_kwargs=TINY_MM).eval()
    missing, unexpected = video_model.load_state_dict(image_model.state_dict(), strict=False)
    assert not unexpected and all(".attn_temporal." in k for k in missing)
    return image_model, video_model


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_app(models_dir: Path, samples_dir: Path):
    """Launch the app with its default host in this process; returns the running page."""
    from easyanimate.cli import ui

    return ui.launch(["--models-dir", str(models_dir), "--samples-dir", str(samples_dir), "--device", "cpu",
                      "--port", str(free_port())], block=False)


@contextmanager
def served_app(models_dir: Path, samples_dir: Path):
    """The app running in this process (:func:`start_app`) and a ``gradio_client`` connected to it: ``(page,
    client)``; both are closed on exit."""
    from gradio_client import Client

    page = start_app(models_dir, samples_dir)
    client = Client(page.local_url, verbose=False)
    try:
        yield page, client
    finally:
        client.close()
        page.close()


def write_ui_models(root: Path) -> Path:
    """The tiny model plus entries that point outside the models folder (which the UI must not list)."""
    models = root / "models"
    paths = write_tiny_model(models)
    outside = root / "outside"
    outside.mkdir()
    shutil.copy(paths["motion_module"], outside / "secret.safetensors")
    (models / "Motion_Module" / "linked_outside.safetensors").symlink_to(outside / "secret.safetensors")
    (models / "Personalized_Model" / "escape.safetensors").symlink_to(Path("../../outside/secret.safetensors"))
    (models / "Diffusion_Transformer" / "outside-model").symlink_to(outside, target_is_directory=True)
    return models


def decode(path: str | Path) -> tuple[str, list[torch.Tensor]]:
    """The codec name and the frames of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [torch.from_numpy(frame.to_ndarray(format="rgb24")) for frame in container.decode(stream)]
        return stream.codec_context.name, frames


class RecordingBackend:
    """A ``torch.compile`` backend that runs the captured graphs as they are and counts them."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


def write_i2v_models(root: Path) -> Path:
    """A models folder with the tiny text-to-video model and a tiny inpaint model under the inpaint demo's name."""
    models = root / "models"
    write_tiny_model(models)
    write_tiny_model(models, name=INPAINT, inpaint=True)
    return models


def write_images(root: Path) -> dict[str, Path]:
    generator = np.random.default_rng(0)
    paths = {"start": root / "start.png", "end": root / "end.png", "wide": root / "wide.png",
             "broken": root / "broken.png"}
    for name, shape in (("start", (64, 64, 3)), ("end", (64, 64, 3)), ("wide", (40, 80, 3))):
        save_image(generator.integers(0, 255, shape, dtype=np.uint8), paths[name])
    paths["broken"].write_text("not an image")
    return paths


def set_slider(tab, label: str, value: int) -> None:
    """Type ``value`` into the number box of the slider labelled ``label`` (a Playwright page)."""
    box = tab.get_by_label(f"number input for {label}")
    box.fill(str(value))
    box.press("Enter")


COLOURS = {"red": (220, 40, 40), "blue": (40, 40, 220)}


def write_training_dataset(root: Path) -> Path:
    """Four 8-frame clips of a square moving right, two colours, plus two images, in the json format."""
    items = []
    for i, (name, rgb) in enumerate(list(COLOURS.items()) * 2):
        frames = np.full((8, 64, 64, 3), 30, np.uint8)
        for f in range(8):
            frames[f, 24:40, 4 + 5 * f: 20 + 5 * f] = rgb
        save_video(frames, root / "videos" / f"{i}.mp4", fps=8)
        items.append({"file_path": f"videos/{i}.mp4", "text": f"a {name} square moving right", "type": "video"})
    for i, (name, rgb) in enumerate(COLOURS.items()):
        image = np.full((64, 64, 3), 30, np.uint8)
        image[20:44, 20:44] = rgb
        save_image(image, root / "images" / f"{i}.png")
        items.append({"file_path": f"images/{i}.png", "text": f"a {name} square", "type": "image"})
    (root / "meta.json").write_text(json.dumps(items))
    (root / "videos_only.json").write_text(json.dumps([i for i in items if i["type"] == "video"]))
    (root / "images_only.json").write_text(json.dumps([i for i in items if i["type"] == "image"]))
    return root


def settings(tiny_models, dataset, out, **overrides) -> dict:
    """Training options for a few steps of the tiny model on :func:`write_training_dataset`'s data."""
    base = dict(pretrained_model_name_or_path=str(tiny_models["model"]), config_path=str(tiny_models["config"]),
                train_data_dir=str(dataset), train_data_meta=str(dataset / "videos_only.json"),
                sample_size=64, sample_n_frames=4, sample_stride=1, train_batch_size=2, max_train_steps=4,
                checkpointing_steps=1000, learning_rate=1e-3, lr_warmup_steps=0, seed=0, output_dir=str(out),
                report_to="none", precompute=True)
    return {**base, **overrides}


def run(tiny_models, dataset, out, **overrides):
    """Train with :func:`settings` in this process; returns the trainer's result."""
    from easyanimate.training.config import config_from_sources
    from easyanimate.training.trainer import train

    return train(config_from_sources(None, settings(tiny_models, dataset, out, **overrides)))


def fixed_batch_loss_drop(result) -> tuple[float, float]:
    """Mean loss of the first and of the last three steps."""
    first, last = np.mean(result.losses[:3]), np.mean(result.losses[-3:])
    return first, last
