"""HTTP-facing models: request parameters, job and health bodies, the JSON error shape (serving.md).

Every error answer is `{"error": {"code": "...", "message": "..."}}`; `ApiError` carries one through
the app to its exception handler, its status from the one table `ERROR_STATUS`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Header, Query
from pydantic import BaseModel, TypeAdapter, ValidationError

from rsd.kinds import OutputFormat
from rsd.outscale import MODEL_SCALE
from rsd.spec import ModelSpec
from service.jobs import CONTENT_TYPES, JobRecord
from service.settings import MODEL_NAME

#: seeds are 63-bit (rsd.noise.SEED_LIMIT): they fit a signed 64-bit integer everywhere
SEED_MAX = 2**63 - 1
#: the longest deadline a request may ask for (deadline_ms / X-Deadline-Ms): one hour
MAX_DEADLINE_MS = 3_600_000
#: Idempotency-Key: 1-128 visible ASCII characters
IDEMPOTENCY_KEY = r"^[!-~]+$"

#: every error code the API answers with, and its status (image errors of rsd.imagefile, job failure
#: codes of the worker, transport outcomes); a code not listed is a server-side failure (500)
ERROR_STATUS: dict[str, int] = {
    "empty": 400, "undecodable": 400, "bad_multipart": 400,
    "unauthorized": 401,
    "not_found": 404,
    "cancelled": 409, "idempotency_conflict": 409,
    "result_evicted": 410,
    "too_large": 413,
    "unsupported": 415,
    "invalid_parameters": 422, "missing_image": 422,
    "queue_full": 429,
    "client_closed": 499,
    "not_ready": 503, "queue_unavailable": 503, "store_full": 503,
    "deadline_exceeded": 504,
}  # fmt: skip


class ApiError(Exception):
    """An answer other than success: machine-readable code (its status from ERROR_STATUS), one-line
    message, extra headers."""

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = ERROR_STATUS.get(code, 500)
        self.code = code
        self.message = message
        self.headers = headers or {}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


@dataclass(frozen=True)
class UpscaleParams:
    """The parameters of POST /upscale and POST /jobs, validated once (FastAPI validates query and
    headers through `Annotated[UpscaleParams, Depends()]`; `with_form` validates form fields, which
    only the body carries). Query wins over form; X-Deadline-Ms over deadline_ms."""

    format: Annotated[OutputFormat | None, Query(description="output format")] = None
    quality: Annotated[int | None, Query(ge=1, le=100, description="JPEG/WEBP quality")] = None
    seed: Annotated[int | None, Query(ge=0, le=SEED_MAX, description="noise seed; random if unset")] = None
    tile: Annotated[int | None, Query(gt=0, description="tile size: one of the model's tiles")] = None
    model: Annotated[str | None, Query(pattern=MODEL_NAME, description="one of GET /models (default: first)")] = None
    outscale: Annotated[
        float | None, Query(gt=1, le=MODEL_SCALE, description="final scale in (1, 4]: the x4 result resized (Lanczos)")
    ] = None
    deadline_ms: Annotated[int | None, Query(gt=0, le=MAX_DEADLINE_MS, description="time budget from arrival, ms")] = (
        None
    )
    x_deadline_ms: Annotated[int | None, Header(gt=0, le=MAX_DEADLINE_MS, description="as deadline_ms")] = None
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=128, pattern=IDEMPOTENCY_KEY)] = None

    @property
    def budget_ms(self) -> int | None:
        return self.x_deadline_ms if self.x_deadline_ms is not None else self.deadline_ms

    def with_form(self, form: dict[str, str]) -> UpscaleParams:
        """These parameters completed by the multipart form's fields (query fields only; query wins)."""
        given = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        fields = {k: v for k, v in form.items() if k in _FORM_FIELDS and k not in given}
        if not fields:
            return self
        try:
            return _PARAMS.validate_python({**given, **fields})
        except ValidationError as exc:
            raise ApiError("invalid_parameters", first_error(exc.errors())) from exc

    def explicit(self) -> dict[str, Any]:
        """What the client chose (for the Idempotency-Key fingerprint): not the deadline or the key."""
        return {name: getattr(self, name) for name in _FORM_FIELDS if name != "deadline_ms"}


_FORM_FIELDS = ("format", "quality", "seed", "tile", "model", "outscale", "deadline_ms")
_PARAMS = TypeAdapter(UpscaleParams)


class JobInfo(BaseModel):
    """GET /jobs/{id}: where a job stands. Times are Unix seconds."""

    id: str
    status: Literal["queued", "running", "done", "failed", "expired", "cancelled"]
    #: the served model computing it (GET /models)
    model: str = ""
    seed: int
    cost_tiles: int
    created: float
    deadline: float
    attempts: int
    #: progress (serving.md "Worker loop"): model tiles computed of the job's total, and the worker's
    #: estimate of the seconds left at its measured rate (None before it has one)
    tiles_total: int
    tiles_done: int = 0
    eta_s: float | None = None
    error: ErrorDetail | None = None
    result_url: str | None = None

    @classmethod
    def from_record(cls, record: JobRecord) -> JobInfo:
        error = None
        if record.error_code:
            error = ErrorDetail(code=record.error_code, message=record.error_message or "")
        return cls(
            id=record.id,
            status=record.status.value,
            model=record.model,
            seed=record.seed,
            cost_tiles=record.cost_tiles,
            created=record.created,
            deadline=record.deadline,
            attempts=record.attempts,
            tiles_total=record.cost_tiles,
            tiles_done=record.cost_tiles if record.status.value == "done" else record.tiles_done,
            eta_s=0.0 if record.status.value == "done" else record.eta_s,
            error=error,
            result_url=f"/jobs/{record.id}/result" if record.status.value == "done" else None,
        )


class ModelInfo(BaseModel):
    """GET /models: one served model (serving.md "Models")."""

    name: str
    #: rsd, sinsr, resshift-s15, resshift-s4 (rsd.family)
    family: str
    #: network evaluations per image: 1 for RSD and SinSR, K for ResShift's K ancestral steps
    steps: int
    #: the LR tile sizes `tile=` may name, and the one used when it is not given
    tiles: list[int]
    default_tile: int
    scale: int
    default: bool

    @classmethod
    def from_spec(cls, name: str, spec: ModelSpec, default: bool) -> ModelInfo:
        return cls(
            name=name, family=spec.family, steps=spec.sampler.steps, tiles=list(spec.tiles),
            default_tile=spec.default_tile, scale=spec.scale, default=default,
        )  # fmt: skip


class HealthInfo(BaseModel):
    status: Literal["ok", "unavailable"]
    reason: str
    backlog_tiles: int
    workers: int
    tiles_per_s: float
    #: the dtype the ready workers' model runs (RSD_DTYPE resolved: "bf16", "fp32", ...); several,
    #: comma-separated, when Redis-mode workers differ; null while no worker is ready
    dtype: str | None = None


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


def first_error(errors: Any) -> str:
    """One line from a pydantic/FastAPI validation error list: where, and what is wrong."""
    first: dict[str, Any] = next(iter(errors), {})
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("query", "body"))
    return f"{where}: {first.get('msg', 'invalid value')}" if where else str(first.get("msg", "invalid"))


# OpenAPI documentation of the upload body and the error answers (the routes read bodies themselves)
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in [
        (400, "undecodable image or malformed body"), (401, "missing or wrong API key"), (404, "no such job"),
        (409, "Idempotency-Key reused for another request, or job cancelled"),
        (410, "result_evicted: the result was released (delivered, expired or evicted for space)"),
        (413, "too many bytes or pixels"), (415, "unsupported media type or animated image"),
        (422, "bad parameters"), (429, "queue full; see Retry-After"),
        (503, "not ready, queue down, or store_full (the result store is near its memory limit)"),
        (504, "deadline_exceeded: the deadline passed before the image was computed"),
    ]
}  # fmt: skip
IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
UPLOAD_REQUEST: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
            "image/png": IMAGE_BODY,
            "image/jpeg": IMAGE_BODY,
            "image/webp": IMAGE_BODY,
        },
    }
}
IMAGE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {ct: IMAGE_BODY for ct in CONTENT_TYPES.values()}, "description": "x4 image"}
}
