"""`rsd bench`: latency and tiles/s per backend and dtype, one-step vs 15-step, memory.

Memory columns: `load MiB` is the resident memory a backend adds when built (weights, session, engine);
`peak MiB` the resident growth during one call (activations; on CUDA, torch's max allocated bytes).

Backends are measured side by side in one run, interleaved round by round (every backend at every batch
size, then again), so that load from other processes on a shared machine hits them alike; each figure is
the best of the rounds (interference only adds time; the medians are in the JSON). Report the ratios.
Every backend sees the same tiles and seeds; its output is compared with torch fp32 eager (PSNR,
peak-to-peak 2 on [-1, 1]). Writes a JSON file and a PNG plot.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from model_export.variants import BASELINE, Runner, make_variant
from model_export.verify import parity_tiles, psnr_db


class PeakRss:
    """Peak resident memory of this process while the block runs, above its level on entry (Linux /proc)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def current() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0

    def _sample(self, base: int) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, self.current() - base)

    def __enter__(self) -> PeakRss:
        base = self.current()
        self._thread = threading.Thread(target=self._sample, args=(base,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _cuda_peak(device: str, reset: bool) -> int:
    if not device.startswith("cuda"):
        return 0
    import torch

    if reset:
        torch.cuda.reset_peak_memory_stats()
        return 0
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def measure_backends(
    runners: dict[str, Runner], lq: np.ndarray, seeds: list[int], batches: Sequence[int], repeats: int, device: str
) -> dict[str, dict[str, Any]]:
    """{backend: {"batches": {b: {...}}, "psnr_db": ...}}: warm-up, then `repeats` interleaved rounds."""
    outputs: dict[str, np.ndarray] = {}
    top = max(batches)
    for name, runner in runners.items():  # warm-up: compiles, allocates, tunes
        for batch in batches:
            out = runner.run(lq[:batch], seeds[:batch])
            if batch == top:
                outputs[name] = out
    times: dict[tuple[str, int], list[float]] = {(n, b): [] for n in runners for b in batches}
    memory: dict[tuple[str, int], int] = dict.fromkeys(times, 0)
    for _ in range(repeats):
        for batch in batches:
            for name, runner in runners.items():
                _cuda_peak(device, reset=True)
                with PeakRss() as rss:
                    times[name, batch].append(_timed(partial(runner.run, lq[:batch], seeds[:batch])))
                memory[name, batch] = max(memory[name, batch], rss.peak_bytes, _cuda_peak(device, reset=False))
    reference = outputs[BASELINE]
    results: dict[str, dict[str, Any]] = {}
    for name in runners:
        rows = {}
        for batch in batches:
            # best of the rounds: on a shared machine interference only ever adds time
            seconds = min(times[name, batch])
            rows[batch] = {
                "seconds": seconds,
                "median_seconds": statistics.median(times[name, batch]),
                "ms_per_tile": 1000 * seconds / batch,
                "tiles_per_s": batch / seconds,
                "peak_mib": memory[name, batch] / 2**20,
                "runs": times[name, batch],
            }
        results[name] = {"batches": rows, "psnr_db": psnr_db(outputs[name], reference)}
    return results


def teacher_ratio(model_dir: Path, tile: int, device: str, repeats: int) -> dict[str, float] | None:
    """One-step vs 15-step teacher, torch fp32 eager, batch 1: time ratio and FLOP ratio (None: no teacher)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from rsd.noise import draw_noise_batch
    from rsd.onestep import OneStepSR
    from rsd.sampler import TeacherSampler
    from rsd.spec import read_spec

    if read_spec(model_dir).teacher is None:
        return None
    onestep = OneStepSR.from_artifact(model_dir, device=device)
    teacher = TeacherSampler.from_artifact(model_dir, device=device)
    lq_np, seeds = parity_tiles(tile, 1, 1)
    lq = torch.from_numpy(lq_np).to(device)
    calls = {
        "one_step": (onestep, torch.from_numpy(draw_noise_batch(seeds, onestep.noise_channels, tile, tile))),
        "teacher": (teacher, torch.from_numpy(draw_noise_batch(seeds, teacher.noise_channels, tile, tile))),
    }
    flops, seconds = {}, {}
    with torch.inference_mode():
        for name, (module, noise) in calls.items():
            with FlopCounterMode(display=False) as counter:  # doubles as the warm-up
                module(lq, noise.to(device))
            flops[name] = counter.get_total_flops()
        samples: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(repeats):
            for name, (module, noise) in calls.items():
                samples[name].append(_timed(partial(module, lq, noise.to(device))))
        seconds = {name: min(s) for name, s in samples.items()}
    return {
        "one_step_s": seconds["one_step"],
        "teacher_s": seconds["teacher"],
        "speed_ratio": seconds["teacher"] / seconds["one_step"],
        "flop_ratio": flops["teacher"] / flops["one_step"],
        "one_step_gflops": flops["one_step"] / 1e9,
        "teacher_gflops": flops["teacher"] / 1e9,
    }


def format_table(results: dict[str, dict[str, Any]], batches: Sequence[int]) -> str:
    base = results[BASELINE]["batches"]
    lines = [
        f"{'backend':28s} {'batch':>5s} {'ms/tile':>9s} {'tiles/s':>8s} {'vs fp32':>8s} "
        f"{'load MiB':>8s} {'peak MiB':>9s} {'PSNR dB':>8s}"
    ]
    for name, result in results.items():
        psnr = result["psnr_db"]
        psnr_text = "exact" if psnr is None else f"{psnr:.1f}"
        for batch in batches:
            row = result["batches"][batch]
            speedup = row["tiles_per_s"] / base[batch]["tiles_per_s"]
            lines.append(
                f"{name:28s} {batch:5d} {row['ms_per_tile']:9.1f} {row['tiles_per_s']:8.3f} "
                f"{speedup:7.2f}x {result.get('load_mib', 0.0):8.0f} {row['peak_mib']:9.0f} {psnr_text:>8s}"
            )
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]], batches: Sequence[int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, result in results.items():
        ax.plot(list(batches), [result["batches"][b]["tiles_per_s"] for b in batches], marker="o", label=name)
    ax.set_xlabel("batch size (tiles per call)")
    ax.set_ylabel("tiles / s")
    ax.set_xticks(list(batches))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_bench(
    model_dir: Path,
    tile: int,
    variants: Sequence[str],
    batches: Sequence[int],
    repeats: int,
    device: str,
    threads: int | None,
    teacher: bool,
    out_dir: Path,
    steps: bool = True,
) -> dict[str, Any]:
    """Measure, print the table, write JSON + PNG into `out_dir`; returns the JSON document.

    The backend table is printed and saved before the (long) teacher comparison starts.
    """
    import torch

    spec_name = json.loads((model_dir / "spec.json").read_text()).get("name", model_dir.name)
    title = f"{spec_name}, LR tile {tile} -> {4 * tile}px, {device}, threads={threads}"
    document: dict[str, Any] = {
        "model": str(model_dir),
        "tile": tile,
        "device": device,
        "threads": threads,
        "batches": list(batches),
        "repeats": repeats,
        "torch_version": torch.__version__,
    }
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        document["backends"] = measure_variants(model_dir, tile, variants, batches, repeats, device, threads)
        document["load_average"] = os.getloadavg()
        print(title)
        print(format_table(document["backends"], batches), flush=True)
        _save(document, out_dir, f"bench_{spec_name}_{tile}", title)
        if teacher:
            document["teacher"] = ratio = teacher_ratio(model_dir, tile, device, repeats)
            if ratio is not None:
                print(
                    f"15-step teacher / one-step time ratio: {ratio['speed_ratio']:.2f}x "
                    f"(FLOP ratio {ratio['flop_ratio']:.2f}x; one-step {ratio['one_step_gflops']:.0f} GFLOP, "
                    f"teacher {ratio['teacher_gflops']:.0f} GFLOP)"
                )
                _save(document, out_dir, f"bench_{spec_name}_{tile}", title)
        if steps:
            document["steps"] = run_steps_table(model_dir, tile, device, repeats, out_dir / f"steps_{spec_name}_{tile}")
            _save(document, out_dir, f"bench_{spec_name}_{tile}", title)
    finally:
        torch.set_num_threads(previous_threads)
    return document


def run_steps_table(model_dir: Path, tile: int, device: str, repeats: int, stem: Path) -> list[dict[str, Any]]:
    """Print the 1 / 4 / 15-step table (model_export.steps_bench) and plot it to `stem`.png."""
    from dataclasses import asdict

    from model_export.steps_bench import format_steps_table, plot_steps, steps_table

    rows = steps_table(model_dir, tile, device, repeats)
    print(format_steps_table(rows, tile), flush=True)
    plot_steps(rows, stem.with_suffix(".png"), f"steps vs one step, LR tile {tile}, {device}")
    return [asdict(r) for r in rows]


def measure_variants(
    model_dir: Path,
    tile: int,
    variants: Sequence[str],
    batches: Sequence[int],
    repeats: int,
    device: str,
    threads: int | None,
) -> dict[str, dict[str, Any]]:
    """Build every variant (torch fp32 first, the baseline), measure them side by side, release them."""
    runners, load_mib = {}, {}
    for name in [BASELINE, *[v for v in variants if v != BASELINE]]:
        before = PeakRss.current()
        runners[name] = make_variant(name, model_dir, tile, device, threads)
        load_mib[name] = (PeakRss.current() - before) / 2**20  # weights / session / engine resident
    lq, seeds = parity_tiles(tile, max(batches), seed=0)
    try:
        results = measure_backends(runners, lq, seeds, batches, repeats, device)
    finally:
        for runner in runners.values():
            runner.close()
    for name, mib in load_mib.items():
        results[name]["load_mib"] = mib
    return results


def _save(document: dict[str, Any], out_dir: Path, stem: str, title: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    plot(document["backends"], document["batches"], out_dir / f"{stem}.png", title)
    print(f"wrote {out_dir / (stem + '.json')} and {stem}.png", flush=True)
