"""Bounded result memory (serving.md "Result retention"): a delivered synchronous result is released,
kept results leave by TTL on a timer or by the store cap oldest first, a fetch of a released result is
410 with the reason; Redis mode: the same in Redis, and 503 before admitting a job Redis could not store."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from loadtests.local_stack import free_port, redis_server_command
from service.jobs import Job, JobParams, JobResult, new_job_id
from service.main import build_app
from service.queue.base import ResultGone
from service.queue.inprocess import InProcessQueue
from service.queue.redis import RedisApiQueue
from service.queue.redis_worker import RedisWorkerQueue
from service.settings import ServiceSettings
from tests.service.conftest import RedisServer, embedded_client, wait_client_ready, worker_settings
from tests.service.fakes import png_bytes

pytestmark = pytest.mark.timeout(90)


def _files(data: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {"image": ("in.png", data, "image/png")}


def _job(result_bytes: int = 0) -> Job:
    params = JobParams(format="png", quality=90, seed=5, tile=32, overlap=8, model="m")
    return Job(new_job_id(), params, b"input", 1, time.time() + 30, 16, 16, result_bytes_bound=result_bytes)


def test_sync_result_is_released_once_delivered_unless_idempotent(fake_model: Path) -> None:
    client, queue, _ = embedded_client(fake_model)
    data = png_bytes(20, 16, seed=3)
    with client:
        wait_client_ready(client)
        plain = client.post("/upscale", files=_files(data))
        assert plain.status_code == 200 and queue.stored_bytes == 0
        gone = client.get(f"/jobs/{plain.headers['x-job-id']}/result")
        keyed = client.post("/upscale", files=_files(data), headers={"Idempotency-Key": "keep-me"})
        kept = client.get(f"/jobs/{keyed.headers['x-job-id']}/result")
        stored = queue.stored_bytes
    assert gone.status_code == 410, gone.text
    assert gone.json()["error"]["code"] == "result_evicted" and "delivered" in gone.json()["error"]["message"]
    assert kept.status_code == 200 and kept.content == keyed.content and stored == len(keyed.content)


def test_store_cap_evicts_the_oldest_job_result_with_410(fake_model: Path) -> None:
    # each 16x16 -> 64x64 PNG result is over 1 kB: a 0.001 MiB store keeps only the newest (never
    # the result just stored: its waiter has yet to read it)
    client, queue, _ = embedded_client(fake_model, result_store_mb=0.001)
    ids = []
    with client:
        wait_client_ready(client)
        for seed in range(4):
            created = client.post("/jobs", files=_files(png_bytes(16, 16, seed=seed)), params={"seed": seed})
            ids.append(created.json()["id"])
            for _ in range(500):
                if client.get(f"/jobs/{ids[-1]}").json()["status"] == "done":
                    break
                time.sleep(0.01)
        oldest = client.get(f"/jobs/{ids[0]}/result")
        newest = client.get(f"/jobs/{ids[-1]}/result")
        stored = queue.stored_bytes
    assert oldest.status_code == 410 and oldest.json()["error"]["code"] == "result_evicted"
    assert "RSD_RESULT_STORE_MB" in oldest.json()["error"]["message"]
    assert newest.status_code == 200
    assert stored == len(newest.content)


def test_results_expire_on_a_timer_without_further_requests() -> None:
    async def scenario() -> None:
        # the record outlives its result by another TTL: 1 s leaves a loaded machine room to look between
        queue = InProcessQueue(64, 10.0, result_ttl_s=1.0, sweep_interval_s=0.05)
        await queue.start()
        job = _job()
        await queue.submit(job)
        (claimed,) = queue.claim(1, 0.1)
        assert queue.complete(claimed, JobResult(b"x" * 1000, "image/png", 4, 4, 0, 0, 0))
        assert queue.stored_bytes == 1000
        await asyncio.sleep(1.2)  # no request in between: only the timer can expire it
        assert queue.stored_bytes == 0
        with pytest.raises(ResultGone, match="RSD_RESULT_TTL_S"):
            await queue.result(job.id)
        await queue.aclose()

    asyncio.run(scenario())


def test_redis_store_cap_evicts_oldest_and_gives_410(redis_server: RedisServer, fake_model: Path) -> None:
    settings = ServiceSettings(
        model_dir=fake_model, redis_url=redis_server.url, redis_prefix="ret", result_store_mb=0.002
    )

    async def scenario() -> None:
        api = RedisApiQueue(settings)
        await api.start()
        await api.sweep()  # publishes the cap (the timer does it too)
        worker = RedisWorkerQueue(worker_settings(redis_server.url, instance="w", redis_prefix="ret"), "m")
        worker.prepare()
        jobs = [_job() for _ in range(3)]
        for job in jobs:
            await api.submit(job)
            (claimed,) = worker.claim(1, 0.5)
            assert worker.complete(claimed, JobResult(b"r" * 1500, "image/png", 4, 4, 0, 0, 0))
        with pytest.raises(ResultGone, match="RSD_RESULT_STORE_MB"):
            await api.result(jobs[0].id)
        assert (await api.result(jobs[-1].id)) is not None
        client = redis_server.client()
        assert int(client.get("ret:store:bytes")) <= 2 * 1500
        await api.release(jobs[-1].id)
        with pytest.raises(ResultGone, match="delivered"):
            await api.result(jobs[-1].id)
        assert client.ttl(f"ret:job:{jobs[-1].id}") <= 60
        await api.aclose()
        worker.close()

    asyncio.run(scenario())


@pytest.fixture
def small_redis(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    command = [*redis_server_command(port, tmp_path), "--maxmemory", "8mb"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        yield url, client
    finally:
        process.kill()
        process.wait(timeout=10)


def test_redis_near_maxmemory_is_503_before_admission(small_redis, fake_model: Path) -> None:  # type: ignore[no-untyped-def]
    url, client = small_redis
    settings = ServiceSettings(model_dir=fake_model, redis_url=url, redis_prefix="mem")
    data = png_bytes(16, 16, seed=1)
    with TestClient(build_app(settings)) as http:
        chunks = 0
        while int(client.info("memory")["used_memory"]) < 0.92 * 8 * 2**20:  # past the 90% high water
            client.set(f"filler:{chunks}", b"f" * 100_000)
            chunks += 1
        full = http.post("/jobs", files=_files(data))
        admitted = client.get("mem:backlog")
        client.delete(*[f"filler:{i}" for i in range(chunks)])
        time.sleep(0.6)  # past the cached INFO reading
        accepted = http.post("/jobs", files=_files(data))
    assert full.status_code == 503, full.text
    body = full.json()["error"]
    assert body["code"] == "store_full" and "maxmemory" in body["message"]
    assert admitted is None  # nothing was admitted
    assert accepted.status_code == 202, accepted.text
