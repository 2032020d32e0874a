"""Job records: ids, parameters, statuses and results shared by both queue transports (serving.md).

A job is one image to upscale. Its cost is counted in model tiles (the unit of admission and
batching); its deadline is an absolute wall-clock time (`time.time()`), so that every process that
touches the job (API replica, worker) judges it the same way.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum

from rsd.kinds import MEDIA_TYPES as CONTENT_TYPES
from service.settings import OutputFormat


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED)


def new_job_id() -> str:
    """A URL-safe, unguessable id (the result is fetched by id, so ids must not be enumerable)."""
    return secrets.token_hex(12)


@dataclass(frozen=True)
class JobParams:
    """What to compute: the seed fixes the noise of every tile (rsd.noise), so a job is reproducible.
    `model` names the served model (serving.md "Models"); `outscale` the final scale (None: the model's)."""

    format: OutputFormat
    quality: int
    seed: int
    tile: int
    overlap: int
    model: str
    outscale: float | None = None

    def to_fields(self) -> dict[str, str]:
        return {
            "format": self.format,
            "quality": str(self.quality),
            "seed": str(self.seed),
            "tile": str(self.tile),
            "overlap": str(self.overlap),
            "model": self.model,
            "outscale": "" if self.outscale is None else repr(self.outscale),
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> JobParams:
        fmt = fields["format"]
        if fmt not in CONTENT_TYPES:
            raise ValueError(f"unknown output format {fmt!r}")
        return cls(
            format=fmt,  # type: ignore[arg-type]
            quality=int(fields["quality"]),
            seed=int(fields["seed"]),
            tile=int(fields["tile"]),
            overlap=int(fields["overlap"]),
            model=fields["model"],
            outscale=float(fields["outscale"]) if fields.get("outscale") else None,
        )


@dataclass(frozen=True)
class Job:
    """An admitted unit of work; `data` is the encoded input exactly as uploaded."""

    id: str
    params: JobParams
    data: bytes
    cost_tiles: int
    deadline: float
    width: int
    height: int
    created: float = field(default_factory=time.time)
    idempotency_key: str | None = None
    #: hash of the input bytes and explicit parameters: a reused Idempotency-Key must match it
    fingerprint: str = ""
    #: an upper bound of the encoded result's size (4 bytes per output pixel), for admission by memory
    result_bytes_bound: int = 0


@dataclass(frozen=True)
class JobResult:
    """The encoded x4 image and where the time went (seconds; for Server-Timing and metrics)."""

    data: bytes
    content_type: str
    width: int
    height: int
    queue_s: float
    compute_s: float
    encode_s: float

    def timing_fields(self) -> dict[str, str]:
        return {
            "content_type": self.content_type,
            "width": str(self.width),
            "height": str(self.height),
            "queue_s": f"{self.queue_s:.6f}",
            "compute_s": f"{self.compute_s:.6f}",
            "encode_s": f"{self.encode_s:.6f}",
        }

    @classmethod
    def from_fields(cls, data: bytes, fields: dict[str, str]) -> JobResult:
        return cls(
            data=data,
            content_type=fields["content_type"],
            width=int(fields["width"]),
            height=int(fields["height"]),
            queue_s=float(fields["queue_s"]),
            compute_s=float(fields["compute_s"]),
            encode_s=float(fields["encode_s"]),
        )


@dataclass(frozen=True)
class JobRecord:
    """What a client may learn about a job (GET /jobs/{id})."""

    id: str
    status: JobStatus
    seed: int
    cost_tiles: int
    created: float
    deadline: float
    attempts: int = 0
    error_code: str | None = None
    error_message: str | None = None
    tiles_done: int = 0
    eta_s: float | None = None
    model: str = ""


@dataclass(frozen=True)
class ClaimedJob:
    """A job handed to a worker: everything needed to compute it without another round trip."""

    id: str
    params: JobParams
    data: bytes
    deadline: float
    created: float
    attempt: int
    #: transport handle (the Redis stream entry id; empty in-process)
    entry: str = ""
