"""The worker on its own: out-of-memory halving, a bad tile fails only its job, SIGTERM drains."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest

from rsd.imageops import tile_count
from rsd.kinds import OutputFormat
from rsd.noise import tile_seed
from service.jobs import Job, JobParams, JobStatus, new_job_id
from service.queue.inprocess import InProcessQueue
from service.settings import ServiceSettings
from service.worker import Worker, is_out_of_memory
from tests.service.conftest import Processes, RedisServer, Stack, wait_ready
from tests.service.fakes import FakeUpscaler, png_bytes, reference_bytes

pytestmark = pytest.mark.timeout(60)


def _job(data: bytes, seed: int, width: int, height: int, tile: int = 16, fmt: OutputFormat = "png") -> Job:
    params = JobParams(format=fmt, quality=90, seed=seed, tile=tile, overlap=min(8, tile // 2), model="m")
    return Job(
        new_job_id(), params, data, tile_count(height, width, tile, params.overlap, 16), time.time() + 30, width, height
    )


def _drain(upscaler: FakeUpscaler, jobs: list[Job], fake_model: Path, **overrides: object) -> InProcessQueue:
    settings = ServiceSettings(model_dir=fake_model, redis_url=None, **overrides)  # type: ignore[arg-type]
    queue = InProcessQueue(10_000, 1.0)
    for job in jobs:
        asyncio.run(queue.submit(job))
    worker = Worker(queue, upscaler, settings)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    for _ in range(500):
        records = [asyncio.run(queue.get(job.id)) for job in jobs]
        if all(record is not None and record.status.terminal for record in records):
            break
        time.sleep(0.01)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    return queue


def test_out_of_memory_halves_the_batch_and_results_do_not_change(fake_model: Path) -> None:
    upscaler = FakeUpscaler(oom_above=3)
    job = _job(png_bytes(48, 40, seed=1), 11, 48, 40)
    queue = _drain(upscaler, [job], fake_model, max_batch_tiles=16, max_batch_delay_s=0.0)
    result = asyncio.run(queue.result(job.id))
    assert result is not None and result.data == reference_bytes(job.data, 11, tile=16)
    assert max(upscaler.batch_sizes) <= 3 and sum(upscaler.batch_sizes) == job.cost_tiles


def test_a_failing_tile_fails_only_its_own_job(fake_model: Path) -> None:
    bad, good = _job(png_bytes(32, 32, seed=2), 21, 32, 32), _job(png_bytes(32, 32, seed=3), 22, 32, 32)
    upscaler = FakeUpscaler(fail_seed=tile_seed(21, 2))
    queue = _drain(upscaler, [bad, good], fake_model, max_batch_tiles=32, max_batch_delay_s=0.05)
    bad_record, good_record = asyncio.run(queue.get(bad.id)), asyncio.run(queue.get(good.id))
    assert bad_record is not None and bad_record.status is JobStatus.FAILED
    assert bad_record.error_code == "compute_failed"
    assert good_record is not None and good_record.status is JobStatus.DONE
    result = asyncio.run(queue.result(good.id))
    assert result is not None and result.data == reference_bytes(good.data, 22, tile=16)


@pytest.mark.parametrize(("fmt", "effort"), [("png", {"png_compress_level": 9}), ("webp", {"webp_method": 6})])
def test_the_encoder_effort_settings_reach_the_encoder(
    fake_model: Path, fmt: OutputFormat, effort: dict[str, int]
) -> None:
    job = _job(png_bytes(32, 32, seed=4), 31, 32, 32, fmt=fmt)
    queue = _drain(FakeUpscaler(), [job], fake_model, **effort)
    result = asyncio.run(queue.result(job.id))
    assert result is not None
    assert result.data == reference_bytes(job.data, 31, fmt, tile=16, **effort)
    assert result.data != reference_bytes(job.data, 31, fmt, tile=16)  # the defaults give other bytes


def test_the_device_stage_keeps_the_model_outputs_uncopied(fake_model: Path) -> None:
    """The rows handed to finish are views of what the model returned: a joined copy between model calls
    released the GIL and cost the device 0.08-0.14 of its busy fraction (serving.md "Worker loop")."""
    returned: list[np.ndarray] = []

    class Keeping(FakeUpscaler):
        def run(self, lq_tiles: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
            returned.append(super().run(lq_tiles, seeds))
            return returned[-1]

    settings = ServiceSettings(model_dir=fake_model, redis_url=None, fixed_batch=4)
    worker = Worker(InProcessQueue(10_000, 1.0), Keeping(), settings)
    tiles = np.zeros((6, 3, 16, 16), np.float32)
    rows = worker._run_split(tiles, list(range(1, 7)))
    assert len(rows) == 6 and len(returned) == 2
    assert all(np.shares_memory(row, returned[i // 4]) for i, row in enumerate(rows))


def test_out_of_memory_is_recognised() -> None:
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


@pytest.mark.timeout(120)
def test_sigterm_finishes_the_jobs_in_hand_then_exits(
    redis_server: RedisServer, processes: Processes, fake_model: Path
) -> None:
    stack = Stack(redis_server, processes, fake_model, RSD_MAX_BATCH_TILES=1, RSD_CLAIM_MAX_JOBS=1)
    worker = stack.start_worker("draining", "--delay", "0.3")
    base = stack.start_api()
    wait_ready(base)
    files = {"image": ("x.png", png_bytes(32, 32, seed=4), "image/png")}
    first = httpx.post(f"{base}/jobs", files=files, params={"seed": 31, "tile": 16})  # 9 tiles, about 2.7 s
    for _ in range(200):
        if httpx.get(f"{base}{first.headers['location']}").json()["status"] == "running":
            break
        time.sleep(0.02)
    second = httpx.post(f"{base}/jobs", files=files, params={"seed": 32, "tile": 16})
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    first_info = httpx.get(f"{base}{first.headers['location']}").json()
    second_info = httpx.get(f"{base}{second.headers['location']}").json()
    assert first_info["status"] == "done"  # finished although SIGTERM came mid-job
    assert second_info["status"] == "queued"  # not claimed after SIGTERM
    result = httpx.get(f"{base}{first.headers['location']}/result")
    assert result.content == reference_bytes(files["image"][1], 31, tile=16)


@pytest.mark.parametrize("pipeline", [True, False])
def test_a_slow_encode_does_not_delay_the_next_batch(
    fake_model: Path, monkeypatch: pytest.MonkeyPatch, pipeline: bool
) -> None:
    """Job A (one tile) is encoded slowly; job B's batches run meanwhile in the pipelined worker (its
    finish pool), and only after A's encode in the serial worker (the baseline shows the test can fail)."""
    import service.worker

    slow, fast = _job(png_bytes(16, 16, seed=5), 41, 16, 16), _job(png_bytes(48, 48, seed=6), 42, 48, 48)
    encode_window: list[float] = []
    real_encode = service.worker.encode_image

    def encode(sr_rgb, source, fmt, quality, outscale=None, **effort):  # type: ignore[no-untyped-def]
        if source.width == 16:  # job A
            encode_window.append(time.monotonic())
            time.sleep(1.0)
            encode_window.append(time.monotonic())
        return real_encode(sr_rgb, source, fmt, quality, outscale=outscale, **effort)

    monkeypatch.setattr(service.worker, "encode_image", encode)
    run_times: list[float] = []
    upscaler = FakeUpscaler()
    real_run = upscaler.run

    def run(lq_tiles, seeds):  # type: ignore[no-untyped-def]
        run_times.append(time.monotonic())
        return real_run(lq_tiles, seeds)

    upscaler.run = run  # type: ignore[method-assign]
    queue = _drain(
        upscaler, [slow, fast], fake_model, max_batch_tiles=2, max_batch_delay_s=0.0, worker_pipeline=pipeline
    )
    for job, seed in ((slow, 41), (fast, 42)):
        result = asyncio.run(queue.result(job.id))
        assert result is not None and result.data == reference_bytes(job.data, seed, tile=16)
    start, end = encode_window
    during = [t for t in run_times if start < t < end]
    if pipeline:
        assert len(during) >= fast.cost_tiles // 2, f"{len(during)} batches ran during A's 1 s encode"
    else:
        assert not during, "the serial worker ran batches while encoding"
