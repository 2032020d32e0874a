"""The parity judgement on synthetic outputs: code flips are counted apart, limits are applied."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model_export.verify import compare, parity_tiles


def _reference(n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.uniform(-1, 1, (n, 3, 8, 8)).astype(np.float32), rng.integers(0, 64, (n, 2, 2)).astype(np.int32)


def test_a_flipped_tile_is_counted_not_folded_into_max_abs() -> None:
    sr, codes = _reference()
    other_sr, other_codes = sr.copy(), codes.copy()
    other_sr[0] += 2e-4
    other_sr[2, :, :4, :4] += 0.5  # a 4x4 patch decoded from another code
    other_codes[2, 0, 0] += 1
    record = compare("b", (sr, codes), {3: (other_sr, other_codes)}, 1e-3, False, 30.0)
    assert record.passed and record.code_flip_fraction == pytest.approx(1 / 3)
    assert record.max_abs == pytest.approx(2e-4, rel=1e-3)
    assert record.psnr_db is not None and record.psnr_db < 40  # the flip does show in the PSNR


def test_every_tile_flipped_fails_full_precision() -> None:
    sr, codes = _reference()
    record = compare("b", (sr, codes), {3: (sr, codes + 1)}, 1e-3, False, 30.0)
    assert not record.passed and record.max_abs is None and record.code_flip_fraction == 1.0


def test_each_batch_run_is_compared_with_its_own_tiles() -> None:
    sr, codes = _reference()
    batch1 = (sr[:1] + 5e-3, codes[:1])  # the lone run is off, the batched one exact
    record = compare("b", (sr, codes), {1: batch1, 3: (sr, codes)}, 1e-3, False, 30.0)
    assert not record.passed and record.max_abs == pytest.approx(5e-3, rel=1e-3)
    assert record.batch_sizes == [1, 3]


def test_reduced_precision_is_judged_by_psnr() -> None:
    sr, codes = _reference()
    noisy = sr + np.float32(0.01)  # MSE 1e-4 -> PSNR 10 log10(4 / 1e-4) = 46 dB
    record = compare("b", (sr, codes), {3: (noisy, codes)}, 1e-3, True, 40.0)
    assert record.passed and record.criterion == "psnr"
    assert record.psnr_db == pytest.approx(10 * math.log10(4 / 1e-4), abs=0.01)
    assert not compare("b", (sr, codes), {3: (noisy, codes)}, 1e-3, True, 50.0).passed


def test_identical_outputs_report_no_psnr() -> None:
    sr, codes = _reference()
    record = compare("b", (sr, codes), {3: (sr, codes)}, 1e-3, True, 30.0)
    assert record.passed and record.psnr_db is None and record.max_abs == 0.0


def test_parity_tiles_are_seeded_and_in_range() -> None:
    tiles, seeds = parity_tiles(32, 4, seed=3)
    again, seeds_again = parity_tiles(32, 4, seed=3)
    assert tiles.shape == (4, 3, 32, 32) and tiles.dtype == np.float32
    assert tiles.min() >= -1.0 and tiles.max() <= 1.0
    np.testing.assert_array_equal(tiles, again)
    assert seeds == seeds_again and len(set(seeds)) == 4
