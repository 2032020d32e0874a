"""Composition roots: the app for uvicorn and the worker process (serving.md "Queue").

`build_app(settings)`: with REDIS_URL, an API replica (no torch); without, the embedded mode: an
in-process queue and a worker thread that loads the model inside this process. The model code is
imported only inside the embedded branch, so an API replica never loads torch.
`uvicorn --factory service.main:app_from_env` builds the app from the environment in each process.
The worker process's entry point is `service.worker.run_worker`.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI

from service.api import create_app
from service.queue.inprocess import InProcessQueue
from service.settings import ServiceSettings

log = logging.getLogger(__name__)


def build_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    if settings.redis_url is not None:
        return create_app(settings)
    from service.worker import WorkerThread, load_model

    queue = InProcessQueue(
        max_backlog_tiles=settings.max_backlog_tiles,
        assumed_tiles_per_s=settings.assumed_tiles_per_s,
        result_ttl_s=settings.result_ttl_s,
        idempotency_ttl_s=settings.idempotency_ttl_s,
        heartbeat_timeout_s=max(10.0, 5 * settings.worker_heartbeat_s),
        result_store_bytes=settings.result_store_bytes,
        sweep_interval_s=settings.result_sweep_s,
    )
    return create_app(settings, queue, WorkerThread(lambda: load_model(settings), queue, settings))


def app_from_env() -> FastAPI:
    """uvicorn factory: settings from RSD_* / REDIS_URL in this process's environment."""
    logging.basicConfig(level=logging.INFO)
    return build_app(ServiceSettings())
