"""Whole-image tiling through a real Upscaler (issue bar 6).

Bound for multi-tile vs untiled: with a *local* x4 operator (bicubic, support 2 LR pixels) the tiled
result must equal the untiled one up to uint8 rounding wherever every contributing tile sees its pixel
at least `support` pixels from a padded border; the overlap (>= 4 LR px here) guarantees that for the
blend region, so the bound is 1 grey level everywhere. The diffusion model itself is not local (the VQ
mid-block attends globally, and each tile draws its own noise), so for it we assert determinism and
the single-tile identity exactly, and measure seams separately (docs/tiling_seam.png).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsd.backends import load_upscaler
from rsd.imageops import pad_to, to_model_range, to_uint8
from rsd.noise import tile_seed
from rsd.pipeline import run_tile_chunks, run_tiles, upscale_array
from rsd.spec import ModelSpec
from tests.factories import make_tiny_artifact, tiny_weights


class BicubicUpscaler:
    """A local x4 operator with the Upscaler call shape (test double for the tiling arithmetic)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    def run(self, lq_tiles: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        x = torch.from_numpy(lq_tiles)
        return F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1).numpy()


def _photo(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 100 * np.sin(xx / 9.0), 128 + 100 * np.cos(yy / 7.0), (xx + yy) % 256], -1)
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # fp32: the batch-size bound below is about fp32 kernel differences, not bf16 rounding
    return load_upscaler(make_tiny_artifact(tmp_path_factory.mktemp("tiny")), dtype="fp32")


def test_single_tile_equals_untiled_model_run(tiny):
    img = _photo(50, 60)  # one 64-px tile covers it
    seed = 11
    tiled = upscale_array(tiny, img, seed=seed, tile=64, overlap=16)
    padded = pad_to(to_model_range(img), 64, 64)[None]
    direct = tiny.run(padded, [tile_seed(seed, 0)])[0][:, :200, :240]
    assert np.array_equal(tiled, to_uint8(direct))


@pytest.mark.parametrize("overlap", [4, 8, 16])
def test_multi_tile_equals_untiled_for_a_local_operator(overlap):
    spec, _ = tiny_weights()
    up = BicubicUpscaler(spec)
    img = _photo(100, 90)
    untiled = upscale_array(up, img, seed=0, tile=112, overlap=0).astype(int)
    smooth = upscale_array(up, img, seed=0, tile=32, overlap=overlap, blend="smooth").astype(int)
    uniform = upscale_array(up, img, seed=0, tile=32, overlap=overlap, blend="uniform").astype(int)
    # Smooth weights vanish at a tile's inner edge, where its padded-border error lives, so the
    # result is the untiled one up to rounding. The reference's uniform average keeps half of it.
    assert np.abs(smooth - untiled).max() <= 1, f"overlap {overlap}"
    assert np.abs(smooth - untiled).sum() < np.abs(uniform - untiled).sum()


def test_pasting_without_overlap_breaks_that_bound():
    """The bound above is not vacuous: zero overlap shows the padded-border error at the seams."""
    spec, _ = tiny_weights()
    up = BicubicUpscaler(spec)
    img = _photo(100, 90)
    untiled = upscale_array(up, img, seed=0, tile=112, overlap=0).astype(int)
    tiled = upscale_array(up, img, seed=0, tile=32, overlap=0).astype(int)
    assert np.abs(tiled - untiled).max() > 1


class RecordingRunner:
    """x4 nearest neighbour that keeps every batch it was given and every array it returned."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, list[int]]] = []
        self.returned: list[np.ndarray] = []

    def run(self, lq_tiles: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        self.calls.append((lq_tiles.copy(), list(seeds)))
        self.returned.append(lq_tiles.repeat(4, axis=2).repeat(4, axis=3))
        return self.returned[-1]


def test_run_tile_chunks_pads_every_call_and_yields_its_outputs_uncopied() -> None:
    tiles = np.random.default_rng(1).uniform(-1, 1, (5, 3, 8, 8)).astype(np.float32)
    runner = RecordingRunner()
    chunks = list(run_tile_chunks(runner, tiles, [10, 11, 12, 13, 14], batch=2))
    assert [len(c) for c in chunks] == [2, 2, 1] and [len(t) for t, _ in runner.calls] == [2, 2, 2]
    assert runner.calls[-1][1] == [14, 0] and not runner.calls[-1][0][1].any()  # blank padding tile, seed 0
    for chunk, returned in zip(chunks, runner.returned, strict=True):
        assert np.shares_memory(chunk, returned)  # no copy between model calls (serving.md "Worker loop")
    assert np.array_equal(np.concatenate(chunks), run_tiles(RecordingRunner(), tiles, [10, 11, 12, 13, 14], 2))
    with pytest.raises(ValueError, match="5 tiles but 4 seeds"):
        list(run_tile_chunks(runner, tiles, [1, 2, 3, 4], batch=2))


def test_fixed_batch_makes_results_independent_of_batch_companions(tiny):
    rng = np.random.default_rng(0)
    tiles = rng.random((6, 3, 32, 32), dtype=np.float32) * 2 - 1
    alone = run_tiles(tiny, tiles[:1], [7], batch=3)
    for companions in ([1, 2], [4, 5], [3]):
        mixed = run_tiles(tiny, tiles[[0, *companions]], [7, *companions], batch=3)
        assert np.array_equal(mixed[0], alone[0])
    # the same image through different fixed batch sizes agrees to float precision, except where the
    # ~1e-6 kernel differences flip a VQ code (seen with 1 thread: 0.2% of values, up to 15 levels)
    img = _photo(70, 100)
    a = upscale_array(tiny, img, seed=5, tile=32, overlap=8, batch_size=1)
    b = upscale_array(tiny, img, seed=5, tile=32, overlap=8, batch_size=3)
    diff = np.abs(a.astype(int) - b.astype(int))
    assert (diff > 2).mean() < 0.01 and diff.mean() < 0.1, ((diff > 2).mean(), diff.mean())


def test_tile_must_fit_the_net(tiny):
    with pytest.raises(ValueError, match="multiple of 16"):
        upscale_array(tiny, _photo(20, 20), seed=0, tile=24)
    with pytest.raises(ValueError, match="overlap"):
        upscale_array(tiny, _photo(20, 20), seed=0, tile=32, overlap=32)
