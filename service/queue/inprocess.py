"""In-process transport: the embedded default (`rsd serve` with no REDIS_URL), serving.md "Queue".

The API coroutines and the worker threads (one per model) share this object. It mirrors the Redis transport where it
matters to clients: admission in tiles with Retry-After, Idempotency-Key, a job dropped (expired)
before compute when its deadline has passed, exactly one terminal status per job. There are no
leases: a thread cannot die without the process.

Models (serving.md "Models"): one worker thread per served model, each on its view `for_model(name)`,
which claims only that model's jobs and heartbeats for it; /readyz is ready once every model named at
construction has a ready worker. Called directly (no view), the worker methods serve every model.

Result retention (serving.md "Result retention"): a delivered synchronous result is released at once
(`release`); the others are kept `result_ttl_s` or until the stored bytes pass `result_store_bytes`,
oldest first. A sweep on a timer (`sweep_interval_s`, started in `start`) expires them, not only the
next request, and then, when no job is in hand (or a minute has passed), returns malloc's free
memory to the OS (`heap_trim`, service.heap). Records outlive their results (a fetch then says why
the result is gone): for `result_ttl_s` more, or `DELIVERED_RECORD_S` after a delivery.

About 400 lines: both sides of the queue contract (ApiQueue and WorkerQueue) over one lock-guarded
state, which has to stay in one place to stay consistent.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from service import heap, metrics
from service.jobs import ClaimedJob, Job, JobRecord, JobResult, JobStatus
from service.queue import base
from service.queue.base import ApiQueue, Health, Submitted, WorkerQueue, admission

#: how long the record of a delivered synchronous job stays (GET /jobs/{id} right after the answer)
DELIVERED_RECORD_S = 60.0
#: seconds between heap trims while jobs are in hand (when idle, every sweep trims)
BUSY_TRIM_INTERVAL_S = 60.0


@dataclass
class _Entry:
    job: Job
    status: JobStatus = JobStatus.QUEUED
    attempts: int = 0
    error_code: str | None = None
    error_message: str | None = None
    result: JobResult | None = None
    finished_at: float = 0.0
    #: when the record itself is forgotten (set at the terminal transition)
    forget_at: float = float("inf")
    #: why the result is no longer stored (base.RESULT_GONE_REASONS), once it is not
    gone: str | None = None
    tiles_done: int = 0
    eta_s: float | None = None
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def record(self) -> JobRecord:
        job = self.job
        return JobRecord(
            id=job.id,
            status=self.status,
            seed=job.params.seed,
            cost_tiles=job.cost_tiles,
            created=job.created,
            deadline=job.deadline,
            attempts=self.attempts,
            error_code=self.error_code,
            error_message=self.error_message,
            tiles_done=self.tiles_done,
            eta_s=self.eta_s,
            model=job.params.model,
        )


class InProcessQueue(ApiQueue, WorkerQueue):
    """Thread-safe: API methods run in the event loop, worker methods in the worker thread."""

    def __init__(
        self,
        max_backlog_tiles: int,
        assumed_tiles_per_s: float,
        result_ttl_s: float = 900.0,
        idempotency_ttl_s: float = 86_400.0,
        heartbeat_timeout_s: float = 10.0,
        result_store_bytes: int = 256 * 2**20,
        sweep_interval_s: float = 5.0,
        models: Sequence[str] = (),
        heap_trim: bool = True,
        busy_trim_interval_s: float = BUSY_TRIM_INTERVAL_S,
    ) -> None:
        self._models = tuple(models)
        self._limit = max_backlog_tiles
        self._store_cap = result_store_bytes
        self._sweep_interval_s = sweep_interval_s
        self._heap_trim = heap_trim
        self._busy_trim_interval_s = busy_trim_interval_s
        #: job id -> result size of every stored result, oldest first (eviction order)
        self._stored: OrderedDict[str, int] = OrderedDict()
        self._stored_bytes = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._assumed_rate = assumed_tiles_per_s
        self._result_ttl_s = result_ttl_s
        self._idem_ttl_s = idempotency_ttl_s
        self._heartbeat_timeout_s = heartbeat_timeout_s
        self._cond = threading.Condition()
        #: model -> queued job ids, oldest first
        self._queued: dict[str, deque[str]] = {}
        self._entries: dict[str, _Entry] = {}
        self._idem: dict[str, tuple[str, str, float]] = {}
        self._backlog = 0
        #: model (None: a worker serving every model) -> its worker's last heartbeat
        self._beats: dict[str | None, _Beat] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ API side
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="rsd-result-sweeper")

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep_forever(self) -> None:
        last_trim = time.monotonic()
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            with self._cond:
                self._sweep(time.time())
                idle = self._backlog == 0
            # Freed results and buffers back to the OS (service.heap) when no job is in hand, and at most
            # every `busy_trim_interval_s` under load: the pages a trim returns are faulted in again by the
            # next jobs, which took the device's busy fraction from 0.88 to 0.72 when trimming every
            # sweep (serving.md "Result retention"). Off the event loop: a large heap takes milliseconds.
            now = time.monotonic()
            if self._heap_trim and (idle or now - last_trim >= self._busy_trim_interval_s):
                await asyncio.to_thread(heap.trim)
                last_trim = now

    @property
    def stored_bytes(self) -> int:
        """Bytes of results held now (the quantity RSD_RESULT_STORE_MB caps)."""
        with self._cond:
            return self._stored_bytes

    def _rate(self) -> float:
        measured = sum(beat.tiles_per_s for beat in self._beats.values())
        return measured if measured > 0 else self._assumed_rate

    async def precheck(self, deadline: float) -> None:
        with self._cond:
            refusal = admission(self._backlog, 1, self._limit, self._rate(), deadline - time.time())
        if refusal is not None:
            raise refusal

    async def submit(self, job: Job) -> Submitted:
        now = time.time()
        with self._cond:
            self._sweep(now)
            if job.idempotency_key is not None:
                known = self._idem.get(job.idempotency_key)
                replay = self._entries.get(known[0]) if known is not None else None
                if known is not None and replay is not None and replay.gone is None:
                    if known[1] != job.fingerprint:
                        raise base.IdempotencyConflict(
                            f"Idempotency-Key {job.idempotency_key!r} was used for a different request"
                        )
                    return Submitted(known[0], duplicate=True, backlog=self._backlog)
            refusal = admission(self._backlog, job.cost_tiles, self._limit, self._rate(), job.deadline - now)
            if refusal is not None:
                raise refusal
            self._entries[job.id] = _Entry(job)
            self._queued.setdefault(job.params.model, deque()).append(job.id)
            self._backlog += job.cost_tiles
            if job.idempotency_key is not None:
                self._idem[job.idempotency_key] = (job.id, job.fingerprint, now + self._idem_ttl_s)
            self._cond.notify_all()
            return Submitted(job.id, duplicate=False, backlog=self._backlog)

    async def wait(self, job_id: str, deadline: float) -> JobResult:
        loop = asyncio.get_running_loop()
        while True:
            future: asyncio.Future[None] = loop.create_future()
            with self._cond:
                entry = self._entries.get(job_id)
                if entry is None:
                    raise base.JobNotFound(job_id)
                if not entry.status.terminal:
                    entry.waiters.append(future)
            if entry.status.terminal:
                return self._outcome(entry)
            timeout = deadline - time.time()
            try:
                await asyncio.wait_for(future, timeout=max(timeout, 0.0))
            except TimeoutError:
                self._finish(job_id, JobStatus.EXPIRED, "deadline", "the deadline passed before the job finished")
                with self._cond:
                    if entry.status is JobStatus.DONE:  # finished in the same instant
                        return self._outcome(entry)
                raise base.DeadlineExceeded(job_id) from None
            except asyncio.CancelledError:
                self._finish(job_id, JobStatus.CANCELLED, "cancelled", "the client went away")
                raise

    @staticmethod
    def _outcome(entry: _Entry) -> JobResult:
        if entry.status is JobStatus.DONE:
            if entry.result is None:
                raise base.ResultGone(entry.job.id, entry.gone or "expired")
            return entry.result
        if entry.status is JobStatus.EXPIRED:
            raise base.DeadlineExceeded(entry.job.id)
        raise base.JobFailed(entry.record())

    async def get(self, job_id: str) -> JobRecord | None:
        with self._cond:
            entry = self._entries.get(job_id)
            return None if entry is None else entry.record()

    async def result(self, job_id: str) -> JobResult | None:
        with self._cond:
            entry = self._entries.get(job_id)
            if entry is not None and entry.gone is not None:
                raise base.ResultGone(job_id, entry.gone)
            return None if entry is None else entry.result

    async def release(self, job_id: str) -> None:
        with self._cond:
            entry = self._entries.get(job_id)
            if entry is not None and entry.result is not None:
                self._drop_result(entry, "delivered")
                entry.forget_at = min(entry.forget_at, time.time() + DELIVERED_RECORD_S)

    async def cancel(self, job_id: str) -> bool:
        return self._finish(job_id, JobStatus.CANCELLED, "cancelled", "cancelled by the client")

    async def backlog(self) -> int:
        with self._cond:
            return self._backlog

    async def health(self) -> Health:
        now = time.time()
        with self._cond:
            fresh = {m: b for m, b in self._beats.items() if now - b.at < self._heartbeat_timeout_s}
            ready = {m: b for m, b in fresh.items() if b.ready}
            missing = [m for m in self._models if m not in ready and None not in ready]
            if not ready or missing:
                stale = [m for m in self._beats if m not in fresh]
                what = f" (models {', '.join(missing)})" if missing and self._models[1:] else ""
                if stale:
                    reason = f"the worker thread stopped answering{what}"
                else:
                    reason = f"the model is loading or warming up{what}"
                return Health(False, reason, self._backlog, len(ready), self._rate())
            dtypes = tuple(sorted({b.dtype for b in ready.values() if b.dtype}))
            return Health(True, "ok", self._backlog, len(ready), self._rate(), dtypes)

    def for_model(self, model: str) -> WorkerQueue:
        """The worker side for one model's worker thread: claims its jobs, heartbeats for it."""
        return _ModelView(self, model)

    # ------------------------------------------------------------------ worker side
    def _waiting(self, model: str | None) -> deque[str] | None:
        """The first non-empty queue of `model` (None: of any model), lock held."""
        if model is not None:
            return self._queued.get(model) or None
        return next((ids for ids in self._queued.values() if ids), None)

    def claim(self, max_jobs: int, max_wait_s: float, model: str | None = None) -> list[ClaimedJob]:
        claimed: list[ClaimedJob] = []
        end = time.monotonic() + max_wait_s
        with self._cond:
            while self._waiting(model) is None:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return claimed
                self._cond.wait(remaining)
            now = time.time()
            while (ids := self._waiting(model)) is not None and len(claimed) < max_jobs:
                entry = self._entries.get(ids.popleft())
                if entry is None or entry.status is not JobStatus.QUEUED:
                    continue  # cancelled or expired while queued: already terminal and uncounted
                if entry.job.deadline <= now:  # serving.md: dropped before compute
                    self._finish_locked(entry, JobStatus.EXPIRED, "deadline", "the deadline passed in the queue")
                    continue
                entry.status = JobStatus.RUNNING
                entry.attempts += 1
                job = entry.job
                # as the Redis transport does
                metrics.QUEUE_WAIT.labels(model=job.params.model).observe(max(0.0, now - job.created))
                claimed.append(ClaimedJob(job.id, job.params, job.data, job.deadline, job.created, entry.attempts))
        return claimed

    def live(self, jobs: Sequence[ClaimedJob]) -> set[str]:
        now = time.time()
        alive: set[str] = set()
        with self._cond:
            for claimed in jobs:
                entry = self._entries.get(claimed.id)
                if entry is None or entry.status is not JobStatus.RUNNING:
                    continue
                if claimed.deadline <= now:
                    self._finish_locked(entry, JobStatus.EXPIRED, "deadline", "the deadline passed before compute")
                    continue
                alive.add(claimed.id)
        return alive

    def keepalive(self, jobs: Sequence[ClaimedJob]) -> None:
        return None

    def complete(self, job: ClaimedJob, result: JobResult) -> bool:
        with self._cond:
            entry = self._entries.get(job.id)
            if entry is None or entry.status.terminal:
                return False
            entry.result = result
            self._finish_locked(entry, JobStatus.DONE, None, None)
            self._stored[job.id] = len(result.data)
            self._stored_bytes += len(result.data)
            # oldest first, never the result just stored (its waiter has yet to read it)
            while self._stored_bytes > self._store_cap and next(iter(self._stored)) != job.id:
                self._drop_result(self._entries[next(iter(self._stored))], "store_full")
            return True

    def report_progress(self, job_id: str, tiles_done: int, tiles_total: int, eta_s: float | None) -> None:
        with self._cond:
            entry = self._entries.get(job_id)
            if entry is not None and entry.status is JobStatus.RUNNING:
                entry.tiles_done = min(max(tiles_done, entry.tiles_done), entry.job.cost_tiles)
                entry.eta_s = eta_s

    def fail(self, job: ClaimedJob, code: str, message: str) -> bool:
        return self._finish(job.id, JobStatus.FAILED, code, message)

    def heartbeat(self, ready: bool, tiles_per_s: float, dtype: str | None = None, model: str | None = None) -> None:
        with self._cond:
            self._beats[model] = _Beat(time.time(), ready, tiles_per_s, dtype)

    # ------------------------------------------------------------------ shared
    def _finish(self, job_id: str, status: JobStatus, code: str | None, message: str | None) -> bool:
        with self._cond:
            entry = self._entries.get(job_id)
            if entry is None or entry.status.terminal:
                return False
            self._finish_locked(entry, status, code, message)
            return True

    def _finish_locked(self, entry: _Entry, status: JobStatus, code: str | None, message: str | None) -> None:
        """The one terminal transition: status, backlog release, waking the waiters (lock held)."""
        entry.status = status
        entry.error_code, entry.error_message = code, message
        entry.finished_at = time.time()
        entry.forget_at = entry.finished_at + 2 * self._result_ttl_s
        self._backlog -= entry.job.cost_tiles
        waiters, entry.waiters = entry.waiters, []
        if self._loop is not None and waiters:
            self._loop.call_soon_threadsafe(_wake_all, waiters)

    def _drop_result(self, entry: _Entry, reason: str) -> None:
        """Release a stored result (lock held); the record keeps why."""
        entry.result = None
        entry.gone = reason
        self._stored_bytes -= self._stored.pop(entry.job.id, 0)

    def _sweep(self, now: float) -> None:
        """Expire results after the result TTL, forget records and idempotency keys after theirs (lock held)."""
        for job_id in list(self._stored):  # oldest first: stop at the first one still young
            entry = self._entries[job_id]
            if now - entry.finished_at <= self._result_ttl_s:
                break
            self._drop_result(entry, "expired")
        for job_id in [job_id for job_id, entry in self._entries.items() if entry.forget_at < now]:
            entry = self._entries.pop(job_id)
            if entry.result is not None:
                self._drop_result(entry, "expired")
        for key in [key for key, (_, _, expires) in self._idem.items() if expires < now]:
            del self._idem[key]


@dataclass(frozen=True)
class _Beat:
    at: float
    ready: bool
    tiles_per_s: float
    dtype: str | None


class _ModelView(WorkerQueue):
    """One model's worker side of an InProcessQueue (`for_model`)."""

    def __init__(self, queue: InProcessQueue, model: str) -> None:
        self._queue = queue
        self.model = model

    def claim(self, max_jobs: int, max_wait_s: float) -> list[ClaimedJob]:
        return self._queue.claim(max_jobs, max_wait_s, model=self.model)

    def live(self, jobs: Sequence[ClaimedJob]) -> set[str]:
        return self._queue.live(jobs)

    def keepalive(self, jobs: Sequence[ClaimedJob]) -> None:
        return None

    def complete(self, job: ClaimedJob, result: JobResult) -> bool:
        return self._queue.complete(job, result)

    def fail(self, job: ClaimedJob, code: str, message: str) -> bool:
        return self._queue.fail(job, code, message)

    def report_progress(self, job_id: str, tiles_done: int, tiles_total: int, eta_s: float | None) -> None:
        self._queue.report_progress(job_id, tiles_done, tiles_total, eta_s)

    def heartbeat(self, ready: bool, tiles_per_s: float, dtype: str | None = None) -> None:
        self._queue.heartbeat(ready, tiles_per_s, dtype, model=self.model)


def _wake_all(waiters: list[asyncio.Future[None]]) -> None:
    for future in waiters:
        if not future.done():
            future.set_result(None)
