"""The improved-DDPM training objective, checked against formulas written out independently."""

import math

import pytest
import torch

from easyanimate.training.diffusion import ImprovedDDPM, spaced_timesteps

LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def diffusion() -> ImprovedDDPM:
    return ImprovedDDPM()


def _schedule(t: int) -> tuple[float, float, float]:
    """(beta_t, abar_t, abar_{t-1}) of the linear 1e-4 -> 0.02 schedule, in plain Python floats."""
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    abar_prev, abar = 1.0, 1.0
    for i in range(t + 1):
        abar_prev, abar = abar, abar * (1.0 - betas[i])
    return betas[t], abar, abar_prev


def _normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _tanh_normal_cdf(z: float) -> float:
    """v1's approximation of the standard normal CDF."""
    return 0.5 * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))


NORMAL_CDFS = {"tanh": _tanh_normal_cdf, "exact": _normal_cdf}


def _cumulative_alphas() -> list[float]:
    """abar_t, t = 0..999, of the linear 1e-4 -> 0.02 schedule, in plain Python floats."""
    abar, out = 1.0, []
    for i in range(1000):
        abar *= 1.0 - (1e-4 + (0.02 - 1e-4) * i / 999)
        out.append(abar)
    return out


def _direct_model_params(t: int, x0: float, eps: float, eps_hat: float, v: float):
    """x_t, posterior mean/variance and model mean/variance of one element, from the definitions."""
    beta, abar, abar_prev = _schedule(t)
    x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps
    x0_hat = (x_t - math.sqrt(1 - abar) * eps_hat) / math.sqrt(abar)

    def posterior_mean(start: float) -> float:
        return (beta * math.sqrt(abar_prev) * start + (1 - abar_prev) * math.sqrt(1 - beta) * x_t) / (1 - abar)

    if t > 0:
        beta_tilde = beta * (1 - abar_prev) / (1 - abar)
    else:  # beta-tilde_0 = 0; its log is clipped to that of t = 1
        beta_1, abar_1, abar_0 = _schedule(1)
        beta_tilde = beta_1 * (1 - abar_0) / (1 - abar_1)
    frac = (v + 1) / 2
    model_var = beta**frac * beta_tilde ** (1 - frac)
    return x_t, posterior_mean(x0), beta_tilde, posterior_mean(x0_hat), model_var


def _scalar_case(diffusion, t, x0, eps, eps_hat, v, dtype=torch.float64):
    """Tensors of shape (B, 1) (resp. (B, 2)) for one element per sample."""
    x0_ = torch.tensor(x0, dtype=dtype).reshape(-1, 1)
    eps_ = torch.tensor(eps, dtype=dtype).reshape(-1, 1)
    out = torch.tensor([[e, w] for e, w in zip(eps_hat, v)], dtype=dtype)
    t_ = torch.tensor(t)
    x_t = diffusion.q_sample(x0_, t_, eps_)
    return diffusion.training_losses(out, x0_, x_t, t_, eps_)


def test_betas_are_float64_linspace(diffusion):
    assert diffusion.betas.dtype == torch.float64
    assert torch.equal(diffusion.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    assert torch.allclose(diffusion.alphas_cumprod, torch.cumprod(1 - diffusion.betas, 0), rtol=0, atol=0)
    assert diffusion.posterior_variance[0] == 0
    assert diffusion.posterior_log_variance_clipped[0] == diffusion.posterior_log_variance_clipped[1]
    assert diffusion.posterior_log_variance_clipped[1] == torch.log(diffusion.posterior_variance[1])
    # at t = 0 the posterior mean is x0 itself
    assert diffusion.posterior_mean_coef_x0[0].item() == pytest.approx(1.0, abs=1e-12)
    assert diffusion.posterior_mean_coef_xt[0].item() == 0.0


@pytest.mark.parametrize("t", [0, 100, 999])
def test_q_sample_statistics(diffusion, t):
    generator = torch.Generator().manual_seed(t)
    noise = torch.randn(20000, 1, generator=generator)
    timesteps = torch.full((20000,), t)
    _, abar, _ = _schedule(t)

    x_t = diffusion.q_sample(torch.zeros_like(noise), timesteps, noise)
    assert x_t.dtype == torch.float32
    assert x_t.var().item() == pytest.approx(1 - abar, rel=0.05)

    x0 = torch.randn(20000, 1, generator=generator)
    assert torch.allclose(diffusion.q_sample(x0, timesteps, torch.zeros_like(x0)), math.sqrt(abar) * x0)


def test_q_sample_keeps_input_dtype(diffusion):
    x0 = torch.randn(2, 4, 3, 4, 4).bfloat16()
    x_t = diffusion.q_sample(x0, torch.tensor([5, 900]), torch.randn_like(x0))
    assert x_t.dtype == torch.bfloat16 and x_t.shape == x0.shape


@pytest.mark.parametrize("dtype, rel", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_vb_matches_gaussian_kl_for_t_positive(diffusion, dtype, rel):
    t, x0, eps, eps_hat, v = [10, 500, 999], [0.7, -1.3, 0.2], [-0.4, 0.9, 1.1], [-0.1, 0.5, 1.4], [0.3, -0.6, 0.9]
    losses = _scalar_case(diffusion, t, x0, eps, eps_hat, v, dtype)
    for i in range(3):
        _, mean_q, var_q, mean_p, var_p = _direct_model_params(t[i], x0[i], eps[i], eps_hat[i], v[i])
        kl_nats = 0.5 * math.log(var_p / var_q) + (var_q + (mean_q - mean_p) ** 2) / (2 * var_p) - 0.5
        assert losses["vb"][i].item() == pytest.approx(kl_nats / LN2, rel=rel)
        assert losses["mse"][i].item() == pytest.approx((eps[i] - eps_hat[i]) ** 2, rel=rel)
        assert losses["loss"][i].item() == pytest.approx((eps[i] - eps_hat[i]) ** 2 + kl_nats / LN2, rel=rel)


@pytest.mark.parametrize("normal_cdf", ["tanh", "exact"])
@pytest.mark.parametrize("dtype, rel", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_t0_uses_discretised_decoder_nll(dtype, rel, normal_cdf):
    diffusion = ImprovedDDPM(normal_cdf=normal_cdf)
    cdf = NORMAL_CDFS[normal_cdf]
    # a value inside [-1, 1], and the two edge bins that extend to -inf and +inf
    x0, eps, eps_hat, v = [0.3, -1.0, 1.0], [0.5, -0.2, 0.8], [0.8, 0.1, 0.6], [0.2, -0.5, 0.7]
    losses = _scalar_case(diffusion, [0, 0, 0], x0, eps, eps_hat, v, dtype)
    for i in range(3):
        _, _, _, mean_p, var_p = _direct_model_params(0, x0[i], eps[i], eps_hat[i], v[i])
        std = math.sqrt(var_p)
        cdf_upper = cdf((x0[i] + 1 / 255 - mean_p) / std)
        cdf_lower = cdf((x0[i] - 1 / 255 - mean_p) / std)
        prob = {0: cdf_upper - cdf_lower, 1: cdf_upper, 2: 1 - cdf_lower}[i]
        assert losses["vb"][i].item() == pytest.approx(-math.log(prob) / LN2, rel=rel)


def test_t0_default_is_v1s_tanh_cdf_and_exact_differs_slightly():
    assert ImprovedDDPM().normal_cdf == "tanh"
    generator = torch.Generator().manual_seed(6)
    x0 = torch.rand(64, 1, dtype=torch.float64, generator=generator) * 2 - 1
    eps = torch.randn(x0.shape, dtype=torch.float64, generator=generator)
    out = torch.cat([eps + 0.3 * torch.randn(x0.shape, dtype=torch.float64, generator=generator),
                     torch.rand(x0.shape, dtype=torch.float64, generator=generator) * 2 - 1], dim=1)
    t = torch.zeros(64, dtype=torch.int64)
    losses = {}
    for name in ("tanh", "exact"):
        diffusion = ImprovedDDPM(normal_cdf=name)
        losses[name] = diffusion.training_losses(out, x0, diffusion.q_sample(x0, t, eps), t, eps)["vb"]
    relative = ((losses["tanh"] - losses["exact"]) / losses["exact"]).abs()
    assert 1e-5 < relative.max().item() < 1e-3  # the CDFs differ by at most 1.8e-4
    with pytest.raises(ValueError, match="tanh, exact"):
        ImprovedDDPM(normal_cdf="erf")


def test_decoder_nll_is_bounded(diffusion):
    losses = _scalar_case(diffusion, [0], [0.0], [0.0], [50.0], [0.0], torch.float32)
    assert losses["vb"].item() == pytest.approx(-math.log(1e-12) / LN2, rel=1e-5)


@pytest.mark.parametrize("normal_cdf", ["tanh", "exact"])
def test_decoder_nll_and_gradient_stay_finite_for_far_off_means(normal_cdf):
    from easyanimate.training.diffusion import discretized_gaussian_log_likelihood

    x = torch.tensor([0.3, -1.0, 1.0] * 4)
    mean = torch.tensor([1e3] * 3 + [1e12] * 3 + [-1e20] * 3 + [1e36] * 3, requires_grad=True)
    log_prob = discretized_gaussian_log_likelihood(x, mean, torch.full_like(x, -4.6), normal_cdf)
    log_prob.sum().backward()
    assert torch.isfinite(log_prob).all() and torch.isfinite(mean.grad).all()
    assert log_prob.min().item() == pytest.approx(math.log(1e-12))


@pytest.mark.parametrize("t", [1, 10, 500, 999])
def test_vb_vanishes_for_exact_mean_and_posterior_variance(diffusion, t):
    generator = torch.Generator().manual_seed(t)
    x0 = torch.randn(2, 4, 2, 4, 4, generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    timesteps = torch.full((2,), t)
    # v = -1 puts the model variance at beta-tilde_t, the true posterior variance
    out = torch.cat([noise, -torch.ones_like(noise)], dim=1)
    losses = diffusion.training_losses(out, x0, diffusion.q_sample(x0, timesteps, noise), timesteps, noise)
    assert losses["mse"].abs().max().item() == 0.0
    assert losses["vb"].abs().max().item() < 1e-5


def test_vb_gradient_reaches_variance_channels_only(diffusion):
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 2, 4, 4, generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    timesteps = torch.tensor([0, 7, 800])
    out = torch.randn(3, 8, 2, 4, 4, generator=generator).mul(0.5).requires_grad_()
    x_t = diffusion.q_sample(x0, timesteps, noise)

    diffusion.training_losses(out, x0, x_t, timesteps, noise)["vb"].sum().backward()
    assert torch.equal(out.grad[:, :4], torch.zeros_like(out.grad[:, :4]))
    assert (out.grad[:, 4:].abs().flatten(1).sum(1) > 0).all()

    out.grad = None
    diffusion.training_losses(out, x0, x_t, timesteps, noise)["loss"].sum().backward()
    assert (out.grad[:, :4].abs().flatten(1).sum(1) > 0).all()


def test_minimising_over_v_finds_the_optimal_variance(diffusion):
    t = 1
    timesteps = torch.tensor([t])
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 1, 8, 8, generator=generator, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    x_t = diffusion.q_sample(x0, timesteps, noise)

    # Choose a constant eps error so the squared mean error is half-way between beta-tilde_t and beta_t:
    # the best model variance, beta-tilde_t + mean error^2, then lies strictly inside the learned range.
    beta, beta_tilde = diffusion.betas[t].item(), diffusion.posterior_variance[t].item()
    _, abar, _ = _schedule(t)
    mean_per_eps = diffusion.posterior_mean_coef_x0[t].item() * math.sqrt((1 - abar) / abar)
    mean_error_sq = (beta - beta_tilde) / 2
    eps_hat = noise + math.sqrt(mean_error_sq) / mean_per_eps
    v_best = 2 * math.log((beta_tilde + mean_error_sq) / beta_tilde) / math.log(beta / beta_tilde) - 1
    assert -1 < v_best < 1

    v = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([v], lr=5.0)

    def vb() -> torch.Tensor:
        out = torch.cat([eps_hat, v.expand_as(noise)], dim=1)
        return diffusion.training_losses(out, x0, x_t, timesteps, noise)["vb"].sum()

    initial = vb().item()
    for _ in range(50):
        optimizer.zero_grad()
        vb().backward()
        optimizer.step()
    assert vb().item() < initial
    assert -1 < v.item() < 1
    assert v.item() == pytest.approx(v_best, abs=1e-3)


def test_video_latent_shapes_and_nonnegative_loss(diffusion):
    generator = torch.Generator().manual_seed(3)
    x0 = torch.randn(3, 4, 2, 4, 4, generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    timesteps = torch.tensor([0, 250, 999])
    out = torch.randn(3, 8, 2, 4, 4, generator=generator)
    out[:, 4:] = out[:, 4:].clamp(-1, 1)
    losses = diffusion.training_losses(out, x0, diffusion.q_sample(x0, timesteps, noise), timesteps, noise)
    assert set(losses) == {"loss", "mse", "vb"}
    for value in losses.values():
        assert value.shape == (3,) and value.dtype == torch.float32 and torch.isfinite(value).all()
    assert (losses["mse"] >= 0).all() and (losses["vb"] >= 0).all()
    assert torch.allclose(losses["loss"], losses["mse"] + losses["vb"])


def test_bf16_inputs_are_computed_in_float32(diffusion):
    generator = torch.Generator().manual_seed(4)
    x0 = torch.randn(2, 4, 1, 4, 4, generator=generator).bfloat16()
    noise = torch.randn(x0.shape, generator=generator).bfloat16()
    timesteps = torch.tensor([0, 600])
    out = torch.randn(2, 8, 1, 4, 4, generator=generator).clamp(-1, 1).bfloat16()
    x_t = diffusion.q_sample(x0, timesteps, noise)

    low = diffusion.training_losses(out, x0, x_t, timesteps, noise)
    full = diffusion.training_losses(out.float(), x0.float(), x_t.float(), timesteps, noise.float())
    for name in ("loss", "mse", "vb"):
        assert low[name].dtype == torch.float32
        assert torch.equal(low[name], full[name])


def test_snr_loss_targets_x0_up_to_step_249():
    diffusion = ImprovedDDPM(snr_loss=True)
    plain = ImprovedDDPM()
    generator = torch.Generator().manual_seed(5)
    x0 = torch.randn(3, 4, 1, 2, 2, generator=generator, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    out = torch.randn(3, 8, 1, 2, 2, generator=generator, dtype=torch.float64)
    timesteps = torch.tensor([10, 249, 250])
    x_t = diffusion.q_sample(x0, timesteps, noise)

    losses = diffusion.training_losses(out, x0, x_t, timesteps, noise)
    reference = plain.training_losses(out, x0, x_t, timesteps, noise)
    for i, t in enumerate(timesteps.tolist()):
        _, abar, _ = _schedule(t)
        x0_hat = (x_t[i] - math.sqrt(1 - abar) * out[i, :4]) / math.sqrt(abar)
        expected = ((x0[i] - x0_hat) ** 2).mean() if t <= 249 else ((noise[i] - out[i, :4]) ** 2).mean()
        assert losses["mse"][i].item() == pytest.approx(expected.item(), rel=1e-9)
    assert torch.equal(losses["vb"], reference["vb"])
    assert losses["mse"][2] == reference["mse"][2] and losses["mse"][0] != reference["mse"][0]


def test_sample_timesteps_uniform_over_all_steps(diffusion):
    t = diffusion.sample_timesteps(20000, torch.Generator().manual_seed(0))
    assert t.shape == (20000,) and t.dtype == torch.int64
    assert t.min().item() == 0 and t.max().item() == 999
    assert abs(t.double().mean().item() - 499.5) < 10
    again = diffusion.sample_timesteps(20000, torch.Generator().manual_seed(0), device="cpu")
    assert torch.equal(t, again)


def test_sample_timesteps_from_a_lower_bound(diffusion):
    t = diffusion.sample_timesteps(20000, torch.Generator().manual_seed(0), low=200)
    assert t.min().item() == 200 and t.max().item() == 999
    assert abs(t.double().mean().item() - 599.5) < 10
    with pytest.raises(ValueError, match="low"):
        diffusion.sample_timesteps(4, low=1000)


def test_sample_timesteps_in_a_band(diffusion):
    t = diffusion.sample_timesteps(20000, torch.Generator().manual_seed(0), low=0, high=700)
    assert t.min().item() == 0 and t.max().item() == 699
    assert abs(t.double().mean().item() - 349.5) < 10
    for low, high in ((500, 500), (0, 1001), (600, 300)):
        with pytest.raises(ValueError, match="low < high"):
            diffusion.sample_timesteps(4, low=low, high=high)


def test_mismatched_shapes_raise(diffusion):
    x0 = torch.zeros(2, 4, 1, 2, 2)
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="2C"):
        diffusion.training_losses(torch.zeros(2, 4, 1, 2, 2), x0, x0, t, x0)
    with pytest.raises(ValueError, match="t must have shape"):
        diffusion.training_losses(torch.zeros(2, 8, 1, 2, 2), x0, x0, torch.tensor([1]), x0)


# --------------------------------------------------------------------------------------------------
# Respacing (train_sampling_steps below 1000)


def test_spaced_timesteps_are_evenly_spread_over_the_1000_steps():
    assert spaced_timesteps(1000, 500) == [round(i * 999 / 499) for i in range(500)]  # no halves: 499 is prime
    assert spaced_timesteps(1000, 1000) == list(range(1000))
    assert spaced_timesteps(1000, 3) == [0, 500, 999]  # 499.5 rounds half to even
    assert spaced_timesteps(1000, 2) == [0, 999]
    for count in range(2, 1001):
        kept = spaced_timesteps(1000, count)
        assert len(kept) == count and kept[0] == 0 and kept[-1] == 999
        assert all(a < b for a, b in zip(kept, kept[1:]))
        assert all(abs(step - i * 999 / (count - 1)) <= 0.5 + 1e-9 for i, step in enumerate(kept))
    with pytest.raises(ValueError, match="1001 of 1000"):
        spaced_timesteps(1000, 1001)


@pytest.mark.parametrize("steps", [500, 250, 37])
def test_fewer_training_steps_respace_the_1000_step_process(steps):
    diffusion = ImprovedDDPM(num_timesteps=steps)
    abar = _cumulative_alphas()
    kept = spaced_timesteps(1000, steps)
    assert diffusion.timestep_map.tolist() == kept
    for i, step in enumerate(kept):
        previous = abar[kept[i - 1]] if i > 0 else 1.0
        assert diffusion.betas[i].item() == pytest.approx(1.0 - abar[step] / previous, rel=1e-9)
        assert diffusion.alphas_cumprod[i].item() == pytest.approx(abar[step], rel=1e-9)
    # the model sees the original steps, the schedule is indexed by position
    t = torch.tensor([0, steps // 2, steps - 1])
    assert diffusion.model_timesteps(t).tolist() == [kept[0], kept[steps // 2], kept[-1]]
    assert diffusion.sample_timesteps(5000, torch.Generator().manual_seed(0)).max().item() == steps - 1


def test_respacing_differs_from_a_fresh_short_schedule():
    respaced = ImprovedDDPM(num_timesteps=500).betas
    fresh = torch.linspace(1e-4, 0.02, 500, dtype=torch.float64)
    assert ((respaced - fresh).abs() / respaced).max().item() > 0.5
    full = ImprovedDDPM()
    assert torch.equal(full.timestep_map, torch.arange(1000))
    assert torch.equal(full.model_timesteps(torch.tensor([7])), torch.tensor([7]))
