"""The video transformer: released key layout, zero-init identity, grid attention semantics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from easyanimate.config import ConfigError, load_config, transformer_kwargs_for_model
from easyanimate.models import Transformer3DModel, get_motion_module

from .helpers import TINY, TINY_MM, key_list, randomize, tiny_pair

ROOT = Path(__file__).resolve().parents[1]

# PixArt-XL-2-512x512 transformer/config.json values.
PIXART_XL_512 = dict(
    num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
    cross_attention_dim=1152, caption_channels=4096, attention_bias=True, activation_fn="gelu-approximate",
    norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6, num_embeds_ada_norm=1000,
    sample_size=64, patch_size=2, norm_num_groups=32, dropout=0.0,
)



def released_model(config_name: str) -> Transformer3DModel:
    extras = transformer_kwargs_for_model(load_config(ROOT / "config" / config_name).transformer_additional_kwargs)
    with torch.device("meta"):
        return Transformer3DModel(**PIXART_XL_512, **extras)


def test_released_config_has_exactly_the_released_keys_and_shapes():
    model = released_model("easyanimate_video_motion_module_v1.yaml")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == key_list("v1_transformer_keys")
    motion = {k: v for k, v in ours.items() if ".attn_temporal." in k}
    assert len(motion) == 784 and len(ours) - len(motion) == 603
    assert "pos_embed.pos_embed" not in ours  # non-persistent, recomputed per size


def test_long_sequence_config_keys_are_pixart_plus_time_table():
    model = released_model("easyanimate_video_long_sequence_v1.yaml")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    pixart = {k: v for k, v in key_list("v1_transformer_keys").items() if ".attn_temporal." not in k}
    assert ours == {**pixart, "t_pos.pe": [1, 4096, 1152]}


@pytest.mark.parametrize("frames,height,width", [(1, 8, 8), (3, 8, 16), (4, 16, 8)])
def test_fresh_motion_modules_make_the_video_model_equal_the_image_model_per_frame(frames, height, width):
    image_model, video_model = tiny_pair()
    x = torch.randn(2, 4, frames, height, width)
    text = torch.randn(2, 7, 16)
    mask = torch.ones(2, 7)
    mask[0, 4:] = 0
    t = torch.tensor([10, 500])
    with torch.no_grad():
        video = video_model(x, text, mask, t).sample
        per_frame = [
            image_model(x[:, :, f], encoder_hidden_states=text, encoder_attention_mask=mask, timestep=t,
                        added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
            for f in range(frames)
        ]
    assert video.shape == (2, 8, frames, height, width)
    torch.testing.assert_close(video, torch.stack(per_frame, dim=2), atol=1e-5, rtol=0)


def test_trained_motion_modules_mix_frames():
    _, video_model = tiny_pair()
    randomize(video_model.transformer_blocks[0].attn_temporal)
    x = torch.randn(1, 4, 3, 8, 8)
    text = torch.randn(1, 5, 16)
    with torch.no_grad():
        base = video_model(x, text, timestep=torch.tensor([3])).sample
        x[:, :, 2] += 1.0
        changed = video_model(x, text, timestep=torch.tensor([3])).sample
    assert (changed[:, :, 0] - base[:, :, 0]).abs().max() > 1e-4


# ----------------------------------------------------------------------------------------------
# An independent, deliberately plain reference of the grid motion module: GroupNorm over each frame, proj_in,
# per 2x2 neighbourhood a sequence of (frame, row, column) tokens through pre-norm attentions with the frame
# sinusoid added to their input, a GEGLU feed-forward, proj_out, and the residual.


def _layer_norm(x, module):
    return F.layer_norm(x, (x.shape[-1],), module.weight, module.bias, module.eps)


def _sinusoid(pos: int, dim: int) -> torch.Tensor:
    row = torch.zeros(dim)
    for i in range(0, dim, 2):
        angle = pos / (10000 ** (i / dim))
        row[i] = math.sin(angle)
        row[i + 1] = math.cos(angle)
    return row


def _attention(seq, attn, heads):
    """Plain multi-head softmax attention of one sequence (L, C) with position rows added."""
    length, dim = seq.shape
    head_dim = dim // heads
    q, k, v = seq @ attn.to_q.weight.T, seq @ attn.to_k.weight.T, seq @ attn.to_v.weight.T
    out = torch.zeros_like(q)
    for h in range(heads):
        sl = slice(h * head_dim, (h + 1) * head_dim)
        weights = torch.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(head_dim), dim=-1)
        out[:, sl] = weights @ v[:, sl]
    return out @ attn.to_out[0].weight.T + attn.to_out[0].bias


def reference_motion_module(module, x, frames, h, w, heads, grid=True, block=2):
    """x: (B, F*h*w, C) block stream -> updated stream, computed group by group with loops.

    With ``grid`` each sequence is one ``block x block`` token neighbourhood over all frames, frame-major.
    """
    tt = module.temporal_transformer
    batch, _, dim = x.shape
    video = x.reshape(batch, frames, h, w, dim)
    normed = torch.empty_like(video)
    for b in range(batch):
        for f in range(frames):
            image = video[b, f].permute(2, 0, 1)[None]
            normed[b, f] = F.group_norm(image, tt.norm.num_groups, tt.norm.weight, tt.norm.bias,
                                        tt.norm.eps)[0].permute(1, 2, 0)
    tokens = normed @ tt.proj_in.weight.T + tt.proj_in.bias
    out = torch.empty_like(tokens)
    block = block if grid else 1
    cells = [(y, x_) for y in range(0, h, block) for x_ in range(0, w, block)]
    offsets = [(dy, dx) for dy in range(block) for dx in range(block)]
    for b in range(batch):
        for y, x_ in cells:
            places = [(f, y + dy, x_ + dx) for f in range(frames) for dy, dx in offsets]  # frame-major
            seq = torch.stack([tokens[b, f, yy, xx] for f, yy, xx in places])
            frame_of = [f for f, _, _ in places]
            for block in tt.transformer_blocks:
                for attn, norm in zip(block.attention_blocks, block.norms):
                    inp = _layer_norm(seq, norm) + torch.stack([_sinusoid(f, dim) for f in frame_of])
                    seq = seq + _attention(inp, attn, heads)
                hidden = _layer_norm(seq, block.ff_norm) @ block.ff.net[0].proj.weight.T + block.ff.net[0].proj.bias
                value, gate = hidden.chunk(2, dim=-1)
                seq = seq + (value * F.gelu(gate)) @ block.ff.net[2].weight.T + block.ff.net[2].bias
            for (f, yy, xx), row in zip(places, seq):
                out[b, f, yy, xx] = row
    projected = out @ tt.proj_out.weight.T + tt.proj_out.bias
    return (video + projected).reshape(batch, frames * h * w, dim)


@pytest.mark.parametrize("frames,h,w", [(1, 2, 2), (3, 4, 6), (4, 6, 2)])
@pytest.mark.parametrize("kind", ["VanillaGrid", "Vanilla"])
def test_grid_motion_module_matches_plain_reference(frames, h, w, kind):
    torch.manual_seed(1)
    module = get_motion_module(32, kind, TINY_MM).eval()
    randomize(module, seed=2)
    x = torch.randn(2, frames * h * w, 32)
    with torch.no_grad():
        ours = module(x, frames, h, w)
        expected = reference_motion_module(module, x, frames, h, w, heads=2, grid=kind == "VanillaGrid")
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("frames,h,w", [(1, 4, 4), (3, 8, 4), (2, 4, 12)])
def test_block_size_4_groups_4x4_neighbourhoods(frames, h, w):
    torch.manual_seed(1)
    module = get_motion_module(32, "VanillaGrid", {**TINY_MM, "block_size": 4}).eval()
    randomize(module, seed=2)
    x = torch.randn(2, frames * h * w, 32)
    with torch.no_grad():
        ours = module(x, frames, h, w)
        expected = reference_motion_module(module, x, frames, h, w, heads=2, block=4)
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-5)


def test_block_size_4_mixes_a_token_only_into_its_4x4_neighbourhood():
    torch.manual_seed(1)
    module = get_motion_module(32, "VanillaGrid", {**TINY_MM, "block_size": 4}).eval()
    randomize(module, seed=2)
    module.temporal_transformer.norm = torch.nn.Identity()  # the per-frame GroupNorm mixes all of a frame's tokens
    frames, h, w = 3, 8, 8
    x = torch.randn(1, frames, h, w, 32)
    with torch.no_grad():
        base = module(x.reshape(1, -1, 32), frames, h, w).reshape(x.shape)
        x[0, 2, 5, 6] += 1.0  # a token of frame 2 in the neighbourhood rows 4..7, columns 4..7
        changed = module(x.reshape(1, -1, 32), frames, h, w).reshape(x.shape)
    moved = (changed - base).abs().amax(dim=-1)[0] > 1e-6  # (F, h, w)
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[4:8, 4:8] = True
    assert moved[:, inside].all() and not moved[:, ~inside].any()


def test_block_size_1_is_the_per_token_vanilla_module():
    torch.manual_seed(1)
    grid = get_motion_module(32, "VanillaGrid", {**TINY_MM, "block_size": 1}).eval()
    randomize(grid, seed=2)
    vanilla = get_motion_module(32, "Vanilla", TINY_MM).eval()
    vanilla.load_state_dict(grid.state_dict())
    x = torch.randn(2, 3 * 4 * 6, 32)
    with torch.no_grad():
        torch.testing.assert_close(grid(x, 3, 4, 6), vanilla(x, 3, 4, 6), atol=1e-6, rtol=1e-6)
        assert grid(x[:, :45], 3, 3, 5).shape == (2, 45, 32)  # any token grid


@pytest.mark.parametrize("block_size, multiple", [(1, 2), (2, 4), (4, 8)])
def test_the_models_size_multiple_follows_block_size(block_size, multiple):
    model = Transformer3DModel(**TINY, motion_module_kwargs={**TINY_MM, "block_size": block_size}).eval()
    assert model.spatial_multiple == multiple  # patch 2 x block_size latents; x 8 in pixels
    text = torch.randn(1, 5, 16)
    with torch.no_grad():
        assert model(torch.randn(1, 4, 2, multiple, 2 * multiple), text, timestep=torch.tensor([1])).sample.shape == (
            1, 8, 2, multiple, 2 * multiple)
    if block_size > 1:
        with pytest.raises(ValueError, match=f"multiples of {8 * multiple}"):
            model(torch.randn(1, 4, 2, multiple + 2, multiple), text, timestep=torch.tensor([1]))


@pytest.mark.parametrize("height,width", [(6, 8), (8, 10), (8, 4 + 1)])
def test_sizes_the_grid_cannot_take_raise_a_clear_error(height, width):
    _, video_model = tiny_pair()
    x = torch.randn(1, 4, 2, height, width)
    with pytest.raises(ValueError, match="multiples of 32"):
        video_model(x, torch.randn(1, 5, 16), timestep=torch.tensor([1]))


def test_long_sequence_variant_runs_and_attends_across_frames():
    torch.manual_seed(0)
    model = Transformer3DModel(**TINY, basic_block_type="selfattentiontemporal",
                               time_position_encoding_before_transformer=True).eval()
    x = torch.randn(1, 4, 3, 8, 6)  # latent 6 wide: no grid constraint here
    text = torch.randn(1, 5, 16)
    with torch.no_grad():
        base = model(x, text, timestep=torch.tensor([3])).sample
        x[:, :, 2] += 1.0
        changed = model(x, text, timestep=torch.tensor([3])).sample
    assert base.shape == (1, 8, 3, 8, 6)
    assert (changed[:, :, 0] - base[:, :, 0]).abs().max() > 1e-4


def test_gradient_checkpointing_gives_the_same_gradients():
    _, model = tiny_pair()
    randomize(model, seed=3)
    x = torch.randn(1, 4, 2, 8, 8)
    text = torch.randn(1, 5, 16)

    def grads():
        model.zero_grad()
        model(x, text, timestep=torch.tensor([7])).sample.square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.enable_gradient_checkpointing()
    checkpointed = grads()
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward_stays_close_to_fp32(dtype):
    _, model = tiny_pair()
    randomize(model, seed=4)
    x = torch.randn(1, 4, 2, 8, 8)
    text = torch.randn(1, 5, 16)
    with torch.no_grad():
        full = model(x, text, timestep=torch.tensor([7])).sample
        half = model.to(dtype)(x.to(dtype), text.to(dtype), timestep=torch.tensor([7])).sample
    assert half.dtype == dtype
    assert (half.float() - full).abs().max() < 0.1 * full.abs().max()


@pytest.mark.parametrize("bad,match", [
    (dict(patch_3d=True), "patch_3d"),
    (dict(basic_block_type="basic"), "basic_block_type"),
    (dict(motion_module_type="Conv"), "motion_module_type"),
    (dict(norm_type="layer_norm"), "norm_type"),
    (dict(motion_module_kwargs={**TINY_MM, "cross_frame_attention_mode": "x"}), "cross_frame"),
    (dict(motion_module_kwargs={**TINY_MM, "unknown_option": 1}), "unknown_option"),
    (dict(motion_module_kwargs=None), "motion_module_kwargs"),
])
def test_options_that_are_not_built_are_refused(bad, match):
    kwargs = {**TINY, "motion_module_kwargs": TINY_MM, **bad}
    with pytest.raises(ConfigError, match=match):
        Transformer3DModel(**kwargs)


@pytest.mark.parametrize("block_size", [1, 4])
def test_grid_block_sizes_other_than_2_load_from_yaml(tmp_path, block_size):
    text = (ROOT / "config" / "easyanimate_video_motion_module_v1.yaml").read_text()
    assert "block_size: 2" in text
    (tmp_path / "model.yaml").write_text(text.replace("block_size: 2", f"block_size: {block_size}"))
    kwargs = transformer_kwargs_for_model(load_config(tmp_path / "model.yaml").transformer_additional_kwargs)
    assert kwargs["motion_module_type"] == "VanillaGrid" and kwargs["motion_module_kwargs"]["block_size"] == block_size
