"""Artifacts assembled from the reference goldens (small perturbed nets with known outputs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from rsd.artifact import save_artifact
from rsd.config import ScheduleConfig, UNetConfig, VQConfig
from rsd.spec import ModelSpec


def load_npz(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """(state_dict tensors, io arrays) from a golden .npz."""
    with np.load(path) as data:
        state = {k: torch.from_numpy(data[k].copy()) for k in data.files if not k.startswith("io.")}
        io = {k: data[k].copy() for k in data.files if k.startswith("io.")}
    return state, io


def golden_configs(ref_dir: Path) -> tuple[UNetConfig, UNetConfig, VQConfig]:
    """(teacher, student, vq) configs of the small goldens."""
    teacher = UNetConfig(**json.loads((ref_dir / "unet_swin_small.json").read_text())["config"])
    student = teacher.with_noise_channels(1)
    vq = VQConfig(**json.loads((ref_dir / "vq_f4_small.json").read_text())["config"])
    return teacher, student, vq


def golden_artifact(ref_dir: Path, out: Path, with_teacher: bool = False) -> Path:
    """An artifact whose student/teacher/VQ weights are the small goldens' perturbed weights."""
    teacher_cfg, student_cfg, vq_cfg = golden_configs(ref_dir)
    student_state, _ = load_npz(ref_dir / "unet_swin_small_student.npz")
    vq_state, _ = load_npz(ref_dir / "vq_f4_small.npz")
    weights = {f"student.{k}": v for k, v in student_state.items()}
    weights |= {f"autoencoder.{k}": v for k, v in vq_state.items()}
    if with_teacher:
        teacher_state, _ = load_npz(ref_dir / "unet_swin_small.npz")
        weights |= {f"teacher.{k}": v for k, v in teacher_state.items()}
    spec = ModelSpec(
        name="golden-small",
        student=student_cfg,
        autoencoder=vq_cfg,
        schedule=ScheduleConfig(),
        teacher=teacher_cfg if with_teacher else None,
        tiles=[64],
        default_tile=64,
        default_overlap=16,
    )
    return save_artifact(out, spec, weights)
