"""The residual-shifting family: the one table of published models this project runs (torch-free).

RSD, SinSR and ResShift share the Swin-UNet (method.md 2.1) and the VQ-f4 autoencoder (method.md 3); a
family fixes what differs between their published checkpoints: the first conv's extra noise input,
the schedule, and the sampler (one call at t = T-1, or K ancestral steps over a K-step schedule,
method.md 1.2). Conversion (`rsd.official.convert_family`) builds an artifact from a row; the spec
records the row's name, sampler and schedule hash, so every consumer runs it through the same
`(lq, noise) -> sr` graph (rsd.sampler.load_graph). Licences travel into the artifact's provenance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from rsd.config import ScheduleConfig

FamilyName = Literal["rsd", "sinsr", "resshift-s15", "resshift-s4"]
FAMILY_NAMES: tuple[FamilyName, ...] = get_args(FamilyName)

CC_BY_NC_SA = "CC BY-NC-SA 4.0 (non-commercial)"
S_LAB = "S-Lab License 1.0 (non-commercial)"


@dataclass(frozen=True)
class Family:
    """One row of the table. `steps` 1 = one net call at t = T-1 (the one-step graph, rsd.onestep);
    K > 1 = K ancestral steps over a K-step schedule (rsd.sampler.AncestralSR)."""

    name: FamilyName
    title: str
    steps: int
    #: extra first-conv input channels fed with noise (RSD's student, method.md 4.2); 0 = the teacher's 6
    noise_channels: int
    schedule: ScheduleConfig
    #: the published weight files this row stands for, and where they are published
    files: tuple[str, ...]
    source: str
    licence: str

    @property
    def sampler_kind(self) -> Literal["one-step", "ancestral"]:
        return "one-step" if self.steps == 1 else "ancestral"


S15 = ScheduleConfig()  # steps 15, min_noise_level 0.04 (method.md 1.3; resshift_schedule_x4.json)
#: ResShift v3, configs/realsr_swinunet_realesrgan256_journal.yaml: 4 steps, min_noise_level 0.2
S4 = ScheduleConfig(steps=4, min_noise_level=0.2)

FAMILIES: dict[FamilyName, Family] = {
    "rsd": Family(
        "rsd", "RSD student (one step, noise input)", 1, 1, S15,
        ("ema_model_2800.pth",), "Daniil-Selikhanovych/RSD", CC_BY_NC_SA,
    ),
    "sinsr": Family(
        "sinsr", "SinSR (one step at t = T-1)", 1, 0, S15,
        ("SinSR_v1.pth", "SinSR_v2.pth"), "wyf0912/SinSR releases", CC_BY_NC_SA,
    ),
    "resshift-s15": Family(
        "resshift-s15", "ResShift, 15 steps", 15, 0, S15,
        ("resshift_realsrx4_s15_v1.pth", "resshift_realsrx4_s15_v2.pth"), "zsyOAOA/ResShift release v2.0", S_LAB,
    ),
    "resshift-s4": Family(
        "resshift-s4", "ResShift v3, 4 steps", 4, 0, S4,
        ("resshift_realsrx4_s4_v3.pth",), "zsyOAOA/ResShift release v2.0", S_LAB,
    ),
}  # fmt: skip

#: the shared autoencoder file and its licence (published with ResShift)
AUTOENCODER_FILE = "autoencoder_vq_f4.pth"


def get_family(name: str) -> Family:
    """The row called `name`; an unknown name is an error listing the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; choose one of {', '.join(FAMILY_NAMES)}")
    return FAMILIES[name]  # type: ignore[index]


def families_with_noise_channels(noise_channels: int) -> list[FamilyName]:
    """The families whose first conv has `noise_channels` extra inputs (what a file's shapes fit)."""
    return [f.name for f in FAMILIES.values() if f.noise_channels == noise_channels]


def family_of_file(file_name: str) -> FamilyName | None:
    """The family a published file name belongs to (None: not a published name)."""
    return next((f.name for f in FAMILIES.values() if file_name in f.files), None)
