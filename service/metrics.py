"""Prometheus metrics (serving.md "Metrics"), counted once whatever the process layout.

`PROMETHEUS_MULTIPROC_DIR` makes prometheus_client keep each process's values in memory-mapped files in
that directory, and an exposition from it sums every process's files (histograms and counters summed;
`rsd_inflight_requests` over live processes; `rsd_backlog_tiles` the most recent value written). So a
directory must have exactly one exporter, one scrape target: `rsd serve --workers N` (its uvicorn
processes share one directory, created if unset) or one `rsd worker --metrics-port`. A second exporter on
the same directory would re-export the first one's counts and every request would be counted twice by a
Prometheus that scrapes both (as deploy/prometheus/prometheus.yml does), so `claim_directory` refuses to
start it. A worker without `--metrics-port` may write into its host API's directory: that API then exports
its counts, once. Without the variable each process exposes its own registry (fine for one process).

API side: request duration, rejections, in-flight image requests, input megapixels, backlog. Worker side:
queue wait, batch compute and size, tiles, redeliveries, dead jobs.
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

# Four buckets per doubling, anchored at 1 s, from 4.6 ms (a GPU batch) to 609 s (a large image on CPU):
# histogram_quantile interpolates inside one bucket, so adjacent bounds 19% apart keep its p50/p90/p99 within
# about 15% of the true quantile (tests/deploy/test_prometheus.py measures it), and the powers of two
# (..., 0.5, 1, 2, 4, 8, 16 s) are bounds an SLO can name (deploy/prometheus/rules/). 69 bounds + +Inf +
# _sum + _count = 72 series per label set.
LATENCY_BUCKETS = tuple(float(f"{2 ** (k / 4):.4g}") for k in range(-31, 38))
OWNER_FILE = "rsd-metrics-exporter"

REQUEST_DURATION = Histogram(
    "rsd_request_duration_seconds",
    "HTTP request duration by route template and status code",
    ["route", "status"],
    buckets=LATENCY_BUCKETS,
)
# the worker-side series carry the served model's name (serving.md "Models"): one label set per model
QUEUE_WAIT = Histogram(
    "rsd_queue_wait_seconds", "Time from admission to a worker taking the job", ["model"], buckets=LATENCY_BUCKETS
)
BATCH_COMPUTE = Histogram(
    "rsd_batch_compute_seconds", "Model time per batch of tiles", ["backend", "model"], buckets=LATENCY_BUCKETS
)
BATCH_SIZE = Histogram(
    "rsd_batch_size_tiles", "Tiles per model batch", ["model"], buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
)
TILES = Counter("rsd_tiles", "Tiles computed by the model", ["model"])
REJECTED = Counter("rsd_requests_rejected", "Requests refused, by reason", ["reason"])
REDELIVERIES = Counter("rsd_job_redeliveries", "Jobs reclaimed from a worker whose lease lapsed")
DEAD_JOBS = Counter("rsd_dead_jobs", "Jobs sent to the dead stream after max attempts")
BACKLOG = Gauge("rsd_backlog_tiles", "Outstanding tiles (admitted, not finished)", multiprocess_mode="mostrecent")
INFLIGHT = Gauge("rsd_inflight_requests", "Image requests (/upscale, /jobs) being handled", multiprocess_mode="livesum")
QUEUE_UP = Gauge(
    "rsd_queue_up", "1 if the API reached its queue (Redis) at the last scrape, else 0", multiprocess_mode="mostrecent"
)
INPUT_MEGAPIXELS = Histogram(
    "rsd_input_megapixels",
    "Decoded input size in megapixels",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def claim_directory(exporter: str) -> None:
    """Make this process group the one exporter of `PROMETHEUS_MULTIPROC_DIR`, or refuse with the reason.

    `exporter` names the group (`api-<pid of rsd serve>`, `worker-<pid>`); a directory claimed by a live
    process of another group is an error, one left by a dead process is taken over.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    if not os.path.isdir(directory):
        raise RuntimeError(f"PROMETHEUS_MULTIPROC_DIR={directory} is not a directory: create it (empty) first")
    owner_path = os.path.join(directory, OWNER_FILE)
    try:
        with open(owner_path) as handle:
            owner = handle.read().strip()
    except FileNotFoundError:
        owner = ""
    if owner and owner != exporter and _alive(owner):
        raise RuntimeError(
            f"PROMETHEUS_MULTIPROC_DIR={directory} is already exported by {owner}; give {exporter} a directory of "
            "its own: two exporters of one directory make Prometheus count every request and tile twice "
            "(docs/observability.md)"
        )
    with open(owner_path, "w") as handle:
        handle.write(exporter)


def _alive(exporter: str) -> bool:
    pid = exporter.rsplit("-", 1)[-1]
    if not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
