"""Sampler names of the UI and scripts, mapped to diffusers schedulers.

EasyAnimate v1 built its inference scheduler as ``SAMPLERS[name](**noise_scheduler_kwargs)``, where the
yaml's ``noise_scheduler_kwargs`` hold only four values (``beta_start`` 0.0001, ``beta_end`` 0.02,
``beta_schedule`` "linear", ``steps_offset`` 1). Everything else came from the defaults of the
diffusers release it pinned (0.27). Defaults move between diffusers releases, so this module spells out
every option that shapes sampling (timestep spacing, solver type, sigma schedule, clipping...) in
``SAMPLER_OPTIONS``; with ``v1_quirks=True`` the result equals the original's effective configuration.

Two of those defaults are quirks of the original rather than choices:

* ``"PNDM"`` keeps ``skip_prk_steps=False``: a Runge-Kutta warm-up that turns 30 requested steps into
  39 model evaluations;
* ``"DDIM"`` keeps ``clip_sample=True``: the predicted x0 is clipped to [-1, 1] although it lives in
  VAE latent space (scaled by 0.18215, whose values routinely exceed 1).

Both are fixed by default (``QUIRK_FIXES``): DDIM's clipping turns the shipped demo model's videos into
noise, and the warm-up costs a third more model evaluations for no gain. ``v1_quirks=True``
(``--v1-sampler-quirks`` on the command line) brings them back, to reproduce a video made with the
original code. The other samplers are the same either way.
"""

from collections.abc import Mapping
from inspect import signature
from types import MappingProxyType
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

SAMPLERS: dict[str, type[SchedulerMixin]] = {
    "Euler": EulerDiscreteScheduler,
    "Euler A": EulerAncestralDiscreteScheduler,
    "DPM++": DPMSolverMultistepScheduler,
    "PNDM": PNDMScheduler,
    "DDIM": DDIMScheduler,
    "UniPC": UniPCMultistepScheduler,
    "DPM++ SDE": DPMSolverMultistepScheduler,
}
"""Sampler name (as shown in the UI and accepted by the scripts) -> diffusers scheduler class."""

SAMPLER_NAMES: list[str] = list(SAMPLERS)
"""Sampler names in UI order; the UI dropdown defaults to the first one, "Euler"."""

V1_NOISE_SCHEDULER_KWARGS: Mapping[str, Any] = MappingProxyType(
    {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear", "steps_offset": 1}
)
"""The ``noise_scheduler_kwargs`` of every v1 yaml config (all three yamls carry the same four values)."""

_DPM_SOLVER_OPTIONS: Mapping[str, Any] = MappingProxyType(
    {
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "solver_order": 2,
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        "final_sigmas_type": "zero",
        "use_karras_sigmas": False,
        "use_lu_lambdas": False,
        "lambda_min_clipped": float("-inf"),
        "variance_type": None,
        "thresholding": False,
        "timestep_spacing": "linspace",
        "rescale_betas_zero_snr": False,
    }
)

SAMPLER_OPTIONS: dict[str, Mapping[str, Any]] = {
    "Euler": MappingProxyType(
        {
            "num_train_timesteps": 1000,
            "prediction_type": "epsilon",
            "interpolation_type": "linear",
            "use_karras_sigmas": False,
            "timestep_spacing": "linspace",
            "timestep_type": "discrete",
            "final_sigmas_type": "zero",
            "rescale_betas_zero_snr": False,
        }
    ),
    "Euler A": MappingProxyType(
        {
            "num_train_timesteps": 1000,
            "prediction_type": "epsilon",
            "timestep_spacing": "linspace",
            "rescale_betas_zero_snr": False,
        }
    ),
    "DPM++": MappingProxyType({**_DPM_SOLVER_OPTIONS, "algorithm_type": "dpmsolver++"}),
    "PNDM": MappingProxyType(
        {
            "num_train_timesteps": 1000,
            "prediction_type": "epsilon",
            "skip_prk_steps": False,
            "set_alpha_to_one": False,
            "timestep_spacing": "leading",
        }
    ),
    "DDIM": MappingProxyType(
        {
            "num_train_timesteps": 1000,
            "prediction_type": "epsilon",
            "clip_sample": True,
            "clip_sample_range": 1.0,
            "set_alpha_to_one": True,
            "thresholding": False,
            "timestep_spacing": "leading",
            "rescale_betas_zero_snr": False,
        }
    ),
    "UniPC": MappingProxyType(
        {
            "num_train_timesteps": 1000,
            "prediction_type": "epsilon",
            "solver_order": 2,
            "solver_type": "bh2",
            "predict_x0": True,
            "lower_order_final": True,
            "final_sigmas_type": "zero",
            "use_karras_sigmas": False,
            "thresholding": False,
            "timestep_spacing": "linspace",
            "rescale_betas_zero_snr": False,
        }
    ),
    "DPM++ SDE": MappingProxyType({**_DPM_SOLVER_OPTIONS, "algorithm_type": "sde-dpmsolver++"}),
}
"""Per-sampler options beyond the yaml kwargs: the diffusers 0.27 defaults the original relied on,
made explicit so a newer diffusers cannot change them ("UniPC" and "DPM++ SDE" are additions)."""

QUIRK_FIXES: dict[str, Mapping[str, Any]] = {
    "PNDM": MappingProxyType({"skip_prk_steps": True}),
    "DDIM": MappingProxyType({"clip_sample": False}),
}
"""Options replaced unless ``v1_quirks=True`` (see the module docstring)."""


def build_scheduler(
    name: str, noise_scheduler_kwargs: Mapping[str, Any], *, v1_quirks: bool = False
) -> SchedulerMixin:
    """Construct the scheduler for a sampler name from the yaml ``noise_scheduler_kwargs``.

    The configuration is ``SAMPLER_OPTIONS[name]``, then (unless ``v1_quirks``) ``QUIRK_FIXES[name]``,
    then ``noise_scheduler_kwargs``: a value the yaml states explicitly always wins, as it did in the
    original, where the yaml kwargs were the only arguments.

    Args:
        name: one of ``SAMPLER_NAMES``.
        noise_scheduler_kwargs: constructor arguments from the yaml, e.g. ``V1_NOISE_SCHEDULER_KWARGS``.
        v1_quirks: True reproduces v1 exactly; False (the default) turns off PNDM's Runge-Kutta warm-up
            and DDIM's clipping of latent x0 to [-1, 1].

    Raises:
        ValueError: unknown sampler name (the message lists the valid ones), or a kwarg the scheduler
            class does not accept.
    """
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}; valid names: {', '.join(repr(n) for n in SAMPLER_NAMES)}")
    scheduler_cls = SAMPLERS[name]
    accepted = set(signature(scheduler_cls.__init__).parameters) - {"self"}
    unknown = sorted(set(noise_scheduler_kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"{scheduler_cls.__name__} (sampler {name!r}) does not accept {unknown}; accepted: {sorted(accepted)}"
        )
    config = dict(SAMPLER_OPTIONS[name])
    if not v1_quirks:
        config.update(QUIRK_FIXES.get(name, {}))
    config.update(noise_scheduler_kwargs)
    return scheduler_cls(**config)


def switch_sampler(scheduler: SchedulerMixin, name: str, *, v1_quirks: bool = False) -> SchedulerMixin:
    """A scheduler for sampler ``name`` with the noise schedule of ``scheduler``.

    The noise schedule is the yaml's ``noise_scheduler_kwargs`` keys (``beta_start``, ``beta_end``,
    ``beta_schedule``, ``steps_offset``) as the current scheduler's config holds them: the model yaml's
    when the pipeline was loaded by :func:`easyanimate.generation.load_pipeline`, the model folder's
    ``scheduler/`` config when it came from ``from_pretrained``.
    """
    kwargs = {key: scheduler.config[key] for key in V1_NOISE_SCHEDULER_KWARGS if key in scheduler.config}
    return build_scheduler(name, kwargs, v1_quirks=v1_quirks)
