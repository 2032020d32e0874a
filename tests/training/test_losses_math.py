"""Toy-problem checks of the distillation math (method.md 4.4-4.7).

1-D Gaussian world: data x0 ~ N(m, s^2) (independent of the fixed LR latent y), ResShift forward process
x_t = (1 - eta_t) x0 + eta_t y + kappa sqrt(eta_t) eps. The conditional mean E[x0 | x_t] is linear in
x_t, so the teacher and the optimal fake model have closed forms, and expectations over (xi, eps) are
computed exactly with Gauss-Hermite quadrature (every integrand is a polynomial of degree 2).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsd.config import ScheduleConfig
from rsd.schedule import Schedule
from training.losses import fake_loss, generator_loss, timestep_weights

SCHEDULE = Schedule(ScheduleConfig())
Y = 0.3  # the LR latent (a constant)
M_DATA, S_DATA = 0.8, 0.5  # the teacher's data distribution


def posterior_mean_coeffs(m: float | torch.Tensor, s2: float | torch.Tensor, t: torch.Tensor):
    """E[x0 | x_t] = c0 + c1 x_t for x0 ~ N(m, s2); per-timestep coefficient tensors."""
    eta = torch.from_numpy(SCHEDULE.etas)[t]
    var_noise = SCHEDULE.kappa**2 * eta
    gain = (1 - eta) * s2 / ((1 - eta) ** 2 * s2 + var_noise)
    mu_t = (1 - eta) * m + eta * Y
    return m - gain * mu_t, gain


def conditional_mean(m, s2):
    """An X0Predictor (x_t, t, lq) -> E[x0 | x_t] for x0 ~ N(m, s2)."""

    def predict(x_t: torch.Tensor, t: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        c0, c1 = posterior_mean_coeffs(m, s2, t)
        return c0.view(-1, 1, 1, 1) + c1.view(-1, 1, 1, 1) * x_t

    return predict


def quadrature(n: int = 6):
    """Nodes and weights of E over (xi, eps) ~ N(0, I_2) for every t: flattened (N,) tensors."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    xi, eps = np.meshgrid(x, x, indexing="ij")
    weight = np.outer(w, w).ravel()
    t = np.repeat(np.arange(SCHEDULE.T), n * n)
    xi = np.tile(xi.ravel(), SCHEDULE.T)
    eps = np.tile(eps.ravel(), SCHEDULE.T)
    weight = np.tile(weight, SCHEDULE.T) / SCHEDULE.T  # uniform over t (w_t = 1, method.md 4.4)
    as_t = lambda a: torch.from_numpy(a).to(torch.float64).view(-1, 1, 1, 1)  # noqa: E731
    return as_t(xi), as_t(eps), torch.from_numpy(t), torch.from_numpy(weight)


def closed_form_objective(a: float, b: float) -> float:
    """J(theta) = mean_t E_{x_t ~ p_theta} (f*(x_t) - f_phi(theta)(x_t))^2, phi(theta) optimal (4.4)."""
    t = torch.arange(SCHEDULE.T)
    eta = torch.from_numpy(SCHEDULE.etas)
    c0s, c1s = posterior_mean_coeffs(M_DATA, S_DATA**2, t)
    c0f, c1f = posterior_mean_coeffs(a, b**2, t)
    d0, d1 = c0s - c0f, c1s - c1f
    mean = (1 - eta) * a + eta * Y
    var = (1 - eta) ** 2 * b**2 + SCHEDULE.kappa**2 * eta
    return float(((d0 + d1 * mean) ** 2 + d1**2 * var).mean())


def implementation_objective(a: torch.Tensor, b: torch.Tensor, detach_xt: bool = False, fake=None):
    """E[generator_loss] with the fake frozen at the student's conditional mean (Danskin)."""
    xi, eps, t, weight = quadrature()
    x0_hat = a + b * xi
    fake = fake or conditional_mean(float(a.detach()), float(b.detach()) ** 2)
    loss, aux = generator_loss(
        conditional_mean(M_DATA, S_DATA**2),
        fake,
        SCHEDULE,
        x0_hat,
        torch.full_like(x0_hat, Y),
        torch.zeros_like(x0_hat),
        t,
        eps,
        torch.ones_like(weight),
        detach_xt=detach_xt,
        sid_normalization=False,
    )
    return (weight * loss).sum(), aux


@pytest.mark.parametrize(("a0", "b0"), [(0.2, 0.9), (1.1, 0.2), (0.8, 0.5)])
def test_generator_gradient_equals_gradient_of_objective(a0: float, b0: float) -> None:
    a = torch.tensor(a0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(b0, dtype=torch.float64, requires_grad=True)
    value, _ = implementation_objective(a, b)
    grad_a, grad_b = torch.autograd.grad(value, (a, b))
    # The tractable form equals J at the optimal fake (4.4 identity) ...
    assert value.item() == pytest.approx(closed_form_objective(a0, b0), rel=1e-9, abs=1e-12)
    # ... and its gradient with the fake frozen is J's gradient (fake re-fitted at every point).
    h = 1e-6
    fd_a = (closed_form_objective(a0 + h, b0) - closed_form_objective(a0 - h, b0)) / (2 * h)
    fd_b = (closed_form_objective(a0, b0 + h) - closed_form_objective(a0, b0 - h)) / (2 * h)
    assert grad_a.item() == pytest.approx(fd_a, rel=1e-5, abs=1e-9)
    assert grad_b.item() == pytest.approx(fd_b, rel=1e-5, abs=1e-9)
    if (a0, b0) != (M_DATA, S_DATA):
        assert abs(fd_a) + abs(fd_b) > 1e-3  # a non-trivial gradient was compared


def test_detached_xt_keeps_only_the_direct_term() -> None:
    a = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    exact = torch.autograd.grad(implementation_objective(a, b)[0], (a, b))
    detached = torch.autograd.grad(implementation_objective(a, b, detach_xt=True)[0], (a, b))
    # direct term: d/dx0_hat [(p* - x0)^2 - (p_phi - x0)^2] = 2 (p_phi - p*) with p's fixed
    xi, eps, t, weight = quadrature()
    x0 = (0.2 + 0.9 * xi).detach()
    x_t = SCHEDULE.q_sample(x0, torch.full_like(x0, Y), t, eps)
    p_star = conditional_mean(M_DATA, S_DATA**2)(x_t, t, x0)
    p_phi = conditional_mean(0.2, 0.81)(x_t, t, x0)
    direct = 2 * (p_phi - p_star).flatten() * weight
    assert detached[0].item() == pytest.approx(direct.sum().item(), rel=1e-9)
    assert detached[1].item() == pytest.approx((direct * xi.flatten()).sum().item(), rel=1e-9)
    assert abs(detached[0].item() - exact[0].item()) > 1e-3  # the two flows really differ


def fit_fake_by_fake_loss(a: float, b: float, samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-timestep linear fake model c0[t] + c1[t] x_t fitted by minimising our fake loss on student
    samples (method.md 4.5); returns (c0, c1) of shape (T,)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(SCHEDULE.T).repeat_interleave(samples)
    x0_hat = a + b * torch.randn(len(t), 1, 1, 1, generator=gen, dtype=torch.float64)
    eps = torch.randn(x0_hat.shape, generator=gen, dtype=torch.float64)
    x_t = SCHEDULE.q_sample(x0_hat, torch.full_like(x0_hat, Y), t, eps)
    c0 = torch.zeros(SCHEDULE.T, dtype=torch.float64, requires_grad=True)
    c1 = torch.zeros(SCHEDULE.T, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([c0, c1], max_iter=30, tolerance_grad=1e-10, line_search_fn="strong_wolfe")
    weight = timestep_weights(SCHEDULE, "uniform")[t]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        pred = c0[t].view(-1, 1, 1, 1) + c1[t].view(-1, 1, 1, 1) * x_t
        loss = fake_loss(pred, x0_hat, weight).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return c0.detach(), c1.detach()


def test_fake_loss_is_minimised_by_the_conditional_mean() -> None:
    a, b = 0.1, 0.7
    c0, c1 = fit_fake_by_fake_loss(a, b, samples=20000, seed=0)
    want0, want1 = posterior_mean_coeffs(a, b**2, torch.arange(SCHEDULE.T))
    assert torch.allclose(c1, want1, atol=0.02), (c1, want1)
    assert torch.allclose(c0, want0, atol=0.02), (c0, want0)
    # and the exact expected fake loss is larger for any other linear predictor
    xi, eps, t, weight = quadrature()
    x0_hat = a + b * xi
    x_t = SCHEDULE.q_sample(x0_hat, torch.full_like(x0_hat, Y), t, eps)

    def expected(d0: float, d1: float) -> float:
        pred = (want0[t] + d0).view(-1, 1, 1, 1) + (want1[t] + d1).view(-1, 1, 1, 1) * x_t
        return float((weight * fake_loss(pred, x0_hat, torch.ones_like(weight))).sum())

    best = expected(0, 0)
    for d0, d1 in [(0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05), (0.03, -0.03)]:
        assert expected(d0, d1) > best


def fitted_fake(c0: torch.Tensor, c1: torch.Tensor):
    def predict(x_t: torch.Tensor, t: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        return c0[t].view(-1, 1, 1, 1) + c1[t].view(-1, 1, 1, 1) * x_t

    return predict


def test_objective_vanishes_when_student_matches_teacher() -> None:
    matched = torch.tensor(M_DATA, dtype=torch.float64), torch.tensor(S_DATA, dtype=torch.float64)
    off = torch.tensor(M_DATA + 0.5, dtype=torch.float64), torch.tensor(S_DATA * 0.5, dtype=torch.float64)
    values = {}
    for name, (a, b) in {"matched": matched, "off": off}.items():
        fake = fitted_fake(*fit_fake_by_fake_loss(float(a), float(b), samples=20000, seed=1))
        a = a.clone().requires_grad_(True)
        b = b.clone().requires_grad_(True)
        value, _ = implementation_objective(a, b, fake=fake)
        grads = torch.autograd.grad(value, (a, b))
        values[name] = (value.item(), max(abs(g.item()) for g in grads))
    assert abs(values["matched"][0]) < 2e-4
    assert values["matched"][1] < 5e-3
    assert values["off"][0] > 100 * abs(values["matched"][0])
    assert values["off"][1] > 0.05


def test_sid_normalisation_and_time_weighting() -> None:
    gen = torch.Generator().manual_seed(3)
    x0_hat = torch.randn(4, 3, 2, 2, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 5, 9, 14])
    eps = torch.randn(x0_hat.shape, generator=gen, dtype=torch.float64)
    teacher = lambda x, t, lq: 0.5 * x  # noqa: E731
    fake = lambda x, t, lq: 0.4 * x + 0.1  # noqa: E731
    args = (teacher, fake, SCHEDULE, x0_hat, torch.zeros_like(x0_hat), x0_hat, t, eps, torch.ones(4))
    raw, aux = generator_loss(*args, sid_normalization=False)
    sid, _ = generator_loss(*args, sid_normalization=True)
    both, _ = generator_loss(*args, sid_normalization=True, time_power_ten=True)
    x_t = SCHEDULE.q_sample(x0_hat, torch.zeros_like(x0_hat), t, eps)
    denom = (0.5 * x_t - x0_hat).abs().flatten(1).mean(1)
    assert torch.allclose(raw, aux["bracket"])
    assert torch.allclose(sid, raw / (denom + 1e-8))
    factor = torch.tensor([10.0, 10 ** (1 - 5 / 14), 10 ** (1 - 9 / 14), 1.0], dtype=torch.float64)
    assert torch.allclose(both, raw * factor / (denom + 1e-8))


def test_kl_timestep_weights_follow_resshift() -> None:
    w = timestep_weights(SCHEDULE, "kl")
    raw = SCHEDULE.alpha[1:] / (2 * SCHEDULE.kappa**2 * SCHEDULE.etas[1:] * SCHEDULE.etas_prev[1:])
    assert w.mean().item() == pytest.approx(1.0)
    np.testing.assert_allclose((w[1:] / w[1]).numpy(), raw / raw[0], rtol=1e-10)
    assert torch.equal(timestep_weights(SCHEDULE, "uniform"), torch.ones(SCHEDULE.T, dtype=torch.float64))
