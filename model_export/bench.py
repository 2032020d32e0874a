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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model_export.variants import BASELINE, make_variant
from model_export.verify import parity_tiles, psnr_db
from rsd.backends.base import Upscaler
from rsd.kinds import check_positive_int, is_positive_int
from rsd.spec import read_spec

if TYPE_CHECKING:
    from model_export.steps_bench import StepsRow


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


@dataclass(frozen=True)
class BatchTiming:
    """One backend at one batch size: best and median of the rounds, throughput, peak memory."""

    seconds: float
    median_seconds: float
    ms_per_tile: float
    tiles_per_s: float
    peak_mib: float
    runs: tuple[float, ...]

    @classmethod
    def from_runs(cls, batch: int, runs: Sequence[float], peak_bytes: int) -> BatchTiming:
        seconds = min(runs)  # best of the rounds: on a shared machine interference only ever adds time
        return cls(
            seconds=seconds,
            median_seconds=statistics.median(runs),
            ms_per_tile=1000 * seconds / batch,
            tiles_per_s=batch / seconds,
            peak_mib=peak_bytes / 2**20,
            runs=tuple(runs),
        )


@dataclass
class BackendResult:
    """One backend over every batch size; `psnr_db` against torch fp32 (None: identical)."""

    batches: dict[int, BatchTiming]
    psnr_db: float | None
    #: resident memory the backend added when built (weights, session, engine)
    load_mib: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "batches": {batch: asdict(row) for batch, row in self.batches.items()},
            "psnr_db": self.psnr_db,
            "load_mib": self.load_mib,
        }


@dataclass(frozen=True)
class TeacherRatio:
    """One-step vs the 15-step teacher, torch fp32 eager, batch 1."""

    one_step_s: float
    teacher_s: float
    speed_ratio: float
    flop_ratio: float
    one_step_gflops: float
    teacher_gflops: float


@dataclass(frozen=True)
class BenchConfig:
    """What `rsd bench` measures: which artifact, tile, variants, batch sizes, rounds, where it writes."""

    model_dir: Path
    tile: int
    variants: tuple[str, ...] = ()
    batches: tuple[int, ...] = (1, 2, 4, 8)
    repeats: int = 3
    device: str = "cpu"
    #: torch intra-op threads during the run (None: leave torch's setting)
    threads: int | None = None
    #: also compare with the artifact's 15-step teacher
    teacher: bool = True
    #: also measure the 1 / 4 / 15-step table (model_export.steps_bench)
    steps: bool = True
    out_dir: Path = Path("bench/results")

    def __post_init__(self) -> None:
        for name, value in (("tile", self.tile), ("repeats", self.repeats)):
            check_positive_int(name, value)
        if not self.batches or not all(map(is_positive_int, self.batches)):
            raise ValueError(f"batches must be positive ints, got {list(self.batches)}")
        if self.threads is not None:
            check_positive_int("threads", self.threads)


@dataclass
class BenchReport:
    """The JSON document `rsd bench` writes (`to_json`), filled as the run goes."""

    config: BenchConfig
    model_name: str
    torch_version: str
    backends: dict[str, BackendResult] = field(default_factory=dict)
    load_average: tuple[float, float, float] | None = None
    teacher: TeacherRatio | None = None
    steps: list[StepsRow] | None = None

    @property
    def stem(self) -> str:
        return f"bench_{self.model_name}_{self.config.tile}"

    @property
    def title(self) -> str:
        c = self.config
        return f"{self.model_name}, LR tile {c.tile} -> {4 * c.tile}px, {c.device}, threads={c.threads}"

    def to_json(self) -> dict[str, Any]:
        c = self.config
        document: dict[str, Any] = {
            "model": str(c.model_dir),
            "tile": c.tile,
            "device": c.device,
            "threads": c.threads,
            "batches": list(c.batches),
            "repeats": c.repeats,
            "torch_version": self.torch_version,
            "backends": {name: result.to_json() for name, result in self.backends.items()},
        }
        if self.load_average is not None:
            document["load_average"] = list(self.load_average)
        if c.teacher:
            document["teacher"] = None if self.teacher is None else asdict(self.teacher)
        if self.steps is not None:
            document["steps"] = [asdict(row) for row in self.steps]
        return document


def measure_backends(
    runners: Mapping[str, Upscaler], lq: np.ndarray, seeds: list[int], batches: Sequence[int], repeats: int, device: str
) -> dict[str, BackendResult]:
    """One BackendResult per runner: warm-up, then `repeats` interleaved rounds."""
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
    return {
        name: BackendResult(
            batches={b: BatchTiming.from_runs(b, times[name, b], memory[name, b]) for b in batches},
            psnr_db=psnr_db(outputs[name], reference),
        )
        for name in runners
    }


def teacher_ratio(model_dir: Path, tile: int, device: str, repeats: int) -> TeacherRatio | None:
    """One-step vs 15-step teacher, torch fp32 eager, batch 1: time ratio and FLOP ratio (None: no teacher)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from rsd.noise import draw_noise_batch
    from rsd.onestep import OneStepSR
    from rsd.sampler import TeacherSampler

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
    return TeacherRatio(
        one_step_s=seconds["one_step"],
        teacher_s=seconds["teacher"],
        speed_ratio=seconds["teacher"] / seconds["one_step"],
        flop_ratio=flops["teacher"] / flops["one_step"],
        one_step_gflops=flops["one_step"] / 1e9,
        teacher_gflops=flops["teacher"] / 1e9,
    )


def format_table(results: Mapping[str, BackendResult], batches: Sequence[int]) -> str:
    base = results[BASELINE].batches
    lines = [
        f"{'backend':28s} {'batch':>5s} {'ms/tile':>9s} {'tiles/s':>8s} {'vs fp32':>8s} "
        f"{'load MiB':>8s} {'peak MiB':>9s} {'PSNR dB':>8s}"
    ]
    for name, result in results.items():
        psnr = result.psnr_db
        psnr_text = "exact" if psnr is None else f"{psnr:.1f}"
        for batch in batches:
            row = result.batches[batch]
            speedup = row.tiles_per_s / base[batch].tiles_per_s
            lines.append(
                f"{name:28s} {batch:5d} {row.ms_per_tile:9.1f} {row.tiles_per_s:8.3f} "
                f"{speedup:7.2f}x {result.load_mib:8.0f} {row.peak_mib:9.0f} {psnr_text:>8s}"
            )
    return "\n".join(lines)


def plot(results: Mapping[str, BackendResult], batches: Sequence[int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, result in results.items():
        ax.plot(list(batches), [result.batches[b].tiles_per_s for b in batches], marker="o", label=name)
    ax.set_xlabel("batch size (tiles per call)")
    ax.set_ylabel("tiles / s")
    ax.set_xticks(list(batches))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_bench(config: BenchConfig) -> BenchReport:
    """Measure, print the table, write JSON + PNG into `config.out_dir`; returns the report.

    The backend table is printed and saved before the (long) teacher comparison starts.
    """
    import torch

    report = BenchReport(config, read_spec(config.model_dir).name, torch.__version__)
    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        report.backends = measure_variants(config)
        report.load_average = os.getloadavg()
        print(report.title)
        print(format_table(report.backends, config.batches), flush=True)
        _save(report)
        if config.teacher:
            report.teacher = ratio = teacher_ratio(config.model_dir, config.tile, config.device, config.repeats)
            if ratio is not None:
                print(
                    f"15-step teacher / one-step time ratio: {ratio.speed_ratio:.2f}x "
                    f"(FLOP ratio {ratio.flop_ratio:.2f}x; one-step {ratio.one_step_gflops:.0f} GFLOP, "
                    f"teacher {ratio.teacher_gflops:.0f} GFLOP)"
                )
                _save(report)
        if config.steps:
            report.steps = run_steps_table(config, report.model_name)
            _save(report)
    finally:
        torch.set_num_threads(previous_threads)
    return report


def run_steps_table(config: BenchConfig, model_name: str) -> list[StepsRow]:
    """Print the 1 / 4 / 15-step table (model_export.steps_bench) and plot it next to the report."""
    from model_export.steps_bench import format_steps_table, plot_steps, steps_table

    c = config
    rows = steps_table(c.model_dir, c.tile, c.device, c.repeats)
    print(format_steps_table(rows, c.tile), flush=True)
    stem = c.out_dir / f"steps_{model_name}_{c.tile}"
    plot_steps(rows, stem.with_suffix(".png"), f"steps vs one step, LR tile {c.tile}, {c.device}")
    return rows


def measure_variants(config: BenchConfig) -> dict[str, BackendResult]:
    """Build every variant (torch fp32 first, the baseline), measure them side by side, release them."""
    c = config
    runners, load_mib = {}, {}
    for name in [BASELINE, *[v for v in c.variants if v != BASELINE]]:
        before = PeakRss.current()
        runners[name] = make_variant(name, c.model_dir, c.tile, c.device, c.threads)
        load_mib[name] = (PeakRss.current() - before) / 2**20  # weights / session / engine resident
    lq, seeds = parity_tiles(c.tile, max(c.batches), seed=0)
    try:
        results = measure_backends(runners, lq, seeds, c.batches, c.repeats, c.device)
    finally:
        for runner in runners.values():
            runner.close()
    for name, mib in load_mib.items():
        results[name].load_mib = mib
    return results


def _save(report: BenchReport) -> None:
    out_dir = report.config.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{report.stem}.json").write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n")
    plot(report.backends, report.config.batches, out_dir / f"{report.stem}.png", report.title)
    print(f"wrote {out_dir / (report.stem + '.json')} and {report.stem}.png", flush=True)
