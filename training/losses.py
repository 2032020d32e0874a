"""Loss terms of teacher training and RSD distillation (method.md 1.2, 4.4-4.10, 4.14).

All per-sample losses return (N,) tensors (the mean over channels and pixels of one sample), so the
caller can weight, normalise and average them; tensors are (N, C, h, w) latents unless stated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rsd.schedule import Schedule

#: (x_t, t, lq) -> x0 prediction; the callable applies the schedule's input scaling itself
X0Predictor = Callable[[Tensor, Tensor, Tensor], Tensor]


def per_sample_mean(x: Tensor) -> Tensor:
    """(N, ...) -> (N,) mean over every axis but the first."""
    return x.flatten(1).mean(dim=1)


def x0_mse(pred: Tensor, target: Tensor) -> Tensor:
    """mean_{c,h,w} (pred - target)^2 per sample (method.md 1.2 teacher loss, START_X target)."""
    return per_sample_mean((pred - target) ** 2)


def timestep_weights(schedule: Schedule, kind: Literal["uniform", "kl"]) -> Tensor:
    """w_t for t = 0..T-1 (method.md 4.4), float64 (T,).

    "uniform": 1 (the released config). "kl": coef2_t^2 / (2 posterior_var_t) = alpha_t / (2 kappa^2
    eta_t eta_{t-1}) (ResShift weight_loss_mse, with the t = 0 variance clipped to t = 1's as the
    reference does), rescaled to mean 1 so that loss magnitudes stay comparable.
    """
    if kind == "uniform":
        return torch.ones(schedule.T, dtype=torch.float64)
    coef2 = schedule.posterior_mean_coef2
    w = coef2**2 / (2 * schedule.posterior_variance_clipped)
    return torch.from_numpy(w / np.mean(w))


def fake_loss(fake_x0: Tensor, x0_hat: Tensor, weight_t: Tensor) -> Tensor:
    """w_t * mean_chw (f_phi(x_t) - sg(x0_hat))^2 per sample (method.md 4.5).

    Minimised over f_phi by the conditional mean E[x0_hat | x_t, y] (the fake ResShift of the student).
    weight_t: (N,) w_t of each sample's timestep.
    """
    return weight_t.to(fake_x0.dtype) * x0_mse(fake_x0, x0_hat.detach())


def generator_bracket(p_teacher: Tensor, p_fake: Tensor, x0_hat: Tensor) -> Tensor:
    """mean_chw [(p* - x0_hat)^2 - (p_phi - x0_hat)^2] per sample (method.md 4.6 step 4).

    Its expectation is E||f* - f_phi||^2 when f_phi is the student's conditional mean (4.4)."""
    return per_sample_mean((p_teacher - x0_hat) ** 2 - (p_fake - x0_hat) ** 2)


def generator_loss(
    teacher: X0Predictor,
    fake: X0Predictor,
    schedule: Schedule,
    x0_hat: Tensor,
    z_y: Tensor,
    lq: Tensor,
    t: Tensor,
    eps: Tensor,
    weight_t: Tensor,
    detach_xt: bool = False,
    sid_normalization: bool = True,
    time_power_ten: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The student's distribution-matching loss per sample (method.md 4.6, 4.7), shape (N,).

    x0_hat: (N, C, h, w) student output WITH its graph; z_y: LR latent; lq: (N, 3, h, w) LR image;
    t: (N,) int64 evaluation timesteps; eps: noise like x0_hat; weight_t: (N,) w_t.
    x_t = q_sample(x0_hat, z_y, t, eps) keeps its graph into the student unless `detach_xt` (the
    DMD2-style shortcut that leaves only the direct term 2 (p_phi - p*) / numel on x0_hat).
    Returns (loss, aux): aux holds, detached and per sample, the raw bracket (equal in expectation to
    the 4.4 objective when the fake is optimal), the SiD denominator and teacher_fake_gap =
    mean_chw (p* - p_phi)^2 (the 4.4 objective itself, evaluated with the current fake).
    """
    x_t = schedule.q_sample(x0_hat.detach() if detach_xt else x0_hat, z_y, t, eps)
    p_teacher = teacher(x_t, t, lq)
    p_fake = fake(x_t, t, lq)
    bracket = generator_bracket(p_teacher, p_fake, x0_hat)
    loss = weight_t.to(bracket.dtype) * bracket
    if time_power_ten:  # 4.7 option: x10 at t = 0 down to x1 at t = T-1, before the SiD division
        loss = loss * torch.pow(10.0, 1.0 - t.to(loss.dtype) / (schedule.T - 1))
    denom = per_sample_mean((p_teacher - x0_hat).abs()).detach()
    if sid_normalization:  # 4.7: SiD/DMD per-sample normaliser, detached
        loss = loss / (denom + 1e-8)
    aux = {
        "bracket": bracket.detach(),
        "sid_denominator": denom,
        "teacher_fake_gap": x0_mse(p_teacher, p_fake).detach(),
    }
    return loss, aux


def gan_discriminator_loss(
    logits_fake: Tensor, logits_real: Tensor, kind: Literal["non_saturating", "hinge"] = "non_saturating"
) -> Tensor:
    """Scalar discriminator loss (method.md 4.10): softplus(D(fake)) + softplus(-D(real)), or hinge."""
    if kind == "hinge":
        return F.relu(1 + logits_fake).mean() + F.relu(1 - logits_real).mean()
    return F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()


def gan_generator_loss(logits_fake: Tensor, kind: Literal["non_saturating", "hinge"] = "non_saturating") -> Tensor:
    """Scalar generator adversarial loss (method.md 4.10): softplus(-D(fake)), or -D(fake) for hinge."""
    if kind == "hinge":
        return -logits_fake.mean()
    return F.softplus(-logits_fake).mean()


def vq_codebook_loss(z: Tensor, z_q: Tensor, beta: float) -> Tensor:
    """VQ-VAE codebook + commitment loss: ||z_q - sg(z)||^2 + beta ||z - sg(z_q)||^2 (scalar)."""
    return F.mse_loss(z_q, z.detach()) + beta * F.mse_loss(z, z_q.detach())
