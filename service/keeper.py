"""The worker's keeper thread: heartbeats and lease refresh (serving.md "Worker loop", "Failure" table).

From its own thread, so that a long batch or a slow encode never makes a live worker look dead: every
`heartbeat_s` it tells the queue the worker is alive (readiness, throughput for Retry-After), and with a
lease (Redis mode) it refreshes the leases of every job in hand (claimed, queued for the device,
computing or finishing) every lease/3.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from service.jobs import ClaimedJob
from service.queue.base import WorkerQueue

log = logging.getLogger(__name__)


class KeptWorker(Protocol):
    """What the keeper needs of a worker (service.worker.Worker)."""

    queue: WorkerQueue

    def beat(self) -> None: ...

    def in_hand(self) -> list[ClaimedJob]: ...


class Keeper(threading.Thread):
    """Heartbeats every `heartbeat_s`; with `lease_s`, refreshes the leases of the jobs in hand every lease/3."""

    def __init__(self, worker: KeptWorker, heartbeat_s: float, lease_s: float | None) -> None:
        super().__init__(name="rsd-worker-keeper", daemon=True)
        self._worker = worker
        self._heartbeat_s = heartbeat_s
        self._refresh_s = None if lease_s is None else lease_s / 3
        self.halt = threading.Event()

    def run(self) -> None:
        last_refresh = time.monotonic()
        period = self._heartbeat_s if self._refresh_s is None else min(self._heartbeat_s, self._refresh_s)
        while not self.halt.wait(period):
            self._worker.beat()
            if self._refresh_s is None or time.monotonic() - last_refresh < self._refresh_s:
                continue
            last_refresh = time.monotonic()
            jobs = self._worker.in_hand()
            if jobs:
                try:
                    self._worker.queue.keepalive(jobs)
                except Exception as exc:
                    log.warning("lease refresh failed: %s", exc)
