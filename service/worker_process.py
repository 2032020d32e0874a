"""The worker process's entry point (`rsd worker`; serving.md "Worker loop", "Failure" table).

A Redis Streams worker until SIGTERM/SIGINT: stop claiming, finish the jobs in hand, exit 0. The
transport comes from the composition root (service.main), the model from service.model_loading.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import TYPE_CHECKING

from service import metrics
from service.keeper import Keeper
from service.main import redis_worker_queue
from service.model_loading import load_model
from service.settings import ServiceSettings
from service.worker import Worker

if TYPE_CHECKING:
    from rsd.backends.base import Upscaler

log = logging.getLogger(__name__)


def run_worker(settings: ServiceSettings, upscaler: Upscaler | None = None, metrics_port: int | None = None) -> None:
    """Serve jobs from Redis until a signal; `upscaler` replaces the model named by the settings (tests)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    queue = redis_worker_queue(settings)
    if metrics_port is not None:
        metrics.serve_metrics(metrics_port)
    while not stop.is_set():
        try:
            queue.prepare()
            break
        except Exception as exc:  # Redis not up yet: wait for it rather than crash-loop
            log.warning("Redis not reachable (%s); retrying", exc)
            stop.wait(1.0)
    upscaler = upscaler or load_model(settings)
    worker = Worker(queue, upscaler, settings)
    keeper = Keeper(worker, settings.worker_heartbeat_s, settings.lease_s)
    try:
        worker.warm_up()
        keeper.start()
        log.info("worker %s ready", queue.consumer)
        started = time.monotonic()
        worker.run(stop)
        log.info("worker %s stopping after %.0f s", queue.consumer, time.monotonic() - started)
    finally:
        keeper.halt.set()
        queue.close()
        upscaler.close()
        metrics.mark_process_dead()
