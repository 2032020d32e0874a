"""The HTTP API (serving.md "HTTP contract"): `create_app(settings) -> FastAPI`.

The API process imports no torch and no model code (import-linter contract): it validates uploads
with rsd.imagefile, prices them in tiles with rsd.imageops, and hands them to a queue. With
`REDIS_URL` set it talks to Redis Streams; the embedded mode (`rsd serve` without Redis) passes an
in-process queue and its worker threads in. Both are composed in `service.main`.

Routes live on the module-level `router`; `create_app` includes it and puts the per-app state
(settings, the served models, queue) on `app.state`, where the dependencies find it. The request parameters
are one validated type (schemas.UpscaleParams through `Depends()`), passed down unchanged; every error
code maps to its status through one table (schemas.ERROR_STATUS).

Deadlines (service.intake): `X-Deadline-Ms` header or `deadline_ms` parameter (milliseconds from
arrival), default `RSD_DEFAULT_DEADLINE_S`, at most `RSD_MAX_DEADLINE_S`. A job still queued at its
deadline is never computed; the client gets 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import metrics
from service.intake import deadline_s, make_job
from service.jobs import Job, JobResult, JobStatus
from service.middleware import ObservabilityMiddleware
from service.queue.base import (
    ApiQueue,
    DeadlineExceeded,
    IdempotencyConflict,
    JobFailed,
    JobNotFound,
    QueueError,
    QueueFull,
    QueueUnavailable,
    ResultGone,
    StoreFull,
)
from service.schemas import (
    ERROR_RESPONSES,
    IMAGE_RESPONSE,
    UPLOAD_REQUEST,
    ApiError,
    HealthInfo,
    JobInfo,
    Liveness,
    ModelInfo,
    UpscaleParams,
    first_error,
)
from service.served import ServedModels
from service.settings import ServiceSettings

log = logging.getLogger(__name__)
#: the page's static files, next to this module (a plain path works in editable and wheel installs alike)
WEB_DIR = Path(__file__).resolve().parent / "web"
#: how often the SSE stream of a job looks at its record (progress is published a few times a second)
EVENTS_POLL_S = 0.25


class BackgroundWorker(Protocol):
    """The embedded worker thread (service.embedded.WorkerThread) as the app sees it."""

    def start(self) -> None: ...

    def stop(self, timeout_s: float) -> None: ...


class AppState:
    """What the routes need, built once per app (`app.state.rsd`)."""

    def __init__(self, settings: ServiceSettings, models: ServedModels, queue: ApiQueue) -> None:
        self.settings = settings
        self.models = models
        self.queue = queue


def create_app(settings: ServiceSettings, queue: ApiQueue, worker: BackgroundWorker | None = None) -> FastAPI:
    """The app for one API process on `queue` (built by the composition root, service.main)."""
    api_queue = queue

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await api_queue.start()
        if worker is not None:
            worker.start()
        try:
            yield
        finally:
            if worker is not None:
                await run_in_threadpool(worker.stop, 30.0)
            await api_queue.aclose()
            metrics.mark_process_dead()

    app = FastAPI(title="rsd-serve", version="0.1.0", lifespan=lifespan)
    app.state.rsd = AppState(settings, ServedModels.from_settings(settings), api_queue)
    app.add_middleware(ObservabilityMiddleware)
    _add_error_handlers(app)
    app.include_router(router)
    app.mount("/web", StaticFiles(directory=str(WEB_DIR)), name="web")
    return app


# ---------------------------------------------------------------------- errors
def _error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        metrics.REJECTED.labels(reason=exc.code).inc()
        return _error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(QueueError)
    async def queue_error(request: Request, exc: QueueError) -> JSONResponse:
        return await api_error(request, _queue_error(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.REJECTED.labels(reason="invalid_parameters").inc()
        return _error_response(422, "invalid_parameters", first_error(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(exc.status_code, "http_error", str(exc.detail), dict(exc.headers or {}))


def _queue_error(exc: QueueError) -> ApiError:
    """Transport outcomes as answers (serving.md "Failure"); statuses come from ERROR_STATUS."""
    match exc:
        case QueueFull():
            return ApiError("queue_full", str(exc), {"Retry-After": str(exc.retry_after_s)})
        case QueueUnavailable():
            return ApiError("queue_unavailable", str(exc), {"Retry-After": "1"})
        case StoreFull():
            return ApiError("store_full", str(exc), {"Retry-After": "5"})
        case DeadlineExceeded():
            return ApiError("deadline_exceeded", "the deadline passed before the image was computed")
        case IdempotencyConflict():
            return ApiError("idempotency_conflict", str(exc))
        case JobNotFound():
            return ApiError("not_found", f"no job {exc}")
        case ResultGone():
            return ApiError("result_evicted", str(exc))
        case JobFailed():
            record = exc.record
            return ApiError(record.error_code or "job_failed", record.error_message or "the job failed")
    return ApiError("queue_error", str(exc))


# ---------------------------------------------------------------------- dependencies
def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.rsd
    return state


State = Annotated[AppState, Depends(app_state)]
Params = Annotated[UpscaleParams, Depends()]


async def require_key(
    state: State,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> None:
    expected = state.settings.api_key
    if expected is None:
        return
    given = x_api_key or (authorization or "").removeprefix("Bearer ").strip()
    if not given or not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise ApiError("unauthorized", "missing or wrong API key", {"WWW-Authenticate": "Bearer"})


router = APIRouter()
#: the API key dependency of every route but the probes, /metrics and the page
KEYED = [Depends(require_key)]


# ---------------------------------------------------------------------- request handling
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
        raise ApiError("client_closed", "the client closed the connection; the job was cancelled")
    return waiting.result()


def _image_response(result: JobResult, seed: int, job_id: str) -> Response:
    timing = (
        f"queue;dur={result.queue_s * 1000:.1f}, compute;dur={result.compute_s * 1000:.1f}, "
        f"encode;dur={result.encode_s * 1000:.1f}"
    )
    headers = {"X-Seed": str(seed), "X-Job-Id": job_id, "Server-Timing": timing}
    return Response(result.data, media_type=result.content_type, headers=headers)


async def _submit(state: AppState, request: Request, params: UpscaleParams) -> tuple[Job, str, bool]:
    await state.queue.precheck(time.time() + deadline_s(state.settings, params))
    job = await make_job(state.settings, state.models, request, params)
    submitted = await state.queue.submit(job)
    metrics.BACKLOG.set(submitted.backlog)
    return job, submitted.job_id, submitted.duplicate


async def _job_info(queue: ApiQueue, job_id: str) -> JobInfo:
    record = await queue.get(job_id)
    if record is None:
        raise ApiError("not_found", f"no job {job_id!r} (unknown or expired)")
    return JobInfo.from_record(record)


@router.post(
    "/upscale",
    responses={**IMAGE_RESPONSE, **ERROR_RESPONSES},
    response_class=Response,
    openapi_extra=UPLOAD_REQUEST,
    dependencies=KEYED,
)
async def upscale(request: Request, state: State, params: Params) -> Response:
    """Upscale one image x4 and return it (multipart field `image`, or a raw image body).

    The result is released once sent, unless the request carried an Idempotency-Key (then it is kept
    like a /jobs result, for a retry with the same key)."""
    job, job_id, duplicate = await _submit(state, request, params)
    result = await _wait_or_disconnect(state.queue, request, job_id, job.deadline)
    record = await state.queue.get(job_id) if duplicate else None
    if params.idempotency_key is None:
        await state.queue.release(job_id)
    return _image_response(result, record.seed if record else job.params.seed, job_id)


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobInfo,
    responses=ERROR_RESPONSES,
    openapi_extra=UPLOAD_REQUEST,
    dependencies=KEYED,
)
async def create_job(request: Request, state: State, params: Params) -> JSONResponse:
    """Queue one image; poll `Location` (GET /jobs/{id}) or stream GET /jobs/{id}/events, then fetch
    /jobs/{id}/result (kept RSD_RESULT_TTL_S, or less when the result store is full: then 410)."""
    _, job_id, _ = await _submit(state, request, params)
    info = await _job_info(state.queue, job_id)
    return JSONResponse(info.model_dump(), status_code=202, headers={"Location": f"/jobs/{job_id}"})


@router.get("/jobs/{job_id}", response_model=JobInfo, responses=ERROR_RESPONSES, dependencies=KEYED)
async def get_job(job_id: str, state: State) -> JobInfo:
    """Where the job stands, with its progress (tiles_done of tiles_total, eta_s)."""
    return await _job_info(state.queue, job_id)


@router.get(
    "/jobs/{job_id}/events",
    responses={200: {"content": {"text/event-stream": {}}, "description": "JobInfo events"}, **ERROR_RESPONSES},
    response_class=StreamingResponse,
    dependencies=KEYED,
)
async def job_events(job_id: str, state: State) -> StreamingResponse:
    """Server-Sent Events: one `progress` event (a JobInfo) whenever the job changes, until it ends;
    the last event, `end`, carries the final status."""
    first = await _job_info(state.queue, job_id)
    return StreamingResponse(
        _events(state.queue, first), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )


async def _events(queue: ApiQueue, info: JobInfo) -> AsyncIterator[str]:
    last: dict[str, Any] | None = None
    while True:
        current = info.model_dump()
        ended = JobStatus(info.status).terminal
        if current != last or ended:
            yield f"event: {'end' if ended else 'progress'}\ndata: {json.dumps(current)}\n\n"
            last = current
        if ended:
            return
        await asyncio.sleep(EVENTS_POLL_S)
        try:
            info = await _job_info(queue, info.id)
        except (ApiError, QueueUnavailable) as exc:
            message = exc.message if isinstance(exc, ApiError) else str(exc)
            yield f"event: error\ndata: {json.dumps({'error': {'code': 'events_lost', 'message': message}})}\n\n"
            return


@router.post("/jobs/{job_id}/cancel", response_model=JobInfo, responses=ERROR_RESPONSES, dependencies=KEYED)
async def cancel_job(job_id: str, state: State) -> JobInfo:
    """Cancel a queued or running job (a running one finishes, its result is discarded)."""
    await _job_info(state.queue, job_id)
    await state.queue.cancel(job_id)
    return await _job_info(state.queue, job_id)


_PENDING: dict[int | str, dict[str, Any]] = {
    202: {"model": JobInfo, "description": "not finished yet; retry after Retry-After"}
}


@router.get("/jobs/{job_id}/result", responses={**IMAGE_RESPONSE, **_PENDING, **ERROR_RESPONSES}, dependencies=KEYED)
async def job_result(job_id: str, state: State) -> Response:
    """The image when done; 202 with the job while it is queued or running; 410 once the result was
    released (delivered, expired or evicted; the error says which); the job's error otherwise."""
    info = await _job_info(state.queue, job_id)
    if info.status in (JobStatus.QUEUED, JobStatus.RUNNING):
        return JSONResponse(info.model_dump(), status_code=202, headers={"Retry-After": "1"})
    if info.status == JobStatus.DONE:
        result = await state.queue.result(job_id)
        if result is None:
            raise ResultGone(job_id, "expired")
        return _image_response(result, info.seed, job_id)
    if info.status == JobStatus.EXPIRED:
        raise DeadlineExceeded(job_id)
    code, message = (info.error.code, info.error.message) if info.error else ("job_failed", info.status)
    raise ApiError(code, message)


@router.get("/models", response_model=list[ModelInfo], dependencies=KEYED)
async def list_models(state: State) -> list[ModelInfo]:
    """The models this server serves (`model=` of /upscale and /jobs), the default first."""
    return state.models.infos()


@router.get("/healthz", response_model=Liveness)
async def healthz() -> Liveness:
    """Liveness: the process answers."""
    return Liveness()


@router.get("/readyz", response_model=HealthInfo, responses={503: {"model": HealthInfo}})
async def readyz(state: State) -> JSONResponse:
    """Readiness: a worker has the model loaded and warmed, and the queue is reachable."""
    health = await state.queue.health()
    metrics.BACKLOG.set(health.backlog)
    info = HealthInfo(
        status="ok" if health.ready else "unavailable",
        reason=health.reason,
        backlog_tiles=health.backlog,
        workers=health.workers,
        tiles_per_s=round(health.tiles_per_s, 3),
        dtype=",".join(health.dtypes) or None,
    )
    return JSONResponse(info.model_dump(), status_code=200 if health.ready else 503)


@router.get("/metrics", response_class=Response)
async def prometheus_metrics(state: State) -> Response:
    """Prometheus text exposition (aggregated over processes in multiprocess mode)."""
    try:
        metrics.BACKLOG.set(await state.queue.backlog())  # the gauge is current at every scrape
        metrics.QUEUE_UP.set(1)
    except QueueUnavailable:
        metrics.QUEUE_UP.set(0)  # what RsdRedisUnreachable alerts on (deploy/prometheus/rules/)
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    page = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    return HTMLResponse(page)
