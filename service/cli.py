"""`rsd serve` and `rsd worker` (also `python -m service serve|worker`).

`rsd serve` with no configuration: embedded mode (API + worker thread, no Redis), serving the bundled
model or RSD_MODEL. With REDIS_URL (or --redis-url): an API replica; run `rsd worker` processes beside it.
Options are written to the environment before uvicorn starts so that every uvicorn worker process
builds the same settings (service.main:app_from_env).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from typing import Any

from rsd.kinds import BACKENDS


def add_parsers(subparsers: Any) -> None:
    """Add `serve` and `worker` to an argparse subparsers object (each sets `handler`, the rsd CLI convention)."""
    serve = subparsers.add_parser("serve", help="HTTP API (embedded worker unless REDIS_URL is set)")
    _common(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn processes (use with REDIS_URL)")
    serve.set_defaults(handler=serve_command)
    worker = subparsers.add_parser("worker", help="model worker for the Redis Streams queue")
    _common(worker)
    worker.add_argument("--metrics-port", type=int, default=None, help="expose this worker's /metrics")
    worker.set_defaults(handler=worker_command)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="artifact directory (env RSD_MODEL; default bundled)")
    parser.add_argument("--redis-url", default=None, help="Redis URL (env REDIS_URL)")
    parser.add_argument("--backend", choices=BACKENDS, default=None)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (env RSD_DEVICE)")


def _export(args: argparse.Namespace) -> None:
    for value, name in ((args.model, "RSD_MODEL"), (args.redis_url, "REDIS_URL"),
                        (args.backend, "RSD_BACKEND"), (args.device, "RSD_DEVICE")):  # fmt: skip
        if value is not None:
            os.environ[name] = str(value)


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    _export(args)
    if args.workers > 1:
        if not os.environ.get("REDIS_URL"):
            logging.warning("--workers %d without REDIS_URL: each process loads its own model and queue", args.workers)
        # metrics must aggregate across the processes (serving.md "Metrics")
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="rsd-metrics-"))
    from service import metrics

    metrics.claim_directory(f"api-{os.getpid()}")  # this process's uvicorn children are one exporter
    uvicorn.run(
        "service.main:app_from_env", factory=True, host=args.host, port=args.port, workers=args.workers,
        log_level="info",
    )  # fmt: skip
    return 0


def worker_command(args: argparse.Namespace) -> int:
    _export(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from service.settings import ServiceSettings
    from service.worker_process import run_worker

    if args.metrics_port is not None:  # without a port the worker is exported by its directory's owner
        from service import metrics

        metrics.claim_directory(f"worker-{os.getpid()}")
    run_worker(ServiceSettings(), metrics_port=args.metrics_port)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))
