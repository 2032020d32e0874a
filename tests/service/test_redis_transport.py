"""Redis Streams transport against a real private redis-server: API replica and workers as processes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from rsd.noise import tile_seed
from tests.service.conftest import Processes, RedisServer, Stack, wait_ready
from tests.service.fakes import png_bytes, reference_bytes

pytestmark = pytest.mark.timeout(180)


async def _post_all(base: str, jobs: list[tuple[bytes, int, int]], timeout: float = 90.0) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(jobs))
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.post(
                    "/upscale", files={"image": ("x.png", data, "image/png")}, params={"seed": seed, "tile": tile}
                )
                for data, seed, tile in jobs
            )
        )


def _serve(stack: Stack, workers: dict[str, list[str]]) -> str:
    """Start `workers` (name -> extra worker arguments), then the API replica: its URL once it is ready."""
    for name, arguments in workers.items():
        stack.start_worker(name, *arguments)
    base = stack.start_api()
    wait_ready(base)
    return base


def _mixed_jobs(count: int, seed_base: int) -> list[tuple[bytes, int, int]]:
    return [
        (png_bytes(16 + 8 * (i % 5), 16 + 8 * (i % 4), seed=seed_base + i), seed_base + i, 16 if i % 3 == 0 else 32)
        for i in range(count)
    ]


def _counter(directory: Path, name: str) -> float:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    value = registry.get_sample_value(name)
    return 0.0 if value is None else value


def test_two_workers_forty_concurrent_requests_match_direct_results(
    redis_server: RedisServer, processes: Processes, fake_model: Path, tmp_path: Path
) -> None:
    log = tmp_path / "batches.log"
    workers = {name: ["--delay", "0.002", "--log", str(log)] for name in ("worker-a", "worker-b")}
    env = {"RSD_MAX_BATCH_TILES": 8, "RSD_MAX_BATCH_DELAY_S": 0.02, "RSD_FIXED_BATCH": 8}
    base = _serve(Stack(redis_server, processes, fake_model, **env), workers)
    jobs = _mixed_jobs(40, 500)
    responses = asyncio.run(_post_all(base, jobs))
    assert [r.status_code for r in responses] == [200] * 40, [r.text[:200] for r in responses if r.status_code != 200]
    for (data, seed, tile), response in zip(jobs, responses, strict=True):
        assert response.headers["x-seed"] == str(seed)
        assert response.content == reference_bytes(data, seed, tile=tile)
    # the same image and seed sent alone gives the same bytes
    alone = [
        httpx.post(f"{base}/upscale", files={"image": ("x.png", d, "image/png")}, params={"seed": s, "tile": t})
        for d, s, t in jobs[:3]
    ]
    assert [r.content for r in alone] == [r.content for r in responses[:3]]
    # tiles of different jobs shared batches, and both workers took part
    owner = {tile_seed(seed, i): seed for _, seed, _ in jobs for i in range(64)}
    batches = [[int(s) for s in line.split()] for line in log.read_text().splitlines() if line.strip()]
    # (every model call ran the fixed batch of 8; padding tiles carry seeds owned by no job)
    assert {len(batch) for batch in batches} == {8}
    assert any(len({owner[s] for s in batch if s in owner}) > 1 for batch in batches)
    assert "worker-a ready" in processes.log("worker-a") and "worker-b ready" in processes.log("worker-b")
    assert int(redis_server.client().get("test:backlog") or 0) == 0


def test_killed_worker_jobs_are_reclaimed_and_completed_once(
    redis_server: RedisServer, processes: Processes, fake_model: Path, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stack = Stack(
        redis_server, processes, fake_model, RSD_LEASE_S=1.0, RSD_MAX_BATCH_TILES=2, RSD_CLAIM_MAX_JOBS=4,
        PROMETHEUS_MULTIPROC_DIR=metrics_dir,
    )  # fmt: skip
    victim = stack.start_worker("victim", "--delay", "0.15")
    base = stack.start_api()
    wait_ready(base)  # the victim is ready: it will take the first jobs
    jobs = _mixed_jobs(12, 900)

    async def scenario() -> list[httpx.Response]:
        task = asyncio.create_task(_post_all(base, jobs))
        for _ in range(200):
            if stack.pending_of("victim") > 0:
                break
            await asyncio.sleep(0.02)
        held = stack.pending_of("victim")
        victim.kill()  # SIGKILL while it holds jobs
        victim.wait(10)
        assert held > 0
        stack.start_worker("rescuer", "--delay", "0.01")
        return await task

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * len(jobs), [r.text[:200] for r in responses]
    for (data, seed, tile), response in zip(jobs, responses, strict=True):
        assert response.content == reference_bytes(data, seed, tile=tile)
    client = redis_server.client()
    job_ids = [r.headers["x-job-id"] for r in responses]
    attempts = [int(client.hget(f"test:job:{job_id}", "attempts")) for job_id in job_ids]
    assert max(attempts) >= 2  # some jobs ran a second time, on the rescuer
    assert _counter(metrics_dir, "rsd_job_redeliveries_total") >= 1
    # completed once: one notice per job on the reply stream, backlog back to exactly 0, nothing pending
    notices = [
        fields[b"id"].decode() for stream in client.scan_iter("test:reply:*") for _, fields in client.xrange(stream)
    ]
    assert sorted(notices) == sorted(job_ids)
    assert int(client.get("test:backlog")) == 0
    assert client.xpending(stack.stream, "workers")["pending"] == 0


def test_deadline_in_queue_is_504_and_never_computed(
    redis_server: RedisServer, processes: Processes, fake_model: Path, tmp_path: Path
) -> None:
    log = tmp_path / "batches.log"
    env = {"RSD_MAX_BATCH_TILES": 1, "RSD_CLAIM_MAX_JOBS": 1, "RSD_ASSUMED_TILES_PER_S": 1000}
    base = _serve(Stack(redis_server, processes, fake_model, **env), {"worker": ["--delay", "0.8", "--log", str(log)]})

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response, float]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            files = {"image": ("x.png", png_bytes(16, 16), "image/png")}
            hold = asyncio.create_task(client.post("/upscale", files=files, params={"seed": 1}))
            await asyncio.sleep(0.3)  # the worker is busy with the held job for 0.8 s
            queued = await client.post("/jobs", files=files, params={"seed": 3, "deadline_ms": 200})
            started = time.monotonic()
            late = await client.post("/upscale", files=files, params={"seed": 2, "deadline_ms": 200})
            return await hold, late, queued, time.monotonic() - started

    held, late, queued, elapsed = asyncio.run(scenario())
    assert held.status_code == 200
    assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"
    assert 0.15 < elapsed < 1.0
    # the async job waited in the stream past its deadline: the worker dropped it before compute
    job_url = f"{base}/jobs/{queued.json()['id']}"
    for _ in range(100):
        info = httpx.get(job_url).json()
        if info["status"] != "queued":
            break
        time.sleep(0.05)
    assert info["status"] == "expired" and info["attempts"] == 0
    assert httpx.get(f"{job_url}/result").status_code == 504
    computed = log.read_text().split()
    assert str(tile_seed(1, 0)) in computed
    assert str(tile_seed(2, 0)) not in computed and str(tile_seed(3, 0)) not in computed
    assert int(redis_server.client().get("test:backlog")) == 0


def test_queue_over_limit_is_429_with_retry_after_promptly(
    redis_server: RedisServer, processes: Processes, fake_model: Path
) -> None:
    stack = Stack(redis_server, processes, fake_model, RSD_MAX_BACKLOG_TILES=6, RSD_MAX_BATCH_TILES=1)
    base = _serve(stack, {"worker": ["--delay", "0.5"]})
    with httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(3):  # warm the connection and the code paths
            client.get("/readyz")
        created = [client.post("/jobs", files={"image": ("x.png", png_bytes(16, 16), "image/png")}) for _ in range(5)]
        started = time.monotonic()
        refused = client.post(
            "/upscale", files={"image": ("x.png", png_bytes(48, 48), "image/png")}, params={"tile": 16}
        )
        elapsed = time.monotonic() - started
        for job in created:
            client.post(job.headers["location"] + "/cancel")
    assert all(job.status_code == 202 for job in created)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["retry-after"]) >= 1
    assert elapsed < 0.05, elapsed


def test_redis_down_gives_503_with_reason_and_service_recovers(
    redis_server: RedisServer, processes: Processes, fake_model: Path
) -> None:
    base = _serve(Stack(redis_server, processes, fake_model), {"worker": []})
    # an API replica loads no model: its /readyz shows the dtype the workers report in their heartbeats
    assert httpx.get(f"{base}/readyz", timeout=10).json()["dtype"] == "fp32"
    image = {"image": ("x.png", png_bytes(16, 16), "image/png")}
    assert httpx.post(f"{base}/upscale", files=image, timeout=10).status_code == 200
    redis_server.stop()
    started = time.monotonic()
    down = httpx.post(f"{base}/upscale", files=image, timeout=10)
    elapsed = time.monotonic() - started
    ready = httpx.get(f"{base}/readyz", timeout=10)
    assert down.status_code == 503 and down.json()["error"]["code"] == "queue_unavailable"
    assert "unreachable" in down.json()["error"]["message"]
    assert elapsed < 3.0
    assert ready.status_code == 503 and "unreachable" in ready.json()["reason"]
    redis_server.start()  # same port, empty (no persistence): group and heartbeats come back by themselves
    wait_ready(base, timeout_s=30)
    again = httpx.post(f"{base}/upscale", files=image, params={"seed": 4}, timeout=30)
    assert again.status_code == 200, again.text
    assert again.content == reference_bytes(png_bytes(16, 16), 4)


def test_poison_job_goes_to_dead_stream_after_max_attempts(
    redis_server: RedisServer, processes: Processes, fake_model: Path
) -> None:
    stack = Stack(redis_server, processes, fake_model, RSD_LEASE_S=0.5, RSD_MAX_ATTEMPTS=2)
    poison_seed = 4242
    crash = ["--crash-seed", str(tile_seed(poison_seed, 0))]
    base = _serve(stack, {"w0": crash})
    created = httpx.post(
        f"{base}/jobs", files={"image": ("x.png", png_bytes(16, 16), "image/png")}, params={"seed": poison_seed}
    )
    job_url = f"{base}{created.headers['location']}"
    restarts = 0
    info = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = httpx.get(job_url).json()
        if info["status"] == "failed":
            break
        worker = stack.workers[f"w{restarts}"]
        if worker.poll() is not None:  # crashed on the poison tile: a supervisor restarts it
            assert worker.returncode == 17
            restarts += 1
            stack.start_worker(f"w{restarts}", *crash)
        time.sleep(0.05)
    assert info["status"] == "failed", info
    assert info["error"]["code"] == "dead" and "attempts" in info["error"]["message"]
    assert restarts == 2  # max_attempts deliveries, each killed its worker; the third worker buried it
    dead = redis_server.client().xrange("test:dead")
    assert [fields[b"id"].decode() for _, fields in dead] == [info["id"]]
    assert int(dead[0][1][b"deliveries"]) == 3
    result = httpx.get(f"{job_url}/result")
    assert result.status_code == 500 and result.json()["error"]["code"] == "dead"
    # no crash loop: the surviving worker serves the next job
    ok = httpx.post(f"{base}/upscale", files={"image": ("x.png", png_bytes(16, 16), "image/png")}, timeout=30)
    assert ok.status_code == 200
    assert int(redis_server.client().get("test:backlog")) == 0
