"""The HTTP API (serving.md "HTTP contract"): `create_app(settings) -> FastAPI`.

The API process imports no torch and no model code (import-linter contract): it validates uploads
with rsd.imagefile, prices them in tiles with rsd.imageops, and hands them to a queue. With
`REDIS_URL` set it talks to Redis Streams; the embedded mode (`rsd serve` without Redis) is composed in
`service.main`, which passes an in-process queue and a worker thread in.

Deadlines (service.intake): `X-Deadline-Ms` header or `deadline_ms` parameter (milliseconds from
arrival), default `RSD_DEFAULT_DEADLINE_S`, at most `RSD_MAX_DEADLINE_S`. A job still queued at its
deadline is never computed; the client gets 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from rsd.spec import ModelSpec, read_spec
from service import metrics
from service.codec import image_limits
from service.intake import IDEMPOTENCY_KEY, deadline_s, make_job
from service.jobs import Job, JobResult, JobStatus
from service.middleware import ObservabilityMiddleware
from service.queue.base import (
    ApiQueue,
    DeadlineExceeded,
    IdempotencyConflict,
    JobFailed,
    JobNotFound,
    QueueFull,
    QueueUnavailable,
)
from service.schemas import (
    ERROR_RESPONSES,
    IMAGE_RESPONSE,
    UPLOAD_REQUEST,
    ApiError,
    HealthInfo,
    JobInfo,
    Liveness,
    first_error,
)
from service.settings import ServiceSettings

log = logging.getLogger(__name__)
#: the page's static files, next to this module (a plain path works in editable and wheel installs alike)
WEB_DIR = Path(__file__).resolve().parent / "web"

#: worker failure codes that are the input's fault map to the statuses of the image errors
FAILURE_STATUS = {"empty": 400, "undecodable": 400, "too_large": 413, "unsupported": 415, "cancelled": 409}


class BackgroundWorker(Protocol):
    """The embedded worker thread (service.worker.WorkerThread) as the app sees it."""

    def start(self) -> None: ...

    def stop(self, timeout_s: float) -> None: ...


def create_app(
    settings: ServiceSettings, queue: ApiQueue | None = None, worker: BackgroundWorker | None = None
) -> FastAPI:
    """The app for one API process. `queue` defaults to Redis Streams (settings.redis_url required)."""
    if queue is None:
        if settings.redis_url is None:
            raise ValueError("no queue given and REDIS_URL unset: use service.main.build_app for embedded mode")
        from service.queue.redis import RedisApiQueue

        queue = RedisApiQueue(settings)
    spec = read_spec(settings.model_dir)
    state = _AppState(settings, spec, queue)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await queue.start()
        if worker is not None:
            worker.start()
        try:
            yield
        finally:
            if worker is not None:
                await run_in_threadpool(worker.stop, 30.0)
            await queue.aclose()
            metrics.mark_process_dead()

    app = FastAPI(title="rsd-serve", version="0.1.0", lifespan=lifespan)
    app.add_middleware(ObservabilityMiddleware)
    _add_error_handlers(app)
    _add_routes(app, state)
    _document_tiles(app, spec.tiles)
    web = WEB_DIR
    app.mount("/web", StaticFiles(directory=str(web)), name="web")
    return app


def _document_tiles(app: FastAPI, tiles: list[int]) -> None:
    """Publish the model's tile sizes as the `tile` parameter's enum in the OpenAPI schema."""
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        schema = default_openapi()
        for path in ("/upscale", "/jobs"):
            for parameter in schema["paths"][path]["post"].get("parameters", []):
                if parameter["name"] == "tile":
                    parameter["schema"] = {"type": "integer", "enum": list(tiles)}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


class _AppState:
    def __init__(self, settings: ServiceSettings, spec: ModelSpec, queue: ApiQueue) -> None:
        self.settings = settings
        self.spec = spec
        self.queue = queue
        self.limits = image_limits(settings, spec.scale)


# ---------------------------------------------------------------------- errors
def _error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        metrics.REJECTED.labels(reason=exc.code).inc()
        return _error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.REJECTED.labels(reason="invalid_parameters").inc()
        return _error_response(422, "invalid_parameters", first_error(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(exc.status_code, "http_error", str(exc.detail), dict(exc.headers or {}))


def _queue_error(exc: Exception) -> ApiError:
    """One mapping from transport outcomes to answers (serving.md "Failure")."""
    match exc:
        case QueueFull():
            return ApiError(429, "queue_full", str(exc), {"Retry-After": str(exc.retry_after_s)})
        case QueueUnavailable():
            return ApiError(503, "queue_unavailable", str(exc), {"Retry-After": "1"})
        case DeadlineExceeded():
            return ApiError(504, "deadline_exceeded", "the deadline passed before the image was computed")
        case IdempotencyConflict():
            return ApiError(409, "idempotency_conflict", str(exc))
        case JobNotFound():
            return ApiError(404, "not_found", f"no job {exc}")
        case JobFailed():
            record = exc.record
            status = FAILURE_STATUS.get(record.error_code or "", 500)
            return ApiError(status, record.error_code or "job_failed", record.error_message or "the job failed")
    raise exc


# ---------------------------------------------------------------------- request handling
def _require_key(state: _AppState) -> Any:
    async def check(
        authorization: Annotated[str | None, Header()] = None,
        x_api_key: Annotated[str | None, Header()] = None,
    ) -> None:
        expected = state.settings.api_key
        if expected is None:
            return
        given = x_api_key or (authorization or "").removeprefix("Bearer ").strip()
        if not given or not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
            raise ApiError(401, "unauthorized", "missing or wrong API key", {"WWW-Authenticate": "Bearer"})

    return check


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read: only that can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _wait_or_disconnect(queue: ApiQueue, request: Request, job_id: str, deadline: float) -> JobResult:
    """Wait for the result; if the client goes away first, cancel the job (its tiles leave the backlog,
    a worker drops it before compute) instead of computing an image nobody will read."""
    waiting = asyncio.ensure_future(queue.wait(job_id, deadline))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not waiting.done():
            waiting.cancel()  # queue.wait cancels the job on cancellation
    if waiting.cancelled():
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        raise ApiError(499, "client_closed", "the client closed the connection; the job was cancelled")
    return waiting.result()


def _image_response(result: JobResult, seed: int, job_id: str) -> Response:
    timing = (
        f"queue;dur={result.queue_s * 1000:.1f}, compute;dur={result.compute_s * 1000:.1f}, "
        f"encode;dur={result.encode_s * 1000:.1f}"
    )
    headers = {"X-Seed": str(seed), "X-Job-Id": job_id, "Server-Timing": timing}
    return Response(result.data, media_type=result.content_type, headers=headers)


def _add_routes(app: FastAPI, state: _AppState) -> None:
    queue = state.queue
    auth = [Depends(_require_key(state))]

    async def submit(
        request: Request, query: dict[str, Any], deadline_header: int | None, idem: str | None
    ) -> tuple[Job, str, bool]:
        try:
            await queue.precheck(time.time() + deadline_s(state.settings, query, deadline_header))
        except (QueueFull, QueueUnavailable) as exc:
            raise _queue_error(exc) from exc
        job = await make_job(state.settings, state.spec, state.limits, request, query, deadline_header, idem)
        try:
            submitted = await queue.submit(job)
        except (QueueFull, QueueUnavailable, IdempotencyConflict) as exc:
            raise _queue_error(exc) from exc
        metrics.BACKLOG.set(submitted.backlog)
        return job, submitted.job_id, submitted.duplicate

    @app.post(
        "/upscale",
        responses={**IMAGE_RESPONSE, **ERROR_RESPONSES},
        response_class=Response,
        openapi_extra=UPLOAD_REQUEST,
        dependencies=auth,
    )
    async def upscale(
        request: Request,
        format: Annotated[str | None, Query(pattern="^(png|jpeg|webp)$")] = None,
        quality: Annotated[int | None, Query(ge=1, le=100)] = None,
        seed: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
        tile: Annotated[int | None, Query(gt=0)] = None,
        deadline_ms: Annotated[int | None, Query(gt=0)] = None,
        x_deadline_ms: Annotated[int | None, Header(gt=0)] = None,
        idempotency_key: Annotated[str | None, Header(min_length=1, max_length=128, pattern=IDEMPOTENCY_KEY)] = None,
    ) -> Response:
        """Upscale one image x4 and return it (multipart field `image`, or a raw image body)."""
        query = {"format": format, "quality": quality, "seed": seed, "tile": tile, "deadline_ms": deadline_ms}
        job, job_id, duplicate = await submit(request, query, x_deadline_ms, idempotency_key)
        try:
            result = await _wait_or_disconnect(queue, request, job_id, job.deadline)
            record = await queue.get(job_id) if duplicate else None
        except (DeadlineExceeded, JobFailed, JobNotFound, QueueUnavailable) as exc:
            raise _queue_error(exc) from exc
        return _image_response(result, record.seed if record else job.params.seed, job_id)

    @app.post(
        "/jobs",
        status_code=202,
        response_model=JobInfo,
        responses=ERROR_RESPONSES,
        openapi_extra=UPLOAD_REQUEST,
        dependencies=auth,
    )
    async def create_job(
        request: Request,
        format: Annotated[str | None, Query(pattern="^(png|jpeg|webp)$")] = None,
        quality: Annotated[int | None, Query(ge=1, le=100)] = None,
        seed: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
        tile: Annotated[int | None, Query(gt=0)] = None,
        deadline_ms: Annotated[int | None, Query(gt=0)] = None,
        x_deadline_ms: Annotated[int | None, Header(gt=0)] = None,
        idempotency_key: Annotated[str | None, Header(min_length=1, max_length=128, pattern=IDEMPOTENCY_KEY)] = None,
    ) -> JSONResponse:
        """Queue one image; poll `Location` (GET /jobs/{id}), then fetch /jobs/{id}/result."""
        query = {"format": format, "quality": quality, "seed": seed, "tile": tile, "deadline_ms": deadline_ms}
        _, job_id, _ = await submit(request, query, x_deadline_ms, idempotency_key)
        info = await _job_info(job_id)
        return JSONResponse(info.model_dump(), status_code=202, headers={"Location": f"/jobs/{job_id}"})

    async def _job_info(job_id: str) -> JobInfo:
        try:
            record = await queue.get(job_id)
        except QueueUnavailable as exc:
            raise _queue_error(exc) from exc
        if record is None:
            raise ApiError(404, "not_found", f"no job {job_id!r} (unknown or expired)")
        return JobInfo.from_record(record)

    @app.get("/jobs/{job_id}", response_model=JobInfo, responses=ERROR_RESPONSES, dependencies=auth)
    async def get_job(job_id: str) -> JobInfo:
        return await _job_info(job_id)

    @app.post("/jobs/{job_id}/cancel", response_model=JobInfo, responses=ERROR_RESPONSES, dependencies=auth)
    async def cancel_job(job_id: str) -> JobInfo:
        """Cancel a queued or running job (a running one finishes, its result is discarded)."""
        await _job_info(job_id)
        try:
            await queue.cancel(job_id)
        except QueueUnavailable as exc:
            raise _queue_error(exc) from exc
        return await _job_info(job_id)

    pending: dict[int | str, dict[str, Any]] = {
        202: {"model": JobInfo, "description": "not finished yet; retry after Retry-After"}
    }

    @app.get("/jobs/{job_id}/result", responses={**IMAGE_RESPONSE, **pending, **ERROR_RESPONSES}, dependencies=auth)
    async def job_result(job_id: str) -> Response:
        """The image when done; 202 with the job while it is queued or running; the job's error otherwise."""
        info = await _job_info(job_id)
        if info.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            return JSONResponse(info.model_dump(), status_code=202, headers={"Retry-After": "1"})
        if info.status == JobStatus.DONE:
            try:
                result = await queue.result(job_id)
            except QueueUnavailable as exc:
                raise _queue_error(exc) from exc
            if result is not None:
                return _image_response(result, info.seed, job_id)
            raise ApiError(404, "not_found", f"the result of job {job_id!r} expired")
        if info.status == JobStatus.EXPIRED:
            raise _queue_error(DeadlineExceeded(job_id))
        code, message = (info.error.code, info.error.message) if info.error else ("job_failed", info.status)
        raise ApiError(FAILURE_STATUS.get(code, 500), code, message)

    @app.get("/healthz", response_model=Liveness)
    async def healthz() -> Liveness:
        """Liveness: the process answers."""
        return Liveness()

    @app.get("/readyz", response_model=HealthInfo, responses={503: {"model": HealthInfo}})
    async def readyz() -> JSONResponse:
        """Readiness: a worker has the model loaded and warmed, and the queue is reachable."""
        health = await queue.health()
        metrics.BACKLOG.set(health.backlog)
        info = HealthInfo(
            status="ok" if health.ready else "unavailable",
            reason=health.reason,
            backlog_tiles=health.backlog,
            workers=health.workers,
            tiles_per_s=round(health.tiles_per_s, 3),
        )
        return JSONResponse(info.model_dump(), status_code=200 if health.ready else 503)

    @app.get("/metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition (aggregated over processes in multiprocess mode)."""
        try:
            metrics.BACKLOG.set(await queue.backlog())  # the gauge is current at every scrape
            metrics.QUEUE_UP.set(1)
        except QueueUnavailable:
            metrics.QUEUE_UP.set(0)  # what RsdRedisUnreachable alerts on (deploy/prometheus/rules/)
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        page = (WEB_DIR / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(page)
