"""The queue interface both transports implement (serving.md "Queue: one interface, two transports").

API side (async, in the event loop): `submit(job) -> id`, `wait(id, deadline)`, `get`, `result`,
`cancel`, `health`. Worker side (blocking, in the worker's thread or process): `claim(max_jobs,
max_wait)`, `complete(job, result)`, `fail(job, ...)`, `keepalive`, `live`, `heartbeat`.

Shared semantics: admission counts outstanding work in tiles and answers at once (QueueFull carries
Retry-After); a job whose deadline passed is dropped before compute and reported expired; every job
reaches exactly one terminal status, later completions are no-ops.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from service.jobs import ClaimedJob, Job, JobRecord, JobResult


class QueueError(Exception):
    """Base of the transport's errors that the API maps to HTTP answers."""


class QueueFull(QueueError):
    """Admission refused (429): `reason` is "backlog" or "deadline"."""

    def __init__(self, reason: str, retry_after_s: int, backlog: int) -> None:
        super().__init__(f"queue full ({reason}): backlog {backlog} tiles, retry after {retry_after_s} s")
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.backlog = backlog


class QueueUnavailable(QueueError):
    """The queue backend cannot be reached (503); the message is the reason."""


class IdempotencyConflict(QueueError):
    """An Idempotency-Key was reused with a different request (409)."""


class JobNotFound(QueueError):
    """No such job (or its record expired)."""


class DeadlineExceeded(QueueError):
    """The job's deadline passed before it finished (504); it was not computed if still queued."""


class ResultGone(QueueError):
    """The job finished but its result was released (410): `reason` says why (RESULT_GONE_REASONS)."""

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"the result of job {job_id!r} is gone: {RESULT_GONE_REASONS.get(reason, reason)}")
        self.reason = reason


#: why a finished job's result is no longer stored (serving.md "Result retention")
RESULT_GONE_REASONS = {
    "delivered": "it was delivered to the synchronous request that made it (send an Idempotency-Key to keep it)",
    "expired": "it was kept for RSD_RESULT_TTL_S seconds after the job finished",
    "store_full": "the result store passed RSD_RESULT_STORE_MB and the oldest results were evicted",
}


class StoreFull(QueueError):
    """Admission refused (503) because the store could not hold the job; the message is the reason."""


class JobFailed(QueueError):
    """The job ended failed or cancelled; `record` carries the code and message."""

    def __init__(self, record: JobRecord) -> None:
        super().__init__(f"job {record.id} {record.status}: {record.error_code}: {record.error_message}")
        self.record = record


@dataclass(frozen=True)
class Submitted:
    """`duplicate`: the Idempotency-Key named an existing job, whose id this is."""

    job_id: str
    duplicate: bool
    backlog: int


@dataclass(frozen=True)
class Health:
    ready: bool
    reason: str
    backlog: int
    workers: int
    tiles_per_s: float
    #: the dtypes the ready workers run (sorted, distinct; empty when none is ready)
    dtypes: tuple[str, ...] = ()


def retry_after(excess_tiles: float, tiles_per_s: float) -> int:
    """Seconds until `excess_tiles` of work drain at the measured rate: at least 1, whole seconds."""
    return max(1, math.ceil(excess_tiles / tiles_per_s))


def admission(backlog: int, cost: int, limit: int, tiles_per_s: float, deadline_in_s: float) -> QueueFull | None:
    """The admission rule (serving.md "Admission"); None admits.

    A job alone larger than the limit is admitted into an empty queue (it would otherwise never run;
    the pixel caps bound it). A job whose predicted start (backlog / throughput) is after its deadline
    is refused now instead of expiring in the queue.
    """
    if backlog > 0 and backlog + cost > limit:
        return QueueFull("backlog", retry_after(backlog + cost - limit, tiles_per_s), backlog)
    predicted_wait = backlog / tiles_per_s
    if predicted_wait > deadline_in_s:
        return QueueFull("deadline", retry_after(backlog, tiles_per_s), backlog)
    return None


class ApiQueue(ABC):
    """The API replica's view: admit, wait, inspect, cancel."""

    async def start(self) -> None:  # noqa: B027 - optional: open connections, start listeners
        """Called once from the app's lifespan before serving."""

    async def aclose(self) -> None:  # noqa: B027
        """Called once at shutdown."""

    @abstractmethod
    async def precheck(self, deadline: float) -> None:
        """Raise QueueFull when even a one-tile job would be refused now: lets the API answer 429
        before reading and decoding the upload (serving.md "Admission": at once)."""

    @abstractmethod
    async def submit(self, job: Job) -> Submitted:
        """Admit `job` or raise QueueFull / QueueUnavailable / IdempotencyConflict."""

    @abstractmethod
    async def wait(self, job_id: str, deadline: float) -> JobResult:
        """Block until the job is done; raise DeadlineExceeded (and expire it), JobFailed, JobNotFound."""

    @abstractmethod
    async def get(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    async def result(self, job_id: str) -> JobResult | None:
        """The stored result; None for an unknown job or one not done; ResultGone once released."""

    @abstractmethod
    async def release(self, job_id: str) -> None:
        """Drop a delivered result now (a synchronous request without Idempotency-Key): a later fetch
        gets ResultGone("delivered"); the job's record stays for a short while."""

    @abstractmethod
    async def cancel(self, job_id: str) -> bool:
        """Cancel a job that has not finished (the client went away); True if this call ended it."""

    @abstractmethod
    async def health(self) -> Health: ...

    @abstractmethod
    async def backlog(self) -> int:
        """Outstanding tiles (admitted, not finished); raises QueueUnavailable."""


class WorkerQueue(ABC):
    """The worker's view: claim live jobs, keep their leases, finish each exactly once."""

    @abstractmethod
    def claim(self, max_jobs: int, max_wait_s: float) -> list[ClaimedJob]:
        """Up to `max_jobs` live jobs (expired/cancelled ones are dropped here), waiting at most
        `max_wait_s` for the first. Reclaimed jobs of dead workers come back through here too."""

    @abstractmethod
    def live(self, jobs: Sequence[ClaimedJob]) -> set[str]:
        """Ids of `jobs` still worth computing (not expired, cancelled or finished elsewhere)."""

    @abstractmethod
    def keepalive(self, jobs: Sequence[ClaimedJob]) -> None:
        """Refresh the leases of jobs being computed (no-op in-process)."""

    @abstractmethod
    def complete(self, job: ClaimedJob, result: JobResult) -> bool:
        """Store the result and mark done; False when the job had already ended (a no-op)."""

    @abstractmethod
    def fail(self, job: ClaimedJob, code: str, message: str) -> bool:
        """Mark failed with a reason; False when the job had already ended."""

    def report_progress(self, job_id: str, tiles_done: int, tiles_total: int, eta_s: float | None) -> None:  # noqa: B027
        """Publish a running job's progress (GET /jobs/{id}, its SSE stream); the default does nothing.
        Transports that pay for a write throttle it (serving.md "Worker loop")."""

    @abstractmethod
    def heartbeat(self, ready: bool, tiles_per_s: float, dtype: str | None = None) -> None:
        """Tell API replicas this worker is alive, warmed (`ready`), its measured throughput and the
        dtype its model runs (shown by /readyz)."""

    def close(self) -> None:  # noqa: B027
        """Release connections; the worker calls it when it exits."""
