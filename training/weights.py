"""Where a stage's starting weights come from, checked strictly before any training starts.

- autoencoder: an artifact directory (its `autoencoder.*`), an autoencoder directory written by
  `rsd train autoencoder` (`autoencoder.json` + `autoencoder.safetensors`), or the published
  VQ-f4 `.pth` (through rsd.official, weights_only).
- teacher UNet: an artifact directory (its `teacher.*`, else a noise-free `student.*`) or a published
  ResShift `.pth` (weights_only; `module.` prefixes and wrappers handled by rsd.official).
Every mismatch (missing/unexpected key, wrong shape, config differing from the recipe) is an error that
names the file, the key and both shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rsd.artifact import load_artifact, load_state_strict
from rsd.config import UNetConfig, VQConfig
from rsd.nets.unet import UNetModelSwin
from rsd.nets.vqgan import VQModelTorch
from rsd.spec import SPEC_FILE, ArtifactError

AUTOENCODER_CONFIG = "autoencoder.json"
AUTOENCODER_WEIGHTS = "autoencoder.safetensors"
_REGENERABLE = ("attn_mask", "relative_position_index")


def save_autoencoder_dir(out: Path, config: VQConfig, state: dict[str, torch.Tensor]) -> Path:
    """Write `autoencoder.json` (VQConfig) + `autoencoder.safetensors` into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out / AUTOENCODER_WEIGHTS))
    (out / AUTOENCODER_CONFIG).write_text(json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
    return out


def read_autoencoder(path: Path) -> tuple[VQConfig, dict[str, torch.Tensor]]:
    """(config, state) from an artifact dir, an autoencoder dir or a published VQ-f4 .pth."""
    path = Path(path)
    if (path / SPEC_FILE).is_file():
        spec, states = load_artifact(path)
        return spec.autoencoder, states["autoencoder"]
    if (path / AUTOENCODER_CONFIG).is_file():
        config = VQConfig.model_validate(json.loads((path / AUTOENCODER_CONFIG).read_text()))
        return config, load_file(str(path / AUTOENCODER_WEIGHTS))
    if path.is_file():
        from rsd.official import convert_autoencoder

        return convert_autoencoder(path)
    raise ArtifactError(
        f"{path}: not an autoencoder source (expected an artifact directory, a directory with "
        f"{AUTOENCODER_CONFIG}, or a VQ-f4 .pth file)"
    )


def build_autoencoder(path: Path, device: torch.device, frozen: bool = True) -> VQModelTorch:
    """The VQ model loaded strictly from `path`; frozen = eval mode, no parameter gradients."""
    config, state = read_autoencoder(path)
    model = VQModelTorch(config)
    try:
        load_state_strict(model, state, "autoencoder")
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from exc
    model = model.to(device)
    if frozen:
        model.eval().requires_grad_(False)
    return model


def read_teacher(path: Path) -> tuple[UNetConfig | None, dict[str, torch.Tensor]]:
    """(config or None for a bare .pth, state) of the teacher UNet stored at `path`."""
    path = Path(path)
    if (path / SPEC_FILE).is_file():
        spec, states = load_artifact(path)
        if spec.teacher is not None:
            return spec.teacher, states["teacher"]
        if spec.student.noise_channels == 0:
            return spec.student, states["student"]
        raise ArtifactError(
            f"{path}: artifact has no teacher.* weights and its student takes noise "
            f"(noise_channels={spec.student.noise_channels}), so it cannot serve as a teacher"
        )
    if path.is_file():
        from rsd.official import read_checkpoint

        return None, read_checkpoint(path)
    raise ArtifactError(f"{path}: not a teacher source (expected an artifact directory or a .pth file)")


def load_unet_strict(model: UNetModelSwin, state: dict[str, torch.Tensor], what: str) -> None:
    """Strict load that regenerates absent deterministic Swin buffers (method.md 6)."""
    full = dict(state)
    for key, value in model.state_dict().items():
        if key not in full and key.endswith(_REGENERABLE):
            full[key] = value
    load_state_strict(model, full, what)


def teacher_state(path: Path, expected: UNetConfig) -> dict[str, torch.Tensor]:
    """Teacher weights at `path`, checked against the recipe's (or artifact's) UNet `expected`."""
    config, state = read_teacher(path)
    if config is not None and config.with_noise_channels(0) != expected.with_noise_channels(0):
        diff = {
            k: (v, getattr(expected, k))
            for k, v in config.model_dump().items()
            if getattr(expected, k) != v and k != "noise_channels"
        }
        raise ArtifactError(f"{path}: teacher UNet config differs from the recipe's: {diff} (found, expected)")
    probe = UNetModelSwin(expected.with_noise_channels(0))
    try:
        load_unet_strict(probe, state, "teacher")
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from exc
    return probe.state_dict()
