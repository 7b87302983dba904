"""The sampler table: v1's effective scheduler configurations, with its two quirks fixed unless asked for.

v1 built each scheduler from the yaml's four noise-schedule values and diffusers 0.27's defaults;
PNDM kept a Runge-Kutta warm-up (39 evaluations for 30 steps) and DDIM clipped latent x0 to [-1, 1].
"""

import pytest
import torch

from easyanimate.schedulers import (
    SAMPLER_NAMES,
    SAMPLERS,
    V1_NOISE_SCHEDULER_KWARGS,
    build_scheduler,
)


def _timesteps(name: str, steps: int = 30, **kwargs) -> list[float]:
    scheduler = build_scheduler(name, V1_NOISE_SCHEDULER_KWARGS, **kwargs)
    scheduler.set_timesteps(steps)
    return [float(t) for t in scheduler.timesteps]


def test_names_in_ui_order():
    assert SAMPLER_NAMES[:5] == ["Euler", "Euler A", "DPM++", "PNDM", "DDIM"]
    assert set(SAMPLER_NAMES) == {"Euler", "Euler A", "DPM++", "PNDM", "DDIM", "UniPC", "DPM++ SDE"}
    assert SAMPLER_NAMES == list(SAMPLERS)


@pytest.mark.parametrize("name", ["Euler", "Euler A", "DPM++", "PNDM", "DDIM", "UniPC", "DPM++ SDE"])
def test_yaml_kwargs_are_applied(name):
    config = build_scheduler(name, V1_NOISE_SCHEDULER_KWARGS).config
    assert isinstance(build_scheduler(name, V1_NOISE_SCHEDULER_KWARGS), SAMPLERS[name])
    assert (config.beta_start, config.beta_end, config.beta_schedule) == (0.0001, 0.02, "linear")
    assert config.steps_offset == 1
    assert config.num_train_timesteps == 1000
    assert config.prediction_type == "epsilon"


def test_euler_schedule():
    scheduler = build_scheduler("Euler", V1_NOISE_SCHEDULER_KWARGS)
    assert scheduler.config.timestep_spacing == "linspace"
    assert scheduler.config.use_karras_sigmas is False
    scheduler.set_timesteps(30)
    assert float(scheduler.init_noise_sigma) == pytest.approx(157.4, abs=0.05)
    timesteps = _timesteps("Euler")
    assert len(timesteps) == 30
    assert timesteps[0] == pytest.approx(999.0)
    assert timesteps[1] == pytest.approx(964.5517, abs=1e-3)
    assert timesteps[-1] == pytest.approx(0.0)


def test_euler_ancestral_schedule_matches_euler():
    assert _timesteps("Euler A") == pytest.approx(_timesteps("Euler"))


def test_dpm_solver_schedule():
    config = build_scheduler("DPM++", V1_NOISE_SCHEDULER_KWARGS).config
    assert config.algorithm_type == "dpmsolver++"
    assert (config.solver_order, config.solver_type) == (2, "midpoint")
    assert config.lower_order_final is True
    assert config.final_sigmas_type == "zero"
    assert config.timestep_spacing == "linspace"
    timesteps = _timesteps("DPM++")
    assert len(timesteps) == 30
    assert timesteps[:3] == [999, 966, 932]
    assert timesteps[-1] == 33


def test_dpm_sde_uses_sde_solver_on_the_same_schedule():
    assert build_scheduler("DPM++ SDE", V1_NOISE_SCHEDULER_KWARGS).config.algorithm_type == "sde-dpmsolver++"
    assert _timesteps("DPM++ SDE") == _timesteps("DPM++")


def test_pndm_keeps_runge_kutta_warmup_with_the_v1_quirks():
    config = build_scheduler("PNDM", V1_NOISE_SCHEDULER_KWARGS, v1_quirks=True).config
    assert config.skip_prk_steps is False
    assert config.set_alpha_to_one is False
    timesteps = _timesteps("PNDM", v1_quirks=True)
    assert timesteps[:3] == [958, 941, 941]
    assert len(timesteps) == 39  # one model evaluation per entry


def test_pndm_skips_the_warmup_by_default():
    assert build_scheduler("PNDM", V1_NOISE_SCHEDULER_KWARGS).config.skip_prk_steps is True
    timesteps = _timesteps("PNDM")
    assert len(timesteps) == 31
    assert timesteps[0] == 958


def test_ddim_schedule():
    config = build_scheduler("DDIM", V1_NOISE_SCHEDULER_KWARGS).config
    assert config.set_alpha_to_one is True
    assert config.timestep_spacing == "leading"
    timesteps = _timesteps("DDIM")
    assert len(timesteps) == 30
    assert timesteps[:2] == [958, 925]
    assert timesteps[-1] == 1


@pytest.mark.parametrize("v1_quirks", [True, False])
def test_ddim_clips_latent_x0_only_with_the_v1_quirks(v1_quirks):
    scheduler = build_scheduler("DDIM", V1_NOISE_SCHEDULER_KWARGS, v1_quirks=v1_quirks)
    assert scheduler.config.clip_sample is v1_quirks
    scheduler.set_timesteps(30)
    sample = torch.full((1, 4, 2, 2), 5.0)
    x0 = scheduler.step(torch.zeros_like(sample), scheduler.timesteps[0], sample).pred_original_sample
    if v1_quirks:
        assert x0.abs().max() <= 1.0
    else:
        assert x0.abs().max() > 1.0


def test_other_samplers_are_the_same_with_or_without_the_quirks():
    for name in ["Euler", "Euler A", "DPM++", "UniPC", "DPM++ SDE"]:
        assert dict(build_scheduler(name, V1_NOISE_SCHEDULER_KWARGS, v1_quirks=True).config) == dict(
            build_scheduler(name, V1_NOISE_SCHEDULER_KWARGS).config
        )


def test_unipc_schedule():
    config = build_scheduler("UniPC", V1_NOISE_SCHEDULER_KWARGS).config
    assert (config.solver_type, config.timestep_spacing) == ("bh2", "linspace")
    assert _timesteps("UniPC") == _timesteps("DPM++")


def test_explicit_yaml_value_wins():
    kwargs = {**V1_NOISE_SCHEDULER_KWARGS, "clip_sample": False, "timestep_spacing": "trailing"}
    config = build_scheduler("DDIM", kwargs).config
    assert config.clip_sample is False
    assert config.timestep_spacing == "trailing"


def test_kwargs_are_not_mutated():
    kwargs = dict(V1_NOISE_SCHEDULER_KWARGS)
    build_scheduler("DPM++", kwargs, v1_quirks=True)
    assert kwargs == dict(V1_NOISE_SCHEDULER_KWARGS)


@pytest.mark.parametrize("name", ["Euler A", "DPM++ SDE"])
def test_stochastic_samplers_follow_the_generator(name):
    def one_step(seed: int) -> torch.Tensor:
        scheduler = build_scheduler(name, V1_NOISE_SCHEDULER_KWARGS)
        scheduler.set_timesteps(4)
        sample = torch.ones(1, 4, 2, 2)
        t = scheduler.timesteps[0]
        generator = torch.Generator().manual_seed(seed)
        return scheduler.step(torch.zeros_like(sample), t, sample, generator=generator).prev_sample

    assert torch.equal(one_step(0), one_step(0))
    assert not torch.equal(one_step(0), one_step(1))


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as error:
        build_scheduler("Heun", V1_NOISE_SCHEDULER_KWARGS)
    for name in SAMPLER_NAMES:
        assert repr(name) in str(error.value)


def test_unknown_kwarg_is_an_error():
    with pytest.raises(ValueError, match="clip_sample"):
        build_scheduler("Euler", {**V1_NOISE_SCHEDULER_KWARGS, "clip_sample": True})
