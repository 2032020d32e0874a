"""/metrics with two uvicorn worker processes (multiprocess mode) parsed with prometheus_client's parser."""

from __future__ import annotations

import shutil
import time
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


def test_metrics_are_aggregated_over_two_uvicorn_processes(
    redis_server: RedisServer, processes: Processes, fake_model: Path, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    stack = Stack(redis_server, processes, fake_model, PROMETHEUS_MULTIPROC_DIR=metrics_dir)
    stack.start_worker("worker")
    base = stack.start_api(uvicorn_workers=2)
    wait_ready(base)
    sizes = [(16, 16), (32, 16), (48, 40)] * 4  # tile 32, overlap 8: 1, 1 and 4 tiles
    for width, height in sizes:  # one connection per request, so both processes serve some
        response = httpx.post(
            f"{base}/upscale", files={"image": ("x.png", png_bytes(width, height), "image/png")}, timeout=30
        )
        assert response.status_code == 200
    bad = httpx.post(f"{base}/upscale", content=b"not an image", headers={"Content-Type": "image/png"}, timeout=10)
    assert bad.status_code == 400
    expected_tiles = 4 * (1 + 1 + 4)
    # a request's duration is recorded as its response goes out: give the last one a moment to land
    deadline = time.monotonic() + 10
    served = _requests_per_process(metrics_dir, tmp_path / "one")
    while sum(served.values()) < len(sizes) + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
        served = _requests_per_process(metrics_dir, tmp_path / "one")
    assert len(served) == 2 and sum(served.values()) == len(sizes) + 1, served  # both processes answered
    for _ in range(4):  # whichever process answers, the totals are the same
        families = _scrape(base)
        for name, kind in SERVING_METRICS.items():
            assert name in families, name
            assert families[name]["__type__"] == kind, name
        requests = families["rsd_request_duration_seconds"]
        key = ("rsd_request_duration_seconds_count", (("route", "/upscale"), ("status", "200")))
        assert requests[key] == len(sizes)
        assert requests[("rsd_request_duration_seconds_count", (("route", "/upscale"), ("status", "400")))] == 1
        assert families["rsd_tiles"][("rsd_tiles_total", ())] == expected_tiles
        assert families["rsd_requests_rejected"][("rsd_requests_rejected_total", (("reason", "undecodable"),))] == 1
        assert families["rsd_input_megapixels"][("rsd_input_megapixels_count", ())] == len(sizes)
        assert families["rsd_queue_wait_seconds"][("rsd_queue_wait_seconds_count", ())] == len(sizes)
        batch_sizes = families["rsd_batch_size_tiles"]
        assert batch_sizes[("rsd_batch_size_tiles_sum", ())] == expected_tiles
        assert families["rsd_backlog_tiles"][("rsd_backlog_tiles", ())] == 0
        assert families["rsd_inflight_requests"][("rsd_inflight_requests", ())] == 1  # this scrape itself
