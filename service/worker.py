"""The model worker: owns the Upscaler, nothing else (architecture.md invariant 5; serving.md "Worker loop").

Loop: claim up to k live jobs; decode and cut each into tiles (rsd.pipeline.prepare_image); let the
pure batching policy pick the next batch of tiles across jobs; run it; when a job has all its tiles,
blend (finish_image), encode and complete it. Batching never changes a result: a tile's output depends
only on its pixels and its seed.

Out of memory (or any error in a batch): the batch is split in halves and retried, so a bad tile fails
its own job only; after an out-of-memory the batch cap stays halved. SIGTERM: stop claiming, finish the
jobs in hand, exit. A keeper thread heartbeats (readiness, throughput for Retry-After) and, in Redis
mode, refreshes the leases of the jobs in hand, whatever the length of a batch.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rsd.imagefile import DecodedImage, ImageError, encode_image, read_image
from rsd.pipeline import PreparedImage, finish_image, prepare_image, run_tiles
from service import metrics
from service.batching import BatchSlice, PendingTiles, next_batch
from service.jobs import CONTENT_TYPES, ClaimedJob, JobResult
from service.queue.base import WorkerQueue
from service.settings import ServiceSettings
from service.uploads import image_limits

if TYPE_CHECKING:  # the worker runs any Upscaler; importing the ABC would import torch for nothing
    from rsd.backends.base import Upscaler

log = logging.getLogger(__name__)


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, torch.cuda.OutOfMemoryError (a RuntimeError subclass) and backends' OOM messages."""
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


@dataclass
class _Active:
    """A job in hand: its decoded image, its tiles and the outputs computed so far."""

    job: ClaimedJob
    decoded: DecodedImage
    prepared: PreparedImage
    ready_at: float
    outputs: list[np.ndarray | None] = field(default_factory=list)
    batched: int = 0
    computed: int = 0
    compute_s: float = 0.0
    queue_s: float = 0.0


class Worker:
    """Runs jobs from a WorkerQueue on an Upscaler. `run(stop)` blocks until `stop` is set and idle."""

    def __init__(self, queue: WorkerQueue, upscaler: Upscaler, settings: ServiceSettings) -> None:
        self.queue = queue
        self.upscaler = upscaler
        self.settings = settings
        self.batch_cap = settings.max_batch_tiles
        self.fixed_batch = settings.fixed_batch
        self.tiles_per_s = 0.0
        self.ready = False
        self._limits = image_limits(settings, upscaler.spec.scale)
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def warm_up(self) -> None:
        """Run batches before answering ready (first-call allocations, kernel selection per shape).

        "one": a single tile at the default tile size; "all": every batch size up to max_batch_tiles at
        every tile size of the spec.
        """
        spec = self.upscaler.spec
        tiles = spec.tiles if self.settings.warmup == "all" else [spec.default_tile]
        for tile in tiles:  # every call runs exactly fixed_batch tiles, so that is the only shape
            self.upscaler.run(np.zeros((self.fixed_batch, 3, tile, tile), dtype=np.float32), [0] * self.fixed_batch)
        self.ready = True
        self.beat()

    def run(self, stop: threading.Event) -> None:
        while not (stop.is_set() and not self._active):
            try:
                self.step(stop.is_set())
            except Exception:  # the queue backend failed (Redis down): keep the process, retry
                log.exception("worker step failed; retrying in 1 s")
                stop.wait(1.0)

    def in_hand(self) -> list[ClaimedJob]:
        with self._lock:
            return [active.job for active in self._active.values()]

    def beat(self) -> None:
        """Tell the queue this worker is alive (and ready, and how fast); never raises."""
        try:
            self.queue.heartbeat(self.ready, self.tiles_per_s)
        except Exception as exc:
            log.warning("heartbeat failed: %s", exc)

    # ------------------------------------------------------------------ one iteration
    def step(self, stopping: bool) -> None:
        settings = self.settings
        pending = [
            PendingTiles(job_id, a.batched, len(a.prepared.seeds), a.ready_at, a.job.params.tile)
            for job_id, a in self._active.items()
        ]
        delay = 0.0 if stopping else settings.max_batch_delay_s
        decision = next_batch(pending, self.batch_cap, delay, time.monotonic())
        room = settings.claim_max_jobs - len(self._active)
        if not decision.take and not stopping and room > 0:
            wait = decision.wait_s if self._active else settings.claim_block_s
            for job in self.queue.claim(room, wait):
                self._admit(job)
            return
        if not decision.take:
            decision = next_batch(pending, self.batch_cap, 0.0, time.monotonic())
        if decision.take:
            self._run_batch(decision.take)

    def _admit(self, job: ClaimedJob) -> None:
        """Decode and tile a claimed job; input errors fail that job only."""
        params = job.params
        try:
            decoded = read_image(job.data, self._limits)
            prepared = prepare_image(
                decoded.rgb, params.seed, params.tile, params.overlap, self.upscaler.spec.lr_multiple
            )
        except ImageError as exc:
            self.queue.fail(job, exc.code, str(exc))
            return
        except ValueError as exc:
            self.queue.fail(job, "invalid_job", str(exc))
            return
        active = _Active(job, decoded, prepared, time.monotonic(), queue_s=max(0.0, time.time() - job.created))
        active.outputs = [None] * len(prepared.seeds)
        with self._lock:
            self._active[job.id] = active

    def _drop(self, job_id: str) -> None:
        with self._lock:
            self._active.pop(job_id, None)

    def _run_batch(self, take: Sequence[BatchSlice]) -> None:
        live = self.queue.live([self._active[s.job_id].job for s in take])
        for job_id in {s.job_id for s in take} - live:
            self._drop(job_id)  # expired or cancelled: never computed
        take = [s for s in take if s.job_id in live]
        if not take:
            return
        owners = [(s.job_id, i) for s in take for i in range(s.start, s.stop)]
        tiles = np.concatenate([self._active[s.job_id].prepared.tiles[s.start : s.stop] for s in take])
        seeds = [self._active[job_id].prepared.seeds[i] for job_id, i in owners]
        for s in take:
            self._active[s.job_id].batched = s.stop
        started = time.perf_counter()
        outputs = self._run_split(tiles, seeds)
        elapsed = time.perf_counter() - started
        self._account(len(owners), elapsed)
        failed: dict[str, BaseException] = {}
        for (job_id, index), output in zip(owners, outputs, strict=True):
            if isinstance(output, BaseException):
                failed.setdefault(job_id, output)
                continue
            active = self._active[job_id]
            active.outputs[index] = output
            active.computed += 1
        for s in take:
            self._active[s.job_id].compute_s += elapsed
            done, total = self._active[s.job_id].computed, len(self._active[s.job_id].outputs)
            self.queue.report_progress(s.job_id, done, total, (total - done) / max(self.tiles_per_s, 1e-6))
        for job_id, exc in failed.items():
            self.queue.fail(self._active[job_id].job, "compute_failed", f"the model failed on a tile: {exc}")
            self._drop(job_id)
        for job_id in {s.job_id for s in take} - failed.keys():
            active = self._active[job_id]
            if active.computed == len(active.outputs):
                self._finish(active)

    def _run_split(self, tiles: np.ndarray, seeds: list[int]) -> list[np.ndarray | BaseException]:
        """Run a batch; on failure retry its halves (OOM: serving.md), down to single tiles."""
        try:
            return list(run_tiles(self.upscaler, tiles, seeds, self.fixed_batch))
        except Exception as exc:
            if len(seeds) == 1:
                log.error("a tile failed alone: %s", exc)
                return [exc]
            if is_out_of_memory(exc):
                self.batch_cap = max(1, len(seeds) // 2)
                self.fixed_batch = max(1, min(self.fixed_batch, self.batch_cap))
                log.warning("out of memory at %d tiles; batch cap now %d", len(seeds), self.batch_cap)
            half = len(seeds) // 2
            return self._run_split(tiles[:half], seeds[:half]) + self._run_split(tiles[half:], seeds[half:])

    def _account(self, n_tiles: int, elapsed: float) -> None:
        metrics.BATCH_COMPUTE.labels(backend=self.upscaler.name).observe(elapsed)
        metrics.BATCH_SIZE.observe(n_tiles)
        metrics.TILES.inc(n_tiles)
        rate = n_tiles / max(elapsed, 1e-6)
        self.tiles_per_s = rate if self.tiles_per_s == 0 else 0.8 * self.tiles_per_s + 0.2 * rate

    def _finish(self, active: _Active) -> None:
        job = active.job
        self._drop(job.id)
        try:
            sr_rgb = finish_image(np.stack(active.outputs), active.prepared, self.upscaler.spec.scale)  # type: ignore[arg-type]
            started = time.perf_counter()
            data = encode_image(sr_rgb, active.decoded, job.params.format, job.params.quality)
            encode_s = time.perf_counter() - started
        except (ValueError, OSError) as exc:
            self.queue.fail(job, "encode_failed", f"the result cannot be encoded: {exc}")
            return
        result = JobResult(
            data=data,
            content_type=CONTENT_TYPES[job.params.format],
            width=int(sr_rgb.shape[1]),
            height=int(sr_rgb.shape[0]),
            queue_s=active.queue_s,
            compute_s=active.compute_s,
            encode_s=encode_s,
        )
        if not self.queue.complete(job, result):
            log.info("job %s had already ended; its duplicate result was discarded", job.id)


class Keeper(threading.Thread):
    """Heartbeats every `heartbeat_s` and, with a lease (Redis mode), refreshes the leases of the jobs
    in hand every lease/3, from its own thread: a long batch must not look like a dead worker."""

    def __init__(self, worker: Worker, heartbeat_s: float, lease_s: float | None) -> None:
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


class WorkerThread:
    """The embedded worker: loads the model in its own thread (the API answers /healthz meanwhile)."""

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


def load_model(settings: ServiceSettings) -> Upscaler:
    from rsd.backends import load_upscaler

    if settings.torch_threads is not None and settings.backend == "torch":
        import torch

        torch.set_num_threads(settings.torch_threads)

    log.info("loading %s (%s, %s, %s)", settings.model_dir, settings.backend, settings.device, settings.dtype)
    return load_upscaler(settings.model_dir, settings.backend, settings.device, settings.dtype)


def run_worker(settings: ServiceSettings, upscaler: Upscaler | None = None, metrics_port: int | None = None) -> None:
    """A Redis Streams worker process until SIGTERM/SIGINT: stop claiming, finish the jobs in hand, exit."""
    from service.queue.redis_worker import RedisWorkerQueue

    if settings.redis_url is None:
        raise ValueError("rsd worker needs REDIS_URL (the embedded mode runs its worker inside `rsd serve`)")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if metrics_port is not None:
        metrics.serve_metrics(metrics_port)
    queue = RedisWorkerQueue(
        settings.redis_url,
        consumer=settings.instance,
        prefix=settings.redis_prefix,
        lease_s=settings.lease_s,
        max_attempts=settings.max_attempts,
        result_ttl_s=settings.result_ttl_s,
        timeout_s=settings.redis_timeout_s,
        block_s=settings.claim_block_s,
    )
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
