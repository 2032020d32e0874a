"""The embedded worker (serving.md "Queue: one interface, two transports"): `rsd serve` without Redis
runs the model workers in threads of the API process, on the in-process queue (composed in service.main):
one WorkerThread per served model (serving.md "Models"), started and stopped together by WorkerThreads."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
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

    def __init__(
        self, load: Callable[[], Upscaler], queue: WorkerQueue, settings: ServiceSettings, model: str | None = None
    ) -> None:
        self._load = load
        self._queue = queue
        self._settings = settings
        self.model = model
        self._stop = threading.Event()
        name = "rsd-worker" if model is None else f"rsd-worker-{model}"
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.worker: Worker | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        try:
            upscaler = self._load()
        except Exception as exc:
            self.error = exc
            log.exception("the model %s could not be loaded", self.model or "")
            return
        keeper: Keeper | None = None
        try:
            self.worker = Worker(self._queue, upscaler, self._settings, self.model)
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

    def request_stop(self) -> None:
        """Stop claiming; the jobs in hand finish (stop() waits for that)."""
        self._stop.set()

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)


class WorkerThreads:
    """The embedded mode's workers, one per model: started together, stopped together (in parallel, so
    a stop waits for the slowest drain, not their sum)."""

    def __init__(self, threads: Sequence[WorkerThread]) -> None:
        self.threads = list(threads)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self, timeout_s: float) -> None:
        for thread in self.threads:
            thread.request_stop()
        for thread in self.threads:
            thread.stop(timeout_s)
