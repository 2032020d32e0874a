"""The composition root (serving.md "Queue: one interface, two transports"): every transport, the app
and the embedded worker are built here from the settings, and nowhere else.

- `inprocess_queue(settings)`: the embedded mode's queue (API and worker thread in one process).
- `redis_api_queue(settings)`: an API replica's side of Redis Streams (asyncio, no torch).
- `redis_worker_queue(settings, model)`: a worker process's side of one model's stream (blocking;
  service.worker_process uses it).
- `build_app(settings)`: with REDIS_URL an API replica, without it the embedded mode (one worker thread
  per served model, serving.md "Models"). The model code is imported only inside the embedded branch,
  so an API replica never loads torch.

`uvicorn --factory service.main:app_from_env` builds the app from the environment in each process.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

from service.settings import ServiceSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from service.queue.inprocess import InProcessQueue
    from service.queue.redis import RedisApiQueue
    from service.queue.redis_worker import RedisWorkerQueue

log = logging.getLogger(__name__)


def inprocess_queue(settings: ServiceSettings) -> InProcessQueue:
    from service.queue.inprocess import InProcessQueue

    return InProcessQueue(
        max_backlog_tiles=settings.max_backlog_tiles,
        assumed_tiles_per_s=settings.assumed_tiles_per_s,
        result_ttl_s=settings.result_ttl_s,
        idempotency_ttl_s=settings.idempotency_ttl_s,
        heartbeat_timeout_s=max(10.0, 5 * settings.worker_heartbeat_s),
        result_store_bytes=settings.result_store_bytes,
        sweep_interval_s=settings.result_sweep_s,
        heap_trim=settings.heap_trim,
        models=tuple(settings.model_dirs),
    )


def redis_api_queue(settings: ServiceSettings) -> RedisApiQueue:
    from service.queue.redis import RedisApiQueue

    return RedisApiQueue(settings)


def redis_worker_queue(settings: ServiceSettings, model: str) -> RedisWorkerQueue:
    """The worker side of one model's stream (serving.md "Models")."""
    from service.queue.redis_worker import RedisWorkerQueue

    if settings.redis_url is None:
        raise ValueError("rsd worker needs REDIS_URL (the embedded mode runs its worker inside `rsd serve`)")
    return RedisWorkerQueue(settings, model)


def build_app(settings: ServiceSettings | None = None) -> FastAPI:
    from service.api import create_app

    settings = settings or ServiceSettings()
    if settings.redis_url is not None:
        return create_app(settings, redis_api_queue(settings))
    from service.embedded import WorkerThread, WorkerThreads
    from service.model_loading import load_model

    queue = inprocess_queue(settings)
    threads = [
        WorkerThread(partial(load_model, settings, directory), queue.for_model(name), settings, name)
        for name, directory in settings.model_dirs.items()
    ]
    return create_app(settings, queue, WorkerThreads(threads))


def app_from_env() -> FastAPI:
    """uvicorn factory: settings from RSD_* / REDIS_URL in this process's environment."""
    logging.basicConfig(level=logging.INFO)
    return build_app(ServiceSettings())
