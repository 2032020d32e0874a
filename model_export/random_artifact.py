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
from rsd.config import UNetConfig, VQConfig
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


def random_weights(
    spec: ModelSpec,
    seed: int,
    stds: tuple[float, float],
    *,
    spread_codebook: bool = False,
    shared_teacher: bool = False,
) -> dict[str, torch.Tensor]:
    """Artifact weights for `spec`'s nets: student, autoencoder, then teacher, each `randomised_state`
    from one generator seeded with `seed` (torch's global seed too: the nets' own initialisation).
    stds: the noise std of the UNets' and of the autoencoder's weights.

    spread_codebook: a standard-normal VQ codebook (see the module docstring). shared_teacher: the
    teacher's weights are the student's (a teacher-only artifact, spec.student == spec.teacher).
    """
    unet_std, vq_std = stds
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    student = randomised_state(UNetModelSwin(spec.student), generator, unet_std)
    autoencoder = randomised_state(VQModelTorch(spec.autoencoder), generator, vq_std)
    if spread_codebook:
        shape = (spec.autoencoder.n_embed, spec.autoencoder.embed_dim)
        autoencoder["quantize.embedding.weight"] = torch.randn(shape, generator=generator)
    if spec.teacher is None:
        teacher = None
    elif shared_teacher:
        teacher = student
    else:
        teacher = randomised_state(UNetModelSwin(spec.teacher), generator, unet_std)
    return joined_weights(student, autoencoder, teacher)


def write_random_artifact(out: str | Path, seed: int = 0, teacher: bool = True) -> Path:
    """Write the official student (+ teacher) UNet and VQ-f4 with random weights into `out`."""
    student = UNetConfig(noise_channels=1)
    provenance = {"weights": f"random (seed {seed}); for export and speed checks only"}
    spec = ModelSpec(
        name="official-random",
        student=student,
        autoencoder=VQConfig(),
        teacher=student.with_noise_channels(0) if teacher else None,
        provenance=provenance,
    )  # the schedule, tiles [64, 128], default tile 64 and overlap 16 are ModelSpec's defaults
    weights = random_weights(spec, seed, stds=(0.01, 0.0), spread_codebook=True)
    return save_artifact(out, spec, weights)
