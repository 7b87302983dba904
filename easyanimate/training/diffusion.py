"""The training objective of every EasyAnimate trainer: improved DDPM with a learned variance.

The forward process has 1000 steps with linear betas 1e-4 -> 0.02 (float64 linspace). The model predicts
the noise eps and, per element, a variance interpolation v in [-1, 1] (output channels ``2 * C``: eps first,
v last). Its per-sample loss is

    loss = mean over dims (eps - eps_hat)^2  +  L_vb

where L_vb is the variational-bound term in bits per dimension, computed with the mean branch detached so
that only v learns from it: the KL between the true posterior q(x_{t-1} | x_t, x0) and the model's
p(x_{t-1} | x_t) for t > 0, and the negative log-likelihood of a discretised Gaussian decoder for t = 0.
L_vb is not rescaled by 1/1000 (v1 used ``LossType.MSE``, not ``RESCALED_MSE``).

The decoder's bin probabilities use, by default, v1's tanh approximation of the standard normal CDF,
Phi(x) ~ 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))): the released weights were trained with it. It
is at most 1.8e-4 from the exact CDF, which moves the t = 0 loss by a few 1e-4 relative;
``ImprovedDDPM(normal_cdf="exact")`` (``normal_cdf: exact`` in a training config) uses the exact one.

With ``num_timesteps`` N below 1000 the 1000-step process is respaced, as v1 did: N steps t_0 < ... < t_{N-1}
evenly spaced over 0..999 are kept (improved DDPM's ``space_timesteps`` with one section), the schedule's
betas become beta_i = 1 - abar_{t_i} / abar_{t_{i-1}} (abar_{t_{-1}} = 1), so that abar_i = abar_{t_i}, and
the model is fed the original step t_i (:meth:`ImprovedDDPM.model_timesteps`), not the index i.

Latents are ``(B, C, ...)`` with channels on axis 1; ours are ``(B, 4, F, H, W)``. The schedule is kept in
float64 on the CPU; coefficients are gathered at ``t`` and only then cast to the compute dtype, which is
float32 for bf16/fp16/fp32 inputs (float64 inputs stay float64).
"""

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

DECODER_BIN_HALF_WIDTH = 1.0 / 255.0
"""Half the width of one bin of the t = 0 decoder: [-1, 1] cut into 255 bins of width 2/255, as 8-bit data."""

DECODER_EDGE = 0.999
"""Values below -0.999 (above 0.999) fall in the lowest (highest) bin, which extends to -inf (+inf)."""

DECODER_MIN_LOG_PROB = math.log(1e-12)
"""Floor of the decoder's log-probability per element: bounds the t = 0 loss at ~40 bits per dimension.

The reference objective floors the bin probability at 1e-12 the same way; a mean far outside a narrow bin
(the t = 0 model std is ~0.01) would otherwise give unbounded losses on 1 in 1000 samples."""

DECODER_MAX_Z = 1e3
"""Standardised bin edges are clipped to [-1000, 1000]: beyond, every bin probability is below the 1e-12 floor
(or 1), and x^3 in the tanh CDF (x^2 in the exact one) would overflow to inf and give NaN losses and gradients."""

SNR_LOSS_LAST_X0_STEP = 249
"""With ``snr_loss`` the MSE target is x0 for t <= 249 and eps for t > 249 (v1's ``--snr_loss``)."""


def normal_kl(
    mean_1: torch.Tensor, log_var_1: torch.Tensor, mean_2: torch.Tensor, log_var_2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean_1, exp(log_var_1)) || N(mean_2, exp(log_var_2))) in nats, elementwise (broadcasting)."""
    return 0.5 * (
        log_var_2 - log_var_1 + torch.exp(log_var_1 - log_var_2) + (mean_1 - mean_2) ** 2 * torch.exp(-log_var_2) - 1.0
    )


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(d)) for d < 0, accurate near 0 and for very negative d; gradients stay finite."""
    near_zero = d > -math.log(2.0)
    # Feed each branch only inputs it handles, so the unused branch cannot put inf/nan into the gradient.
    d_near = torch.where(near_zero, d, -math.log(2.0)).clamp(max=-1e-30)
    d_far = torch.where(near_zero, -math.log(2.0), d)
    return torch.where(near_zero, torch.log(-torch.expm1(d_near)), torch.log1p(-torch.exp(d_far)))


def log_tanh_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """log of v1's approximate standard normal CDF, 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))).

    Computed as log sigmoid(2a) (0.5 * (1 + tanh(a)) = sigmoid(2a)), which stays finite in both tails.
    """
    a = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
    return F.logsigmoid(2.0 * a)


NORMAL_LOG_CDFS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": log_tanh_normal_cdf,
    "exact": torch.special.log_ndtr,
}
"""log Phi for the t = 0 decoder, by name: v1's tanh approximation (the default) or the exact CDF."""


def _normal_log_cdf(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``NORMAL_LOG_CDFS[name]``, or a ValueError listing the valid names."""
    if name not in NORMAL_LOG_CDFS:
        raise ValueError(f"unknown normal_cdf {name!r}; valid: {', '.join(NORMAL_LOG_CDFS)}")
    return NORMAL_LOG_CDFS[name]


def _log_normal_cdf_difference(lower: torch.Tensor, upper: torch.Tensor,
                               log_cdf: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for upper > lower, with ``log_cdf`` = log Phi and Phi(-x) = 1 - Phi(x).

    In the right tail the difference is taken as Phi(-lower) - Phi(-upper), so both terms are small and do
    not cancel.
    """
    right_tail = lower > 0
    high = torch.where(right_tail, -lower, upper)
    low = torch.where(right_tail, -upper, lower)
    log_high = log_cdf(high)
    return log_high + _log1mexp(log_cdf(low) - log_high)


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                        normal_cdf: str = "tanh") -> torch.Tensor:
    """Log-probability (nats, elementwise) of the bin holding ``x`` under N(mean, exp(log_scale)^2).

    Bins have width 2/255 and are centred on ``x``; the bin of any value below -0.999 extends to -inf and
    that of any value above 0.999 to +inf, so the probabilities of 8-bit data in [-1, 1] sum to one.
    Floored at log(1e-12) (``DECODER_MIN_LOG_PROB``). ``normal_cdf``: a name in ``NORMAL_LOG_CDFS``.
    """
    log_cdf = _normal_log_cdf(normal_cdf)
    inv_scale = torch.exp(-log_scale)
    upper = ((x - mean + DECODER_BIN_HALF_WIDTH) * inv_scale).clamp(-DECODER_MAX_Z, DECODER_MAX_Z)
    lower = ((x - mean - DECODER_BIN_HALF_WIDTH) * inv_scale).clamp(-DECODER_MAX_Z, DECODER_MAX_Z)
    log_prob = torch.where(
        x < -DECODER_EDGE,
        log_cdf(upper),
        torch.where(
            x > DECODER_EDGE,
            log_cdf(-lower),
            _log_normal_cdf_difference(lower, upper, log_cdf),
        ),
    )
    return log_prob.clamp(min=DECODER_MIN_LOG_PROB)


def spaced_timesteps(num_base_timesteps: int, count: int) -> list[int]:
    """The ``count`` steps of a ``num_base_timesteps``-step process that respacing keeps, ascending.

    Evenly spaced from 0 to ``num_base_timesteps - 1``: position i is the stride
    (num_base_timesteps - 1) / (count - 1) added up i times in floating point, rounded to the nearest
    integer (halves to even), as improved DDPM's ``space_timesteps`` with a single section does.
    """
    if not 1 <= count <= num_base_timesteps:
        raise ValueError(f"cannot keep {count} of {num_base_timesteps} steps; need 1 <= steps <= {num_base_timesteps}")
    stride = (num_base_timesteps - 1) / (count - 1) if count > 1 else 1.0
    return [round(position) for position in itertools.accumulate([0.0] + [stride] * (count - 1))]


def _mean_over_non_batch_dims(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


class ImprovedDDPM:
    """Improved-DDPM training objective: linear betas, eps prediction, learned-range variance (the original's).

    Args:
        num_timesteps: steps N of the training process; below ``num_base_timesteps`` the base process is
            respaced to N of its steps (see the module docstring), and timesteps drawn here are indices
            0..N-1 that :meth:`model_timesteps` maps to the steps fed to the model.
        num_base_timesteps, beta_start, beta_end: the base process (1000 linear betas 1e-4 -> 0.02).
        snr_loss: x0 target for t <= 249 (v1's ``--snr_loss``).
        normal_cdf: the t = 0 decoder's normal CDF: ``"tanh"`` (v1's approximation, default) or ``"exact"``.

    Attributes (all float64, shape ``(num_timesteps,)``, on the CPU): ``betas``, ``log_betas``,
    ``alphas_cumprod``, ``alphas_cumprod_prev``, ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``,
    ``posterior_variance`` (beta-tilde, 0 at t = 0), ``posterior_log_variance_clipped``
    (log beta-tilde with t = 0 taking the value of t = 1, since beta-tilde_0 = 0), ``posterior_mean_coef_x0``
    and ``posterior_mean_coef_xt``; ``timestep_map`` (int64 ``(num_timesteps,)``): the base step of each index.
    """

    def __init__(
        self,
        num_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        snr_loss: bool = False,
        normal_cdf: str = "tanh",
        num_base_timesteps: int = 1000,
    ):
        _normal_log_cdf(normal_cdf)
        if num_timesteps < 2:
            raise ValueError(f"the training process needs at least 2 steps, got {num_timesteps}")
        self.num_timesteps = num_timesteps
        self.snr_loss = snr_loss
        self.normal_cdf = normal_cdf

        base_betas = torch.linspace(beta_start, beta_end, num_base_timesteps, dtype=torch.float64)
        self.timestep_map = torch.tensor(spaced_timesteps(num_base_timesteps, num_timesteps), dtype=torch.int64)
        if num_timesteps == num_base_timesteps:
            self.betas = base_betas  # every step kept: respacing is the identity
        else:
            kept = torch.cumprod(1.0 - base_betas, dim=0)[self.timestep_map]
            self.betas = 1.0 - kept / torch.cat([kept.new_ones(1), kept[:-1]])
        alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = torch.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = torch.sqrt(1.0 - self.alphas_cumprod)
        self.log_betas = torch.log(self.betas)

        # q(x_{t-1} | x_t, x0) = N(coef_x0 * x0 + coef_xt * x_t, beta-tilde_t)
        one_minus_cumprod = 1.0 - self.alphas_cumprod
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / one_minus_cumprod
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        )
        self.posterior_mean_coef_x0 = self.betas * torch.sqrt(self.alphas_cumprod_prev) / one_minus_cumprod
        self.posterior_mean_coef_xt = (1.0 - self.alphas_cumprod_prev) * torch.sqrt(alphas) / one_minus_cumprod

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The base-process steps fed to the model for indices ``t`` (``(B,)`` int, same device).

        At N = 1000 every step is kept and this is ``t`` itself."""
        return self.timestep_map.to(t.device)[t.long()]

    def _at(self, schedule: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``schedule[t]`` cast to ``like``'s dtype and device, shaped ``(B, 1, ...)`` to broadcast over ``like``."""
        values = schedule[t.detach().cpu().long()].to(like.dtype).to(like.device)
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def sample_timesteps(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        low: int = 0,
        high: int | None = None,
    ) -> torch.Tensor:
        """One timestep per sample, uniform in {low, ..., high - 1} (``high`` defaults to num_timesteps):
        int64 ``(batch_size,)``.

        Drawn on the generator's device (CPU without one), then moved to ``device`` (default: the same).
        """
        high = self.num_timesteps if high is None else high
        if not 0 <= low < high <= self.num_timesteps:
            raise ValueError(f"need 0 <= low < high <= {self.num_timesteps}, got low={low}, high={high}")
        draw_device = generator.device if generator is not None else torch.device("cpu")
        t = torch.randint(low, high, (batch_size,), generator=generator, device=draw_device)
        return t.to(device) if device is not None else t

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Diffuse clean latents: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.

        Args:
            x0: clean latents ``(B, ...)``, e.g. ``(B, 4, F, H, W)``.
            t: timesteps, integer ``(B,)``.
            noise: eps, same shape as ``x0``.

        Returns:
            x_t, shape and dtype of ``x0`` (computed in at least float32).
        """
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
        dtype = torch.promote_types(x0.dtype, torch.float32)
        x0_c, noise_c = x0.to(dtype), noise.to(dtype)
        x_t = (
            self._at(self.sqrt_alphas_cumprod, t, x0_c) * x0_c
            + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0_c) * noise_c
        )
        return x_t.to(x0.dtype)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The x0 implied by a noise prediction: (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), unclipped."""
        noise_scale = self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        return (x_t - noise_scale * eps) / self._at(self.sqrt_alphas_cumprod, t, x_t)

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of q(x_{t-1} | x_t, x0), shape of ``x0``."""
        return self._at(self.posterior_mean_coef_x0, t, x0) * x0 + self._at(self.posterior_mean_coef_xt, t, x0) * x_t

    def model_log_variance(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Learned-range log variance: frac * log beta_t + (1 - frac) * log beta-tilde_t, frac = (v + 1) / 2."""
        frac = (v + 1.0) / 2.0
        log_beta = self._at(self.log_betas, t, v)
        log_beta_tilde = self._at(self.posterior_log_variance_clipped, t, v)
        return frac * log_beta + (1.0 - frac) * log_beta_tilde

    def variational_bound(
        self, eps_hat: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """L_vb per sample in bits per dimension, ``(B,)``; gradients flow into ``v`` only (eps_hat detached).

        t > 0: KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)); t = 0: the decoder's NLL of x0.
        """
        model_mean = self.posterior_mean(self.predict_x0(x_t, t, eps_hat.detach()), x_t, t)
        model_log_var = self.model_log_variance(v, t)

        true_mean = self.posterior_mean(x0, x_t, t)
        true_log_var = self._at(self.posterior_log_variance_clipped, t, x0)
        kl = _mean_over_non_batch_dims(normal_kl(true_mean, true_log_var, model_mean, model_log_var))
        decoder_nll = -_mean_over_non_batch_dims(
            discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var, self.normal_cdf)
        )
        return torch.where(t.to(kl.device) == 0, decoder_nll, kl) / math.log(2.0)

    def training_losses(
        self,
        model_output: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Per-sample losses of one training step; the caller averages ``loss`` over the batch.

        Args:
            model_output: ``(B, 2C, ...)``: eps_hat in channels ``[:C]``, variance interpolation v in ``[C:]``.
            x0: clean latents ``(B, C, ...)``.
            x_t: ``q_sample(x0, t, noise)``, ``(B, C, ...)``.
            t: timesteps, integer ``(B,)``.
            noise: the eps used to make ``x_t``, ``(B, C, ...)``.

        Returns:
            ``{"loss": mse + vb, "mse": ..., "vb": ...}``, each float32 (float64 for float64 inputs) ``(B,)``.
            ``mse`` is the mean squared eps error (x0 error for t <= 249 when ``snr_loss``); ``vb`` is L_vb
            in bits per dimension.
        """
        if model_output.shape[0] != x0.shape[0] or model_output.shape[1] != 2 * x0.shape[1]:
            raise ValueError(
                f"model_output {tuple(model_output.shape)} must have shape (B, 2C, ...) for x0 {tuple(x0.shape)}"
            )
        if not (model_output.shape[2:] == x0.shape[2:] and x0.shape == x_t.shape == noise.shape):
            raise ValueError(
                f"shape mismatch: model_output {tuple(model_output.shape)}, x0 {tuple(x0.shape)}, "
                f"x_t {tuple(x_t.shape)}, noise {tuple(noise.shape)}"
            )
        if t.shape != (x0.shape[0],):
            raise ValueError(f"t must have shape ({x0.shape[0]},), got {tuple(t.shape)}")

        dtype = torch.promote_types(model_output.dtype, torch.float32)
        eps_hat, v = model_output.to(dtype).chunk(2, dim=1)
        x0, x_t, noise = x0.to(dtype), x_t.to(dtype), noise.to(dtype)

        mse = _mean_over_non_batch_dims((noise - eps_hat) ** 2)
        if self.snr_loss:
            x0_mse = _mean_over_non_batch_dims((x0 - self.predict_x0(x_t, t, eps_hat)) ** 2)
            mse = torch.where(t.to(mse.device) <= SNR_LOSS_LAST_X0_STEP, x0_mse, mse)
        vb = self.variational_bound(eps_hat, v, x0, x_t, t)
        return {"loss": mse + vb, "mse": mse, "vb": vb}
