"""Train the toy VAE of the shapes demo model on video frames.

    python -m examples.shapes.vae --train_data_meta datasets/shapes/train.json datasets/shapes/style.json \
        --output_dir output_dir/shapes/vae

The VAE is an SD-style diffusers ``AutoencoderKL`` (8x downsampling, 4 latent channels; sizes in the
``vae:`` section of ``--model_config``), trained on random crops of every frame of the listed clips with
``MSE(reconstruction) + kl_weight * KL(posterior || N(0, I))``. Afterwards its ``scaling_factor`` is set to
1 / (std of the latent means), so that scaled latents have unit variance as the diffusion model expects
(the role 0.18215 plays for the SD VAE). This is the one trainer outside ``train.py``: EasyAnimate v1
does not train its VAE. Output: a diffusers VAE folder plus ``train_vae.json`` (settings and losses).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from omegaconf import OmegaConf

from easyanimate.data import load_entries
from easyanimate.video_io import read_video_frames

from . import CONFIGS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--crop_size", type=int, default=64, help="training crop in pixels (the VAE is convolutional)")
    add("--foreground_weight", type=float, default=4.0, help="extra loss weight of pixels that are not background")
    add("--kl_weight", type=float, default=1e-4, help="weight of the mean per-element KL term")
    add("--learning_rate", type=float, default=3e-3, help="peak AdamW learning rate (cosine decay to 0)")
    add("--max_train_steps", type=int, default=1600, help="optimizer steps")
    add("--model_config", default=str(CONFIGS / "model.yaml"), help="yaml whose vae: section sizes the VAE")
    add("--output_dir", required=True, help="where the VAE folder is written")
    add("--seed", type=int, default=0, help="weights, crops and batches depend only on this seed")
    add("--train_batch_size", type=int, default=8, help="crops per step")
    add("--train_data_meta", nargs="+", required=True, help="normal-format json files of the clips")
    return parser.parse_args(argv)


def read_frames(metadata: list[str]) -> torch.Tensor:
    """Every frame of every clip listed, ``(N, 3, H, W)`` uint8."""
    frames = [read_video_frames(entry.path) for meta in metadata for entry in load_entries("normal", meta)]
    return torch.from_numpy(np.concatenate(frames)).permute(0, 3, 1, 2).contiguous()


def build_vae(model_config: str, seed: int) -> AutoencoderKL:
    sizes = OmegaConf.to_container(OmegaConf.load(model_config)["vae"])
    blocks = len(sizes["block_out_channels"])
    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks, latent_channels=4, act_fn="silu",
                         sample_size=64, **sizes)


def foreground(frames: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` bool: pixels that differ from their frame's background (the median border colour)."""
    border = torch.cat([frames[:, :, 0], frames[:, :, -1], frames[:, :, :, 0], frames[:, :, :, -1]], dim=-1)
    background = border.float().median(dim=-1).values[..., None, None]
    return ((frames.float() - background).abs().amax(dim=1, keepdim=True) > 12)


def random_crops(frames: torch.Tensor, mask: torch.Tensor, batch: int, size: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random frames, each cropped at a random place: pixels in [-1, 1] and their foreground mask."""
    index = torch.randint(len(frames), (batch,), generator=generator)
    height, width = frames.shape[-2:]
    top = torch.randint(height - size + 1, (batch,), generator=generator)
    left = torch.randint(width - size + 1, (batch,), generator=generator)
    crops = [(frames[i, :, y:y + size, x:x + size], mask[i, :, y:y + size, x:x + size])
             for i, y, x in zip(index, top, left)]
    return torch.stack([c for c, _ in crops]).float() / 127.5 - 1, torch.stack([m for _, m in crops])


@torch.no_grad()
def latent_std(vae: AutoencoderKL, frames: torch.Tensor, count: int = 512) -> float:
    """Std of the (unscaled) latent means over ``count`` evenly spaced frames."""
    picked = frames[torch.linspace(0, len(frames) - 1, min(count, len(frames))).long()].float() / 127.5 - 1
    means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in picked.split(64)])
    return means.std().item()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 8))
    torch.set_flush_denormal(True)  # tiny activations as denormals slow CPU training down tenfold
    frames = read_frames(args.train_data_meta)
    masks = foreground(frames)
    vae = build_vae(args.model_config, args.seed).train()
    print(f"{len(frames)} frames; VAE with {sum(p.numel() for p in vae.parameters()):,} parameters")
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / args.max_train_steps)))
    generator = torch.Generator().manual_seed(args.seed)
    losses, start = [], time.time()
    for step in range(1, args.max_train_steps + 1):
        pixels, mask = random_crops(frames, masks, args.train_batch_size, args.crop_size, generator)
        posterior = vae.encode(pixels).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(latents).sample
        mse = (reconstruction - pixels).square().mean()
        # The shapes cover a few percent of the pixels: weight them up so colour and edges learn early.
        weighted = ((reconstruction - pixels).square() * (1 + args.foreground_weight * mask)).mean()
        loss = weighted + args.kl_weight * posterior.kl().mean() / posterior.mean[0].numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(mse.item())
        if step % 50 == 0 or step == args.max_train_steps:
            print(f"step {step}: reconstruction mse {np.mean(losses[-50:]):.5f} ({time.time() - start:.0f}s)",
                  flush=True)
    vae.eval()
    scaling_factor = 1.0 / latent_std(vae, frames)
    vae.register_to_config(scaling_factor=scaling_factor)
    output = Path(args.output_dir)
    vae.save_pretrained(output)
    (output / "train_vae.json").write_text(json.dumps({**vars(args), "scaling_factor": scaling_factor,
                                                       "losses": losses}, indent=1))
    print(f"wrote {output} (scaling_factor {scaling_factor:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
