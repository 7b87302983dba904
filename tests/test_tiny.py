"""The tiny components are real, offline, deterministic and shaped like the full model's."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, Transformer2DModel
from transformers import AutoTokenizer, T5Tokenizer

from easyanimate.tiny import (
    TINY_TEXT_DIM,
    V1_MOTION_MODULE_KWARGS,
    build_pixart_scheduler,
    build_tiny_text_encoder,
    build_tiny_tokenizer,
    build_tiny_vae,
    tiny_motion_module_kwargs,
    tiny_transformer_config,
)

PROMPTS = ["a red circle moving left on a dark background", "A blue square, moving up!"]


def _encode(tokenizer, prompts=PROMPTS):
    return tokenizer(prompts, padding="max_length", max_length=120, truncation=True, return_tensors="pt")


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def test_tokenizer_special_ids_follow_t5(tokenizer):
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<pad>", 0)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("</s>", 1)
    assert (tokenizer.unk_token, tokenizer.unk_token_id) == ("<unk>", 2)
    assert 100 <= len(tokenizer) <= 300


def test_tokenizer_pads_to_120_with_mask_and_eos(tokenizer):
    batch = _encode(tokenizer)
    assert batch.input_ids.shape == batch.attention_mask.shape == (2, 120)
    for ids, mask in zip(batch.input_ids, batch.attention_mask):
        length = int(mask.sum())
        assert 0 < length < 120
        assert mask[:length].all() and not mask[length:].any()
        assert ids[length - 1] == 1  # </s> closes the prompt
        assert (ids[length:] == 0).all()
        assert 2 not in ids[:length].tolist()  # no <unk>: every character here is in the vocabulary


def test_tokenizer_keeps_caption_words_whole(tokenizer):
    tokens = tokenizer.tokenize("a red circle moving left on a dark background")
    assert tokens == ["▁a", "▁red", "▁circle", "▁moving", "▁left", "▁on", "▁a", "▁dark", "▁background"]
    assert tokenizer.decode(_encode(tokenizer).input_ids[0], skip_special_tokens=True) == PROMPTS[0]


def test_tokenizer_truncates_long_prompts(tokenizer):
    batch = _encode(tokenizer, ["red " * 300])
    assert batch.input_ids.shape == (1, 120)
    assert batch.attention_mask.all()
    assert batch.input_ids[0, -1] == 1


def test_tokenizer_spells_unknown_words_and_marks_unknown_characters(tokenizer):
    assert tokenizer.tokenize("zebra") == ["▁", "z", "e", "b", "r", "a"]
    assert tokenizer.unk_token_id in tokenizer("é").input_ids


def test_tokenizer_is_deterministic(tokenizer):
    other = build_tiny_tokenizer()
    assert other.get_vocab() == tokenizer.get_vocab()
    assert torch.equal(_encode(other).input_ids, _encode(tokenizer).input_ids)


def test_tokenizer_custom_words():
    tokenizer = build_tiny_tokenizer(["zebra", "zebra", "stripes"])
    assert tokenizer.tokenize("zebra stripes") == ["▁zebra", "▁stripes"]
    with pytest.raises(ValueError, match="whitespace"):
        build_tiny_tokenizer(["two words"])


def test_tokenizer_save_load_round_trip(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    for loaded in (
        T5Tokenizer.from_pretrained(tmp_path / "tokenizer"),
        AutoTokenizer.from_pretrained(tmp_path / "tokenizer"),
    ):
        assert loaded.get_vocab() == tokenizer.get_vocab()
        assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2)
        reference, reloaded = _encode(tokenizer), _encode(loaded)
        assert torch.equal(reloaded.input_ids, reference.input_ids)
        assert torch.equal(reloaded.attention_mask, reference.attention_mask)


def test_text_encoder_forward_shape(tokenizer):
    encoder = build_tiny_text_encoder(len(tokenizer))
    batch = _encode(tokenizer)
    with torch.no_grad():
        hidden = encoder(batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    assert hidden.shape == (2, 120, TINY_TEXT_DIM)
    assert torch.isfinite(hidden).all()


def test_text_encoder_has_gated_ffn_lora_targets(tokenizer):
    names = {name for name, _ in build_tiny_text_encoder(len(tokenizer)).named_modules()}
    assert "encoder.block.0.layer.1.DenseReluDense.wi_0" in names
    assert "encoder.block.1.layer.1.DenseReluDense.wi_1" in names
    assert "encoder.block.1.layer.0.SelfAttention.q" in names


def test_text_encoder_is_seeded_and_leaves_global_rng_alone(tokenizer):
    state = torch.get_rng_state()
    first = build_tiny_text_encoder(len(tokenizer), seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    _assert_same_weights(first, build_tiny_text_encoder(len(tokenizer), seed=3))
    other = build_tiny_text_encoder(len(tokenizer), seed=4)
    assert not torch.equal(first.shared.weight, other.shared.weight)


def test_vae_shapes_and_scaling_factor():
    vae = build_tiny_vae()
    assert vae.config.scaling_factor == 0.18215
    assert vae.config.latent_channels == 4
    with torch.no_grad():
        latents = vae.encode(torch.rand(1, 3, 64, 64) * 2 - 1).latent_dist.mode()
        assert latents.shape == (1, 4, 8, 8)
        assert vae.decode(latents).sample.shape == (1, 3, 64, 64)


def test_vae_is_seeded():
    _assert_same_weights(build_tiny_vae(seed=1), build_tiny_vae(seed=1))
    first, other = build_tiny_vae(seed=1), build_tiny_vae(seed=2)
    assert not torch.equal(first.encoder.conv_in.weight, other.encoder.conv_in.weight)


def test_pixart_scheduler():
    scheduler = build_pixart_scheduler()
    assert isinstance(scheduler, DPMSolverMultistepScheduler)
    assert scheduler.config.algorithm_type == "dpmsolver++"
    assert (scheduler.config.beta_start, scheduler.config.beta_end, scheduler.config.beta_schedule) == (
        0.0001,
        0.02,
        "linear",
    )
    scheduler.set_timesteps(20)
    assert len(scheduler.timesteps) == 20


def test_transformer_config_builds_a_pixart_model():
    config = tiny_transformer_config()
    assert config["caption_channels"] == TINY_TEXT_DIM
    assert config["cross_attention_dim"] == config["num_attention_heads"] * config["attention_head_dim"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Transformer2DModel.from_config(config)
    latents = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        out = model(
            latents,
            encoder_hidden_states=torch.randn(1, 120, TINY_TEXT_DIM),
            timestep=torch.tensor([500]),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        ).sample
    assert out.shape == (1, 8, 8, 8)  # learned sigma: eps and variance channels


def test_transformer_and_motion_module_sizes_are_consistent():
    config = tiny_transformer_config()
    inner_dim = config["num_attention_heads"] * config["attention_head_dim"]
    motion = tiny_motion_module_kwargs()
    assert inner_dim % 32 == 0  # GroupNorm(32 groups) over the inner dim in the motion module
    assert inner_dim % config["norm_num_groups"] == 0
    assert inner_dim % (motion["num_attention_heads"] * motion["temporal_attention_dim_div"]) == 0


def test_motion_module_kwargs_match_v1_yaml_but_heads():
    motion = tiny_motion_module_kwargs()
    assert motion["num_attention_heads"] == 2
    assert motion["attention_block_types"] == ["Temporal_Self", "Temporal_Self"]
    changed = ("num_attention_heads", "attention_block_types")
    expected = {k: v for k, v in V1_MOTION_MODULE_KWARGS.items() if k not in changed}
    assert {k: motion[k] for k in expected} == expected
    assert V1_MOTION_MODULE_KWARGS["num_attention_heads"] == 8
    assert motion.keys() == V1_MOTION_MODULE_KWARGS.keys()
