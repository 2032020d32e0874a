"""Device busy fraction of the serving worker, on a simulated device (serving.md "Worker loop").

    .venv/bin/python bench/serve_bench.py --simulated-device-ms-per-tile 3 --uploads photos

`SimulatedDevice` stands in for the model on a GPU: each `run()` takes `ms_per_tile` x the tiles of
its batch, mostly asleep (a sleeping thread releases the GIL as a CUDA launch and synchronise do), and
returns x4 nearest-neighbour outputs of the right shape (photo-like content, so PNG and WebP encode
as they do on real results). The embedded service (API, in-process queue and worker, uvicorn in a
thread of this process) serves it; a closed-loop client in another process keeps it saturated with
JPEG photos of 256-1024 px (scikit-image's sample photos, resized) asking for PNG and WebP results
in turn. Busy fraction = time inside `run()` during the window / the window's wall time, for the
pipelined worker and for the serial one it replaced (RSD_WORKER_PIPELINE=false), in alternating
windows of the same run. Prints one line per window, writes JSON and a PNG, and ends with
`busy new X.XX old Y.YY` (medians).

`measure` serves any Upscaler, not only the simulated one: wrapped in a `BusyClock` (bench/gpu_check.py
serves the torch backend on CUDA with it). Its window opens only once the client's first answer has
arrived (plus `warmup_s`), so model loading, warm-up and CUDA-graph capture stay outside it, and its
throughput counts the images whose answer arrived inside the window (the client reports the times).
"""

from __future__ import annotations

import asyncio
import io
import json
import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import httpx
import numpy as np
from PIL import Image

from rsd.backends.base import Upscaler
from rsd.spec import ModelSpec, read_spec

REPO = Path(__file__).resolve().parents[1]
#: upload sides (px) cycled through by the client: the realistic range of photos sent for x4
PHOTO_SIDES = (256, 384, 512, 640, 768, 1024)
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "motorcycle_left.png",
          "retina.jpg", "rocket.jpg", "ihc.png")  # fmt: skip
RESULT_FORMATS = ("png", "webp")
TINY_MODEL = REPO / "models" / "rsd-tiny"


class BusyDevice(Protocol):
    """What `measure` serves: a tile runner that accounts the time spent inside its run()."""

    spec: ModelSpec
    name: str

    def run(self, lq_tiles: np.ndarray, seeds: Sequence[int]) -> np.ndarray: ...

    def busy_s(self, start: float, stop: float) -> float: ...

    def close(self) -> None: ...


class _BusyAccount:
    """The intervals spent inside run(), recorded thread-safely; close() releases nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.intervals: list[tuple[float, float]] = []

    def _record(self, started: float) -> None:
        with self._lock:
            self.intervals.append((started, time.perf_counter()))

    def busy_s(self, start: float, stop: float) -> float:
        """Seconds inside run() between perf_counter times `start` and `stop`."""
        with self._lock:
            return sum(max(0.0, min(b, stop) - max(a, start)) for a, b in self.intervals)

    def close(self) -> None:
        pass


class BusyClock(_BusyAccount):
    """Wraps an Upscaler: every run() is timed, so that `busy_s` says how long the device was in use.
    The caller owns the upscaler: close() here leaves it open (the embedded worker closes what it
    served, and the same upscaler is measured directly in the same run)."""

    def __init__(self, upscaler: Upscaler) -> None:
        super().__init__()
        self.upscaler = upscaler
        self.spec = upscaler.spec
        self.name = upscaler.name

    def run(self, lq_tiles: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self.upscaler.run(lq_tiles, seeds)
        finally:
            self._record(started)


class SimulatedDevice(_BusyAccount):
    """An Upscaler whose run() takes `ms_per_tile` per tile of the batch; thread-safe busy accounting."""

    name = "simulated"

    def __init__(self, spec: ModelSpec, ms_per_tile: float) -> None:
        super().__init__()
        self.spec = spec
        self.seconds_per_tile = ms_per_tile / 1000

    def run(self, lq_tiles: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        started = time.perf_counter()
        s = self.spec.scale
        n, c, h, w = lq_tiles.shape
        # x4 nearest neighbour in two contiguous passes (columns, then rows): the output a GPU would copy
        # back, at about the host cost of that copy (a strided 6-d broadcast cost 4x more CPU, which a
        # real device does not take from the host's stages)
        columns = np.repeat(lq_tiles.astype(np.float32, copy=False), s, axis=3)
        out = np.empty((n, c, h, s, w * s), dtype=np.float32)
        out[...] = columns[:, :, :, None, :]
        out = out.reshape(n, c, h * s, w * s)
        remaining = n * self.seconds_per_tile - (time.perf_counter() - started)
        if remaining > 0:
            time.sleep(remaining)
        self._record(started)
        return out


def photo_folder() -> Path:
    """scikit-image's sample photos (the train extra ships them: no download)."""
    import skimage.data

    return Path(skimage.data.__file__).parent


def photo_uploads(
    count: int,
    sides: Sequence[int] = PHOTO_SIDES,
    formats: Sequence[str] = RESULT_FORMATS,
    folder: Path | None = None,
) -> list[tuple[bytes, str]]:
    """`count` (JPEG bytes, result format) pairs: the PHOTOS of `folder` (default: scikit-image's) at
    the sides of `sides`, asking for `formats` in turn."""
    folder = photo_folder() if folder is None else folder
    uploads = []
    for i in range(count):
        side = sides[i % len(sides)]
        with Image.open(folder / PHOTOS[i % len(PHOTOS)]) as im:
            photo = im.convert("RGB")
        scale = side / max(photo.size)
        photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        photo.save(buffer, "JPEG", quality=90)
        uploads.append((buffer.getvalue(), formats[i % len(formats)]))
    return uploads


def _client(
    base: str, uploads: list[tuple[bytes, str]], concurrency: int, window_s: float, out: object, first_s: float
) -> None:
    """Closed loop in its own process: `concurrency` clients, each sends the next upload when its last
    returns, until `window_s` after the first answer (or `first_s` without one). Reports (done, failed,
    latencies, the perf_counter time of each successful answer, the first answer's time): perf_counter
    is CLOCK_MONOTONIC on Linux, one clock for every process, so the parent can place them in its window."""

    async def loop() -> tuple[int, int, list[float], list[float], float | None]:
        done, failed, latencies, finished = 0, 0, [], []
        first: float | None = None
        give_up = time.perf_counter() + first_s

        def open_() -> bool:
            return time.perf_counter() < (give_up if first is None else first + window_s)

        async def one(index: int, http: httpx.AsyncClient) -> None:
            nonlocal done, failed, first
            i = index
            while open_():
                data, fmt = uploads[i % len(uploads)]
                started = time.perf_counter()
                files = {"image": ("photo.jpg", data, "image/jpeg")}
                response = await http.post("/upscale", files=files, params={"seed": i, "format": fmt})
                now = time.perf_counter()
                first = now if first is None else first
                latencies.append(now - started)
                if response.status_code == 200:
                    done += 1
                    finished.append(now)
                else:
                    failed += 1
                i += concurrency

        async with httpx.AsyncClient(base_url=base, timeout=600) as http:
            await asyncio.gather(*(one(k, http) for k in range(concurrency)))
        return done, failed, latencies, finished, first

    out.put(asyncio.run(loop()))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Window:
    worker: str  # "new" (pipelined) or "old" (serial)
    busy: float
    images_per_s: float
    failed: int
    wall_s: float
    #: images whose answer arrived inside the window
    images: int = 0


def measure(
    device: BusyDevice,
    uploads: list[tuple[bytes, str]],
    pipeline: bool,
    window_s: float,
    warmup_s: float,
    *,
    model_dir: Path = TINY_MODEL,
    batch: int = 8,
    ready_timeout_s: float = 10.0,
) -> Window:
    """One embedded server serving `device` (whose spec is `model_dir`'s) with batches of `batch`,
    saturated; the window opens `warmup_s` after the first answer and lasts `window_s`."""
    import uvicorn

    from loadtests.local_stack import free_port
    from service.api import create_app
    from service.embedded import WorkerThread
    from service.main import inprocess_queue
    from service.settings import ServiceSettings

    settings = ServiceSettings(
        model_dir=model_dir, redis_url=None, worker_pipeline=pipeline,
        max_batch_tiles=batch, fixed_batch=batch, max_backlog_tiles=1_000_000, default_deadline_s=3000.0,
        max_input_pixels=1100 * 1100,
    )  # fmt: skip
    queue = inprocess_queue(settings)
    app = create_app(settings, queue, WorkerThread(lambda: device, queue, settings))  # type: ignore[arg-type]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    ready_by = time.perf_counter() + ready_timeout_s
    while time.perf_counter() < ready_by:  # readyz: the worker has loaded and warmed the model
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    concurrency = settings.claim_max_jobs + 4  # more jobs than the worker holds: it never runs dry
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    client_args = (base, uploads, concurrency, warmup_s + window_s, results, ready_timeout_s + 600)
    client = context.Process(target=_client, args=client_args)
    client.start()
    try:
        _, failed, _, finished, first = results.get(timeout=ready_timeout_s + 1200 + warmup_s + window_s)
    finally:
        client.join(60)
        server.should_exit = True
        thread.join(60)
    if first is None:
        raise RuntimeError(f"the service at {base} gave no answer")
    start, stop = first + warmup_s, first + warmup_s + window_s
    images = sum(start < t <= stop for t in finished)
    busy = device.busy_s(start, stop) / (stop - start)
    return Window("new" if pipeline else "old", busy, images / (stop - start), failed, stop - start, images)


def plot(windows: list[Window], ms_per_tile: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, marker in (("new", "o-"), ("old", "s-")):
        values = [w.busy for w in windows if w.worker == name]
        label = "pipelined worker" if name == "new" else "serial worker (before)"
        ax.plot(range(1, len(values) + 1), values, marker, label=f"{label}: median {statistics.median(values):.2f}")
    ax.set(xlabel="window", ylabel="device busy fraction", ylim=(0, 1.05),
           title=f"simulated device {ms_per_tile:g} ms/tile, JPEG photos 256-1024 px -> PNG/WebP")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_busy_bench(ms_per_tile: float, rounds: int, window_s: float, warmup_s: float, out: Path) -> None:
    spec = read_spec(REPO / "models" / "rsd-tiny")
    uploads = photo_uploads(len(PHOTO_SIDES) * 4)
    windows: list[Window] = []
    for round_index in range(rounds):  # alternate, so that the drift of a shared machine hits both
        for pipeline in (True, False):
            window = measure(SimulatedDevice(spec, ms_per_tile), uploads, pipeline, window_s, warmup_s)
            windows.append(window)
            print(f"round {round_index + 1} {window.worker}: busy {window.busy:.3f}, "
                  f"{window.images_per_s:.2f} images/s, {window.failed} failed", flush=True)  # fmt: skip
    new = statistics.median(w.busy for w in windows if w.worker == "new")
    old = statistics.median(w.busy for w in windows if w.worker == "old")
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "ms_per_tile": ms_per_tile, "uploads": "photos", "sides_px": PHOTO_SIDES, "formats": RESULT_FORMATS,
        "tile": spec.default_tile, "max_batch_tiles": 8, "fixed_batch": 8, "window_s": window_s,
        "busy_new": new, "busy_old": old, "windows": [asdict(w) for w in windows],
        "cpus": os.cpu_count(), "load_average": os.getloadavg(),
    }  # fmt: skip
    (out / "serve_busy.json").write_text(json.dumps(report, indent=2))
    plot(windows, ms_per_tile, out / "serve_busy.png")
    print(f"wrote {out / 'serve_busy.json'} and {out / 'serve_busy.png'}")
    print(f"busy new {new:.2f} old {old:.2f}")
