"""Helpers shared by the test modules (they import from here, never from one another)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import av
import torch
from diffusers import PixArtTransformer2DModel

from easyanimate.models import Transformer3DModel
from easyanimate.tiny import write_tiny_model

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
