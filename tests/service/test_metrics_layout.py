"""Metrics are counted once whatever the directory layout (service/metrics.py, docs/observability.md).

A `PROMETHEUS_MULTIPROC_DIR` has one exporter: a second process group that would export the same files is
refused at start with the reason; separate directories (the repo's layouts) are accepted. The separate
layout's counts are checked against a real Prometheus in tests/deploy/test_prometheus.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from service import metrics
from service.middleware import ObservabilityMiddleware

pytestmark = pytest.mark.timeout(60)


def test_a_directory_shared_by_two_live_exporters_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    metrics.claim_directory(f"api-{os.getpid()}")
    metrics.claim_directory(f"api-{os.getpid()}")  # the same group again (a uvicorn child): fine
    with pytest.raises(RuntimeError, match=f"PROMETHEUS_MULTIPROC_DIR={tmp_path} is already exported by api-"):
        metrics.claim_directory(f"worker-{os.getpid()}")


def test_separate_directories_and_a_dead_owner_are_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("api", "worker"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / name))
        metrics.claim_directory(f"{name}-{os.getpid()}")
        assert (tmp_path / name / metrics.OWNER_FILE).read_text() == f"{name}-{os.getpid()}"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "api" / metrics.OWNER_FILE).write_text(f"api-{int(dead.stdout)}")  # left by a crashed run
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "api"))
    metrics.claim_directory(f"worker-{os.getpid()}")
    assert (tmp_path / "api" / metrics.OWNER_FILE).read_text() == f"worker-{os.getpid()}"


def test_missing_directory_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "absent"))
    with pytest.raises(RuntimeError, match="absent is not a directory"):
        metrics.claim_directory("api-1")


def test_a_worker_with_metrics_port_refuses_the_directory_of_a_running_api(tmp_path: Path) -> None:
    """The process-level check: `rsd worker --metrics-port` on a live API's directory exits before Redis."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time\nfrom service import metrics\n"
         "metrics.claim_directory(f'api-{os.getpid()}'); print('ok', flush=True); time.sleep(60)"],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        worker = subprocess.run(
            [sys.executable, "-m", "service", "worker", "--metrics-port", "1", "--redis-url", "redis://127.0.0.1:1/0"],
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}, capture_output=True, text=True, timeout=50,
        )  # fmt: skip
        assert worker.returncode != 0
        assert f"already exported by api-{holder.pid}" in worker.stderr, worker.stderr[-2000:]
    finally:
        holder.kill()
        holder.wait()


PATHS = [("/upscale", 1), ("/jobs", 1), ("/jobs/abc/result", 1), ("/metrics", 0), ("/healthz", 0), ("/readyz", 0)]


@pytest.mark.parametrize(("path", "counted"), [*PATHS, ("/jobsx", 0)])
def test_inflight_counts_image_requests_only(path: str, counted: int) -> None:
    seen: list[float] = []

    async def app(scope: object, receive: object, send: object) -> None:
        seen.append(REGISTRY.get_sample_value("rsd_inflight_requests") or 0.0)

    before = REGISTRY.get_sample_value("rsd_inflight_requests") or 0.0
    middleware = ObservabilityMiddleware(app)  # type: ignore[arg-type]
    asyncio.run(middleware({"type": "http", "path": path, "headers": []}, None, None))  # type: ignore[arg-type]
    assert seen == [before + counted]
    assert (REGISTRY.get_sample_value("rsd_inflight_requests") or 0.0) == before
