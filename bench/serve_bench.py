"""Serving overhead benchmark: HTTP + queue + batching vs the same backend called directly.

    .venv/bin/python bench/serve_bench.py [--model DIR] [--tile 32] [--batch 4] [--window 20] [--rounds 3]
    .venv/bin/python bench/serve_bench.py --simulated-device-ms-per-tile 3 --uploads photos

The second form measures the worker's device busy fraction on a simulated device instead
(bench/device_sim.py: the pipelined worker against the serial one, in one run).

1. Direct: this process loads the model and runs the work the service does per image (decode, cut into
   tiles, run the tiles in batches of `--batch` across images, blend, encode) as fast as it can.
2. Service: `python -m service serve` (embedded mode, the same model, RSD_MAX_BATCH_TILES=--batch) on a
   free port, driven closed-loop by `--concurrency` clients over HTTP (saturation), and by one client
   sending one request at a time (low load: the added latency).
Short direct and service windows alternate `--rounds` times so that the drift of a shared machine hits
both; the ratio is total service throughput / total direct throughput (and the median of the paired
window ratios). Low-load latency alternates single direct and single HTTP requests; the added latency
is the median of the paired differences. Prints the numbers, writes JSON and a PNG plot.
Not a test: numbers depend on the machine. Ratios, not absolute times, are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rsd.imagefile import encode_image, read_image  # noqa: E402
from rsd.pipeline import finish_image, prepare_image  # noqa: E402


def make_images(count: int, size: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
        images.append(buffer.getvalue())
    return images


def direct_batch(upscaler: Any, images: list[bytes], seeds: list[int], tile: int, overlap: int, batch: int) -> None:
    """What the worker does for a set of images, without HTTP or a queue: tiles batched across images."""
    decoded = [read_image(data) for data in images]
    prepared = [
        prepare_image(d.rgb, s, tile, overlap, upscaler.spec.lr_multiple) for d, s in zip(decoded, seeds, strict=True)
    ]
    tiles = np.concatenate([p.tiles for p in prepared])
    tile_seeds = [seed for p in prepared for seed in p.seeds]
    outputs = np.concatenate(
        [upscaler.run(tiles[i : i + batch], tile_seeds[i : i + batch]) for i in range(0, len(tile_seeds), batch)]
    )
    start = 0
    for d, p in zip(decoded, prepared, strict=True):
        n = len(p.seeds)
        encode_image(finish_image(outputs[start : start + n], p), d, "png", 90)
        start += n


def direct_window(
    upscaler, images: list[bytes], tile: int, overlap: int, batch: int, window_s: float
) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process) over whole batches of `batch`
    images (one tile each at the default size)."""
    done, index = 0, 0
    started, cpu_started = time.perf_counter(), time.process_time()
    while time.perf_counter() - started < window_s:
        group = [images[(index + k) % len(images)] for k in range(batch)]
        direct_batch(upscaler, group, list(range(index, index + batch)), tile, overlap, batch)
        done += batch
        index += batch
    return done / (time.perf_counter() - started), done / (time.process_time() - cpu_started)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def direct_latency(upscaler: Any, data: bytes, seed: int, tile: int, overlap: int, batch: int) -> float:
    started = time.perf_counter()
    direct_batch(upscaler, [data], [seed], tile, overlap, batch)
    return time.perf_counter() - started


async def service_window(
    base: str, images: list[bytes], concurrency: int, window_s: float, tile: int, server_pid: int
) -> tuple[float, float, list[dict[str, float]]]:
    """Closed loop: `concurrency` clients each send the next request when the last returns, for
    `window_s`. Completions come in bursts (one per batch), so the rate is measured between the first
    and the last completion: completions after the first burst / time between them. Also returns
    images per CPU second of the server process over the same run."""
    timings: list[dict[str, float]] = []
    completions: list[float] = []
    stop_at = time.perf_counter() + window_s

    async def client(index: int, http: httpx.AsyncClient) -> None:
        i = index
        while time.perf_counter() < stop_at:
            data = images[i % len(images)]
            response = await http.post(
                "/upscale", files={"image": ("x.png", data, "image/png")}, params={"seed": i, "tile": tile}
            )
            response.raise_for_status()
            completions.append(time.perf_counter())
            timings.append(_server_timing(response.headers.get("server-timing", "")))
            i += concurrency

    cpu_started = process_cpu_s(server_pid)
    async with httpx.AsyncClient(base_url=base, timeout=600) as http:
        await asyncio.gather(*(client(k, http) for k in range(concurrency)))
    cpu_rate = len(completions) / max(process_cpu_s(server_pid) - cpu_started, 1e-9)
    completions.sort()
    first_burst_end = completions[0] + 0.05  # requests finished by one batch land within milliseconds
    later = [t for t in completions if t > first_burst_end]
    if not later:
        return 0.0, cpu_rate, timings
    return len(later) / (later[-1] - completions[0]), cpu_rate, timings


def service_latency(http: httpx.Client, data: bytes, seed: int, tile: int) -> tuple[float, dict[str, float]]:
    """(client-side latency, the server's Server-Timing parts) of one request on an idle server, over a
    kept-alive connection (a new httpx client per request would add its own set-up time)."""
    started = time.perf_counter()
    files = {"image": ("x.png", data, "image/png")}
    response = http.post("/upscale", files=files, params={"seed": seed, "tile": tile})
    response.raise_for_status()
    return time.perf_counter() - started, _server_timing(response.headers.get("server-timing", ""))


def _server_timing(header: str) -> dict[str, float]:
    parts = {}
    for item in header.split(","):
        name, _, value = item.strip().partition(";dur=")
        if value:
            parts[name] = float(value) / 1000
    return parts


def start_server(
    model: Path, batch: int, fixed_batch: int, threads: int | None, log_path: Path
) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "RSD_MAX_BATCH_TILES": str(batch),
        "RSD_FIXED_BATCH": str(fixed_batch),
        "REDIS_URL": "",
        "RSD_WARMUP": "all",
    }
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["RSD_TORCH_THREADS"] = str(threads)
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the server process
    server = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port), "--model", str(model)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if server.poll() is not None:
            raise RuntimeError(f"the server exited; see {log_path}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return server, base
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    server.kill()
    raise TimeoutError("the server did not become ready")


def plot(results: dict, path: Path) -> None:  # type: ignore[type-arg]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    rounds = range(1, len(results["direct_images_per_s"]) + 1)
    left.plot(rounds, results["direct_images_per_s"], "o-", label="direct (same backend, same batching)")
    left.plot(rounds, results["service_images_per_s"], "s-", label="HTTP + queue (closed loop)")
    left.set(
        xlabel="round", ylabel="images / s", title=f"saturation throughput, ratio {results['throughput_ratio']:.3f}"
    )
    left.set_ylim(bottom=0)
    left.legend()
    bins = np.linspace(0, max(results["service_latency_s"] + results["direct_latency_s"]) * 1.05, 30)
    right.hist(results["direct_latency_s"], bins=bins, alpha=0.6, label="direct")
    right.hist(results["service_latency_s"], bins=bins, alpha=0.6, label="HTTP + queue")
    right.set(xlabel="latency (s), one request at a time", ylabel="requests",
              title=f"low load: median added {results['median_added_latency_ms']:.1f} ms")  # fmt: skip
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "rsd-tiny")
    parser.add_argument("--tile", type=int, default=32)
    parser.add_argument("--size", type=int, default=32, help="LR image side (pixels)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument(
        "--fixed-batch", type=int, default=1, help="the service's RSD_FIXED_BATCH (its CPU default is 1)"
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--window", type=float, default=20.0, help="seconds per measurement window")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--latency-requests", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch threads, here and in the server")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    busy = parser.add_argument_group("device busy fraction, simulated device (bench/device_sim.py)")
    busy.add_argument("--simulated-device-ms-per-tile", type=float, default=None, help="run the busy-fraction bench")
    busy.add_argument("--uploads", choices=["photos"], default="photos", help="JPEG photos 256-1024 px")
    busy.add_argument("--busy-rounds", type=int, default=3, help="alternating new/old windows")
    busy.add_argument("--busy-window", type=float, default=20.0, help="measured seconds per window")
    busy.add_argument("--busy-warmup", type=float, default=5.0, help="saturated seconds before each window")
    args = parser.parse_args()
    if args.simulated_device_ms_per_tile is not None:
        from device_sim import run_busy_bench  # bench/ is this script's folder, first on sys.path

        run_busy_bench(
            args.simulated_device_ms_per_tile, args.busy_rounds, args.busy_window, args.busy_warmup, args.out
        )
        return
    if not (args.model / "spec.json").is_file():
        raise SystemExit(f"{args.model}: no model artifact (make tiny-model, or pass --model DIR)")
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    from rsd.backends import load_upscaler

    if args.threads is not None:
        torch.set_num_threads(args.threads)

    args.out.mkdir(parents=True, exist_ok=True)
    images = make_images(args.images, args.size)
    upscaler = load_upscaler(args.model)
    overlap = min(upscaler.spec.default_overlap, args.tile // 2)
    for n in range(1, args.batch + 1):  # first calls per batch shape are slow (kernel selection): not measured
        upscaler.run(np.zeros((n, 3, args.tile, args.tile), np.float32), list(range(n)))
    server_log = Path(tempfile.gettempdir()) / "serve_bench_server.log"
    server, base = start_server(args.model, args.batch, args.fixed_batch, args.threads, server_log)
    try:
        asyncio.run(service_window(base, images, args.concurrency, 5.0, args.tile, server.pid))  # warm-up
        direct_rates, service_rates, direct_cpu, service_cpu, timings = [], [], [], [], []
        # windows alternate, so that the load of a shared machine hits both sides alike
        for round_index in range(args.rounds):
            rate, cpu_rate = direct_window(upscaler, images, args.tile, overlap, args.batch, args.window)
            direct_rates.append(rate)
            direct_cpu.append(cpu_rate)
            rate, cpu_rate, round_timings = asyncio.run(
                service_window(base, images, args.concurrency, args.window, args.tile, server.pid)
            )
            service_rates.append(rate)
            service_cpu.append(cpu_rate)
            timings += round_timings
            print(
                f"round {round_index + 1}: direct {direct_rates[-1]:.3f} img/s ({direct_cpu[-1]:.3f} img/cpu-s), "
                f"service {service_rates[-1]:.3f} img/s ({service_cpu[-1]:.3f} img/cpu-s)",
                flush=True,
            )
        direct_lat, service_lat, low_load_timings = [], [], []
        with httpx.Client(base_url=base, timeout=600) as http:
            http.get("/healthz")
            for i in range(args.latency_requests):  # one request at a time, alternating
                data = images[i % len(images)]
                direct_lat.append(direct_latency(upscaler, data, i, args.tile, overlap, args.batch))
                latency, parts = service_latency(http, data, i, args.tile)
                service_lat.append(latency)
                low_load_timings.append(parts)
    finally:
        server.terminate()
        server.wait(30)
    results = {
        "model": str(args.model), "tile": args.tile, "image_size": args.size, "batch": args.batch,
        "concurrency": args.concurrency, "window_s": args.window, "backend": upscaler.name,
        "direct_images_per_s": direct_rates, "service_images_per_s": service_rates,
        "throughput_ratio": sum(service_rates) / sum(direct_rates),
        "paired_ratio_median": statistics.median(s / d for s, d in zip(service_rates, direct_rates, strict=True)),
        "direct_images_per_cpu_s": direct_cpu, "service_images_per_cpu_s": service_cpu,
        "cpu_efficiency_ratio": sum(service_cpu) / sum(direct_cpu),
        "direct_latency_s": direct_lat, "service_latency_s": service_lat,
        "median_added_latency_ms": 1000 * statistics.median(
            s - d for s, d in zip(service_lat, direct_lat, strict=True)
        ),
        "saturation_server_queue_s_median": statistics.median(t.get("queue", 0.0) for t in timings),
        "saturation_server_compute_s_median": statistics.median(t.get("compute", 0.0) for t in timings),
        "low_load_server_timing_s_median": {
            part: statistics.median(t.get(part, 0.0) for t in low_load_timings)
            for part in ("queue", "compute", "encode")
        },
        "cpus": os.cpu_count(), "load_average": os.getloadavg(), "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    (args.out / "serve_bench.json").write_text(json.dumps(results, indent=2))
    plot(results, args.out / "serve_bench.png")
    print(f"direct   median {statistics.median(direct_rates):.3f} images/s   {direct_rates}")
    print(f"service  median {statistics.median(service_rates):.3f} images/s   {service_rates}")
    print(f"per CPU second (server process vs direct): ratio {results['cpu_efficiency_ratio']:.3f}")
    print(
        f"throughput ratio service/direct: {results['throughput_ratio']:.3f} (all windows), "
        f"{results['paired_ratio_median']:.3f} (median of paired windows)"
    )
    direct_ms, service_ms = 1000 * statistics.median(direct_lat), 1000 * statistics.median(service_lat)
    print(
        f"low load median latency: direct {direct_ms:.1f} ms, service {service_ms:.1f} ms, "
        f"added {results['median_added_latency_ms']:.1f} ms"
    )
    print(f"low load server-side medians (s): {results['low_load_server_timing_s_median']}")
    print(f"wrote {args.out / 'serve_bench.json'} and {args.out / 'serve_bench.png'}")


if __name__ == "__main__":
    main()
