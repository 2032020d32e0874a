"""What the training stages share: the artifact spec they will export, the latent size check, and
checkpoint state as a table of named parts (training/run.py saves and resumes through it)."""

from __future__ import annotations

from typing import Any, Protocol

from rsd.config import ScheduleConfig, UNetConfig, VQConfig
from rsd.spec import ModelSpec
from training.config import ExportConfig

#: ExportConfig fields copied into the artifact spec under the same names
SPEC_EXPORT_FIELDS = {"tiles", "default_tile", "default_overlap", "lr_consistency"}


def make_spec(
    name: str,
    student: UNetConfig,
    vq: VQConfig,
    recipe_schedule: ScheduleConfig,
    export: ExportConfig,
    teacher: UNetConfig | None,
    provenance: dict[str, str],
) -> ModelSpec:
    """The artifact spec; validated now so that bad tiles fail before training, not after. The
    recipe's export section supplies the spec fields of the same names (include_teacher aside)."""
    nets = {"student": student, "autoencoder": vq, "schedule": recipe_schedule, "teacher": teacher}
    return ModelSpec(name=name, provenance=provenance, **nets, **export.model_dump(include=SPEC_EXPORT_FIELDS))


def check_sizes(unet: UNetConfig, vq: VQConfig, hr_size: int) -> None:
    """The latent of an hr_size crop must fit the UNet (sizes multiple, channels)."""
    latent = hr_size // vq.downsample_factor
    if latent % unet.size_multiple:
        raise ValueError(
            f"data.hr_size {hr_size} gives a {latent}x{latent} latent, not a multiple of the UNet's "
            f"size multiple {unet.size_multiple}"
        )
    if vq.embed_dim != unet.out_channels:
        raise ValueError(f"autoencoder embed_dim {vq.embed_dim} != UNet out_channels {unet.out_channels}")


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any, /) -> Any: ...


class CheckpointParts:
    """A stage's checkpoint is `{name: part.state_dict()}` over `checkpoint_parts()`, loaded back in
    the same order (nets before their optimizers and EMA, as they were saved)."""

    def checkpoint_parts(self) -> dict[str, Stateful]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self.checkpoint_parts().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, part in self.checkpoint_parts().items():
            part.load_state_dict(state[name])
