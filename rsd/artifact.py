"""Artifact directories: `spec.json` + `weights.safetensors` (architecture.md invariant 6).

Weights are one flat safetensors file whose keys carry the net as a prefix: `student.*` (the one-step
UNet, with `noise_channels` noise inputs), `autoencoder.*` (VQ-f4) and optionally `teacher.*` (the
6-channel ResShift UNet, for the 15-step sampler). Loading is strict: a missing, unexpected or
mis-shaped tensor is an error naming the key and both shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rsd.spec import WEIGHTS_FILE, ArtifactError, ModelSpec, read_spec, write_spec

NETS = ("student", "autoencoder", "teacher")


def split_weights(weights: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{"student.a.b": w} -> {"student": {"a.b": w}}; unknown prefixes are errors."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        net, _, rest = key.partition(".")
        if net not in NETS or not rest:
            raise ArtifactError(f"weight key {key!r} does not start with one of {', '.join(NETS)}")
        parts.setdefault(net, {})[rest] = value
    return parts


def joined_weights(
    student: dict[str, torch.Tensor],
    autoencoder: dict[str, torch.Tensor],
    teacher: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The flat layout `save_artifact` takes (the inverse of `split_weights`): each net's state under its
    prefix. A teacher that shares tensors with the student is cloned, so the file holds two copies."""
    weights = {f"student.{k}": v for k, v in student.items()}
    weights |= {f"autoencoder.{k}": v for k, v in autoencoder.items()}
    if teacher is not None:
        weights |= {f"teacher.{k}": v.clone() if v is student.get(k) else v for k, v in teacher.items()}
    return weights


def save_artifact(model_dir: str | Path, spec: ModelSpec, weights: dict[str, torch.Tensor]) -> Path:
    """Write `spec.json` and `weights.safetensors` into `model_dir` (created if needed).

    weights: flat dict with `student.`/`autoencoder.`/`teacher.` prefixes. Tensors are saved
    contiguous and detached; the teacher prefix must be present iff `spec.teacher` is set.
    """
    parts = split_weights(weights)
    for net in ("student", "autoencoder"):
        if net not in parts:
            raise ArtifactError(f"no {net}.* weights given")
    if (spec.teacher is None) != ("teacher" not in parts):
        raise ArtifactError("spec.teacher and the teacher.* weights must be given together")
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    meta = {"schedule_hash": spec.schedule_hash, "format_version": str(spec.format_version)}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(out / WEIGHTS_FILE)
    write_spec(out, spec)
    return out


def load_artifact(
    model_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[ModelSpec, dict[str, dict[str, torch.Tensor]]]:
    """Read an artifact: (spec, {"student": state, "autoencoder": state[, "teacher": state]})."""
    spec = read_spec(model_dir)
    path = Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise ArtifactError(f"{model_dir}: no {WEIGHTS_FILE}")
    try:
        weights = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable weights file ({exc})") from exc
    return spec, split_weights(weights)


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict(strict) with one clear line per problem: key, expected and found shapes."""
    expected = module.state_dict()
    problems = [f"missing {what}.{k} {list(v.shape)}" for k, v in expected.items() if k not in state]
    problems += [f"unexpected {what}.{k} {list(v.shape)}" for k, v in state.items() if k not in expected]
    problems += [
        f"{what}.{k}: expected shape {list(v.shape)}, found {list(state[k].shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ArtifactError(f"{what} weights do not match the spec: {'; '.join(problems[:3])}{more}")
    module.load_state_dict(state, strict=True)


def describe(model_dir: str | Path) -> str:
    """One JSON line summarising an artifact (for logs and `rsd info`)."""
    spec = read_spec(model_dir)
    return json.dumps(
        {
            "name": spec.name,
            "noise_channels": spec.net_noise_channels,
            "tiles": spec.tiles,
            "schedule_hash": spec.schedule_hash,
            "has_teacher": spec.teacher is not None,
        }
    )
