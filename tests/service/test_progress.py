"""Job progress (serving.md "Worker loop"): GET /jobs/{id} shows tiles_done rising to tiles_total,
GET /jobs/{id}/events streams it as Server-Sent Events and ends with the final status; the Redis worker
writes progress at most every PROGRESS_PERIOD_S."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from service.jobs import Job, JobParams, JobStatus, new_job_id
from service.queue.redis import RedisApiQueue
from service.queue.redis_worker import PROGRESS_PERIOD_S, RedisWorkerQueue
from service.settings import ServiceSettings
from tests.service.conftest import RedisServer, embedded_client, wait_client_ready, worker_settings
from tests.service.fakes import FakeUpscaler, png_bytes

pytestmark = pytest.mark.timeout(90)

#: 64x64 in tiles of 16 (overlap 8): 7 x 7 = 49 tiles, computed 2 per batch at 20 ms a tile
SLOW = {"max_batch_tiles": 2}


def _submit(client, seed: int = 1) -> str:  # type: ignore[no-untyped-def]
    files = {"image": ("big.png", png_bytes(64, 64, seed=seed), "image/png")}
    created = client.post("/jobs", files=files, params={"tile": 16, "seed": seed})
    assert created.status_code == 202, created.text
    return str(created.json()["id"])


def test_polling_sees_tiles_done_rise_monotonically_to_tiles_total(fake_model: Path) -> None:
    client, _, _ = embedded_client(fake_model, FakeUpscaler(delay_s_per_tile=0.02), **SLOW)
    seen: list[tuple[str, int, int]] = []
    with client:
        wait_client_ready(client)
        job_id = _submit(client)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = client.get(f"/jobs/{job_id}").json()
            seen.append((info["status"], info["tiles_done"], info["tiles_total"]))
            if info["status"] == "done":
                break
            time.sleep(0.05)
    total = seen[0][2]
    done = [tiles for _, tiles, _ in seen]
    assert total == 49 and all(t == total for _, _, t in seen)
    assert done == sorted(done) and done[-1] == total and seen[-1][0] == "done"
    assert len({d for d in done if 0 < d < total}) >= 3  # seen in between, not only 0 and the end


def test_event_stream_ends_with_the_final_status(fake_model: Path) -> None:
    client, _, _ = embedded_client(fake_model, FakeUpscaler(delay_s_per_tile=0.01), **SLOW)
    with client:
        wait_client_ready(client)
        job_id = _submit(client, seed=2)
        events: list[tuple[str, dict[str, object]]] = []
        with client.stream("GET", f"/jobs/{job_id}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            name = ""
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((name, json.loads(line.removeprefix("data: "))))
        missing = client.get("/jobs/nosuchjob/events")
    names = [name for name, _ in events]
    assert names[-1] == "end" and names.count("end") == 1 and set(names[:-1]) <= {"progress"}
    final = events[-1][1]
    assert final["status"] == "done" and final["tiles_done"] == final["tiles_total"] == 49
    progress = [int(body["tiles_done"]) for _, body in events]  # type: ignore[call-overload]
    assert progress == sorted(progress) and len(events) >= 3
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_redis_progress_is_throttled_and_read_back(redis_server: RedisServer, fake_model: Path) -> None:
    settings = ServiceSettings(model_dir=fake_model, redis_url=redis_server.url, redis_prefix="prog")

    async def scenario() -> None:
        api = RedisApiQueue(settings)
        await api.start()
        params = JobParams(format="png", quality=90, seed=5, tile=32, overlap=8, model="m")
        job = Job(new_job_id(), params, b"input", 10, time.time() + 30, 16, 16)
        await api.submit(job)
        worker = RedisWorkerQueue(worker_settings(redis_server.url, instance="w", redis_prefix="prog"), "m")
        worker.prepare()
        (claimed,) = worker.claim(1, 0.5)
        worker.report_progress(job.id, 2, 10, 4.0)
        worker.report_progress(job.id, 3, 10, 3.5)  # within the period: not written
        first = await api.get(job.id)
        await asyncio.sleep(PROGRESS_PERIOD_S + 0.05)
        worker.report_progress(job.id, 6, 10, 2.0)
        later = await api.get(job.id)
        worker.fail(claimed, "compute_failed", "x")
        worker.report_progress(job.id, 9, 10, 0.5)  # ended: a late report changes nothing
        ended = await api.get(job.id)
        assert first is not None and (first.tiles_done, first.eta_s) == (2, 4.0)
        assert later is not None and (later.tiles_done, later.eta_s) == (6, 2.0)
        assert ended is not None and ended.status is JobStatus.FAILED and ended.tiles_done == 6
        await api.aclose()
        worker.close()

    asyncio.run(scenario())
