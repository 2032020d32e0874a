"""GPU check: the official configuration with random weights on one CUDA device, in a few minutes.

    scripts/gpu_check.sh                  # on the GPU machine (installs .whl/, then runs this)
    scripts/gpu_check.sh --cpu-dry-run    # the same code on the CPU with a tiny config, in seconds

Per LR tile, dtype (fp16, bf16, weights cast once: the form CUDA graphs need, rsd/backends/torch_backend.py)
and mode (eager, CUDA graphs, rsd/backends/cuda_graphs.py), at batches 1, 4, 8: the backend's run() time,
tiles/s, peak memory, PSNR against fp32 on the device and on the CPU; the encode / UNet / decode split;
then the embedded service at saturation with 512 px photos and PNG results against the same upscaler
called directly (bench/device_sim.py; serving.md "Worker loop"). Nothing is downloaded: the weights are
random (model_export/random_artifact.py), which changes neither speed nor memory. The official net takes
LR tiles in multiples of 64 (method.md 2.4: two downsamplings x the Swin window of 8), so 96 is no
official tile; the default tiles are the spec's 64 and 128. Prints a line per stage and rewrites the
JSON (and its table) after each one, so a run cut short leaves what it measured.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from gpu_check_report import CPU_DRY_RUN, GPU_CHECK, CheckConfig, CheckReport, ServiceResult, StageRow, VariantRow  # noqa: E402

from model_export.bench import PeakRss  # noqa: E402
from model_export.random_artifact import random_weights  # noqa: E402
from model_export.verify import parity_tiles, psnr_db  # noqa: E402
from rsd.artifact import save_artifact  # noqa: E402
from rsd.backends.torch_backend import TorchUpscaler  # noqa: E402
from rsd.config import UNetConfig, VQConfig  # noqa: E402
from rsd.noise import draw_noise_batch  # noqa: E402
from rsd.spec import ModelSpec  # noqa: E402


class Run:
    """The report, the clock and the progress lines of one check."""

    def __init__(self, config: CheckConfig, report: CheckReport, outputs: list[Path]) -> None:
        self.config, self.report, self.outputs = config, report, outputs
        self.started = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def stage(self, text: str) -> None:
        print(f"[{self.elapsed:6.1f} s] {text}", flush=True)
        self.report.progress.append({"at_s": round(self.elapsed, 2), "stage": text})
        self.report.write(self.outputs)

    def has_time(self, needed_s: float, what: str) -> bool:
        if self.elapsed + needed_s <= self.config.budget_s:
            return True
        self.report.notes.append(f"{what} skipped: {needed_s:.0f} s would pass the {self.config.budget_s:.0f} s budget")
        return False


def write_model(config: CheckConfig, directory: Path) -> Path:
    """The official student + VQ-f4 with random weights (as model_export/random_artifact.py, without the
    teacher), or the dry run's tiny nets; tiles are the check's."""
    if config.model == "official":
        student, autoencoder, stds = UNetConfig(noise_channels=1), VQConfig(), (0.01, 0.0)
    else:
        from gpu_check_report import TINY_UNET, TINY_VQ

        student, autoencoder, stds = TINY_UNET, TINY_VQ, (0.05, 0.02)
    tiles = sorted(config.tiles)
    spec = ModelSpec(name=f"{config.model}-random", student=student, autoencoder=autoencoder, tiles=tiles,
                     default_tile=tiles[0], default_overlap=min(16, tiles[0] // 4))  # fmt: skip
    return save_artifact(directory, spec, random_weights(spec, 0, stds, spread_codebook=config.model == "official"))


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def release(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def time_variant(up: TorchUpscaler, row: VariantRow, lq: np.ndarray, seeds: list[int], repeats: int) -> np.ndarray:
    """Fill the row's timings and peak memory; returns the output (for the PSNR)."""
    cuda = up.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with PeakRss() as rss:
        out = up.run(lq, seeds)  # warm-up: kernel selection, and the capture of this shape's graph
        up.run(lq, seeds)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            up.run(lq, seeds)  # returns host memory: the device work is done when it returns
            times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() if cuda else rss.peak_bytes
    best = min(times)
    row.ms_per_call, row.ms_per_tile, row.tiles_per_s = 1000 * best, 1000 * best / len(lq), len(lq) / best
    row.peak_mb = peak / 1e6
    return out


def stage_times(up: TorchUpscaler, lq_np: np.ndarray, seeds: list[int], repeats: int) -> tuple[float, float, float]:
    """ms per call of encode, UNet, decode: the steps of OneStepSR.forward, on the cast weights."""
    model, dev = up.model, up.device
    lq = torch.from_numpy(lq_np).to(dev, up.dtype)
    noise = torch.from_numpy(draw_noise_batch(seeds, model.noise_channels, *lq_np.shape[2:])).to(dev, up.dtype)
    c = model.spec.student.out_channels
    with torch.inference_mode():
        z_y = model.encode_lq(lq)
        x_t = model.schedule.prior_sample(z_y, noise[:, :c])
        t = torch.full_like(lq[:, 0, 0, 0], model.schedule.T - 1, dtype=torch.long)
        xi = noise[:, c:] if model.spec.net_noise_channels else None
        x0 = model.denoiser(x_t, t, lq, xi)
        calls = (
            lambda: model.encode_lq(lq),
            lambda: model.denoiser(x_t, t, lq, xi),
            lambda: model.autoencoder.decode(x0),
        )
        best = []
        for call in calls:
            call()
            times = []
            for _ in range(repeats):
                synchronize(dev.type)
                started = time.perf_counter()
                call()
                synchronize(dev.type)
                times.append(time.perf_counter() - started)
            best.append(1000 * min(times))
    return best[0], best[1], best[2]


def measure_model(run: Run, model_dir: Path) -> None:
    cfg, report = run.config, run.report
    top, k = max(cfg.batches), cfg.cpu_reference_tiles
    inputs = {tile: parity_tiles(tile, top, seed=tile) for tile in cfg.tiles}
    cpu_ref: dict[int, np.ndarray] = {}
    device_ref: dict[int, np.ndarray] = {}
    reference = TorchUpscaler(model_dir, device=cfg.device, dtype="fp32")
    for tile, (lq, seeds) in inputs.items():
        device_ref[tile] = reference.run(lq, seeds)
    reference.close()
    release(cfg.device)
    run.stage(f"fp32 reference on {cfg.device}")
    cpu = TorchUpscaler(model_dir, device="cpu", dtype="fp32")
    for tile, (lq, seeds) in inputs.items():
        cpu_ref[tile] = cpu.run(lq[:k], seeds[:k])
        report.references[str(tile)] = psnr_db(device_ref[tile][:k], cpu_ref[tile])
    cpu.close()
    run.stage(f"fp32 reference on the CPU ({k} tiles per tile size)")
    for dtype in cfg.dtypes:
        for mode in cfg.modes:
            rows = [VariantRow(tile, dtype, mode, batch) for tile in cfg.tiles for batch in cfg.batches]
            report.variants += rows
            if mode == "graphs" and not cfg.device.startswith("cuda"):
                for row in rows:
                    row.note = "not run: CUDA graphs need a CUDA device"
                continue
            if not run.has_time(30, f"{dtype} {mode}"):
                continue
            up = TorchUpscaler(model_dir, cfg.device, dtype, cast=True, graphs="cuda" if mode == "graphs" else "none")
            for row in rows:
                lq, seeds = inputs[row.tile]
                out = time_variant(up, row, lq[: row.batch], seeds[: row.batch], cfg.repeats)
                n = min(k, row.batch)
                row.psnr_vs_device_fp32 = psnr_db(out[:n], device_ref[row.tile][:n])
                row.psnr_vs_cpu_fp32 = psnr_db(out[:n], cpu_ref[row.tile][:n])
            if mode == "eager":
                for tile in cfg.tiles:
                    for batch in sorted({1, top}):
                        lq, seeds = inputs[tile]
                        split = stage_times(up, lq[:batch], seeds[:batch], cfg.repeats)
                        report.stages.append(StageRow(tile, dtype, batch, *split))
            up.close()
            del up
            release(cfg.device)
            run.stage(f"{dtype} {mode}: tiles {list(cfg.tiles)} x batches {list(cfg.batches)}")


def photo_source(photos: Path | None) -> Path:
    """`--photos`, else scikit-image's sample photos where it is installed, else the copy that
    `scripts/gpu_check.sh --download-wheels` made (GPU_CHECK_PHOTOS, default .whl/photos)."""
    from device_sim import photo_folder

    if photos is not None:
        return photos
    try:
        return photo_folder()
    except ImportError:
        return Path(os.environ.get("GPU_CHECK_PHOTOS", REPO / ".whl" / "photos"))


def measure_service(run: Run, model_dir: Path, photos: Path | None) -> None:
    cfg, report = run.config, run.report
    try:  # the serve extra: from the .whl folder on the GPU machine (scripts/gpu_check.sh)
        import uvicorn  # noqa: F401
        from device_sim import BusyClock, measure, photo_uploads

        import service.api  # noqa: F401
        from rsd.imagefile import read_image
        from rsd.pipeline import prepare_image, run_tile_chunks
    except ImportError as exc:
        report.service_note = f"not run: {exc} ({os.environ.get('GPU_CHECK_INSTALL_NOTE', 'serve packages missing')})"
        return
    folder = photo_source(photos)
    if not folder.is_dir():
        report.service_note = f"not run: no photos at {folder} (scripts/gpu_check.sh --download-wheels copies them)"
        return
    if not run.has_time(cfg.service_window_s + cfg.service_warmup_s + cfg.direct_min_s + 30, "service"):
        report.service_note = "not run: budget (see notes)"
        return
    graphs = "cuda" if cfg.service_mode == "graphs" else "none"
    up = TorchUpscaler(model_dir, cfg.device, cfg.service_dtype, cast=True, graphs=graphs)
    tile, batch = up.spec.default_tile, cfg.service_batch
    overlap = min(up.spec.default_overlap, tile // 2)  # as the service's intake (service/intake.py)
    uploads = photo_uploads(cfg.photo_count, sides=(cfg.photo_side,), formats=("png",), folder=folder)
    prepared = [prepare_image(read_image(d).rgb, i, tile, overlap, up.spec.lr_multiple) for i, (d, _) in
                enumerate(uploads)]  # fmt: skip
    tiles = np.concatenate([p.tiles for p in prepared])
    seeds = [s for p in prepared for s in p.seeds]
    for _ in run_tile_chunks(up, tiles[:batch], seeds[:batch], batch):  # warm-up / capture
        pass
    # Direct: the device-bound rate, the tiles of every photo in batches of `batch` across photos as the
    # worker batches them (each call's outputs kept as they come, as the worker's device stage does);
    # decoding, blending and encoding are the service's CPU work around the device.
    done, started = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - started < cfg.direct_min_s:
        for _ in run_tile_chunks(up, tiles, seeds, batch):
            pass
        done += len(prepared)
    direct = done / (time.perf_counter() - started)
    run.stage(f"direct: {direct:.3f} images/s ({len(tiles) / len(prepared):.0f} tiles per photo)")
    window = measure(BusyClock(up), uploads, True, cfg.service_window_s, cfg.service_warmup_s,
                     model_dir=model_dir, batch=batch, ready_timeout_s=300.0)  # fmt: skip
    up.close()
    report.service = ServiceResult(
        f"{cfg.service_dtype} {cfg.service_mode}", tile, batch, cfg.photo_side, len(uploads), str(folder), direct,
        window.images_per_s, window.images_per_s / direct, window.busy, window.images, window.failed, window.wall_s,
    )  # fmt: skip
    report.service_note = ""


def environment(config: CheckConfig) -> dict[str, object]:
    cuda = config.device.startswith("cuda") and torch.cuda.is_available()
    return {
        "device_name": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.machine()})",
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> CheckReport:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny config on the CPU (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/gpu_check*.json)")
    parser.add_argument("--budget-s", type=float, default=None, help="skip stages that would start past this")
    parser.add_argument("--tiles", type=lambda s: tuple(int(t) for t in s.split(",")), default=None)
    parser.add_argument("--photos", type=Path, default=None, help="folder of the sample photos")
    args = parser.parse_args(argv)
    config = CPU_DRY_RUN if args.cpu_dry_run else GPU_CHECK
    config = replace(config, **{k: v for k, v in (("budget_s", args.budget_s), ("tiles", args.tiles)) if v})
    if config.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: torch sees no CUDA device (torch.cuda.is_available() is False); try --cpu-dry-run")
    name = "gpu_check_cpu_dry_run.json" if args.cpu_dry_run else "gpu_check.json"
    outputs = [args.out or REPO / "bench" / "results" / name]
    if os.environ.get("OUT"):  # the GPU machine's output folder
        outputs.append(Path(os.environ["OUT"]) / name)
    report = CheckReport(config={**asdict(config), "tiles": list(config.tiles)}, environment=environment(config))
    run = Run(config, report, outputs)
    run.stage(f"start: {report.environment['device_name']}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    with tempfile.TemporaryDirectory(prefix="rsd-gpu-check-") as tmp:
        model_dir = write_model(config, Path(tmp) / f"{config.model}-random")
        run.stage(f"random-weight {config.model} artifact written")
        measure_model(run, model_dir)
        measure_service(run, model_dir, args.photos)
        run.stage("service" if report.service else f"service: {report.service_note}")
    report.complete = True
    run.stage(f"done; wrote {', '.join(map(str, outputs))}")
    from gpu_check_report import format_table

    print(format_table(report), flush=True)
    return report


if __name__ == "__main__":
    main()
