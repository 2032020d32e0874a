"""rsd.noise: per-tile seeds and host-side Gaussian noise, independent of batching."""

from __future__ import annotations

import numpy as np
import pytest

from rsd.noise import SEED_LIMIT, draw_noise, draw_noise_batch, random_seed, tile_seed


def test_same_seed_same_noise() -> None:
    a, b = draw_noise(1234, 4, 8, 6), draw_noise(1234, 4, 8, 6)
    assert a.shape == (4, 8, 6) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, draw_noise(1235, 4, 8, 6))


def test_noise_is_standard_normal() -> None:
    x = draw_noise(7, 1, 256, 256).astype(np.float64)
    assert abs(x.mean()) < 0.02 and abs(x.std() - 1.0) < 0.02


def test_tile_seed_is_deterministic_and_distinct() -> None:
    assert tile_seed(42, 0) == tile_seed(42, 0)
    seeds = {tile_seed(image_seed, index) for image_seed in (0, 1, 42, SEED_LIMIT - 1) for index in range(50)}
    assert len(seeds) == 200 and all(0 <= s < SEED_LIMIT for s in seeds)
    # swapping the pair must not collide (the pair is hashed, not summed)
    assert tile_seed(3, 5) != tile_seed(5, 3)
    assert not np.array_equal(draw_noise(tile_seed(9, 0), 3, 4, 4), draw_noise(tile_seed(9, 1), 3, 4, 4))


def test_batch_rows_equal_single_draws() -> None:
    seeds = [tile_seed(99, i) for i in range(5)]
    batch = draw_noise_batch(seeds, 4, 5, 3)
    assert batch.shape == (5, 4, 5, 3) and batch.dtype == np.float32
    for i, seed in enumerate(seeds):
        np.testing.assert_array_equal(batch[i], draw_noise(seed, 4, 5, 3))
    # a row does not depend on its batch neighbours or position
    np.testing.assert_array_equal(draw_noise_batch(seeds[::-1], 4, 5, 3)[::-1], batch)
    assert draw_noise_batch([], 4, 5, 3).shape == (0, 4, 5, 3)


@pytest.mark.parametrize("seed", [-1, SEED_LIMIT, True, 1.5])
def test_seed_range_errors(seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        tile_seed(seed, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        draw_noise(seed, 1, 2, 2)  # type: ignore[arg-type]


def test_other_argument_errors() -> None:
    with pytest.raises(ValueError, match="tile_index"):
        tile_seed(1, -1)
    with pytest.raises(ValueError, match="height"):
        draw_noise(1, 1, 0, 2)
    with pytest.raises(ValueError, match="seed"):
        draw_noise_batch([1, -5], 1, 2, 2)


def test_random_seed_range() -> None:
    seeds = [random_seed() for _ in range(32)]
    assert all(isinstance(s, int) and 0 <= s < SEED_LIMIT for s in seeds)
    assert len(set(seeds)) == 32
