"""service.heap (serving.md "Result retention"): malloc_trim on glibc, a no-op elsewhere, called by the
in-process queue's sweep timer unless RSD_HEAP_TRIM=false."""

from __future__ import annotations

import asyncio
import ctypes
import platform
import time
from collections.abc import Iterator

import pytest

from service import heap
from service.jobs import Job, JobParams, new_job_id
from service.queue.inprocess import InProcessQueue
from service.settings import ServiceSettings


@pytest.fixture(autouse=True)
def _fresh_lookup() -> Iterator[None]:
    heap._malloc_trim.cache_clear()
    yield
    heap._malloc_trim.cache_clear()


def test_trim_is_a_no_op_off_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    monkeypatch.setattr(ctypes, "CDLL", lambda *_a, **_k: pytest.fail("no libc may be loaded off glibc"))
    assert heap._malloc_trim() is None
    assert heap.trim() is False


def test_trim_calls_malloc_trim_zero_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def fake_trim(pad: int) -> int:
        calls.append(pad)
        return 1

    class FakeLibc:
        malloc_trim = staticmethod(fake_trim)

    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(ctypes, "CDLL", lambda *_a, **_k: FakeLibc())
    assert heap.trim() is True
    assert calls == [0]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_trim_runs_against_the_real_glibc() -> None:
    assert heap._malloc_trim() is not None
    heap.trim()  # returns whether memory was released; must not raise


@pytest.mark.parametrize("enabled", [True, False])
def test_the_sweep_timer_trims_unless_disabled(monkeypatch: pytest.MonkeyPatch, enabled: bool) -> None:
    trims: list[None] = []

    def fake_trim() -> bool:
        trims.append(None)
        return True

    monkeypatch.setattr(heap, "trim", fake_trim)

    async def run() -> None:
        queue = InProcessQueue(64, 2.0, sweep_interval_s=0.01, heap_trim=enabled)
        await queue.start()
        await asyncio.sleep(0.2)
        await queue.aclose()

    asyncio.run(run())
    assert bool(trims) is enabled


def test_the_setting_reads_rsd_heap_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServiceSettings().heap_trim is True
    monkeypatch.setenv("RSD_HEAP_TRIM", "false")
    assert ServiceSettings().heap_trim is False


def test_while_jobs_are_in_hand_the_trim_waits_for_its_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """A trim's pages are faulted in again by the next jobs: under load it runs at most every
    busy_trim_interval_s, and at the first sweep once the queue is idle."""
    trims: list[float] = []
    monkeypatch.setattr(heap, "trim", lambda: trims.append(time.monotonic()) or True)

    async def run() -> None:
        queue = InProcessQueue(64, 2.0, sweep_interval_s=0.01, busy_trim_interval_s=0.3)
        await queue.start()
        params = JobParams(format="png", quality=90, seed=5, tile=32, overlap=8, model="m")
        submitted = await queue.submit(Job(new_job_id(), params, b"input", 1, time.time() + 30, 16, 16))
        started = time.monotonic()
        await asyncio.sleep(0.5)
        busy = [t - started for t in trims]
        claimed = queue.claim(1, max_wait_s=1.0)
        assert [job.id for job in claimed] == [submitted.job_id]
        queue.fail(claimed[0], "test", "ended")
        ended = time.monotonic()
        await asyncio.sleep(0.1)
        idle = [t for t in trims if t > ended]
        await queue.aclose()
        assert len(busy) == 1 and 0.25 < busy[0] < 0.45, busy  # one trim, once the interval passed
        assert len(idle) >= 3, idle  # idle: every sweep

    asyncio.run(run())
