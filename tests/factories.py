"""The tests' artifacts, built in one place: small random-weight ones (nothing is downloaded) and the
one assembled from the reference goldens. The random weights come from model_export.random_artifact,
the builder `rsd export random-artifact` uses."""

from __future__ import annotations

from pathlib import Path

import torch

from model_export.random_artifact import random_weights
from rsd.artifact import joined_weights, save_artifact
from rsd.config import DDConfig, UNetConfig, VQConfig
from rsd.spec import ModelSpec
from tests.golden import golden_configs, load_npz

TINY_UNET = UNetConfig(
    image_size=16,
    in_channels=3,
    lq_size=16,
    model_channels=32,
    channel_mult=[1, 2],
    num_res_blocks=[1, 1],
    attention_resolutions=[16],
    num_head_channels=8,
    swin_embed_dim=32,
    window_size=8,
    noise_channels=1,
)
TINY_VQ = VQConfig(
    embed_dim=3,
    n_embed=64,
    ddconfig=DDConfig(ch=32, ch_mult=[1, 1, 1], num_res_blocks=1, resolution=64),
)


#: the bundled model's layout (configs/tiny_*.toml) at test size: 8 continuous latent channels, no VQ
#: middle-block attention, 4 channels per GroupNorm group, and the LR-consistency step
CONTINUOUS_VQ = VQConfig(
    embed_dim=8,
    n_embed=16,
    decode_quantized=False,
    ddconfig=DDConfig(z_channels=8, ch=32, ch_mult=[1, 1, 1], num_res_blocks=1, resolution=64, norm_groups=8,
                      mid_attention=False),
)  # fmt: skip
CONTINUOUS_UNET = TINY_UNET.model_copy(update={"in_channels": 8, "out_channels": 8})


#: the training tests' teacher: TINY_UNET in the 6-channel spelling (lq channels in `in_channels`), no noise
TEACHER = UNetConfig(**(TINY_UNET.model_dump() | {"in_channels": 6, "lq_size": None, "noise_channels": 0}))


def tiny_weights(
    seed: int = 0, teacher: bool = False, continuous: bool = False
) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    unet_cfg, vq_cfg = (CONTINUOUS_UNET, CONTINUOUS_VQ) if continuous else (TINY_UNET, TINY_VQ)
    teacher_cfg = unet_cfg.with_noise_channels(0) if teacher else None
    nets = {"student": unet_cfg, "autoencoder": vq_cfg, "teacher": teacher_cfg}
    spec = ModelSpec(name="tiny-random", **nets, tiles=[32, 64], lr_consistency=continuous)
    return spec, random_weights(spec, seed, stds=(0.05, 0.02))


def make_tiny_artifact(directory: Path, seed: int = 0, teacher: bool = False, continuous: bool = False) -> Path:
    """Write a tiny random-weight artifact (student + VQ [+ teacher]) into `directory`; `continuous` gives
    the bundled model's layout (CONTINUOUS_VQ, CONTINUOUS_UNET, lr_consistency)."""
    spec, weights = tiny_weights(seed, teacher, continuous)
    return save_artifact(directory, spec, weights)


def make_teacher_artifact(directory: Path, seed: int = 0, unet: UNetConfig = TEACHER) -> Path:
    """A teacher-only artifact (student = teacher with noise_channels 0, plus teacher.*) with random weights."""
    side = unet.size_multiple
    nets = {"student": unet, "autoencoder": TINY_VQ, "teacher": unet}
    spec = ModelSpec(name="tiny-teacher", **nets, tiles=[side], default_tile=side, default_overlap=4)
    return save_artifact(directory, spec, random_weights(spec, seed, stds=(0.05, 0.02), shared_teacher=True))


def golden_artifact(ref_dir: Path, out: Path, with_teacher: bool = False) -> Path:
    """An artifact whose student/teacher/VQ weights are the small goldens' perturbed weights."""
    teacher_cfg, student_cfg, vq_cfg = golden_configs(ref_dir)
    student_state, _ = load_npz(ref_dir / "unet_swin_small_student.npz")
    vq_state, _ = load_npz(ref_dir / "vq_f4_small.npz")
    teacher_state = load_npz(ref_dir / "unet_swin_small.npz")[0] if with_teacher else None
    teacher = teacher_cfg if with_teacher else None
    spec = ModelSpec(name="golden-small", student=student_cfg, autoencoder=vq_cfg, teacher=teacher, tiles=[64])
    return save_artifact(out, spec, joined_weights(student_state, vq_state, teacher_state))
