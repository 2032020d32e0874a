"""A random-weight artifact of the official x4 configuration (method.md 2.1, 3), for export and benchmark runs
where the published weights are not at hand: speed and export behaviour do not depend on the values.

Weights are the nets' own initialisation plus small Gaussian noise, so that no branch is dead (the
ResBlocks' last convs start at zero, method.md 2.2), and a codebook spread like real VQ latents (a
standard normal), so that the quantiser sees realistic distance gaps rather than the initialisation's
1e-4-wide ball where every latent lands on a near-tie.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rsd.artifact import joined_weights, save_artifact
from rsd.config import ScheduleConfig, UNetConfig, VQConfig
from rsd.nets.unet import UNetModelSwin
from rsd.nets.vqgan import VQModelTorch
from rsd.spec import ModelSpec


def randomised_state(module: torch.nn.Module, generator: torch.Generator, std: float) -> dict[str, torch.Tensor]:
    """The module's initial weights plus N(0, std) noise, so no branch is dead; the tests' random
    artifacts are built with it too."""
    state = module.state_dict()
    for key, value in state.items():
        if value.is_floating_point() and "attn_mask" not in key:  # masks are fixed buffers (method.md 2.5)
            value.add_(torch.randn(value.shape, generator=generator) * std)
    return state


def write_random_artifact(out: str | Path, seed: int = 0, teacher: bool = True) -> Path:
    """Write the official student (+ teacher) UNet and VQ-f4 with random weights into `out`."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    student_cfg = UNetConfig(noise_channels=1)
    teacher_cfg = student_cfg.with_noise_channels(0) if teacher else None
    vq_cfg = VQConfig()
    student = randomised_state(UNetModelSwin(student_cfg), generator, 0.01)
    autoencoder = randomised_state(VQModelTorch(vq_cfg), generator, 0.0)
    autoencoder["quantize.embedding.weight"] = torch.randn(vq_cfg.n_embed, vq_cfg.embed_dim, generator=generator)
    teacher_state = None if teacher_cfg is None else randomised_state(UNetModelSwin(teacher_cfg), generator, 0.01)
    weights = joined_weights(student, autoencoder, teacher_state)
    spec = ModelSpec(
        name="official-random",
        student=student_cfg,
        autoencoder=vq_cfg,
        schedule=ScheduleConfig(),
        teacher=teacher_cfg,
        tiles=[64, 128],
        default_tile=64,
        default_overlap=16,
        provenance={"weights": f"random (seed {seed}); for export and speed checks only"},
    )
    return save_artifact(out, spec, weights)
