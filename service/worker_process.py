"""The worker process's entry point (`rsd worker`; serving.md "Worker loop", "Failure" table).

A Redis Streams worker until SIGTERM/SIGINT: stop claiming, finish the jobs in hand, exit 0. The
transport comes from the composition root (service.main), the model from service.model_loading.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
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
    """Serve jobs from Redis until a signal: one Worker per model of the settings (RSD_MODELS, else
    RSD_MODEL), each on its model's stream (serving.md "Models"). `upscaler` replaces the default
    model's weights (tests). A model that fails to load stops the process with its error."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if metrics_port is not None:
        metrics.serve_metrics(metrics_port)
    errors: list[BaseException] = []

    def serve(name: str, model_dir: Path, given: Upscaler | None) -> None:
        try:
            _serve_model(settings, name, model_dir, given, stop)
        except BaseException as exc:
            log.exception("the worker of model %s stopped", name)
            errors.append(exc)
            stop.set()  # one model down takes the process down: the orchestrator restarts it whole

    models = list(settings.model_dirs.items())
    threads = [
        threading.Thread(target=serve, args=(name, path, upscaler if i == 0 else None), name=f"rsd-worker-{name}")
        for i, (name, path) in enumerate(models)
    ]
    try:
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(0.2)  # a timed join keeps the main thread free for the signal handlers
    finally:
        metrics.mark_process_dead()
    if errors:
        raise errors[0]


def _serve_model(
    settings: ServiceSettings, name: str, model_dir: Path, upscaler: Upscaler | None, stop: threading.Event
) -> None:
    queue = redis_worker_queue(settings, name)
    while not stop.is_set():
        try:
            queue.prepare()
            break
        except Exception as exc:  # Redis not up yet: wait for it rather than crash-loop
            log.warning("Redis not reachable (%s); retrying", exc)
            stop.wait(1.0)
    upscaler = upscaler or load_model(settings, model_dir)
    worker = Worker(queue, upscaler, settings, name)
    keeper = Keeper(worker, settings.worker_heartbeat_s, settings.lease_s)
    try:
        worker.warm_up()
        keeper.start()
        log.info("worker %s ready for model %s", queue.consumer, name)
        started = time.monotonic()
        worker.run(stop)
        log.info("worker %s (model %s) stopping after %.0f s", queue.consumer, name, time.monotonic() - started)
    finally:
        keeper.halt.set()
        queue.close()
        upscaler.close()
