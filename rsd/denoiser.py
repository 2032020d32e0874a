"""Denoiser: a UNet joined with the schedule's input scaling (architecture.md: the net does not know
the schedule). `denoise` is the one place the scaling is applied: the Denoiser module (sampler,
one-step graph, exporter) and every trainer call it, so no caller can forget it (method.md 1.4: only
x_t is scaled; lq and the student noise are not)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rsd.nets.unet import UNetModelSwin
from rsd.schedule import Schedule


def denoise(
    net: Callable[..., torch.Tensor],
    schedule: Schedule,
    x_t: torch.Tensor,
    t: torch.Tensor,
    lq: torch.Tensor,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """`net(scaled x_t, t, lq[, noise])`: `net` is a UNet, its DDP wrapper, or a method taking the
    same arguments (the critic's `middle_features`). x_t: (N, 3, h, w) unscaled latent; t: (N,) int64.
    The noise argument is passed only when given (a teacher net takes none)."""
    scaled = schedule.scale_input(x_t, t)
    if noise is None:
        return net(scaled, t, lq)
    return net(scaled, t, lq, noise)


class Denoiser(nn.Module):
    def __init__(self, net: UNetModelSwin, schedule: Schedule) -> None:
        super().__init__()
        self.net = net
        self.schedule = schedule

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, lq: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_t: (N, 3, h, w) latent; t: (N,) int64 in [0, T); lq: (N, 3, h, w) in [-1, 1];
        noise: (N, noise_channels, h, w) for a student. Returns the x0 prediction (N, 3, h, w)."""
        return denoise(self.net, self.schedule, x_t, t, lq, noise)
