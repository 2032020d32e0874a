"""/metrics with two uvicorn worker processes (multiprocess mode) parsed with prometheus_client's parser."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import Processes, RedisServer, Stack, wait_ready
from tests.service.fakes import png_bytes

pytestmark = pytest.mark.timeout(180)

SERVING_METRICS = {
    # family name as the parser reports it -> type (serving.md "Metrics")
    "rsd_request_duration_seconds": "histogram",
    "rsd_queue_wait_seconds": "histogram",
    "rsd_batch_compute_seconds": "histogram",
    "rsd_batch_size_tiles": "histogram",
    "rsd_tiles": "counter",
    "rsd_requests_rejected": "counter",
    "rsd_job_redeliveries": "counter",
    "rsd_dead_jobs": "counter",
    "rsd_backlog_tiles": "gauge",
    "rsd_inflight_requests": "gauge",
    "rsd_input_megapixels": "histogram",
}


def _scrape(base: str) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    text = httpx.get(f"{base}/metrics", timeout=10).text  # a fresh connection: any process may answer
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value for sample in family.samples
        }
        families[family.name]["__type__"] = family.type  # type: ignore[assignment]
    return families


def _requests_per_process(metrics_dir: Path, scratch: Path) -> dict[str, float]:
    """/upscale requests recorded by each process (its own file read alone), for processes with any."""
    counts = {}
    for path in metrics_dir.glob("histogram_*.db"):
        scratch.mkdir(exist_ok=True)
        for old in scratch.iterdir():
            old.unlink()
        shutil.copy(path, scratch / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(scratch))
        total = sum(
            sample.value
            for family in registry.collect()
            if family.name == "rsd_request_duration_seconds"
            for sample in family.samples
            if sample.name.endswith("_count") and sample.labels.get("route") == "/upscale"
        )
        if total:
            counts[path.stem.split("_")[-1]] = total
    return counts


def _post_png(base: str, width: int, height: int) -> int:
    """POST one PNG on a fresh connection; the response status."""
    files = {"image": ("x.png", png_bytes(width, height), "image/png")}
    return httpx.post(f"{base}/upscale", files=files, timeout=30).status_code


def _wait_for_requests(metrics_dir: Path, scratch: Path, expected: int) -> dict[str, float]:
    """Per-process request counts once `expected` requests are recorded (or after 10 s): a request's
    duration is recorded as its response goes out, a moment after the client has it."""
    deadline = time.monotonic() + 10
    served = _requests_per_process(metrics_dir, scratch)
    while sum(served.values()) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        served = _requests_per_process(metrics_dir, scratch)
    return served


def test_metrics_are_aggregated_over_two_uvicorn_processes(
    redis_server: RedisServer, processes: Processes, fake_model: Path, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    stack = Stack(redis_server, processes, fake_model, PROMETHEUS_MULTIPROC_DIR=metrics_dir)
    stack.start_worker("worker")
    base = stack.start_api(uvicorn_workers=2)
    wait_ready(base)
    # tile 32, overlap 8: 1, 1 and 4 tiles. Which process accepts a connection is the kernel's choice, and
    # sequential requests can all land on one; rounds of concurrent requests, each on its own connection,
    # go on until both processes have answered some (the second may still be starting when /readyz answers).
    tiles_of = {(16, 16): 1, (32, 16): 1, (48, 40): 4}
    sent: list[tuple[int, int]] = []
    served: dict[str, float] = {}
    deadline = time.monotonic() + 60
    with ThreadPoolExecutor(max_workers=6) as pool:
        while len(served) < 2 and time.monotonic() < deadline:
            round_sizes = list(tiles_of) * 2
            for status in pool.map(lambda size: _post_png(base, *size), round_sizes):
                assert status == 200
            sent += round_sizes
            served = _wait_for_requests(metrics_dir, tmp_path / "one", len(sent))
    assert len(served) == 2 and sum(served.values()) == len(sent), served  # both processes answered
    bad = httpx.post(f"{base}/upscale", content=b"not an image", headers={"Content-Type": "image/png"}, timeout=10)
    assert bad.status_code == 400
    assert sum(_wait_for_requests(metrics_dir, tmp_path / "one", len(sent) + 1).values()) == len(sent) + 1
    expected_tiles = sum(tiles_of[size] for size in sent)
    for _ in range(4):  # whichever process answers, the totals are the same
        families = _scrape(base)
        for name, kind in SERVING_METRICS.items():
            assert name in families, name
            assert families[name]["__type__"] == kind, name
        requests = families["rsd_request_duration_seconds"]
        key = ("rsd_request_duration_seconds_count", (("route", "/upscale"), ("status", "200")))
        assert requests[key] == len(sent)
        assert requests[("rsd_request_duration_seconds_count", (("route", "/upscale"), ("status", "400")))] == 1
        model = (("model", fake_model.name),)  # the worker-side series carry the served model
        assert families["rsd_tiles"][("rsd_tiles_total", model)] == expected_tiles
        assert families["rsd_requests_rejected"][("rsd_requests_rejected_total", (("reason", "undecodable"),))] == 1
        assert families["rsd_input_megapixels"][("rsd_input_megapixels_count", ())] == len(sent)
        assert families["rsd_queue_wait_seconds"][("rsd_queue_wait_seconds_count", model)] == len(sent)
        batch_sizes = families["rsd_batch_size_tiles"]
        assert batch_sizes[("rsd_batch_size_tiles_sum", model)] == expected_tiles
        assert families["rsd_backlog_tiles"][("rsd_backlog_tiles", ())] == 0
        assert families["rsd_inflight_requests"][("rsd_inflight_requests", ())] == 0  # a scrape is not counted
