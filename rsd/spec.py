"""ModelSpec: what an artifact directory declares about its model (torch-free).

An artifact is a directory with `spec.json` (this model) and `weights.safetensors`. The spec is the
single source of the nets' configs and the schedule for every consumer (architecture.md invariant 1):
nothing overrides it from the command line. The light API process reads it to validate requests
(supported tiles) without importing torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from rsd.config import ScheduleConfig, StrictModel, UNetConfig, VQConfig
from rsd.family import FamilyName, get_family

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.safetensors"


class ArtifactError(ValueError):
    """An artifact directory or checkpoint file is missing, malformed or inconsistent."""


class SamplerConfig(StrictModel):
    """How the graph samples (method.md 1.2): one net call at t = T-1 ("one-step", steps 1), or
    `steps` ancestral steps t = T-1 .. 0 over the schedule ("ancestral", steps == schedule.steps)."""

    kind: Literal["one-step", "ancestral"] = "one-step"
    steps: int = Field(default=1, ge=1)


class ModelSpec(StrictModel):
    """Everything needed to rebuild `OneStepSR` (and optionally the teacher) from weights."""

    format_version: Literal[1] = 1
    name: str = "rsd"
    #: the row of rsd.family.FAMILIES this model belongs to (its sampler and first conv)
    family: FamilyName = "rsd"
    #: the net the sampler runs (for ResShift/SinSR the 6-channel net itself, not a distilled student)
    student: UNetConfig
    autoencoder: VQConfig
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    schedule_hash: str = ""
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    #: the teacher's config when its weights are in the artifact (prefix `teacher.`), for the 15-step sampler
    teacher: UNetConfig | None = None
    scale: Literal[4] = 4
    value_range: tuple[float, float] = (-1.0, 1.0)
    #: LR tile sizes the model is meant to run at (exported engines are built for these); each a
    #: multiple of `lr_multiple`
    tiles: list[int] = Field(default_factory=lambda: [64, 128])
    default_tile: int = 64
    default_overlap: int = 16
    #: after decoding, one back-projection step onto the LR input (rsd.onestep.lr_consistent) [ours]:
    #: off for the published weights (parity), on for the bundled model, whose small autoencoder drifts
    lr_consistency: bool = False
    #: free-form provenance (source files, training run, licence)
    provenance: dict[str, str] = Field(default_factory=dict)

    @property
    def lr_multiple(self) -> int:
        """LR tile sides must be multiples of this: the latent has the LR's size (method.md 1.5, 2.4)."""
        return self.student.size_multiple

    @property
    def net_noise_channels(self) -> int:
        """The student net's own noise input channels xi (RSD's student: 1; SinSR, ResShift: 0); the
        graph's `noise` input is wider (`graph_noise_channels`)."""
        return self.student.noise_channels

    @property
    def graph_noise_channels(self) -> int:
        """Channels of the graph's `noise` input (architecture.md invariant 2): one step takes C prior
        channels + the net's noise channels; K ancestral steps take C prior + C per step t = K-1 .. 1."""
        latent = self.autoencoder.embed_dim
        if self.sampler.kind == "ancestral":
            return latent * self.sampler.steps
        return latent + self.net_noise_channels

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        expected = self.schedule.digest()
        if self.schedule_hash and self.schedule_hash != expected:
            raise ValueError(f"schedule_hash {self.schedule_hash!r} does not match the schedule config ({expected!r})")
        if not self.schedule_hash:
            object.__setattr__(self, "schedule_hash", expected)
        self._check_sampler()
        if self.autoencoder.downsample_factor != self.scale:
            raise ValueError(
                f"autoencoder downsamples by {self.autoencoder.downsample_factor}, but scale is {self.scale}"
            )
        if self.autoencoder.embed_dim != self.student.out_channels:
            raise ValueError(
                f"autoencoder embed_dim {self.autoencoder.embed_dim} != UNet out_channels {self.student.out_channels}"
            )
        bad = [t for t in self.tiles if t <= 0 or t % self.lr_multiple]
        if bad or not self.tiles:
            raise ValueError(f"tiles {self.tiles} must be non-empty multiples of {self.lr_multiple}")
        if self.default_tile not in self.tiles:
            raise ValueError(f"default_tile {self.default_tile} is not one of tiles {self.tiles}")
        if not 0 <= self.default_overlap < self.default_tile:
            raise ValueError(f"default_overlap {self.default_overlap} must be in [0, {self.default_tile})")
        return self

    def _check_sampler(self) -> None:
        sampler, family = self.sampler, get_family(self.family)
        if sampler.kind == "one-step" and sampler.steps != 1:
            raise ValueError(f"a one-step sampler has steps 1, not {sampler.steps}")
        if sampler.kind == "ancestral":
            if sampler.steps != self.schedule.steps:
                raise ValueError(
                    f"an ancestral sampler runs every step of its schedule: steps {sampler.steps} != "
                    f"schedule.steps {self.schedule.steps}"
                )
            if self.net_noise_channels:
                raise ValueError("an ancestral sampler runs a net without noise input channels")
        if sampler.kind != family.sampler_kind:
            raise ValueError(f"family {family.name!r} samples {family.sampler_kind}, not {sampler.kind}")
        if family.noise_channels == 0 and self.net_noise_channels:
            raise ValueError(f"family {family.name!r} has no noise input, but the net has {self.net_noise_channels}")


def read_spec(model_dir: str | Path) -> ModelSpec:
    """Read and validate `model_dir/spec.json`; errors name the file and the problem."""
    path = Path(model_dir) / SPEC_FILE
    if not path.is_file():
        raise ArtifactError(f"{model_dir}: not a model artifact (no {SPEC_FILE})")
    try:
        return ModelSpec.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        first = str(exc).splitlines()
        raise ArtifactError(f"{path}: invalid spec: {' '.join(first[:3])}") from exc


def write_spec(model_dir: str | Path, spec: ModelSpec) -> Path:
    path = Path(model_dir) / SPEC_FILE
    path.write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n")
    return path
