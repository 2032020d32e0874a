"""Tiny recipes and artifacts for the training tests (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from model_export.random_artifact import randomised_state
from rsd.artifact import joined_weights, save_artifact
from rsd.config import ScheduleConfig, UNetConfig
from rsd.nets.unet import UNetModelSwin
from rsd.nets.vqgan import VQModelTorch
from rsd.spec import ModelSpec
from tests.factories import TINY_VQ
from training.config import load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[2]
# The training tests keep their own small recipes (synthetic data); configs/tiny_* are the bundled
# model's recipes and change with it.
CONFIGS = Path(__file__).resolve().parent / "configs"

TEACHER = UNetConfig(
    image_size=16,
    in_channels=6,
    model_channels=32,
    channel_mult=[1, 2],
    num_res_blocks=[1, 1],
    attention_resolutions=[16],
    num_head_channels=8,
    swin_embed_dim=32,
    window_size=8,
)
VQ = TINY_VQ  # the same tiny autoencoder the core tests use


def make_teacher_artifact(directory: Path, seed: int = 0, unet: UNetConfig = TEACHER) -> Path:
    """A teacher-only artifact (student = teacher with noise_channels 0, plus teacher.*) with random weights."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    teacher = randomised_state(UNetModelSwin(unet), gen, 0.05)
    vq = randomised_state(VQModelTorch(VQ), gen, 0.02)
    weights = joined_weights(teacher, vq, teacher=teacher)
    spec = ModelSpec(
        name="tiny-teacher",
        student=unet,
        autoencoder=VQ,
        schedule=ScheduleConfig(),
        teacher=unet,
        tiles=[unet.size_multiple],
        default_tile=unet.size_multiple,
        default_overlap=4,
    )
    return save_artifact(directory, spec, weights)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_recipe(stage: str, out_dir: Path, **sections: Any):
    """configs/tiny_<stage>.toml with the loop pointed at `out_dir`, quiet, and `sections` merged in."""
    base = load_recipe(CONFIGS / f"tiny_{stage}.toml", stage).model_dump(mode="json")
    quiet = {"loop": {"out_dir": str(out_dir), "progress": False, "tensorboard": False}}
    return recipe_from_dict(merge(merge(base, quiet), sections))
