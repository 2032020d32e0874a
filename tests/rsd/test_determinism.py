"""The seed guarantee exactly as the README states it (architecture.md invariant 2), with the bundled model.

- Same (seed, backend, dtype, torch thread count): the same bytes whatever other tiles share the batches
  (a fixed batch size, as the worker runs).
- Across torch thread counts: not bytes. oneDNN splits some reductions by thread (GroupNorm on
  channels-last activations, some convolutions), which moves fp32 activations by ~1e-5; a rounded
  pixel then moves by at most 1 grey level on a tiny fraction of pixels. bf16 moves further (its
  rounding amplifies the same differences): at most 2 levels, on a large fraction of pixels.

Each thread count runs in its own interpreter: torch's intra-op pool is set once per process in the
worker too (RSD_TORCH_THREADS), and a fresh process is what a second worker is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rsd.backends import load_upscaler
from rsd.pipeline import finish_image, prepare_image, run_tiles, upscale_array

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "rsd-tiny"
SEED = 7
TILE, OVERLAP = 64, 16
DTYPES = ("fp32", "bf16")
#: the stated cross-thread bounds per dtype: (max grey levels, fraction of uint8 values that may differ).
#: Measured with 1 vs 2 threads on this image: fp32 max 1 on ~0.003%; bf16 max 2 on ~20%.
BOUNDS = {"fp32": (1, 0.001), "bf16": (2, 0.35)}

pytestmark = pytest.mark.timeout(300)


def photo(h: int = 96, w: int = 96) -> np.ndarray:
    """A smooth image with edges (a 2x2 grid of 64-px tiles with the 16-px overlap)."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 100 * np.sin(xx / 5.0), 128 + 100 * np.cos(yy / 4.0), ((xx // 12 + yy // 12) % 2) * 200], -1)
    return img.clip(0, 255).astype(np.uint8)


def upscale_with_threads(threads: int, out: Path) -> None:
    """Run in a subprocess: the photo at every dtype with `threads` torch threads, saved to `out` (.npz)."""
    import torch

    torch.set_num_threads(threads)
    images = {}
    for dtype in DTYPES:
        upscaler = load_upscaler(MODEL, "torch", "cpu", dtype)
        images[dtype] = upscale_array(upscaler, photo(), SEED, TILE, OVERLAP)
    np.savez(out, **images)


def _in_subprocess(threads: int, out: Path) -> subprocess.Popen[bytes]:
    code = f"from tests.rsd.test_determinism import upscale_with_threads as f; f({threads}, {str(out)!r})"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stderr=subprocess.PIPE)


@pytest.mark.parametrize("dtype", DTYPES)
def test_same_bytes_whatever_shares_the_batch(dtype: str) -> None:
    upscaler = load_upscaler(MODEL, "torch", "cpu", dtype)
    image = photo()
    prepared = prepare_image(image, SEED, TILE, OVERLAP, upscaler.spec.lr_multiple)
    alone = finish_image(run_tiles(upscaler, prepared.tiles, prepared.seeds, batch=2), prepared)
    assert np.array_equal(alone, upscale_array(upscaler, image, SEED, TILE, OVERLAP, batch_size=2))
    # the same tiles interleaved with another image's tiles (another seed), as the worker batches requests
    other = prepare_image(photo()[::-1].copy(), SEED + 1, TILE, OVERLAP, upscaler.spec.lr_multiple)
    n = len(prepared.seeds)
    order = [i for pair in zip(range(n), range(n, 2 * n), strict=True) for i in pair]
    tiles = np.concatenate([prepared.tiles, other.tiles])[order]
    seeds = [[*prepared.seeds, *other.seeds][i] for i in order]
    mixed = run_tiles(upscaler, tiles, seeds, batch=2)
    mine = mixed[[position for position, i in enumerate(order) if i < n]]
    assert finish_image(mine, prepared).tobytes() == alone.tobytes()


def test_thread_counts_differ_within_the_stated_bound(tmp_path: Path) -> None:
    runs = {threads: tmp_path / f"threads{threads}.npz" for threads in (1, 2)}
    started = {threads: _in_subprocess(threads, out) for threads, out in runs.items()}
    for threads, process in started.items():
        _, err = process.communicate(timeout=240)
        assert process.returncode == 0, f"{threads} thread(s): {err.decode(errors='replace')[-2000:]}"
    one, two = (np.load(runs[threads]) for threads in (1, 2))
    measured = {}
    for dtype in DTYPES:
        diff = np.abs(one[dtype].astype(int) - two[dtype].astype(int))
        measured[dtype] = (int(diff.max()), float((diff > 0).mean()))
    print("1 vs 2 torch threads (max grey levels, fraction of values):", json.dumps(measured))
    for dtype, (max_levels, fraction) in BOUNDS.items():
        assert measured[dtype][0] <= max_levels and measured[dtype][1] <= fraction, (dtype, measured[dtype])
