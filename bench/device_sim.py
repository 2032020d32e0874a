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

import httpx
import numpy as np
from PIL import Image

from rsd.spec import ModelSpec, read_spec

REPO = Path(__file__).resolve().parents[1]
#: upload sides (px) cycled through by the client: the realistic range of photos sent for x4
PHOTO_SIDES = (256, 384, 512, 640, 768, 1024)
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "motorcycle_left.png",
          "retina.jpg", "rocket.jpg", "ihc.png")  # fmt: skip
RESULT_FORMATS = ("png", "webp")


class SimulatedDevice:
    """An Upscaler whose run() takes `ms_per_tile` per tile of the batch; thread-safe busy accounting."""

    name = "simulated"

    def __init__(self, spec: ModelSpec, ms_per_tile: float) -> None:
        self.spec = spec
        self.seconds_per_tile = ms_per_tile / 1000
        self._lock = threading.Lock()
        self.intervals: list[tuple[float, float]] = []

    def run(self, lq_tiles: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        started = time.perf_counter()
        s = self.spec.scale
        n, c, h, w = lq_tiles.shape
        out = np.broadcast_to(lq_tiles[:, :, :, None, :, None], (n, c, h, s, w, s)).reshape(n, c, h * s, w * s)
        out = np.ascontiguousarray(out, dtype=np.float32)
        remaining = n * self.seconds_per_tile - (time.perf_counter() - started)
        if remaining > 0:
            time.sleep(remaining)
        with self._lock:
            self.intervals.append((started, time.perf_counter()))
        return out

    def busy_s(self, start: float, stop: float) -> float:
        """Seconds inside run() between perf_counter times `start` and `stop`."""
        with self._lock:
            return sum(max(0.0, min(b, stop) - max(a, start)) for a, b in self.intervals)

    def close(self) -> None:
        pass


def photo_uploads(count: int) -> list[tuple[bytes, str]]:
    """`count` (JPEG bytes, result format) pairs: sample photos at the sides of PHOTO_SIDES."""
    import skimage.data  # the train extra; its sample photos ship with the package (no download)

    folder = Path(skimage.data.__file__).parent
    uploads = []
    for i in range(count):
        side = PHOTO_SIDES[i % len(PHOTO_SIDES)]
        with Image.open(folder / PHOTOS[i % len(PHOTOS)]) as im:
            photo = im.convert("RGB")
        scale = side / max(photo.size)
        photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        photo.save(buffer, "JPEG", quality=90)
        uploads.append((buffer.getvalue(), RESULT_FORMATS[i % len(RESULT_FORMATS)]))
    return uploads


def _client(base: str, uploads: list[tuple[bytes, str]], concurrency: int, window_s: float, out: object) -> None:
    """Closed loop in its own process: `concurrency` clients, each sends the next upload when its last returns."""

    async def loop() -> tuple[int, int, list[float]]:
        done, failed, latencies = 0, 0, []
        stop_at = time.perf_counter() + window_s

        async def one(index: int, http: httpx.AsyncClient) -> None:
            nonlocal done, failed
            i = index
            while time.perf_counter() < stop_at:
                data, fmt = uploads[i % len(uploads)]
                started = time.perf_counter()
                files = {"image": ("photo.jpg", data, "image/jpeg")}
                response = await http.post("/upscale", files=files, params={"seed": i, "format": fmt})
                latencies.append(time.perf_counter() - started)
                done, failed = (done + 1, failed) if response.status_code == 200 else (done, failed + 1)
                i += concurrency

        async with httpx.AsyncClient(base_url=base, timeout=600) as http:
            await asyncio.gather(*(one(k, http) for k in range(concurrency)))
        return done, failed, latencies

    out.put(asyncio.run(loop()))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Window:
    worker: str  # "new" (pipelined) or "old" (serial)
    busy: float
    images_per_s: float
    failed: int
    wall_s: float


def measure(
    device: SimulatedDevice, uploads: list[tuple[bytes, str]], pipeline: bool, window_s: float, warmup_s: float
) -> Window:
    """One embedded server with `device`, saturated for `warmup_s` then measured for `window_s`."""
    import uvicorn

    from loadtests.local_stack import free_port
    from service.api import create_app
    from service.embedded import WorkerThread
    from service.main import inprocess_queue
    from service.settings import ServiceSettings

    settings = ServiceSettings(
        model_dir=REPO / "models" / "rsd-tiny", redis_url=None, worker_pipeline=pipeline,
        max_batch_tiles=8, fixed_batch=8, max_backlog_tiles=1_000_000, default_deadline_s=3000.0,
        max_input_pixels=1100 * 1100,
    )  # fmt: skip
    queue = inprocess_queue(settings)
    app = create_app(settings, queue, WorkerThread(lambda: device, queue, settings))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    concurrency = settings.claim_max_jobs + 4  # more jobs than the worker holds: it never runs dry
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    client = context.Process(target=_client, args=(base, uploads, concurrency, warmup_s + window_s, results))
    client.start()
    time.sleep(warmup_s)
    start = time.perf_counter()
    time.sleep(window_s)
    stop = time.perf_counter()
    busy = device.busy_s(start, stop) / (stop - start)
    done, failed, _ = results.get(timeout=600)
    client.join(60)
    server.should_exit = True
    thread.join(60)
    return Window("new" if pipeline else "old", busy, done / (warmup_s + window_s), failed, stop - start)


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
