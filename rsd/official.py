"""Reading the published RSD / SinSR / ResShift / VQ-f4 `.pth` files into an artifact (method.md 6).

Files are read with `torch.load(weights_only=True)` only (never unpickled), unwrapped from a
`state_dict`/`params_ema`/`model` wrapper, stripped of `module.`/`_orig_mod.` prefixes per key, and
checked strictly against the official configs: a file that is not what it claims (a teacher given as
the student, a VQ file given as a UNet, truncated, wrong shapes) is refused with one clear line.
Deterministic Swin buffers (`attn_mask`, `relative_position_index`) are regenerated when absent.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rsd.artifact import joined_weights, save_artifact
from rsd.config import UNetConfig, VQConfig
from rsd.family import FAMILIES, Family, families_with_noise_channels, family_of_file, get_family
from rsd.nets.unet import UNetModelSwin
from rsd.nets.vqgan import VQModelTorch
from rsd.spec import ArtifactError, ModelSpec, SamplerConfig

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


def _first_conv_noise_channels(path: str | Path, state: dict[str, torch.Tensor], config: UNetConfig) -> int:
    if FIRST_CONV not in state:
        raise ArtifactError(f"{path}: not a UNet checkpoint (no {FIRST_CONV}; is it the autoencoder?)")
    return int(state[FIRST_CONV].shape[1]) - config.with_noise_channels(0).first_conv_in_channels


def _fits(noise_channels: int) -> str:
    names = families_with_noise_channels(noise_channels)
    return f"its shapes fit --family {' or '.join(names)}" if names else "its shapes fit no known family"


def convert_net(
    path: str | Path, family: Family, config: UNetConfig | None = None
) -> tuple[UNetConfig, dict[str, torch.Tensor]]:
    """Read the UNet of `family` from a published file. The first conv must have the family's inputs
    (6, or RSD's 7 with the noise channel) and a published file name must be the family's own; otherwise
    the error names the family the file does fit. `config` is the teacher-shaped net config (default:
    the official x4 config, method.md 2.1)."""
    state = read_checkpoint(path)
    config = (config or UNetConfig()).with_noise_channels(0)
    noise_channels = _first_conv_noise_channels(path, state, config)
    if noise_channels != family.noise_channels:
        found = config.with_noise_channels(0).first_conv_in_channels + noise_channels
        hint = " (or pass it as --teacher of an RSD artifact)" if family.name == "rsd" and noise_channels == 0 else ""
        kind = "a teacher (ResShift-shaped) checkpoint" if noise_channels == 0 else "an RSD student checkpoint"
        raise ArtifactError(
            f"{path}: {FIRST_CONV} has {found} input channels: this is {kind}, not {family.title}; "
            f"{_fits(noise_channels)}{hint}"
        )
    named = family_of_file(Path(path).name)
    if named is not None and named != family.name:
        raise ArtifactError(
            f"{path}: this is the published {named} checkpoint, not {family.name}; use --family {named}"
        )
    config = config.with_noise_channels(noise_channels)
    model = UNetModelSwin(config)  # real buffers, to regenerate the deterministic ones if absent
    return config, _match_to_model(model, state, f"{family.name} UNet", path)


def convert_teacher(path: str | Path, config: UNetConfig | None = None) -> tuple[UNetConfig, dict[str, torch.Tensor]]:
    """The 15-step teacher of an RSD artifact (a 6-channel ResShift s15 net)."""
    state = read_checkpoint(path)
    config = (config or UNetConfig()).with_noise_channels(0)
    if _first_conv_noise_channels(path, state, config) != 0:
        raise ArtifactError(f"{path}: {FIRST_CONV} has a noise input: this is a student checkpoint, not the teacher")
    model = UNetModelSwin(config)
    return config, _match_to_model(model, state, "teacher UNet", path)


def convert_autoencoder(path: str | Path, config: VQConfig | None = None) -> tuple[VQConfig, dict[str, torch.Tensor]]:
    state = read_checkpoint(path)
    if FIRST_CONV in state:
        raise ArtifactError(f"{path}: this is a UNet checkpoint, not the VQ-f4 autoencoder")
    config = config or VQConfig()
    with torch.device("meta"):
        model = VQModelTorch(config)
    return config, _match_to_model(model, state, "VQ-f4 autoencoder", path)


def convert_family(
    family: str,
    weights: str | Path,
    autoencoder: str | Path,
    out: str | Path,
    teacher: str | Path | None = None,
    tiles: tuple[int, ...] = (64, 128),
    unet_config: UNetConfig | None = None,
    vq_config: VQConfig | None = None,
) -> Path:
    """Convert a published `family` checkpoint and the VQ-f4 file into an artifact directory at `out`.

    The family fixes the first conv, the schedule and the sampler (rsd.family); `teacher` (RSD only) adds
    the 15-step teacher. `unet_config`/`vq_config` default to the official x4 configs; other values
    serve tests and compatible re-trainings. Nothing is written when a file is refused."""
    row = get_family(family)
    if teacher is not None and row.name != "rsd":
        raise ArtifactError(f"--teacher belongs to the rsd family; {row.name} artifacts carry one net")
    net_cfg, net_state = convert_net(weights, row, unet_config)
    vq_cfg, vq_state = convert_autoencoder(autoencoder, vq_config)
    teacher_cfg, teacher_state = convert_teacher(teacher, unet_config) if teacher is not None else (None, None)
    state = joined_weights(net_state, vq_state, teacher_state)
    spec = ModelSpec(
        name="rsd-official-x4" if row.name == "rsd" else f"{row.name}-official-x4",
        family=row.name,
        student=net_cfg,
        autoencoder=vq_cfg,
        schedule=row.schedule,
        sampler=SamplerConfig(kind=row.sampler_kind, steps=row.steps),
        teacher=teacher_cfg,
        tiles=list(tiles),
        default_tile=tiles[0],
        default_overlap=16,
        provenance={
            "family": row.name,
            "weights": Path(weights).name,
            "autoencoder": Path(autoencoder).name,
            "teacher": Path(teacher).name if teacher else "",
            "source": row.source,
            # converting changes the format, not the terms: the published licence stays with the weights
            "licence": f"{row.licence}; autoencoder: {FAMILIES['resshift-s15'].licence}",
        },
    )
    return save_artifact(out, spec, state)
