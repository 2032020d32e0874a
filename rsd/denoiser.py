"""Denoiser: a UNet joined with the schedule's input scaling (architecture.md: the net does not know
the schedule). Always applies `scale_input`, so no caller (sampler, exporter, trainer) can forget it
(method.md 1.4: only x_t is scaled; lq and the student noise are not)."""

from __future__ import annotations

import torch
from torch import nn

from rsd.nets.unet import UNetModelSwin
from rsd.schedule import Schedule


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
        return self.net(self.schedule.scale_input(x_t, t), t, lq, noise)
