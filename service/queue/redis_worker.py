"""Redis Streams transport, worker side (serving.md "Worker loop" and "Failure" table).

A worker queue serves one model: it reads new entries of that model's stream (`{prefix}:jobs:{model}`,
serving.md "Models") with XREADGROUP (consumer group `workers`), starts each with one script
that drops expired/cancelled/orphaned jobs before any compute, refreshes the leases of the entries it
holds (XCLAIM JUSTID, only those it still owns), and completes with one script that makes duplicates
no-ops. Every worker also runs the reaper: XAUTOCLAIM takes entries idle past the lease (their worker
died or hangs); one delivered more than `max_attempts` times goes to the dead stream, failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from service import metrics
from service.jobs import ClaimedJob, JobParams, JobResult, JobStatus
from service.queue import scripts
from service.queue.base import WorkerQueue
from service.queue.keys import GROUP, RedisKeys
from service.queue.redis import eviction_warning
from service.settings import ServiceSettings

log = logging.getLogger(__name__)

#: progress is written to a job's hash at most this often (GET /jobs/{id} reads it a few times a second)
PROGRESS_PERIOD_S = 0.25


class RedisWorkerQueue(WorkerQueue):
    """Blocking client for one worker process; `keepalive` may be called from a second thread."""

    def __init__(self, settings: ServiceSettings, model: str) -> None:
        if settings.redis_url is None:
            raise ValueError("RedisWorkerQueue needs settings.redis_url (REDIS_URL)")
        self.consumer = settings.instance
        self.model = model
        self._keys = RedisKeys(settings.redis_prefix)
        self._stream = self._keys.jobs(model)
        #: one heartbeat per (process, model): a process serving two models is two workers to the API
        self._beat_field = f"{self.consumer}/{model}"
        self._lease_ms = int(settings.lease_s * 1000)
        self._max_attempts = settings.max_attempts
        self._result_ttl_s = settings.result_ttl_s
        # a blocking XREADGROUP must not hit the socket timeout
        self._client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout_s + settings.claim_block_s,
            socket_connect_timeout=settings.redis_timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.25, base=0.025), retries=2),  # see RedisApiQueue
        )
        self._start = self._client.register_script(scripts.START)
        self._finish = self._client.register_script(scripts.FINISH)
        self._complete = self._client.register_script(scripts.COMPLETE)
        self._dead = self._client.register_script(scripts.DEAD)
        self._refresh = self._client.register_script(scripts.REFRESH)
        self._progress = self._client.register_script(scripts.PROGRESS)
        #: job id -> when its progress was last written (at most one write per PROGRESS_PERIOD_S)
        self._progress_at: dict[str, float] = {}
        self._next_reap = 0.0

    def prepare(self) -> None:
        """Create the consumer group if needed and warn loudly if Redis may evict keys."""
        self._ensure_group()
        try:
            policy = self._client.config_get("maxmemory-policy").get("maxmemory-policy")
            warning = eviction_warning(policy.decode() if isinstance(policy, bytes) else policy)
        except redis.exceptions.ResponseError as exc:
            warning = f"cannot verify Redis maxmemory-policy ({exc}); make sure it is 'noeviction'"
        if warning:
            log.warning("!" * 20 + " " + warning + " " + "!" * 20)

    def _ensure_group(self) -> None:
        try:
            self._client.xgroup_create(self._stream, GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ------------------------------------------------------------------ claiming
    def claim(self, max_jobs: int, max_wait_s: float) -> list[ClaimedJob]:
        entries: list[tuple[str, dict[bytes, bytes], bool]] = []
        if time.monotonic() >= self._next_reap:
            self._next_reap = time.monotonic() + self._lease_ms / 2000
            entries += [(entry, fields, True) for entry, fields in self._reap(max_jobs)]
        room = max_jobs - len(entries)
        if room > 0:
            block = None if entries or max_wait_s <= 0 else max(1, int(max_wait_s * 1000))
            try:
                replies: Any = self._client.xreadgroup(
                    GROUP, self.consumer, {self._stream: ">"}, count=room, block=block
                )
            except redis.exceptions.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._ensure_group()  # Redis restarted empty: recreate and read next time
                replies = []
            for _, messages in replies or []:
                entries += [(_text(entry), fields, False) for entry, fields in messages]
        claimed = []
        for entry, fields, redelivered in entries:
            job = self._begin(entry, fields)
            if job is not None:
                if redelivered:
                    metrics.REDELIVERIES.inc()
                claimed.append(job)
        return claimed

    def _reap(self, count: int) -> list[tuple[str, dict[bytes, bytes]]]:
        """XAUTOCLAIM idle entries; dead-letter those delivered more than max_attempts times."""
        try:
            reply = self._client.xautoclaim(self._stream, GROUP, self.consumer, self._lease_ms, "0-0", count=count)
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" in str(exc):
                return []
            raise
        taken = []
        for entry_raw, fields in reply[1]:
            entry = _text(entry_raw)
            if fields is None:  # deleted meanwhile (the job ended)
                continue
            pending = self._client.xpending_range(self._stream, GROUP, min=entry, max=entry, count=1)
            deliveries = int(pending[0]["times_delivered"]) if pending else 1
            if deliveries > self._max_attempts:
                self._bury(entry, fields, deliveries)
            else:
                taken.append((entry, fields))
        return taken

    def _bury(self, entry: str, fields: dict[bytes, bytes], deliveries: int) -> None:
        job_id = _text(fields.get(b"id"))
        reason = f"gave up after {deliveries - 1} attempts: every worker that took it died or hung"
        keys = self._keys
        buried = self._dead(
            keys=[keys.job(job_id), keys.input(job_id), keys.backlog, self._stream, keys.dead],
            args=[GROUP, keys.reply(""), job_id, repr(time.time()), self._result_ttl_s, entry, deliveries, reason],
        )
        if int(buried) == 1:
            metrics.DEAD_JOBS.inc()
            log.error("job %s moved to the dead stream: %s", job_id, reason)

    def _begin(self, entry: str, fields: dict[bytes, bytes]) -> ClaimedJob | None:
        """Run START for one entry: a ClaimedJob to compute, or None when it was dropped."""
        job_id = _text(fields.get(b"id"))
        keys = self._keys
        now = time.time()
        reply = self._start(
            keys=[keys.job(job_id), keys.input(job_id), keys.backlog, self._stream],
            args=[entry, GROUP, repr(now), self.consumer, keys.reply(""), job_id, self._result_ttl_s],
        )
        kind = _text(reply[0])
        if kind == "noinput":
            self._end(job_id, JobStatus.FAILED, "input_missing", "the job's input expired or was evicted")
            return None
        if kind != "run":
            return None
        record = {_text(k): _text(v) for k, v in self._client.hgetall(keys.job(job_id)).items()}
        created = float(record["created"])
        metrics.QUEUE_WAIT.labels(model=self.model).observe(max(0.0, now - created))
        return ClaimedJob(
            id=job_id,
            params=JobParams.from_fields(record),
            data=bytes(reply[1]),
            deadline=float(record["deadline"]),
            created=created,
            attempt=int(reply[2]),
            entry=entry,
        )

    # ------------------------------------------------------------------ while computing
    def live(self, jobs: Sequence[ClaimedJob]) -> set[str]:
        now = time.time()
        with self._client.pipeline(transaction=False) as pipe:
            for job in jobs:
                pipe.hget(self._keys.job(job.id), "status")
            statuses = pipe.execute()
        alive = set()
        for job, status in zip(jobs, statuses, strict=True):
            if _text(status) != JobStatus.RUNNING.value:
                continue
            if job.deadline <= now:
                self._end(job.id, JobStatus.EXPIRED, "deadline", "the deadline passed before compute")
                continue
            alive.add(job.id)
        return alive

    def keepalive(self, jobs: Sequence[ClaimedJob]) -> None:
        entries = [job.entry for job in jobs if job.entry]
        if entries:
            self._refresh(keys=[self._stream], args=[GROUP, self.consumer, *entries])

    # ------------------------------------------------------------------ finishing
    def complete(self, job: ClaimedJob, result: JobResult) -> bool:
        keys = self._keys
        timing = [item for pair in result.timing_fields().items() for item in pair]
        self._progress_at.pop(job.id, None)
        done = self._complete(
            keys=[keys.job(job.id), keys.input(job.id), keys.backlog, self._stream, keys.output(job.id),
                  *keys.store_keys()],
            args=[GROUP, keys.reply(""), job.id, repr(time.time()), self._result_ttl_s, result.data, keys.job(""),
                  keys.output(""), *timing],
        )  # fmt: skip
        return int(done) == 1

    def report_progress(self, job_id: str, tiles_done: int, tiles_total: int, eta_s: float | None) -> None:
        now = time.monotonic()
        if now - self._progress_at.get(job_id, -PROGRESS_PERIOD_S) < PROGRESS_PERIOD_S:
            return
        self._progress_at[job_id] = now
        eta = "" if eta_s is None else f"{eta_s:.3f}"
        self._progress(keys=[self._keys.job(job_id)], args=[min(tiles_done, tiles_total), eta])

    def fail(self, job: ClaimedJob, code: str, message: str) -> bool:
        self._progress_at.pop(job.id, None)
        return self._end(job.id, JobStatus.FAILED, code, message)

    def _end(self, job_id: str, status: JobStatus, code: str, message: str) -> bool:
        keys = self._keys
        ended = self._finish(
            keys=[keys.job(job_id), keys.input(job_id), keys.backlog, self._stream],
            args=[GROUP, keys.reply(""), job_id, status.value, code, message, repr(time.time()), self._result_ttl_s],
        )
        return int(ended) == 1

    def heartbeat(self, ready: bool, tiles_per_s: float, dtype: str | None = None) -> None:
        beat: dict[str, Any] = {
            "time": time.time(), "ready": ready, "tiles_per_s": tiles_per_s, "dtype": dtype, "model": self.model,
        }  # fmt: skip
        self._client.hset(self._keys.workers, self._beat_field, json.dumps(beat))

    def backlog(self) -> int:
        return int(self._client.get(self._keys.backlog) or 0)

    def close(self) -> None:
        with contextlib.suppress(redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            self._client.hdel(self._keys.workers, self._beat_field)
        self._client.close()


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
