"""The K-step ancestral sampler (method.md 1.2, 5.3) and `load_graph`, the one way to build an artifact's graph.

ResShift (15 or 4 steps) and the RSD teacher run a noise-free net K = T times:
    z = z_y + kappa*sqrt(eta_T)*eps;  for t = T-1..0: x0 = f(z/s_t, t, lq); z = posterior sample
then decode (quantizing), the optional LR-consistency step (spec `lr_consistency`) and clamp.
The K steps are unrolled in the graph and every per-step noise is a slice of the `noise` input, so the
output is a function of (lq, noise) like the one-step graph's (rsd.onestep.SRGraph): backends, the
exporter and the service run either without knowing which (architecture.md invariant 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

import torch

from rsd.onestep import (
    DenoisingGraph,
    OneStepSR,
    SRGraph,
    bicubic_x4,
    check_graph_input,
    finish_output,
    load_nets,
    should_check,
)
from rsd.spec import read_spec


class AncestralSR(DenoisingGraph):
    """K = schedule.steps ancestral steps with `net` (no noise input), unrolled; `from_artifact` only
    (an ancestral artifact's own net is its `student.*`: ResShift s15 / s4)."""

    @property
    def latent_channels(self) -> int:
        """C: the latent's channels (3 for the published VQ-f4)."""
        return self.spec.autoencoder.embed_dim

    @property
    def noise_channels(self) -> int:
        """C channels of prior noise, then C per step t = T-1 .. 1 (no noise is added at t = 0)."""
        return self.latent_channels * self.schedule.T  # == spec.graph_noise_channels for ancestral specs

    def check_input(self, lq: torch.Tensor, noise: torch.Tensor) -> None:
        check_graph_input(self.spec, self.noise_channels, lq, noise)

    def trajectory(self, lq: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(final latent x_0, the x0 prediction of every step t = T-1 .. 0); no shape check."""
        z_y = self.autoencoder.encode(bicubic_x4(lq))
        c = self.latent_channels
        z = self.schedule.prior_sample(z_y, noise[:, :c])
        predictions = []
        for step, t_idx in enumerate(range(self.schedule.T - 1, -1, -1)):
            t = torch.full_like(lq[:, 0, 0, 0], t_idx, dtype=torch.long)  # batch stays dynamic in exports
            x0 = self.denoiser(z, t, lq)
            predictions.append(x0)
            # p_sample adds no noise at t = 0; channels for step k are C(k+1):C(k+2).
            step_noise = noise[:, c * (step + 1) : c * (step + 2)] if t_idx > 0 else torch.zeros_like(z)
            z = self.schedule.p_sample(x0, z, t, step_noise)
        return z, predictions

    def forward(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """lq: (N, 3, h, w) in [-1, 1]; noise: (N, C*T, h, w) standard normal. Returns (N, 3, 4h, 4w)."""
        if should_check():
            self.check_input(lq, noise)
        z, _ = self.trajectory(lq, noise)
        return finish_output(self.spec, self.autoencoder.decode(z), lq)


class TeacherSampler(AncestralSR):
    """The 15-step sampler over an RSD artifact's `teacher.*` net (baseline and quality reference)."""

    @classmethod
    def from_artifact(cls, model_dir: str | Path, device: str | torch.device = "cpu") -> Self:
        return cls(*load_nets(model_dir, "teacher", device)).eval()


def load_graph(model_dir: str | Path, device: str | torch.device = "cpu") -> OneStepSR | AncestralSR:
    """The graph an artifact's spec names (`sampler.kind`): what every consumer runs."""
    graph: OneStepSR | AncestralSR
    if read_spec(model_dir).sampler.kind == "ancestral":
        graph = AncestralSR.from_artifact(model_dir, device)
    else:
        graph = OneStepSR.from_artifact(model_dir, device)
    return graph


__all__ = ["AncestralSR", "SRGraph", "TeacherSampler", "load_graph"]
