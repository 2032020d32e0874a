"""The Redis transport's scripts directly (no HTTP, no subprocesses): exactly one terminal transition,
backlog accounting, idempotency, admission, orphaned entries."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from service.jobs import Job, JobParams, JobResult, JobStatus, new_job_id
from service.queue.base import IdempotencyConflict, QueueFull
from service.queue.redis import RedisApiQueue
from service.queue.redis_worker import RedisWorkerQueue
from service.settings import ServiceSettings
from tests.service.conftest import RedisServer, worker_settings

pytestmark = pytest.mark.timeout(60)

RESULT = JobResult(b"png-bytes", "image/png", 64, 64, 0.1, 0.2, 0.01)


def _settings(server: RedisServer, model: Path, **overrides: object) -> ServiceSettings:
    return ServiceSettings(model_dir=model, redis_url=server.url, redis_prefix="unit", **overrides)  # type: ignore[arg-type]


def _job(cost: int = 2, deadline_s: float = 30.0, key: str | None = None, fingerprint: str = "fp") -> Job:
    params = JobParams(format="png", quality=90, seed=5, tile=32, overlap=8, model="m")
    deadline = time.time() + deadline_s
    return Job(new_job_id(), params, b"input", cost, deadline, 16, 16, idempotency_key=key, fingerprint=fingerprint)


def _worker(server: RedisServer, name: str = "w1", lease_s: float = 30.0) -> RedisWorkerQueue:
    worker = RedisWorkerQueue(worker_settings(server.url, instance=name, redis_prefix="unit", lease_s=lease_s), "m")
    worker.prepare()
    return worker


def test_duplicate_completion_is_a_noop(redis_server: RedisServer, fake_model: Path) -> None:
    async def scenario() -> None:
        api = RedisApiQueue(_settings(redis_server, fake_model))
        await api.start()
        job = _job(cost=3)
        assert (await api.submit(job)).backlog == 3
        assert (await api.submit(job)).backlog == 3  # a retried admission (same job id) adds nothing
        worker = _worker(redis_server)
        (claimed,) = worker.claim(4, 0.5)
        assert claimed.id == job.id and claimed.data == b"input" and claimed.attempt == 1
        assert worker.complete(claimed, RESULT) is True
        assert worker.complete(claimed, RESULT) is False  # the late duplicate
        assert worker.fail(claimed, "compute_failed", "x") is False
        assert await api.wait(job.id, time.time() + 5) == RESULT
        record = await api.get(job.id)
        assert record is not None and record.status is JobStatus.DONE
        assert await api.backlog() == 0
        assert redis_server.client().xpending("unit:jobs:m", "workers")["pending"] == 0
        await api.aclose()
        worker.close()

    asyncio.run(scenario())


def test_expiry_wins_over_a_late_completion_and_backlog_never_goes_negative(
    redis_server: RedisServer, fake_model: Path
) -> None:
    async def scenario() -> None:
        api = RedisApiQueue(_settings(redis_server, fake_model))
        await api.start()
        job = _job(cost=4, deadline_s=0.3)
        await api.submit(job)
        worker = _worker(redis_server)
        (claimed,) = worker.claim(1, 0.5)  # taken before the deadline, then too slow
        with pytest.raises(Exception, match="deadline|DeadlineExceeded|" + job.id):
            await api.wait(job.id, job.deadline)
        assert worker.complete(claimed, RESULT) is False
        record = await api.get(job.id)
        assert record is not None and record.status is JobStatus.EXPIRED
        assert await api.backlog() == 0
        assert await api.result(job.id) is None
        await api.aclose()
        worker.close()

    asyncio.run(scenario())


def test_admission_and_idempotency(redis_server: RedisServer, fake_model: Path) -> None:
    async def scenario() -> None:
        api = RedisApiQueue(_settings(redis_server, fake_model, max_backlog_tiles=5, assumed_tiles_per_s=1000))
        await api.start()
        first = await api.submit(_job(cost=3, key="k"))
        again = await api.submit(_job(cost=3, key="k"))
        assert again.duplicate and again.job_id == first.job_id
        with pytest.raises(IdempotencyConflict):
            await api.submit(_job(cost=3, key="k", fingerprint="other"))
        with pytest.raises(QueueFull) as refused:
            await api.submit(_job(cost=3))
        assert refused.value.reason == "backlog" and refused.value.retry_after_s >= 1
        assert await api.backlog() == 3  # the refused and duplicate submissions added nothing
        assert await api.cancel(first.job_id)
        redis_server.client().delete(f"unit:job:{first.job_id}")  # the record expired, the key did not
        fresh = await api.submit(_job(cost=3, key="k"))
        assert not fresh.duplicate and fresh.job_id != first.job_id
        await api.aclose()

    asyncio.run(scenario())


def test_an_orphaned_entry_releases_its_cost(redis_server: RedisServer, fake_model: Path) -> None:
    async def scenario() -> None:
        api = RedisApiQueue(_settings(redis_server, fake_model))
        await api.start()
        job = _job(cost=7)
        await api.submit(job)
        redis_server.client().delete(f"unit:job:{job.id}")  # as if its TTL had run out
        worker = _worker(redis_server)
        assert worker.claim(1, 0.5) == []
        assert await api.backlog() == 0
        await api.aclose()
        worker.close()

    asyncio.run(scenario())


def test_lease_refresh_keeps_a_job_and_never_steals_it_back(redis_server: RedisServer, fake_model: Path) -> None:
    async def scenario() -> None:
        api = RedisApiQueue(_settings(redis_server, fake_model))
        await api.start()
        await api.submit(_job())
        slow, reaper = _worker(redis_server, "slow", lease_s=0.4), _worker(redis_server, "reaper", lease_s=0.4)
        (held,) = slow.claim(1, 0.5)
        for _ in range(4):  # kept alive past the lease: the reaper must not take it
            time.sleep(0.2)
            slow.keepalive([held])
            assert reaper.claim(1, 0.0) == []
        time.sleep(0.6)  # the slow worker stops refreshing (hangs): the reaper takes it
        (taken,) = reaper.claim(1, 0.0)
        assert taken.id == held.id and taken.attempt == 2
        slow.keepalive([held])  # the hung worker wakes up: it must not steal the job back
        pending = redis_server.client().xpending_range("unit:jobs:m", "workers", "-", "+", 10)
        assert [entry["consumer"] for entry in pending] == [b"reaper"]
        assert reaper.complete(taken, RESULT) is True and slow.complete(held, RESULT) is False
        await api.aclose()
        slow.close()
        reaper.close()

    asyncio.run(scenario())


def test_eviction_policy_warning() -> None:
    from service.queue.redis import eviction_warning

    assert eviction_warning("noeviction") is None
    warning = eviction_warning("allkeys-lru")
    assert warning is not None and "allkeys-lru" in warning and "noeviction" in warning
