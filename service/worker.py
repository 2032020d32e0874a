"""The model worker's loop: host work beside device work (serving.md "Worker loop"; architecture.md invariant 5).

Stages, each on its own threads, joined by bounded hand-offs:

    claimer (1 thread)   claims up to the free room (claim_max_jobs) whenever there is room
    intake pool          decodes, plans the tiles, derives the seeds
    scheduler (run())    owns the jobs' bookkeeping; picks the next batch (service.batching), checks
                         its jobs are still live, assembles its tiles and stages it: one batch waits
                         beside the running one, so the device never waits for the host
    device (1 thread)    owns the Upscaler: runs the staged batch (out of memory: halves, below)
    finish pool          blends, encodes and publishes a job once all its tiles are back

Only the scheduler thread touches a job's bookkeeping; the other stages post closures to its event
queue (one owner of the state). The room counts every job from its claim to its publication, so the
memory held is bounded and the keeper (service.keeper) refreshes the lease of every job in hand.
Pillow's encoders, zlib and numpy's large loops release the GIL, and the device thread waits in the
backend (a CUDA launch, a torch CPU kernel, a sleep), so plain threads overlap the stages.

`pipeline=False` (RSD_WORKER_PIPELINE=false) runs every stage inline in one thread, in series: the
worker this one replaced, kept as the benchmarks' baseline and for debugging.

Batching never changes a result: a tile's output depends only on its pixels and its seed (the fixed
batch of rsd.pipeline.run_tile_chunks). Out of memory (or any error in a batch): the batch is split in
halves and retried, so a bad tile fails its own job only; after an out-of-memory the batch cap stays
halved. Stop (SIGTERM): the claimer stops, the jobs in hand finish, run() returns.

Over 400 lines on purpose: the stages share the scheduler's state and its one-owner rule, which is
easier to check in one file than across several (the pure parts, batching and tiling, live elsewhere).
"""

from __future__ import annotations

import logging
import queue as stdqueue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from rsd.imagefile import DecodedImage, ImageError, encode_image, read_image
from rsd.outscale import output_size
from rsd.pipeline import PreparedImage, finish_image, prepare_image, run_tile_chunks
from rsd.precision import dtype_in_name
from service import metrics
from service.batching import BatchSlice, PendingTiles, next_batch
from service.jobs import CONTENT_TYPES, ClaimedJob, JobResult
from service.queue.base import WorkerQueue
from service.settings import ServiceSettings
from service.uploads import image_limits

if TYPE_CHECKING:  # the worker runs any Upscaler; importing the ABC would import torch for nothing
    from rsd.backends.base import Upscaler

log = logging.getLogger(__name__)

#: how long the scheduler sleeps when it has nothing to do and nothing can wake it sooner
IDLE_WAIT_S = 0.05


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, torch.cuda.OutOfMemoryError (a RuntimeError subclass) and backends' OOM messages."""
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


@dataclass
class _Active:
    """A job between intake and finish: its decoded image, its tiles and the outputs computed so far."""

    job: ClaimedJob
    decoded: DecodedImage
    prepared: PreparedImage
    ready_at: float
    queue_s: float
    outputs: list[np.ndarray | None] = field(default_factory=list)
    batched: int = 0
    computed: int = 0
    compute_s: float = 0.0


@dataclass(frozen=True)
class _Batch:
    """An assembled batch: which tile of which job each row is, the tiles and their seeds."""

    take: tuple[BatchSlice, ...]
    owners: list[tuple[str, int]]
    tiles: np.ndarray
    seeds: list[int]


def _logged(task: Callable[[], None]) -> None:
    """A pool task: an exception is logged (a pool would keep it in a future nobody reads)."""
    try:
        task()
    except Exception:
        log.exception("worker stage task failed")


class _Stage:
    """A pool of `threads` threads, or inline calls with `threads=0` (the serial worker)."""

    def __init__(self, name: str, threads: int) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name) if threads > 0 else None

    def submit(self, task: Callable[[], None]) -> None:
        if self._pool is None:
            task()
        else:
            self._pool.submit(_logged, task)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class Worker:
    """Runs jobs from a WorkerQueue on an Upscaler. `run(stop)` blocks until `stop` is set and idle."""

    def __init__(
        self, queue: WorkerQueue, upscaler: Upscaler, settings: ServiceSettings, model: str | None = None
    ) -> None:
        self.queue = queue
        self.upscaler = upscaler
        self.settings = settings
        #: the served model's name (serving.md "Models"): the metrics' `model` label
        self.model = model or settings.default_model
        self.pipeline = settings.worker_pipeline
        self.batch_cap = settings.max_batch_tiles
        self.fixed_batch = settings.fixed_batch
        self.tiles_per_s = 0.0
        self.ready = False
        # jobs from claim to publication (the room, the keeper's leases); any thread, under the condition
        self._hand: dict[str, ClaimedJob] = {}
        self._room = threading.Condition()
        # scheduler-thread state
        self._active: dict[str, _Active] = {}
        self._rotation: tuple[str, ...] = ()  # the batching policy's state (serving.md "Worker loop")
        self._events: stdqueue.SimpleQueue[Callable[[], None]] = stdqueue.SimpleQueue()
        self._staged: stdqueue.Queue[_Batch | None] = stdqueue.Queue(maxsize=1)
        threads = 1 if self.pipeline else 0
        self._intake = _Stage("rsd-intake", threads * settings.intake_threads)
        self._finishing = _Stage("rsd-finish", threads * settings.finish_threads)

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
        if not self.pipeline:
            self._run_serial(stop)
            return
        claimer = threading.Thread(target=self._claim_loop, args=(stop,), name="rsd-claimer", daemon=True)
        device = threading.Thread(target=self._device_loop, name="rsd-device", daemon=True)
        claimer.start()
        device.start()
        try:
            while not (stop.is_set() and not claimer.is_alive() and not self.in_hand()):
                try:
                    self._schedule(stopping=stop.is_set())
                except Exception:  # the queue backend failed (Redis down): keep the process, retry
                    log.exception("worker scheduling failed; retrying in 1 s")
                    stop.wait(1.0)
        finally:
            self._staged.put(None)
            device.join()
            claimer.join()
            self._intake.shutdown()
            self._finishing.shutdown()

    def in_hand(self) -> list[ClaimedJob]:
        with self._room:
            return list(self._hand.values())

    def beat(self) -> None:
        """Tell the queue this worker is alive (and ready, and how fast); never raises."""
        try:
            self.queue.heartbeat(self.ready, self.tiles_per_s, dtype_in_name(self.upscaler.name))
        except Exception as exc:
            log.warning("heartbeat failed: %s", exc)

    # ------------------------------------------------------------------ claiming (room)
    def _free_room(self) -> int:
        with self._room:
            return self.settings.claim_max_jobs - len(self._hand)

    def _claim(self, room: int, wait_s: float) -> None:
        jobs = self.queue.claim(room, wait_s)
        with self._room:
            self._hand.update((job.id, job) for job in jobs)
        for job in jobs:
            self._intake.submit(partial(self._admit, job))

    def _release(self, job_id: str) -> None:
        with self._room:
            self._hand.pop(job_id, None)
            self._room.notify_all()

    def _claim_loop(self, stop: threading.Event) -> None:
        """Claims whenever there is room, also while batches run (fairness: serving.md "Worker loop")."""
        while not stop.is_set():
            with self._room:
                self._room.wait_for(lambda: len(self._hand) < self.settings.claim_max_jobs, timeout=IDLE_WAIT_S)
            room = self._free_room()
            if room <= 0:
                continue
            try:
                self._claim(room, self.settings.claim_block_s)
            except Exception:
                log.exception("claiming failed; retrying in 1 s")
                stop.wait(1.0)

    # ------------------------------------------------------------------ intake (pool)
    def _admit(self, job: ClaimedJob) -> None:
        """Decode and tile a claimed job; input errors fail that job only."""
        params = job.params
        try:
            decoded = read_image(job.data, image_limits(self.settings, self.upscaler.spec.scale, params.outscale))
            prepared = prepare_image(
                decoded.rgb, params.seed, params.tile, params.overlap, self.upscaler.spec.lr_multiple
            )
        except ImageError as exc:
            self._end(job, partial(self.queue.fail, job, exc.code, str(exc)))
            return
        except Exception as exc:  # ValueError from the tile plan; anything else must not strand the job
            self._end(job, partial(self.queue.fail, job, "invalid_job", f"the image cannot be prepared: {exc}"))
            return
        active = _Active(job, decoded, prepared, time.monotonic(), queue_s=max(0.0, time.time() - job.created))
        active.outputs = [None] * len(prepared.seeds)
        self._post(partial(self._add, active))

    def _end(self, job: ClaimedJob, publish: Callable[[], object]) -> None:
        """Publish a job's end (complete or fail) and free its room, whatever the transport says."""
        try:
            publish()
        except Exception:
            log.exception("job %s: its end could not be published (it is redelivered after its lease)", job.id)
        finally:
            self._release(job.id)

    # ------------------------------------------------------------------ scheduler (one thread)
    def _post(self, event: Callable[[], None]) -> None:
        if self.pipeline:
            self._events.put(event)
        else:
            event()

    def _run_events(self, wait_s: float) -> None:
        """Run the posted events, waiting up to `wait_s` for the first."""
        try:
            event = self._events.get(timeout=wait_s) if wait_s > 0 else self._events.get_nowait()
        except stdqueue.Empty:
            return
        event()
        while True:
            try:
                event = self._events.get_nowait()
            except stdqueue.Empty:
                return
            event()

    def _add(self, active: _Active) -> None:
        self._active[active.job.id] = active

    def _decide(self, stopping: bool) -> tuple[tuple[BatchSlice, ...], float]:
        pending = [
            PendingTiles(job_id, a.batched, len(a.prepared.seeds), a.ready_at, a.job.params.tile)
            for job_id, a in self._active.items()
        ]
        delay = 0.0 if stopping else self.settings.max_batch_delay_s
        decision = next_batch(pending, self.batch_cap, delay, time.monotonic(), rotation=self._rotation)
        self._rotation = decision.rotation
        return decision.take, decision.wait_s

    def _schedule(self, stopping: bool) -> None:
        """One scheduler turn: run events; stage a batch if the device has room for one, else wait."""
        self._run_events(0.0)
        if self._staged.full():
            self._run_events(IDLE_WAIT_S)  # the device posts an event when it takes the staged batch
            return
        take, wait_s = self._decide(stopping)
        if take:
            self._stage(take)
        else:
            self._run_events(wait_s if self._active else IDLE_WAIT_S)

    def _run_serial(self, stop: threading.Event) -> None:
        """The serial worker: claim only when no batch is ready, then decode, run and finish in series."""
        while not (stop.is_set() and not self.in_hand()):
            try:
                take, wait_s = self._decide(stop.is_set())
                room = self._free_room()
                if not take and not stop.is_set() and room > 0:
                    self._claim(room, wait_s if self._active else self.settings.claim_block_s)
                    continue
                take = take or self._decide(stopping=True)[0]
                if take:
                    self._stage(take)
            except Exception:
                log.exception("worker step failed; retrying in 1 s")
                stop.wait(1.0)

    def _stage(self, take: Sequence[BatchSlice]) -> None:
        """Drop jobs that are no longer live, assemble the batch and hand it to the device."""
        live = self.queue.live([self._active[s.job_id].job for s in take])
        for job_id in {s.job_id for s in take} - live:
            self._active.pop(job_id)  # expired or cancelled: never computed; the queue has ended it
            self._release(job_id)
        take = tuple(s for s in take if s.job_id in live)
        if not take:
            return
        owners = [(s.job_id, i) for s in take for i in range(s.start, s.stop)]
        tiles = np.concatenate([self._active[s.job_id].prepared.tiles[s.start : s.stop] for s in take])
        seeds = [self._active[job_id].prepared.seeds[i] for job_id, i in owners]
        for s in take:
            self._active[s.job_id].batched = s.stop
        batch = _Batch(take, owners, tiles, seeds)
        if self.pipeline:
            self._staged.put(batch)
        else:
            self._computed(batch, *self._compute(batch))

    def _computed(self, batch: _Batch, outputs: list[np.ndarray | BaseException], elapsed: float) -> None:
        """A batch is back: store its outputs, report progress, finish or fail the jobs it completes.

        A job that ended while the batch ran (expired, cancelled or failed on an earlier batch) is gone
        from the bookkeeping: its outputs are dropped."""
        failed: dict[str, BaseException] = {}
        for (job_id, index), output in zip(batch.owners, outputs, strict=True):
            active = self._active.get(job_id)
            if active is None:
                continue
            if isinstance(output, BaseException):
                failed.setdefault(job_id, output)
                continue
            active.outputs[index] = output
            active.computed += 1
        for s in batch.take:
            if s.job_id not in self._active or s.job_id in failed:
                continue
            active = self._active[s.job_id]
            active.compute_s += elapsed
            done, total = active.computed, len(active.outputs)
            try:
                self.queue.report_progress(s.job_id, done, total, (total - done) / max(self.tiles_per_s, 1e-6))
            except Exception as exc:  # progress is advisory: never lose a job over it
                log.warning("progress of job %s not published: %s", s.job_id, exc)
        for job_id, error in failed.items():
            job = self._active.pop(job_id).job
            message = f"the model failed on a tile: {error}"
            self._finishing.submit(partial(self._end, job, partial(self.queue.fail, job, "compute_failed", message)))
        for job_id in {s.job_id for s in batch.take} - failed.keys():
            active = self._active.get(job_id)
            if active is not None and active.computed == len(active.outputs):
                self._finishing.submit(partial(self._finish, self._active.pop(job_id)))

    # ------------------------------------------------------------------ device (one thread)
    def _device_loop(self) -> None:
        while (batch := self._staged.get()) is not None:
            self._post(lambda: None)  # wake the scheduler: there is room to stage the next batch
            outputs, elapsed = self._compute(batch)
            self._post(partial(self._computed, batch, outputs, elapsed))

    def _compute(self, batch: _Batch) -> tuple[list[np.ndarray | BaseException], float]:
        started = time.perf_counter()
        outputs = self._run_split(batch.tiles, batch.seeds)
        elapsed = time.perf_counter() - started
        self._account(len(batch.seeds), elapsed)
        return outputs, elapsed

    def _run_split(self, tiles: np.ndarray, seeds: list[int]) -> list[np.ndarray | BaseException]:
        """Run a batch; on failure retry its halves (OOM: serving.md), down to single tiles."""
        try:
            # rows of each call's output as they are (no joined copy): a large copy between model calls
            # releases the GIL, and winning it back can cost the device thread several switch intervals
            # (serving.md "Worker loop")
            return [row for chunk in run_tile_chunks(self.upscaler, tiles, seeds, self.fixed_batch) for row in chunk]
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
        metrics.BATCH_COMPUTE.labels(backend=self.upscaler.name, model=self.model).observe(elapsed)
        metrics.BATCH_SIZE.labels(model=self.model).observe(n_tiles)
        metrics.TILES.labels(model=self.model).inc(n_tiles)
        rate = n_tiles / max(elapsed, 1e-6)
        self.tiles_per_s = rate if self.tiles_per_s == 0 else 0.8 * self.tiles_per_s + 0.2 * rate

    # ------------------------------------------------------------------ finish (pool)
    def _finish(self, active: _Active) -> None:
        job = active.job
        try:
            sr_rgb = finish_image(active.outputs, active.prepared, self.upscaler.spec.scale)  # type: ignore[arg-type]
            started = time.perf_counter()
            params = job.params
            data = encode_image(
                sr_rgb, active.decoded, params.format, params.quality, outscale=params.outscale,
                png_compress_level=self.settings.png_compress_level, webp_method=self.settings.webp_method,
            )  # fmt: skip
            encode_s = time.perf_counter() - started
            source = active.decoded
            height, width = output_size(source.height, source.width, params.outscale, self.upscaler.spec.scale)
        except Exception as exc:  # ValueError/OSError from the encoder; anything else must not strand the job
            self._end(job, partial(self.queue.fail, job, "encode_failed", f"the result cannot be encoded: {exc}"))
            return
        result = JobResult(
            data=data,
            content_type=CONTENT_TYPES[job.params.format],
            width=width,
            height=height,
            queue_s=active.queue_s,
            compute_s=active.compute_s,
            encode_s=encode_s,
        )
        self._end(job, partial(self._publish, job, result))

    def _publish(self, job: ClaimedJob, result: JobResult) -> None:
        if not self.queue.complete(job, result):
            log.info("job %s had already ended; its duplicate result was discarded", job.id)
