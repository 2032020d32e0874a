"""Prometheus metrics (serving.md "Metrics"), correct across processes.

With several uvicorn worker processes (or API and model workers on one host) set
`PROMETHEUS_MULTIPROC_DIR` to an empty directory shared by all of them *before* they start:
prometheus_client then keeps each process's values in memory-mapped files there and the exposition
aggregates them (histograms and counters summed; `rsd_inflight_requests` summed over live processes;
`rsd_backlog_tiles` the most recent value written by any process). Without the variable, each process
exposes its own registry (fine for one process).

API side: request duration, rejections, in-flight requests, input megapixels, backlog. Worker side:
queue wait, batch compute and size, tiles, redeliveries, dead jobs. A worker on another host exposes
its own with `rsd worker --metrics-port`.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

REQUEST_DURATION = Histogram(
    "rsd_request_duration_seconds",
    "HTTP request duration by route template and status code",
    ["route", "status"],
    buckets=_SECONDS,
)
QUEUE_WAIT = Histogram("rsd_queue_wait_seconds", "Time from admission to a worker taking the job", buckets=_SECONDS)
BATCH_COMPUTE = Histogram("rsd_batch_compute_seconds", "Model time per batch of tiles", ["backend"], buckets=_SECONDS)
BATCH_SIZE = Histogram("rsd_batch_size_tiles", "Tiles per model batch", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64))
TILES = Counter("rsd_tiles", "Tiles computed by the model")
REJECTED = Counter("rsd_requests_rejected", "Requests refused, by reason", ["reason"])
REDELIVERIES = Counter("rsd_job_redeliveries", "Jobs reclaimed from a worker whose lease lapsed")
DEAD_JOBS = Counter("rsd_dead_jobs", "Jobs sent to the dead stream after max attempts")
BACKLOG = Gauge("rsd_backlog_tiles", "Outstanding tiles (admitted, not finished)", multiprocess_mode="mostrecent")
INFLIGHT = Gauge("rsd_inflight_requests", "Requests being handled", multiprocess_mode="livesum")
INPUT_MEGAPIXELS = Histogram(
    "rsd_input_megapixels",
    "Decoded input size in megapixels",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def _registry() -> CollectorRegistry:
    if not multiprocess_enabled():
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def exposition() -> tuple[bytes, str]:
    """(body, content type) of the text exposition, aggregated over processes when multiprocess."""
    return generate_latest(_registry()), CONTENT_TYPE_LATEST


def serve_metrics(port: int, address: str = "0.0.0.0") -> None:
    """Expose this process's (or the shared multiprocess directory's) metrics on their own port."""
    start_http_server(port, addr=address, registry=_registry())


def mark_process_dead() -> None:
    """Drop this process's live gauges from the shared directory (call at exit in multiprocess mode)."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(os.getpid())
