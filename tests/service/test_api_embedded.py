"""The HTTP contract end to end in embedded mode (in-process queue + worker thread, fake model)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.service.conftest import embedded_client, wait_client_ready
from tests.service.fakes import FakeUpscaler, first_tile_seed, image_size, png_bytes, reference_bytes

pytestmark = pytest.mark.timeout(60)


def _post(client, data: bytes, **params):  # type: ignore[no-untyped-def]
    headers = params.pop("headers", {})
    return client.post("/upscale", files={"image": ("in.png", data, "image/png")}, params=params, headers=headers)


def test_upscale_returns_x4_image_with_headers_and_reference_bytes(fake_model: Path) -> None:
    client, _, _ = embedded_client(fake_model)
    data = png_bytes(40, 24, seed=1)
    with client:
        wait_client_ready(client)
        response = _post(client, data, seed=123, headers={"X-Request-Id": "abc-1"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-seed"] == "123"
    assert response.headers["x-request-id"] == "abc-1"
    timing = response.headers["server-timing"]
    assert all(f"{part};dur=" in timing for part in ("queue", "compute", "encode"))
    assert image_size(response.content) == (160, 96)
    assert response.content == reference_bytes(data, 123)


def test_queue_wait_is_observed_once_per_job_in_embedded_mode(fake_model: Path) -> None:
    from service import metrics

    waits = metrics.QUEUE_WAIT.labels(model=fake_model.name)
    before = waits.collect()[0]
    count = next(s.value for s in before.samples if s.name.endswith("_count"))
    client, _, _ = embedded_client(fake_model)
    with client:
        wait_client_ready(client)
        assert _post(client, png_bytes(16, 16, seed=2), seed=1).status_code == 200
        assert _post(client, png_bytes(16, 16, seed=3), seed=1).status_code == 200
    after = waits.collect()[0]
    assert next(s.value for s in after.samples if s.name.endswith("_count")) == count + 2


def test_raw_body_formats_and_random_seed_echo(fake_model: Path) -> None:
    client, _, _ = embedded_client(fake_model)
    data = png_bytes(20, 20, seed=2)
    with client:
        wait_client_ready(client)
        raw = client.post("/upscale", content=data, headers={"Content-Type": "image/png"}, params={"format": "jpeg"})
        webp = _post(client, data, format="webp", quality=50)
        random_a, random_b = _post(client, data), _post(client, data)
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/jpeg"
    assert raw.content == reference_bytes(data, int(raw.headers["x-seed"]), "jpeg", 90)
    assert webp.status_code == 200 and webp.headers["content-type"] == "image/webp"
    assert webp.content == reference_bytes(data, int(webp.headers["x-seed"]), "webp", 50)
    seed_a, seed_b = int(random_a.headers["x-seed"]), int(random_b.headers["x-seed"])
    assert seed_a != seed_b  # a fresh random seed per request, and the echo names it
    assert random_a.content == reference_bytes(data, seed_a)
    assert random_a.headers["x-request-id"] != random_b.headers["x-request-id"]


def test_concurrent_requests_batch_across_jobs_without_changing_results(fake_model: Path) -> None:
    from prometheus_client import REGISTRY

    def multi_tile_batches() -> float:
        # formed batches (before fixed-batch padding) that held more than one tile
        model = {"model": fake_model.name}
        total = REGISTRY.get_sample_value("rsd_batch_size_tiles_count", model) or 0.0
        return total - (REGISTRY.get_sample_value("rsd_batch_size_tiles_bucket", {"le": "1.0", **model}) or 0.0)

    before = multi_tile_batches()
    upscaler = FakeUpscaler(delay_s_per_tile=0.002)
    client, _, _ = embedded_client(fake_model, upscaler, max_batch_tiles=16, max_batch_delay_s=0.05, fixed_batch=16)
    images = [(png_bytes(16 + 8 * (i % 5), 16 + 4 * (i % 7), seed=i), 1000 + i, 16 if i % 2 else 32) for i in range(16)]
    with client:
        wait_client_ready(client)
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda item: _post(client, item[0], seed=item[1], tile=item[2]), images))
    assert [r.status_code for r in responses] == [200] * len(images)
    for (data, seed, tile), response in zip(images, responses, strict=True):
        assert response.content == reference_bytes(data, seed, tile=tile)
    assert multi_tile_batches() > before  # tiles of different jobs did share batches
    assert set(upscaler.batch_sizes) == {16}  # and every model call ran the fixed batch


def test_idempotency_key_returns_the_same_job_and_result(fake_model: Path) -> None:
    client, _, upscaler = embedded_client(fake_model, FakeUpscaler())
    data = png_bytes(24, 24, seed=3)
    with client:
        wait_client_ready(client)
        first = _post(client, data, headers={"Idempotency-Key": "k-1"})
        batches = len(upscaler.batch_sizes)
        second = _post(client, data, headers={"Idempotency-Key": "k-1"})
        other = _post(client, png_bytes(24, 24, seed=4), headers={"Idempotency-Key": "k-1"})
    assert first.status_code == second.status_code == 200
    assert second.headers["x-job-id"] == first.headers["x-job-id"]
    assert second.headers["x-seed"] == first.headers["x-seed"]
    assert second.content == first.content
    assert len(upscaler.batch_sizes) == batches  # nothing recomputed
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"


def test_deadline_in_queue_gives_504_and_is_never_computed(fake_model: Path, tmp_path: Path) -> None:
    log = tmp_path / "seeds.log"
    # a slow job occupies the worker; the second job's deadline passes while it waits in the queue
    upscaler = FakeUpscaler(delay_s_per_tile=0.4, log_path=str(log))
    # admission predicts a short wait (assumed fast workers), so the job is admitted and then expires
    client, _, _ = embedded_client(
        fake_model, upscaler, max_batch_tiles=1, claim_max_jobs=1, assumed_tiles_per_s=1000.0
    )
    with client:
        wait_client_ready(client)
        slow = threading.Thread(
            target=_post,
            args=(
                client,
                png_bytes(16, 16),
            ),
            kwargs={"seed": 1},
        )
        slow.start()
        time.sleep(0.1)
        started = time.monotonic()
        late = _post(client, png_bytes(16, 16, seed=9), seed=77, deadline_ms=150)
        elapsed = time.monotonic() - started
        slow.join(10)
        time.sleep(0.2)  # the worker has claimed (and dropped) the expired job by now
    assert late.status_code == 504, late.text
    assert late.json()["error"]["code"] == "deadline_exceeded"
    assert elapsed < 1.0
    assert str(first_tile_seed(77)) not in log.read_text().split()
    assert str(first_tile_seed(1)) in log.read_text().split()


def test_queue_full_gives_429_with_retry_after_promptly(fake_model: Path) -> None:
    gate = threading.Event()
    client, _, _ = embedded_client(fake_model, FakeUpscaler(gate=gate), max_backlog_tiles=4)
    big = png_bytes(48, 48, seed=5)  # tile 16, overlap 8: 25 tiles, far beyond the limit
    with client:
        wait_client_ready(client)
        hold = threading.Thread(target=_post, args=(client, png_bytes(16, 16)), kwargs={"tile": 16})
        hold.start()
        time.sleep(0.1)
        started = time.monotonic()
        refused = _post(client, big, tile=16)
        elapsed = time.monotonic() - started
        gate.set()
        hold.join(10)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["retry-after"]) >= 1
    assert elapsed < 0.05


def test_predicted_wait_beyond_deadline_is_refused_at_once(fake_model: Path) -> None:
    gate = threading.Event()
    client, _, _ = embedded_client(fake_model, FakeUpscaler(gate=gate), assumed_tiles_per_s=2.0)
    with client:
        wait_client_ready(client)
        hold = threading.Thread(target=_post, args=(client, png_bytes(48, 48)), kwargs={"tile": 16})
        hold.start()  # 25 tiles outstanding: about 12 s of work at the assumed 2 tiles/s
        time.sleep(0.1)
        started = time.monotonic()
        refused = _post(client, png_bytes(16, 16), deadline_ms=2000)
        elapsed = time.monotonic() - started
        gate.set()
        hold.join(20)
    assert refused.status_code == 429, refused.text
    assert "deadline" in refused.json()["error"]["message"]
    assert int(refused.headers["retry-after"]) >= 5
    assert elapsed < 0.05


def test_async_jobs_flow(fake_model: Path) -> None:
    client, _, _ = embedded_client(fake_model)
    data = png_bytes(20, 28, seed=6)
    with client:
        wait_client_ready(client)
        created = client.post("/jobs", files={"image": ("x.png", data, "image/png")}, params={"seed": 42})
        assert created.status_code == 202
        location = created.headers["location"]
        job_id = created.json()["id"]
        assert location == f"/jobs/{job_id}"
        for _ in range(200):
            info = client.get(location).json()
            if info["status"] == "done":
                break
            time.sleep(0.02)
        result = client.get(f"{location}/result")
        missing = client.get("/jobs/doesnotexist")
    assert info["status"] == "done" and info["seed"] == 42 and info["result_url"] == f"{location}/result"
    assert result.status_code == 200 and result.content == reference_bytes(data, 42)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_api_key_required_when_configured(fake_model: Path) -> None:
    client, _, _ = embedded_client(fake_model, api_key="s3cret")
    data = png_bytes(16, 16)
    with client:
        wait_client_ready(client)
        missing = _post(client, data)
        wrong = _post(client, data, headers={"Authorization": "Bearer nope"})
        bearer = _post(client, data, headers={"Authorization": "Bearer s3cret"})
        header = _post(client, data, headers={"X-API-Key": "s3cret"})
        health = client.get("/healthz")
    assert missing.status_code == wrong.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    assert bearer.status_code == header.status_code == 200
    assert health.status_code == 200


def test_readiness_waits_for_the_warmed_model(fake_model: Path) -> None:
    gate = threading.Event()

    class SlowLoad(FakeUpscaler):
        def run(self, lq_tiles, seeds):  # type: ignore[no-untyped-def]
            gate.wait(10)
            return super().run(lq_tiles, seeds)

    client, _, _ = embedded_client(fake_model, SlowLoad())
    with client:
        before = client.get("/readyz")
        assert client.get("/healthz").status_code == 200
        gate.set()
        wait_client_ready(client)
        after = client.get("/readyz").json()
    assert before.status_code == 503 and before.json()["status"] == "unavailable"
    # the dtype comes from the loaded upscaler (its name), not from the settings' "auto"
    assert before.json()["dtype"] is None and after["dtype"] == "fp32"


def test_readiness_shows_the_dtype_the_loaded_model_runs(fake_model: Path) -> None:
    class Bf16(FakeUpscaler):
        name = "fake-numpy-bf16"

    client, _, _ = embedded_client(fake_model, Bf16())
    with client:
        wait_client_ready(client)
        assert client.get("/readyz").json()["dtype"] == "bf16"


def test_bad_parameters_are_422_json(fake_model: Path) -> None:
    client, _, _ = embedded_client(fake_model)
    data = png_bytes(16, 16)
    with client:
        wait_client_ready(client)
        answers = [
            _post(client, data, format="gif"),
            _post(client, data, quality=0),
            _post(client, data, seed=-1),
            _post(client, data, tile=48),
            _post(client, data, deadline_ms=10**9),
            client.post("/upscale", files={"other": ("x.png", data, "image/png")}),
            client.post("/upscale", files={"image": ("x.png", data, "image/png")}, data={"quality": "abc"}),
        ]
    for answer in answers:
        assert answer.status_code == 422, answer.text
        assert set(answer.json()["error"]) == {"code", "message"}


def test_client_going_away_cancels_its_queued_job(fake_model: Path, tmp_path: Path) -> None:
    import httpx

    from service.api import create_app
    from service.embedded import WorkerThread
    from service.queue.inprocess import InProcessQueue
    from service.settings import ServiceSettings
    from tests.service.conftest import ThreadedServer

    gate, log = threading.Event(), tmp_path / "seeds.log"
    settings = ServiceSettings(model_dir=fake_model, redis_url=None, claim_max_jobs=1)
    queue = InProcessQueue(settings.max_backlog_tiles, 1000.0)
    upscaler = FakeUpscaler(gate=gate, log_path=str(log))
    app = create_app(settings, queue, WorkerThread(lambda: upscaler, queue, settings))
    with ThreadedServer(app) as server:
        files = {"image": ("x.png", png_bytes(16, 16), "image/png")}
        kwargs = {"files": files, "params": {"seed": 1}, "timeout": 30}
        holder = threading.Thread(target=httpx.post, args=(f"{server.url}/upscale",), kwargs=kwargs)
        holder.start()  # occupies the worker (held by the gate)
        time.sleep(0.2)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/upscale", files=files, params={"seed": 5}, timeout=0.5)
        backlog = [asyncio.run(queue.backlog())]
        for _ in range(100):  # the server notices the closed connection and cancels the queued job
            if backlog[-1] == 1:
                break
            time.sleep(0.02)
            backlog.append(asyncio.run(queue.backlog()))
        gate.set()
        holder.join(10)
        time.sleep(0.1)
    assert backlog[-1] == 1  # only the holder's tile is left
    assert asyncio.run(queue.backlog()) == 0
    computed = log.read_text().split()
    assert str(first_tile_seed(1)) in computed and str(first_tile_seed(5)) not in computed


def test_full_queue_refuses_before_reading_the_upload(fake_model: Path) -> None:
    gate = threading.Event()
    client, _, _ = embedded_client(fake_model, FakeUpscaler(gate=gate), max_backlog_tiles=1)
    consumed = []

    def body() -> Iterator[bytes]:
        consumed.append(True)
        yield png_bytes(16, 16)

    with client:
        wait_client_ready(client)
        hold = threading.Thread(target=_post, args=(client, png_bytes(16, 16)))
        hold.start()  # one tile outstanding: the limit is reached
        time.sleep(0.1)
        refused = client.post("/upscale", content=body(), headers={"Content-Type": "image/png"})
        gate.set()
        hold.join(10)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert consumed == []  # answered without reading (or decoding) the body


def test_stays_ready_during_a_batch_longer_than_the_heartbeat_timeout(fake_model: Path) -> None:
    from fastapi.testclient import TestClient

    from service.api import create_app
    from service.embedded import WorkerThread
    from service.queue.inprocess import InProcessQueue
    from service.settings import ServiceSettings

    gate = threading.Event()
    settings = ServiceSettings(model_dir=fake_model, redis_url=None, worker_heartbeat_s=0.1)
    queue = InProcessQueue(settings.max_backlog_tiles, 1000.0, heartbeat_timeout_s=0.5)
    upscaler = FakeUpscaler(gate=gate)
    client = TestClient(create_app(settings, queue, WorkerThread(lambda: upscaler, queue, settings)))
    with client:
        wait_client_ready(client)
        busy = threading.Thread(target=_post, args=(client, png_bytes(16, 16)))
        busy.start()
        statuses = []
        for _ in range(15):  # 1.5 s inside one batch, three times the heartbeat timeout
            time.sleep(0.1)
            statuses.append(client.get("/readyz").status_code)
        gate.set()
        busy.join(10)
    assert statuses == [200] * 15


def test_openapi_declares_the_deadline_maximum_and_the_documented_errors(fake_model: Path) -> None:
    client, _, _ = embedded_client(fake_model)
    schema = client.get("/openapi.json").json()
    for path in ("/upscale", "/jobs"):
        operation = schema["paths"][path]["post"]
        limits = {p["name"]: p["schema"]["anyOf"][0].get("maximum") for p in operation["parameters"]}
        assert limits["deadline_ms"] == 3_600_000 and limits["x-deadline-ms"] == 3_600_000
        assert "deadline_exceeded" in operation["responses"]["504"]["description"]
    assert "410" in schema["paths"]["/jobs/{job_id}/result"]["get"]["responses"]
    assert "/jobs/{job_id}/events" in schema["paths"]
