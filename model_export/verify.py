"""Parity of every available backend against torch fp32: same tiles, same seeds (architecture.md invariant 2).

Each backend runs the tiles at every batch size asked (batch 1 is the first tile alone, batch k the first
k tiles in one call, all from the same file), and is compared with one torch fp32 run:

- `max_abs`: max |sr - sr_fp32| on the [-1, 1] image over the tiles whose VQ codes all agree with
  torch fp32. A quantisation tie (two codebook entries nearly equidistant, method.md 3) flips a code
  and changes a 4x4 output patch by far more than rounding noise, so those tiles are counted
  (`code_flip_fraction`) rather than folded into the max.
- `psnr_db`: over all tiles (peak-to-peak 2).

Full-precision backends pass when `max_abs <= tolerance` (default 1e-3); reduced-precision ones (fp16,
bf16) when `psnr_db >= min_psnr`. The records go into `export.json` (ONNX files) or the engine's
metadata JSON (TensorRT engines).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from rsd.backends.base import Upscaler
from rsd.backends.exported import (
    ParityRecord,
    engine_file_name,
    export_dir,
    onnx_file_name,
    read_engine_meta,
    read_export_index,
    write_engine_meta,
    write_export_record,
)
from rsd.backends.torch_backend import TorchUpscaler
from rsd.kinds import DTYPES, ONNX_DTYPES, OnnxDType


@dataclass(frozen=True)
class Candidate:
    """A backend to verify: how to build it, how to judge it, where its record goes."""

    name: str
    make: Callable[[], Upscaler]
    reduced_precision: bool
    #: ("onnx", file) -> the export.json beside it; ("engine", file) -> the engine's metadata; None: printed only
    record: tuple[Literal["onnx", "engine"], Path] | None


def parity_tiles(tile: int, count: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """(count, 3, tile, tile) float32 in [-1, 1]: blocky random images plus texture; one seed per tile."""
    rng = np.random.default_rng(seed)
    block = max(1, tile // 8)
    coarse = rng.uniform(-0.8, 0.8, size=(count, 3, tile // block, tile // block))
    tiles = np.repeat(np.repeat(coarse, block, axis=2), block, axis=3)
    tiles = tiles + rng.normal(0.0, 0.1, size=tiles.shape)
    seeds = [int(s) for s in rng.integers(0, 2**62, size=count)]
    return np.clip(tiles, -1.0, 1.0).astype(np.float32), seeds


def psnr_db(a: np.ndarray, b: np.ndarray) -> float | None:
    """PSNR of two [-1, 1] images (peak-to-peak 2); None when they are identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return None if mse == 0.0 else 10.0 * math.log10(4.0 / mse)


def compare(
    name: str,
    reference: tuple[np.ndarray, np.ndarray],
    runs: dict[int, tuple[np.ndarray, np.ndarray]],
    tolerance: float,
    reduced_precision: bool,
    min_psnr: float,
) -> ParityRecord:
    """Judge a backend's runs {batch: (sr, codes)} against the torch fp32 reference (sr, codes)."""
    ref_sr, ref_codes = reference
    count = len(ref_sr)
    flipped = np.zeros(count, dtype=bool)
    worst = np.zeros(count)
    squared, values = 0.0, 0
    for batch, (sr, codes) in runs.items():
        flipped[:batch] |= (codes != ref_codes[:batch]).reshape(batch, -1).any(axis=1)
        diff = np.abs(sr.astype(np.float64) - ref_sr[:batch])
        worst[:batch] = np.maximum(worst[:batch], diff.reshape(batch, -1).max(axis=1))
        squared += float((diff**2).sum())
        values += diff.size
    clean = ~flipped
    max_abs = float(worst[clean].max()) if clean.any() else None
    psnr = None if squared == 0.0 else 10.0 * math.log10(4.0 / (squared / values))
    if reduced_precision:
        passed = psnr is None or psnr >= min_psnr
    else:
        passed = max_abs is not None and max_abs <= tolerance
    return ParityRecord(
        backend=name,
        tiles=count,
        batch_sizes=sorted(runs),
        max_abs=max_abs,
        psnr_db=psnr,
        code_flip_fraction=float(flipped.mean()),
        criterion="psnr" if reduced_precision else "max_abs",
        limit=min_psnr if reduced_precision else tolerance,
        passed=passed,
    )


def reference_run(model_dir: str | Path, lq: np.ndarray, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """torch fp32 eager on CPU: (sr, codes) for all tiles in one batch."""
    torch_fp32 = TorchUpscaler(model_dir, device="cpu", dtype="fp32")
    try:
        sr, codes = torch_fp32.run_with_codes(lq, seeds)
    finally:
        torch_fp32.close()
    assert codes is not None
    return sr, codes


def verify(
    model_dir: str | Path,
    tile: int,
    candidates: Sequence[Candidate],
    tiles: int = 3,
    batch_sizes: Sequence[int] = (1, 3),
    seed: int = 0,
    tolerance: float = 1e-3,
    min_psnr: float = 30.0,
) -> list[ParityRecord]:
    """Run every candidate on the same tiles and seeds, judge it, and write its record. Returns the records."""
    if not batch_sizes or min(batch_sizes) < 1 or max(batch_sizes) > tiles:
        raise ValueError(f"batch sizes {list(batch_sizes)} must be in 1..tiles={tiles}")
    lq, seeds = parity_tiles(tile, tiles, seed)
    reference = reference_run(model_dir, lq, seeds)
    records = []
    for candidate in candidates:
        runner = candidate.make()
        try:
            runs = {}
            for batch in sorted(set(batch_sizes)):
                sr, codes = runner.run_with_codes(lq[:batch], seeds[:batch])
                assert codes is not None
                runs[batch] = (sr, codes)
        finally:
            runner.close()
        record = compare(candidate.name, reference, runs, tolerance, candidate.reduced_precision, min_psnr)
        _store(candidate, record)
        records.append(record)
    return records


def _store(candidate: Candidate, record: ParityRecord) -> None:
    if candidate.record is None:
        return
    kind, path = candidate.record
    if kind == "onnx":
        index = read_export_index(path.parent)
        if path.name in index.files:
            entry = index.files[path.name]
            entry.parity[record.backend] = record
            write_export_record(path.parent, entry)
    else:
        meta = read_engine_meta(path)
        meta.parity[record.backend] = record
        write_engine_meta(path, meta)


def candidate(name: str, model_dir: Path, tile: int, device: str = "cpu", threads: int | None = None) -> Candidate:
    """The backend variant `name` (model_export.variants) as a verification candidate.

    `device` is where torch variants run; GPU variants (onnxruntime-cuda/-tensorrt, tensorrt) use CUDA.
    """
    from model_export.variants import make_variant

    parts = name.split("-")
    record: tuple[Literal["onnx", "engine"], Path] | None = None
    folder = export_dir(model_dir)
    on_gpu = parts[0] == "tensorrt" or parts[1:2] in (["cuda"], ["tensorrt"])
    if parts[0] == "onnxruntime":
        record = ("onnx", folder / onnx_file_name(tile, "fp16" if "fp16" in parts else "fp32"))
    elif parts[0] == "tensorrt":
        record = ("engine", folder / engine_file_name(tile, parts[1:2]))
    run_on = (device if device.startswith("cuda") else "cuda") if on_gpu else device
    reduced = any(p in ("fp16", "bf16") for p in parts)
    return Candidate(name, lambda: make_variant(name, model_dir, tile, run_on, threads), reduced, record)


def onnx_file_candidate(model_dir: Path, tile: int, path: Path, dtype: OnnxDType) -> Candidate:
    """The onnxruntime CPU run of an ONNX file wherever it was written (`rsd export onnx --out`); its
    parity goes into the export.json beside the file."""
    from rsd.backends.onnxruntime_backend import OnnxRuntimeUpscaler

    def make() -> Upscaler:
        return OnnxRuntimeUpscaler(model_dir, tile, provider="cpu", dtype=dtype, onnx_path=path)

    return Candidate(f"onnxruntime-{dtype}", make, dtype == "fp16", ("onnx", path))


def available_variants(model_dir: Path, tile: int) -> list[str]:
    """Every backend variant that can run `tile` here without building anything: onnxruntime on each
    provider it offers for each exported ONNX file, and each TensorRT engine when TensorRT is present."""
    import importlib.util

    folder = export_dir(model_dir)
    try:
        import onnxruntime

        providers = set(onnxruntime.get_available_providers())
    except ImportError:
        providers = set()
    found = []
    for dtype in ONNX_DTYPES:
        if not (folder / onnx_file_name(tile, dtype)).is_file():
            continue
        if "CPUExecutionProvider" in providers:
            found.append(f"onnxruntime-{dtype}")
        if "CUDAExecutionProvider" in providers:
            found.append(f"onnxruntime-cuda-{dtype}")
    if importlib.util.find_spec("tensorrt") is not None:
        found += [f"tensorrt-{p}" for p in DTYPES if (folder / engine_file_name(tile, [p])).is_file()]
    return found
