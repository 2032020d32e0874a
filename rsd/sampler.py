"""The teacher's 15-step ancestral sampler (method.md 1.2, 5.3): baseline and quality reference.

Same pipeline as OneStepSR but with the noise-free teacher run T times:
    z = z_y + kappa*sqrt(eta_T)*eps;  for t = T-1..0: x0 = f(z/s_t, t, lq); z = posterior sample
then decode (quantizing), the optional LR-consistency step (spec `lr_consistency`) and clamp.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rsd.denoiser import Denoiser
from rsd.nets.unet import UNetModelSwin
from rsd.nets.vqgan import VQModelTorch
from rsd.onestep import bicubic_x4, finish_output, load_nets
from rsd.schedule import Schedule
from rsd.spec import ModelSpec


class TeacherSampler(nn.Module):
    def __init__(self, spec: ModelSpec, teacher: UNetModelSwin, autoencoder: VQModelTorch) -> None:
        super().__init__()
        self.spec = spec
        self.schedule = Schedule(spec.schedule)
        self.denoiser = Denoiser(teacher, self.schedule)
        self.autoencoder = autoencoder

    @classmethod
    def from_artifact(cls, model_dir: str | Path, device: str | torch.device = "cpu") -> TeacherSampler:
        return cls(*load_nets(model_dir, "teacher", device)).eval()

    @property
    def latent_channels(self) -> int:
        """C: the latent's channels (3 for the published VQ-f4)."""
        return self.spec.autoencoder.embed_dim

    @property
    def noise_channels(self) -> int:
        """C channels of prior noise, then C per step t = T-1 .. 1 (no noise is added at t = 0)."""
        return self.latent_channels * self.schedule.T

    def forward(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """lq: (N, 3, h, w) in [-1, 1]; noise: (N, C*T, h, w) standard normal. Returns (N, 3, 4h, 4w)."""
        n, _, h, w = lq.shape
        if tuple(noise.shape) != (n, self.noise_channels, h, w):
            raise ValueError(f"noise must be {(n, self.noise_channels, h, w)}; got {tuple(noise.shape)}")
        z_y = self.autoencoder.encode(bicubic_x4(lq))
        c = self.latent_channels
        z = self.schedule.prior_sample(z_y, noise[:, :c])
        for step, t_idx in enumerate(range(self.schedule.T - 1, -1, -1)):
            t = torch.full((n,), t_idx, dtype=torch.long, device=lq.device)
            x0 = self.denoiser(z, t, lq)
            # p_sample adds no noise at t = 0; channels for step k are C(k+1):C(k+2).
            step_noise = noise[:, c * (step + 1) : c * (step + 2)] if t_idx > 0 else torch.zeros_like(z)
            z = self.schedule.p_sample(x0, z, t, step_noise)
        return finish_output(self.spec, self.autoencoder.decode(z), lq)
