"""The embedded worker (serving.md "Queue: one interface, two transports"): `rsd serve` without Redis
runs the model worker in a thread of the API process, on the in-process queue (composed in service.main)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from service.keeper import Keeper
from service.queue.base import WorkerQueue
from service.settings import ServiceSettings
from service.worker import Worker

if TYPE_CHECKING:
    from rsd.backends.base import Upscaler

log = logging.getLogger(__name__)


class WorkerThread:
    """Loads the model in its own thread (the API answers /healthz meanwhile), then runs the worker."""

    def __init__(self, load: Callable[[], Upscaler], queue: WorkerQueue, settings: ServiceSettings) -> None:
        self._load = load
        self._queue = queue
        self._settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="rsd-worker", daemon=True)
        self.worker: Worker | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        try:
            upscaler = self._load()
        except Exception as exc:
            self.error = exc
            log.exception("the model could not be loaded")
            return
        keeper: Keeper | None = None
        try:
            self.worker = Worker(self._queue, upscaler, self._settings)
            self.worker.warm_up()
            keeper = Keeper(self.worker, self._settings.worker_heartbeat_s, lease_s=None)
            keeper.start()
            self.worker.run(self._stop)
        except Exception as exc:
            self.error = exc
            log.exception("the embedded worker stopped")
        finally:
            if keeper is not None:
                keeper.halt.set()
            upscaler.close()

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
