"""Reading the published ResShift / RSD / VQ-f4 `.pth` files into an artifact (method.md 6).

Files are read with `torch.load(weights_only=True)` only (never unpickled), unwrapped from a
`state_dict`/`params_ema`/`model` wrapper, stripped of `module.`/`_orig_mod.` prefixes per key, and
checked strictly against the official configs: a file that is not what it claims (a teacher given as
the student, a VQ file given as a UNet, truncated, wrong shapes) is refused with one clear line.
Deterministic Swin buffers (`attn_mask`, `relative_position_index`) are regenerated when absent.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rsd.artifact import save_artifact
from rsd.config import ScheduleConfig, UNetConfig, VQConfig
from rsd.nets.unet import UNetModelSwin
from rsd.nets.vqgan import VQModelTorch
from rsd.spec import ArtifactError, ModelSpec

_WRAPPERS = ("state_dict", "params_ema", "model", "ema_state")
_PREFIXES = ("module.", "_orig_mod.")
_REGENERABLE = ("attn_mask", "relative_position_index")
FIRST_CONV = "input_blocks.0.0.weight"


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a published checkpoint safely and return a flat {key: tensor} with prefixes stripped."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: no such file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file can fail anywhere in the unpickler (KeyError, EOFError, ...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"{p}: not a readable PyTorch checkpoint ({reason[:160]})") from exc
    for wrapper in _WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ArtifactError(f"{p}: expected a state dict of tensors, found {type(obj).__name__}")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        name = str(key)
        for prefix in _PREFIXES:
            name = name.removeprefix(prefix)
        state[name] = value
    return state


def _match_to_model(
    model: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path: str | Path
) -> dict[str, torch.Tensor]:
    """Check keys/shapes strictly; fill regenerable buffers from `model`; cast floats to fp32."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(_REGENERABLE)]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        sample = (missing or unexpected)[:3]
        raise ArtifactError(
            f"{path}: not a {what} checkpoint: {len(missing)} missing and {len(unexpected)} unexpected "
            f"keys (e.g. {', '.join(sample)})"
        )
    out: dict[str, torch.Tensor] = {}
    for key, ref in expected.items():
        value = state.get(key)
        if value is None:
            out[key] = ref.detach().clone()
            continue
        if value.shape != ref.shape:
            raise ArtifactError(
                f"{path}: {what} key {key}: expected shape {list(ref.shape)}, found {list(value.shape)}"
            )
        out[key] = value.to(ref.dtype)  # published files may be fp16; the spec's nets are fp32
    return out


def convert_unet(
    path: str | Path, role: str, config: UNetConfig | None = None
) -> tuple[UNetConfig, dict[str, torch.Tensor]]:
    """role "student" expects the RSD 7-channel first conv, "teacher" the 6-channel ResShift one.
    `config` is the teacher-shaped net config (default: the official x4 config, method.md 2.1)."""
    state = read_checkpoint(path)
    if FIRST_CONV not in state:
        raise ArtifactError(f"{path}: not a UNet checkpoint (no {FIRST_CONV}; is it the autoencoder?)")
    in_ch = state[FIRST_CONV].shape[1]
    config = (config or UNetConfig()).with_noise_channels(0)
    noise_channels = in_ch - config.first_conv_in_channels
    if role == "student" and noise_channels <= 0:
        raise ArtifactError(
            f"{path}: {FIRST_CONV} has {in_ch} input channels: this is a teacher (ResShift) checkpoint, "
            "not the RSD student; pass it as --teacher"
        )
    if role == "teacher" and noise_channels != 0:
        raise ArtifactError(
            f"{path}: {FIRST_CONV} has {in_ch} input channels: this is a student checkpoint, not the teacher"
        )
    config = config.with_noise_channels(noise_channels)
    model = UNetModelSwin(config)  # real buffers, to regenerate the deterministic ones if absent
    return config, _match_to_model(model, state, f"{role} UNet", path)


def convert_autoencoder(path: str | Path, config: VQConfig | None = None) -> tuple[VQConfig, dict[str, torch.Tensor]]:
    state = read_checkpoint(path)
    if FIRST_CONV in state:
        raise ArtifactError(f"{path}: this is a UNet checkpoint, not the VQ-f4 autoencoder")
    config = config or VQConfig()
    with torch.device("meta"):
        model = VQModelTorch(config)
    return config, _match_to_model(model, state, "VQ-f4 autoencoder", path)


def convert_official(
    student: str | Path,
    autoencoder: str | Path,
    out: str | Path,
    teacher: str | Path | None = None,
    tiles: tuple[int, ...] = (64, 128),
    unet_config: UNetConfig | None = None,
    vq_config: VQConfig | None = None,
) -> Path:
    """Convert the published files into an artifact directory at `out`.

    `unet_config`/`vq_config` default to the official x4 configs; other values serve tests and
    compatible re-trainings."""
    student_cfg, student_state = convert_unet(student, "student", unet_config)
    vq_cfg, vq_state = convert_autoencoder(autoencoder, vq_config)
    weights = {f"student.{k}": v for k, v in student_state.items()}
    weights |= {f"autoencoder.{k}": v for k, v in vq_state.items()}
    teacher_cfg = None
    if teacher is not None:
        teacher_cfg, teacher_state = convert_unet(teacher, "teacher", unet_config)
        weights |= {f"teacher.{k}": v for k, v in teacher_state.items()}
    spec = ModelSpec(
        name="rsd-official-x4",
        student=student_cfg,
        autoencoder=vq_cfg,
        schedule=ScheduleConfig(),
        teacher=teacher_cfg,
        tiles=list(tiles),
        default_tile=tiles[0],
        default_overlap=16,
        provenance={
            "student": Path(student).name,
            "autoencoder": Path(autoencoder).name,
            "teacher": Path(teacher).name if teacher else "",
            "licence": "published ResShift/RSD weights: see their authors' terms",
        },
    )
    return save_artifact(out, spec, weights)
