"""Artifacts assembled from the reference goldens (small perturbed nets with known outputs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from rsd.config import UNetConfig, VQConfig


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


#: the published files' layouts (method.md 6): DDP `module.` prefixes, a bare state dict, and the
#: `params_ema` / `state_dict` wrappers; Swin `attn_mask` buffers are dropped where a file may lack them
LAYOUTS = ("module", "bare", "params_ema", "state_dict")


def published_layout(state: dict[str, torch.Tensor], layout: str) -> dict[str, object]:
    """`state` as a published checkpoint in `layout` would hold it."""
    match layout:
        case "module":
            return {f"module.{k}": v for k, v in state.items() if "attn_mask" not in k}
        case "bare":
            return dict(state)
        case "params_ema":
            return {"params_ema": dict(state), "step": torch.tensor(2800)}
        case "state_dict":
            return {"state_dict": {f"_orig_mod.{k}": v for k, v in state.items()}}
    raise ValueError(f"unknown layout {layout!r}; one of {', '.join(LAYOUTS)}")


def save_published(ref_dir: Path, directory: Path, family: str, layout: str) -> Path:
    """The small golden net of `family` (the student for rsd, else the teacher net) saved in `layout`,
    under the family's first published file name."""
    from rsd.family import get_family

    row = get_family(family)
    npz = "unet_swin_small_student.npz" if row.noise_channels else "unet_swin_small.npz"
    state, _ = load_npz(ref_dir / npz)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / row.files[0]
    torch.save(published_layout(state, layout), path)
    return path


def convert_golden_family(ref_dir: Path, family: str, out: Path, layout: str = "bare") -> Path:
    """An artifact converted from the small golden weights of `family` through `convert_family`."""
    from rsd.official import convert_family

    teacher_cfg, _, vq_cfg = golden_configs(ref_dir)
    weights = save_published(ref_dir, out.parent / f"{out.name}-published", family, layout)
    vq_path = out.parent / f"{out.name}-published" / "autoencoder_vq_f4.pth"
    vq_state, _ = load_npz(ref_dir / "vq_f4_small.npz")
    torch.save(vq_state, vq_path)
    return convert_family(family, weights, vq_path, out, tiles=(64,), unet_config=teacher_cfg, vq_config=vq_cfg)
