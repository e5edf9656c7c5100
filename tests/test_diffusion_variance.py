"""clamp_variance: sampling keeps the learned-range variance output inside [-1, 1]; training never clamps;
off (the default, as in the public code) leaves every value as it was."""

from __future__ import annotations

import torch

from timar_model.model.diffusion import create_diffusion


def _net(v: float):
    def net(x, t, c):  # x0 prediction = the noisy input itself, variance output v everywhere
        return torch.cat([x, torch.full_like(x, v)], dim=1)

    return net


def test_clamped_variance_stays_between_posterior_and_beta():
    plain, clamped = create_diffusion("5"), create_diffusion("5", clamp_variance=True)
    x, c = torch.randn(4, 56), torch.zeros(4, 8)
    for i in range(plain.num_timesteps):
        t = torch.full((4,), i, dtype=torch.long)
        hi = clamped.p_mean_variance(_net(1.0), x, t, c)["log_variance"]
        lo = clamped.p_mean_variance(_net(-1.0), x, t, c)["log_variance"]
        assert torch.equal(clamped.p_mean_variance(_net(7.0), x, t, c)["log_variance"], hi)
        assert torch.equal(clamped.p_mean_variance(_net(-5.0), x, t, c)["log_variance"], lo)
        inside = 0.3
        assert torch.equal(
            clamped.p_mean_variance(_net(inside), x, t, c)["log_variance"],
            plain.p_mean_variance(_net(inside), x, t, c)["log_variance"],
        )
        if i > 0:  # the public behaviour extrapolates beyond beta
            assert (plain.p_mean_variance(_net(7.0), x, t, c)["log_variance"] > hi + 1e-3).all()


def test_clamp_bounds_the_sample_spread_and_never_touches_training():
    plain, clamped = create_diffusion("5"), create_diffusion("5", clamp_variance=True)
    c = torch.zeros(2000, 8)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(plain.num_timesteps + 1, 2000, 56, generator=g)
    wide = plain.p_sample_loop(_net(8.0), c, 56, noise=noise)
    tight = clamped.p_sample_loop(_net(8.0), c, 56, noise=noise)
    assert tight.std() < 0.7 * wide.std()

    train_plain, train_clamped = create_diffusion(""), create_diffusion("", clamp_variance=True)
    x0, t = torch.randn(16, 56), torch.randint(0, 1000, (16,), generator=g)
    eps = torch.randn(16, 56, generator=g)
    a = train_plain.training_losses(_net(3.0), x0, t, c[:16], noise=eps)["loss"]
    b = train_clamped.training_losses(_net(3.0), x0, t, c[:16], noise=eps)["loss"]
    assert torch.equal(a, b)
