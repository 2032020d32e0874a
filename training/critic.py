"""The fake ResShift model with its GAN head (`UNetModelSwinGanWrapper`, method.md 4.3 [reconstructed]).

One module so that one optimizer (and one DDP wrapper) owns the fake UNet and the head: a single
`forward` serves both the x0-prediction on noisy latents and the discriminator logits on clean
latents, so DDP sees every parameter used exactly once per backward.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rsd.denoiser import denoise
from rsd.nets.unet import UNetModelSwin
from rsd.schedule import Schedule


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = 32
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


class GANHead(nn.Module):
    """DMD2-style classifier on the bottleneck features (method.md 4.3).

    (N, C, s, s) middle-block features -> (N,) logits: Conv4x4 s2 p1 -> GN -> SiLU -> Conv4x4 s4 ->
    GN -> SiLU -> Conv1x1 (C -> 1), averaged over what spatial extent remains (1x1 for the official
    8x8 bottleneck of 256^2 crops). Needs s >= 8.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(channels, channels, 4, stride=2, padding=1),
            _group_norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 4, stride=4, padding=0),
            _group_norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, 1, 1),
        )

    def forward(self, features: Tensor) -> Tensor:
        if features.shape[-1] < 8 or features.shape[-2] < 8:
            raise ValueError(f"GAN head needs a bottleneck of at least 8x8, got {tuple(features.shape[-2:])}")
        return self.layers(features).mean(dim=(1, 2, 3))


class FakeModel(nn.Module):
    """f_phi (a copy of the teacher, trained on student samples) + optional GAN head D_psi."""

    def __init__(self, unet: UNetModelSwin, schedule: Schedule, with_head: bool) -> None:
        super().__init__()
        self.unet = unet
        self.schedule = schedule
        self.head = GANHead(self._bottleneck_channels(unet)) if with_head else None

    @staticmethod
    def _bottleneck_channels(unet: UNetModelSwin) -> int:
        cfg = unet.config
        return cfg.model_channels * cfg.channel_mult[-1]

    def predict_x0(self, x_t: Tensor, t: Tensor, lq: Tensor) -> Tensor:
        """x_t: (N, 3, h, w) unscaled noisy latent; t: (N,) int64; lq: (N, 3, h, w). -> x0 (N, 3, h, w)."""
        return denoise(self.unet, self.schedule, x_t, t, lq)

    def logits(self, x0: Tensor, lq: Tensor) -> Tensor:
        """Discriminator logits (N,) of clean latents x0 (N, 3, h, w): fake-UNet bottleneck features
        at t = 0 on scale(x0, 0) (method.md 4.3; diffusion_gan off)."""
        if self.head is None:
            raise RuntimeError("this fake model was built without a GAN head (gan_weight = 0)")
        t0 = torch.zeros(x0.shape[0], dtype=torch.int64, device=x0.device)
        return self.head(denoise(self.unet.middle_features, self.schedule, x0, t0, lq))

    def forward(
        self, x_t: Tensor, t: Tensor, lq: Tensor, disc_x0: Tensor | None = None, disc_lq: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """(x0 prediction at x_t, logits of `disc_x0` or None) in one call (for DDP)."""
        pred = self.predict_x0(x_t, t, lq)
        if disc_x0 is None or disc_lq is None:
            return pred, None
        return pred, self.logits(disc_x0, disc_lq)
