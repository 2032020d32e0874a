"""HTTP-facing models: request parameters, job and health bodies, the JSON error shape (serving.md).

Every error answer is `{"error": {"code": "...", "message": "..."}}`; `ApiError` carries one through
the app to its exception handler.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.jobs import CONTENT_TYPES, JobRecord

#: seeds are 63-bit (rsd.noise.SEED_LIMIT): they fit a signed 64-bit integer everywhere
SEED_MAX = 2**63 - 1


class ApiError(Exception):
    """An answer other than success: status, machine-readable code, one-line message, extra headers."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class UpscaleParams(BaseModel):
    """Query or form parameters of POST /upscale and POST /jobs (query wins when both are given)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["png", "jpeg", "webp"] | None = None
    quality: int | None = Field(default=None, ge=1, le=100)
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
    tile: int | None = Field(default=None, gt=0)
    deadline_ms: int | None = Field(default=None, gt=0)


class JobInfo(BaseModel):
    """GET /jobs/{id}: where a job stands. Times are Unix seconds."""

    id: str
    status: Literal["queued", "running", "done", "failed", "expired", "cancelled"]
    seed: int
    cost_tiles: int
    created: float
    deadline: float
    attempts: int
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
            seed=record.seed,
            cost_tiles=record.cost_tiles,
            created=record.created,
            deadline=record.deadline,
            attempts=record.attempts,
            error=error,
            result_url=f"/jobs/{record.id}/result" if record.status.value == "done" else None,
        )


class HealthInfo(BaseModel):
    status: Literal["ok", "unavailable"]
    reason: str
    backlog_tiles: int
    workers: int
    tiles_per_s: float


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
        (413, "too many bytes or pixels"), (415, "unsupported media type or animated image"),
        (422, "bad parameters"), (429, "queue full; see Retry-After"), (503, "not ready or queue down"),
        (504, "deadline passed"),
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
