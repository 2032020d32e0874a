"""Service settings from environment variables (pydantic-settings, serving.md).

Every knob has an `RSD_` variable (`RSD_MAX_BYTES`, `RSD_MAX_BACKLOG_TILES`, ...) except the two that
deployments name by convention: `RSD_MODEL` (artifact directory) and `REDIS_URL` (switches from the
embedded in-process queue to Redis Streams). Unknown `RSD_*` fields in a constructor call are errors.

Models (serving.md "Models"): `RSD_MODELS=name=DIR,name2=DIR2` serves several, the first the default;
without it `RSD_MODEL=DIR` serves one, named after its directory. `model_dirs` is the one reading of both.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rsd.imagefile import DEFAULT_PNG_COMPRESS_LEVEL, DEFAULT_WEBP_METHOD, PNG_COMPRESS_LEVELS, WEBP_METHODS
from rsd.kinds import BUNDLED_MODEL, BackendKind, DTypeChoice, OutputFormat

#: a model's name: in URLs (`?model=`), Redis keys (`{prefix}:jobs:{name}`) and metric labels
MODEL_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


def parse_models(text: str) -> dict[str, Path]:
    """`name=DIR,name2=DIR2` -> {name: DIR}, in order; a malformed entry or a repeated name is an error."""
    table: dict[str, Path] = {}
    for item in (part.strip() for part in text.split(",")):
        name, sep, directory = item.partition("=")
        name, directory = name.strip(), directory.strip()
        if not sep or not directory or re.fullmatch(MODEL_NAME, name) is None:
            raise ValueError(f"RSD_MODELS entry {item!r} is not name=DIR (a name of A-Z a-z 0-9 _ . -, 1-64 long)")
        if name in table:
            raise ValueError(f"RSD_MODELS names {name!r} twice")
        table[name] = Path(directory)
    return table


def _instance_id() -> str:
    """A name unique to this process: host, pid and a random suffix (reply streams, consumer names)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class ServiceSettings(BaseSettings):
    """All serving configuration. Times are seconds unless the name says otherwise."""

    model_config = SettingsConfigDict(env_prefix="RSD_", extra="forbid", populate_by_name=True)

    # --- model (worker side; the API reads only spec.json) ---
    model_dir: Path = Field(default=BUNDLED_MODEL, validation_alias=AliasChoices("RSD_MODEL", "model_dir"))
    #: several models, `name=DIR,...` (the first is the default); when set, RSD_MODEL is not read
    models: str | None = Field(default=None, validation_alias=AliasChoices("RSD_MODELS", "models"))
    backend: BackendKind = "torch"
    device: str = "cpu"
    #: "auto": the fastest safe dtype for the backend and device (rsd.precision; bf16 on CPUs with
    #: native bf16, else fp32); one seed gives one image per (backend, dtype)
    dtype: DTypeChoice = "auto"
    #: "one": warm up one batch of one tile before answering ready; "all": every batch size up to
    #: max_batch_tiles at every tile size (first calls of a new shape are slow on some backends)
    warmup: Literal["one", "all"] = "one"
    #: CPU threads for the torch backend (torch.set_num_threads); unset: torch's default. On a shared
    #: or small CPU host fewer threads than cores avoid oversubscription (spinning threads)
    torch_threads: int | None = Field(default=None, gt=0)

    # --- transport ---
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "RSD_REDIS_URL", "redis_url")
    )
    redis_prefix: str = Field(default="rsd", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    instance: str = Field(default_factory=_instance_id)

    # --- image limits (serving.md "Image hygiene") ---
    max_bytes: int = Field(default=20 * 2**20, gt=0)
    max_input_pixels: int = Field(default=4_000_000, gt=0)
    max_output_pixels: int = Field(default=64_000_000, gt=0)
    default_format: OutputFormat = "png"
    default_quality: int = Field(default=90, ge=1, le=100)
    #: encoder effort (serving.md "Output encoding"): zlib level of PNG results, libwebp method of WebP
    png_compress_level: int = Field(
        default=DEFAULT_PNG_COMPRESS_LEVEL, ge=PNG_COMPRESS_LEVELS.start, le=PNG_COMPRESS_LEVELS.stop - 1
    )
    webp_method: int = Field(default=DEFAULT_WEBP_METHOD, ge=WEBP_METHODS.start, le=WEBP_METHODS.stop - 1)

    # --- admission and deadlines (serving.md "Admission") ---
    max_backlog_tiles: int = Field(default=512, gt=0)
    default_deadline_s: float = Field(default=120.0, gt=0)
    max_deadline_s: float = Field(default=3600.0, gt=0)
    #: tiles per second assumed before any worker has measured its throughput (Retry-After, predicted wait)
    assumed_tiles_per_s: float = Field(default=2.0, gt=0)

    # --- batching (serving.md "Worker loop") ---
    max_batch_tiles: int = Field(default=8, gt=0)
    #: every model call runs exactly this many tiles (padding the rest), so a tile's result never depends
    #: on which other requests share its batch (rsd.pipeline.run_tiles). 1 on CPU (no padding waste);
    #: on a GPU set it to the engine's batch, e.g. RSD_FIXED_BATCH=8
    fixed_batch: int = Field(default=1, gt=0)
    max_batch_delay_s: float = Field(default=0.01, ge=0)
    claim_max_jobs: int = Field(default=8, gt=0)
    claim_block_s: float = Field(default=0.5, gt=0)
    #: the pipelined worker (service.worker): decode, device and encode overlap; false runs them in series
    worker_pipeline: bool = True
    #: threads that decode and tile claimed uploads, and threads that blend, encode and publish results
    intake_threads: int = Field(default=1, gt=0)
    finish_threads: int = Field(default=2, gt=0)

    # --- Redis reliability (serving.md "Failure" table) ---
    lease_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    result_ttl_s: int = Field(default=900, gt=0)
    #: result retention (serving.md "Result retention"): the bytes of kept results (/jobs and
    #: Idempotency-Key requests) are capped at this many MiB, oldest evicted first
    result_store_mb: float = Field(default=256.0, gt=0)
    #: how often expired results are swept (a timer: memory is returned without further traffic)
    result_sweep_s: float = Field(default=5.0, gt=0)
    #: embedded mode: after each sweep, hand malloc's free memory back to the OS (glibc malloc_trim,
    #: service.heap); without it the RSS creeps up under steady traffic while the live heap stays flat
    heap_trim: bool = True
    #: Redis mode: admission answers 503 once used_memory plus the job's bytes would pass this
    #: fraction of Redis maxmemory (when maxmemory is set)
    redis_memory_high_water: float = Field(default=0.9, gt=0, le=1)
    idempotency_ttl_s: int = Field(default=86_400, gt=0)
    worker_heartbeat_s: float = Field(default=1.0, gt=0)
    redis_timeout_s: float = Field(default=2.0, gt=0)

    # --- security ---
    api_key: SecretStr | None = None

    @field_validator("models")
    @classmethod
    def _check_models(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            parse_models(value)
            return value
        return None

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`REDIS_URL=` (empty, as compose files often leave it) means embedded mode."""
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check(self) -> ServiceSettings:
        if self.default_deadline_s > self.max_deadline_s:
            raise ValueError(
                f"default_deadline_s {self.default_deadline_s} exceeds max_deadline_s {self.max_deadline_s}"
            )
        if self.max_output_pixels < self.max_input_pixels:
            raise ValueError(
                f"max_output_pixels {self.max_output_pixels} is below max_input_pixels {self.max_input_pixels}"
            )
        return self

    @property
    def model_dirs(self) -> dict[str, Path]:
        """The served models, name -> artifact directory, the default first (RSD_MODELS, else RSD_MODEL)."""
        if self.models is not None:
            return parse_models(self.models)
        name = self.model_dir.resolve().name
        if re.fullmatch(MODEL_NAME, name) is None:
            raise ValueError(f"model directory name {name!r} is not a model name: use RSD_MODELS=name={self.model_dir}")
        return {name: self.model_dir}

    @property
    def default_model(self) -> str:
        return next(iter(self.model_dirs))

    @property
    def embedded(self) -> bool:
        """True when no REDIS_URL is set: API and worker thread share one process."""
        return self.redis_url is None

    @property
    def result_store_bytes(self) -> int:
        return int(self.result_store_mb * 2**20)
