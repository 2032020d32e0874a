"""Small, fast, random-weight artifacts for tests (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch

from model_export.random_artifact import randomised_state
from rsd.artifact import joined_weights, save_artifact
from rsd.config import DDConfig, ScheduleConfig, UNetConfig, VQConfig
from rsd.nets.unet import UNetModelSwin
from rsd.nets.vqgan import VQModelTorch
from rsd.spec import ModelSpec

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


def tiny_weights(
    seed: int = 0, teacher: bool = False, continuous: bool = False
) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    unet_cfg, vq_cfg = (CONTINUOUS_UNET, CONTINUOUS_VQ) if continuous else (TINY_UNET, TINY_VQ)
    student = randomised_state(UNetModelSwin(unet_cfg), gen, 0.05)
    autoencoder = randomised_state(VQModelTorch(vq_cfg), gen, 0.02)
    teacher_cfg = unet_cfg.with_noise_channels(0) if teacher else None
    teacher_state = None if teacher_cfg is None else randomised_state(UNetModelSwin(teacher_cfg), gen, 0.05)
    weights = joined_weights(student, autoencoder, teacher_state)
    spec = ModelSpec(
        name="tiny-random",
        student=unet_cfg,
        autoencoder=vq_cfg,
        schedule=ScheduleConfig(),
        teacher=teacher_cfg,
        tiles=[32, 64],
        default_tile=64,
        default_overlap=16,
        lr_consistency=continuous,
    )
    return spec, weights


def make_tiny_artifact(directory: Path, seed: int = 0, teacher: bool = False, continuous: bool = False) -> Path:
    """Write a tiny random-weight artifact (student + VQ [+ teacher]) into `directory`; `continuous` gives
    the bundled model's layout (CONTINUOUS_VQ, CONTINUOUS_UNET, lr_consistency)."""
    spec, weights = tiny_weights(seed, teacher, continuous)
    return save_artifact(directory, spec, weights)
