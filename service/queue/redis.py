"""Redis Streams transport, API side (serving.md "Queue", "Redis layout", "Failure" table).

An API replica admits a job with one script (backlog check, stream entry, job hash, input bytes,
Idempotency-Key), then waits for a notice on its own reply stream `{prefix}:reply:{instance}` and
reads the result from the job hash (the truth; notices are only wake-ups, so a lost one costs at most
one poll interval). Every Redis failure becomes `QueueUnavailable` with the reason: the API answers 503
at once instead of hanging, and redis-py reconnects by itself when the server is back.

About 400 lines: one class is the API side of the transport, every method a step of the ApiQueue
contract; the Lua scripts and key names are already their own modules (scripts, keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff

from service.jobs import Job, JobRecord, JobResult, JobStatus
from service.queue import scripts
from service.queue.base import (
    ApiQueue,
    DeadlineExceeded,
    Health,
    IdempotencyConflict,
    JobFailed,
    JobNotFound,
    QueueFull,
    QueueUnavailable,
    ResultGone,
    StoreFull,
    Submitted,
    admission,
    retry_after,
)
from service.queue.keys import GROUP, RedisKeys
from service.settings import ServiceSettings

log = logging.getLogger(__name__)

#: how long a worker heartbeat counts as alive (in multiples of the heartbeat period, at least 5 s)
HEARTBEAT_GRACE = 5.0
#: the longest an API replica sleeps between looks at a job's hash when no notice arrives
POLL_S = 1.0
#: how long a delivered synchronous job's record stays (GET /jobs/{id} right after the answer)
DELIVERED_RECORD_S = 60
#: how long a reading of Redis INFO memory is reused by admission
MEMORY_CACHE_S = 0.5

_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path}"


@contextlib.contextmanager
def unavailable_on_error(url: str) -> Iterator[None]:
    try:
        yield
    except _REDIS_ERRORS as exc:
        raise QueueUnavailable(f"the queue backend {redacted(url)} is unreachable: {exc}") from exc


def eviction_warning(policy: str | None) -> str | None:
    """The loud start-up warning when Redis may evict keys (eviction silently loses jobs)."""
    if policy == "noeviction":
        return None
    return (
        f"Redis maxmemory-policy is {policy or 'unknown'!r}, not 'noeviction': under memory pressure Redis "
        "will silently drop queued jobs, inputs and results. Set `maxmemory-policy noeviction`."
    )


def record_from_hash(job_id: str, fields: dict[str, str]) -> JobRecord:
    return JobRecord(
        id=job_id,
        status=JobStatus(fields["status"]),
        seed=int(fields.get("seed", 0)),
        cost_tiles=int(fields.get("cost", 0)),
        created=float(fields.get("created", 0.0)),
        deadline=float(fields.get("deadline", 0.0)),
        attempts=int(fields.get("attempts", 0)),
        error_code=fields.get("error_code") or None,
        error_message=fields.get("error_message") or None,
        tiles_done=int(fields.get("tiles_done") or 0),
        eta_s=float(fields["eta_s"]) if fields.get("eta_s") else None,
        model=fields.get("model", ""),
    )


def fresh_workers(raw: dict[str, str], now: float, heartbeat_s: float) -> list[dict[str, Any]]:
    """Decoded heartbeats of workers seen recently (stale ones belong to dead workers)."""
    grace = max(HEARTBEAT_GRACE, HEARTBEAT_GRACE * heartbeat_s)
    beats = []
    for value in raw.values():
        try:
            beat = json.loads(value)
        except ValueError:
            continue
        if now - float(beat.get("time", 0.0)) < grace:
            beats.append(beat)
    return beats


class RedisApiQueue(ApiQueue):
    """One per API process. Thread-unsafe by design: used only from the event loop."""

    def __init__(self, settings: ServiceSettings) -> None:
        if settings.redis_url is None:
            raise ValueError("RedisApiQueue needs settings.redis_url (REDIS_URL)")
        self._url = settings.redis_url
        self._settings = settings
        self._keys = RedisKeys(settings.redis_prefix)
        timeout = settings.redis_timeout_s
        self._client = aioredis.Redis.from_url(
            self._url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=False,
            # a pooled connection to a Redis that restarted fails once: retry on a fresh one (every
            # script is safe to run twice: admission is keyed by job id, terminal transitions are no-ops)
            retry=AsyncRetry(ExponentialBackoff(cap=0.25, base=0.025), retries=2),
        )
        self._admit = self._client.register_script(scripts.ADMIT)
        self._finish = self._client.register_script(scripts.FINISH)
        self._release = self._client.register_script(scripts.RELEASE)
        self._sweep = self._client.register_script(scripts.SWEEP)
        self._sweeper: asyncio.Task[None] | None = None
        self._memory_cache: tuple[float, int, int] = (0.0, 0, 0)  # (read at, used_memory, maxmemory)
        self._waiters: dict[str, list[asyncio.Event]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        #: the models this API admits jobs for: /readyz wants a ready worker for each
        self._models = tuple(settings.model_dirs)
        #: (read at, tiles/s, ready workers, the dtypes the ready workers run, the models they serve)
        self._rate_cache: tuple[float, float, int, tuple[str, ...], frozenset[str]] = _NO_RATE

    async def start(self) -> None:
        try:
            policy: dict[Any, Any] = await self._client.config_get("maxmemory-policy")
            warning = eviction_warning(_text(policy.get(b"maxmemory-policy") or policy.get("maxmemory-policy")))
        except redis.exceptions.ResponseError as exc:  # CONFIG disabled (managed Redis)
            warning = f"cannot verify Redis maxmemory-policy ({exc}); make sure it is 'noeviction'"
        except _REDIS_ERRORS as exc:
            warning = None
            log.error("Redis %s unreachable at start-up (%s); /readyz answers 503 until it is", self._url, exc)
        if warning:
            log.warning("!" * 20 + " " + warning + " " + "!" * 20)
        self._listener = asyncio.create_task(self._listen(), name="rsd-reply-listener")
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="rsd-result-sweeper")

    async def aclose(self) -> None:
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._listener is not None:
            self._listener.cancel()
            # redis-py may turn the cancellation of a blocking read into a connection error, which the
            # listener would retry: the flag ends it, the timeout bounds the wait
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, *_REDIS_ERRORS):
                await asyncio.wait_for(self._listener, timeout=2 * POLL_S)
        await self._client.aclose()

    # ------------------------------------------------------------------ admission
    async def _throughput(self) -> tuple[float, int]:
        """Measured tiles/s summed over fresh workers (cached 1 s), or the assumed rate."""
        read_at, rate, workers, _, _ = self._rate_cache
        now = time.time()
        if now - read_at > 1.0:
            raw = await self._client.hgetall(self._keys.workers)
            beats = fresh_workers(_texts(raw), now, self._settings.worker_heartbeat_s)
            ready = [beat for beat in beats if beat.get("ready")]
            workers = len(ready)
            rate = sum(float(beat.get("tiles_per_s", 0.0)) for beat in beats)
            dtypes = tuple(sorted({str(beat["dtype"]) for beat in ready if beat.get("dtype")}))
            self._rate_cache = (now, rate, workers, dtypes, frozenset(str(beat.get("model")) for beat in ready))
        return (rate if rate > 0 else self._settings.assumed_tiles_per_s), workers

    # ------------------------------------------------------------------ result store
    async def _sweep_forever(self) -> None:
        """Expire results on a timer and publish the store cap (serving.md "Result retention")."""
        while not self._closing:
            with contextlib.suppress(QueueUnavailable, redis.exceptions.ResponseError):
                await self.sweep()
            await asyncio.sleep(self._settings.result_sweep_s)

    async def sweep(self) -> int:
        """One sweep: results older than RSD_RESULT_TTL_S leave the store; returns how many."""
        keys = self._keys
        cutoff = time.time() - self._settings.result_ttl_s
        with unavailable_on_error(self._url):
            dropped = await self._sweep(
                keys=keys.store_keys(),
                args=[repr(cutoff), keys.job(""), keys.output(""), 1000, self._settings.result_store_bytes],
            )
        return int(dropped)

    async def release(self, job_id: str) -> None:
        keys = self._keys
        with unavailable_on_error(self._url):
            await self._release(
                keys=[*keys.store_keys(), keys.job(job_id)],
                args=[job_id, "delivered", DELIVERED_RECORD_S, keys.job(""), keys.output("")],
            )

    async def _check_memory(self, incoming_bytes: int) -> None:
        """StoreFull when Redis's used_memory plus `incoming_bytes` would pass the high-water mark of
        maxmemory (noeviction: the writes of an admitted job would fail later instead)."""
        read_at, used, limit = self._memory_cache
        now = time.monotonic()
        if now - read_at > MEMORY_CACHE_S:
            info: dict[str, Any] = await self._client.info("memory")
            used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
            self._memory_cache = (now, used, limit)
        high_water = self._settings.redis_memory_high_water * limit
        if limit > 0 and used + incoming_bytes > high_water:
            mib = 2**20
            raise StoreFull(
                f"Redis is near maxmemory: used_memory {used / mib:.1f} MiB + {incoming_bytes / mib:.1f} MiB "
                f"for this job would pass {self._settings.redis_memory_high_water:.0%} of maxmemory "
                f"{limit / mib:.1f} MiB; new jobs are refused until results are fetched or expire"
            )

    async def precheck(self, deadline: float) -> None:
        with unavailable_on_error(self._url):
            await self._check_memory(0)
            rate, _ = await self._throughput()
            backlog = int(await self._client.get(self._keys.backlog) or 0)
        refusal = admission(backlog, 1, self._settings.max_backlog_tiles, rate, deadline - time.time())
        if refusal is not None:
            raise refusal

    async def submit(self, job: Job) -> Submitted:
        keys = self._keys
        with unavailable_on_error(self._url):
            await self._check_memory(len(job.data) + job.result_bytes_bound)
            rate, _ = await self._throughput()
            backlog = int(await self._client.get(keys.backlog) or 0)
            refusal = admission(
                backlog, job.cost_tiles, self._settings.max_backlog_tiles, rate, job.deadline - time.time()
            )
            if refusal is not None and refusal.reason == "deadline":
                raise refusal
            ttl = math.ceil(max(job.deadline - time.time(), 1.0)) + self._settings.result_ttl_s
            idem = job.idempotency_key
            params = [item for pair in job.params.to_fields().items() for item in pair]
            params += ["width", str(job.width), "height", str(job.height)]
            reply = await self._admit(
                keys=[keys.backlog, keys.jobs(job.params.model), keys.job(job.id), keys.input(job.id),
                      keys.idempotency(idem or "")],
                args=[
                    job.id, job.cost_tiles, self._settings.max_backlog_tiles, repr(job.deadline), repr(job.created),
                    job.data, ttl, self._settings.instance, "1" if idem else "0", self._settings.idempotency_ttl_s,
                    job.fingerprint, GROUP, keys.job(""), *params,
                ],
            )  # fmt: skip
        kind = _text(reply[0])
        if kind == "dup":
            if _text(reply[2]) != job.fingerprint:
                raise IdempotencyConflict(f"Idempotency-Key {idem!r} was used for a different request")
            return Submitted(_text(reply[1]), duplicate=True, backlog=backlog)
        if kind == "full":
            current = int(reply[1])
            raise QueueFull(
                "backlog", retry_after(current + job.cost_tiles - self._settings.max_backlog_tiles, rate), current
            )
        return Submitted(job.id, duplicate=False, backlog=int(reply[1]))

    # ------------------------------------------------------------------ waiting
    async def _listen(self) -> None:
        """Wake waiters from this replica's reply stream; reconnects forever (polling covers gaps)."""
        stream = self._keys.reply(self._settings.instance)
        last = "$"
        while not self._closing:
            try:
                replies: Any = await self._client.xread({stream: last}, block=int(POLL_S * 1000), count=256)
            except _REDIS_ERRORS:
                await asyncio.sleep(POLL_S)
                continue
            for _, messages in replies or []:
                for message_id, fields in messages:
                    last = _text(message_id)
                    for event in self._waiters.get(_text(fields.get(b"id", b"")), []):
                        event.set()

    async def wait(self, job_id: str, deadline: float) -> JobResult:
        event = asyncio.Event()
        self._waiters.setdefault(job_id, []).append(event)
        try:
            while True:
                record = await self.get(job_id)
                if record is None:
                    raise JobNotFound(job_id)
                if record.status.terminal:
                    return await self._outcome(record)
                remaining = deadline - time.time()
                if remaining <= 0:
                    if await self._end(job_id, JobStatus.EXPIRED, "deadline", "the deadline passed"):
                        raise DeadlineExceeded(job_id)
                    continue  # it ended in the meantime: report that outcome
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout=min(POLL_S, remaining))
                event.clear()
        except asyncio.CancelledError:
            # the client went away: free the queue slot (best effort, not awaited by the cancelled task)
            task = asyncio.ensure_future(self.cancel(job_id))
            task.add_done_callback(lambda done: done.exception())
            raise
        finally:
            events = self._waiters.get(job_id, [])
            if event in events:
                events.remove(event)
            if not events:
                self._waiters.pop(job_id, None)

    async def _outcome(self, record: JobRecord) -> JobResult:
        if record.status is JobStatus.DONE:
            result = await self.result(record.id)
            if result is not None:
                return result
            raise ResultGone(record.id, "expired")
        if record.status is JobStatus.EXPIRED:
            raise DeadlineExceeded(record.id)
        raise JobFailed(record)

    async def _end(self, job_id: str, status: JobStatus, code: str, message: str) -> bool:
        keys = self._keys
        with unavailable_on_error(self._url):
            model = _text(await self._client.hget(keys.job(job_id), "model"))  # its stream (never changes)
            ended = await self._finish(
                keys=[keys.job(job_id), keys.input(job_id), keys.backlog, keys.jobs(model)],
                args=[GROUP, keys.reply(""), job_id, status.value, code, message, repr(time.time()),
                      self._settings.result_ttl_s],
            )  # fmt: skip
        return int(ended) == 1

    # ------------------------------------------------------------------ inspection
    async def get(self, job_id: str) -> JobRecord | None:
        with unavailable_on_error(self._url):
            fields = _texts(await self._client.hgetall(self._keys.job(job_id)))
        return record_from_hash(job_id, fields) if "status" in fields else None

    async def result(self, job_id: str) -> JobResult | None:
        with unavailable_on_error(self._url):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._keys.job(job_id))
                pipe.get(self._keys.output(job_id))
                raw_fields, data = await pipe.execute()
        fields = _texts(raw_fields)
        if fields.get("status") != JobStatus.DONE.value:
            return None
        if data is None:
            raise ResultGone(job_id, fields.get("gone") or "expired")
        return JobResult.from_fields(data, fields)

    async def cancel(self, job_id: str) -> bool:
        return await self._end(job_id, JobStatus.CANCELLED, "cancelled", "cancelled by the client")

    async def backlog(self) -> int:
        with unavailable_on_error(self._url):
            return int(await self._client.get(self._keys.backlog) or 0)

    async def health(self) -> Health:
        try:
            with unavailable_on_error(self._url):
                await self._client.ping()
                backlog = int(await self._client.get(self._keys.backlog) or 0)
                self._rate_cache = _NO_RATE
                rate, workers = await self._throughput()
                _, _, _, dtypes, served = self._rate_cache
        except QueueUnavailable as exc:
            return Health(False, str(exc), 0, 0, 0.0)
        if workers == 0:
            return Health(False, "no model worker is ready (none has sent a heartbeat recently)", backlog, 0, rate)
        missing = [model for model in self._models if model not in served]
        if missing:
            return Health(False, f"no worker is ready for model {', '.join(missing)}", backlog, workers, rate)
        return Health(True, "ok", backlog, workers, rate, dtypes)


_NO_RATE: tuple[float, float, int, tuple[str, ...], frozenset[str]] = (0.0, 0.0, 0, (), frozenset())


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _texts(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(key): _text(value) for key, value in raw.items()}
