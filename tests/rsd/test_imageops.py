"""rsd.imageops: value-range mapping, padding, tile planning, split and blend."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

from rsd import imageops
from rsd.imageops import (
    blend_tiles,
    blend_to_uint8,
    pad_to,
    plan_tiles,
    split_tiles,
    tile_count,
    tile_weights,
    to_model_range,
    to_uint8,
)

RNG = np.random.default_rng(0)
SCALE = 4


def test_value_range_round_trip_all_levels() -> None:
    levels = np.arange(256, dtype=np.uint8)
    rgb = np.stack([levels, levels[::-1], np.roll(levels, 7)], axis=-1).reshape(16, 16, 3)
    x = to_model_range(rgb)
    assert x.shape == (3, 16, 16) and x.dtype == np.float32
    np.testing.assert_allclose(x, (rgb.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5, atol=1e-6)
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(to_uint8(x), rgb)


def test_to_uint8_clamps_and_rejects_nan() -> None:
    x = np.array([-3.0, -1.0, 0.0, 1.0, 7.0], dtype=np.float32).reshape(1, 1, 5).repeat(3, axis=0)
    assert to_uint8(x)[0, :, 0].tolist() == [0, 0, 128, 255, 255]  # round(0.5*255) = 128
    x[1, 0, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        to_uint8(x)


def test_pad_to_reflects_then_falls_back_to_edge() -> None:
    chw = np.arange(6, dtype=np.float32).reshape(1, 2, 3)  # rows [0 1 2], [3 4 5]
    out = pad_to(chw, 2, 5)  # width pad 2 < side 3: reflect without repeating the edge
    np.testing.assert_array_equal(out[0], [[0, 1, 2, 1, 0], [3, 4, 5, 4, 3]])
    out = pad_to(chw, 7, 3)  # height pad 5 >= side 2: edge replicate
    np.testing.assert_array_equal(out[0, 2:], np.tile([3, 4, 5], (5, 1)))
    np.testing.assert_array_equal(out[0, :2], chw[0])
    one = np.full((3, 1, 1), 0.25, dtype=np.float32)  # a 1x1 image pads to a flat tile
    assert np.all(pad_to(one, 8, 8) == 0.25) and pad_to(one, 8, 8).shape == (3, 8, 8)
    assert pad_to(chw, 1, 1) is chw


PLANS = [
    (100, 37, 32, 8, 8),
    (1, 1, 64, 16, 64),
    (700, 1000, 512, 64, 64),
    (44, 44, 16, 4, 4),
    (65, 64, 64, 0, 64),
]


@pytest.mark.parametrize("height, width, tile, overlap, multiple", PLANS)
def test_plan_tiles_properties(height: int, width: int, tile: int, overlap: int, multiple: int) -> None:
    grid = plan_tiles(height, width, tile, overlap, multiple)
    assert grid.image_hw == (height, width) and grid.tile == tile
    covered = np.zeros(grid.padded_hw, dtype=bool)
    for axis, length in enumerate((height, width)):
        padded = grid.padded_hw[axis]
        assert padded >= max(length, tile) and padded % multiple == 0
    for y, x in grid.positions:
        assert 0 <= y <= grid.padded_hw[0] - tile and 0 <= x <= grid.padded_hw[1] - tile
        covered[y : y + tile, x : x + tile] = True
    assert covered.all()
    assert grid.positions == sorted(grid.positions)  # row-major
    for starts, padded in ((grid.row_starts, grid.padded_hw[0]), (grid.col_starts, grid.padded_hw[1])):
        assert starts[0] == 0 and starts[-1] == padded - tile
        assert all(0 < b - a <= tile - overlap for a, b in itertools.pairwise(starts))
    assert len(grid.positions) == len(grid.row_starts) * len(grid.col_starts)
    assert tile_count(height, width, tile, overlap, multiple) == len(grid.positions)


def test_plan_tiles_reference_rule() -> None:
    # method.md 5.2 with chop 512 / stride 448 on a 1000-pixel axis: range(0, 1000, 448) = 0, 448, 896,
    # and 896 overflows, so it moves to 1000 - 512 = 488.
    grid = plan_tiles(1000, 512, 512, 64, 8)
    assert grid.row_starts == [0, 448, 488] and grid.col_starts == [0]
    # an axis of exactly 960 needs no moved start: 896 -> 448 duplicates and is dropped
    assert plan_tiles(960, 64, 512, 64, 64).row_starts == [0, 448]


def test_tile_count_matches_plan_over_sizes() -> None:
    for height in range(1, 90, 7):
        for width in (1, 16, 33, 70):
            grid = plan_tiles(height, width, 16, 6, 8)
            assert tile_count(height, width, 16, 6, 8) == len(grid.positions)


@pytest.mark.parametrize(
    "args, match",
    [
        ((10, 10, 24, 4, 16), "multiple"),
        ((10, 10, 16, 16, 8), "overlap"),
        ((10, 10, 16, -1, 8), "overlap"),
        ((0, 10, 16, 4, 8), "height"),
        ((10, 10, 0, 0, 8), "tile"),
    ],
)
def test_plan_tiles_validation(args: tuple[int, int, int, int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan_tiles(*args)
    with pytest.raises(ValueError, match=match):
        tile_count(*args)


def test_split_tiles_cuts_the_padded_image() -> None:
    chw = RNG.standard_normal((3, 37, 50)).astype(np.float32)
    grid = plan_tiles(37, 50, 16, 4, 8)
    tiles = split_tiles(chw, grid)
    assert tiles.shape == (len(grid.positions), 3, 16, 16) and tiles.dtype == np.float32
    padded = pad_to(chw, *grid.padded_hw)
    np.testing.assert_array_equal(padded[:, :37, :50], chw)
    for tile, (y, x) in zip(tiles, grid.positions, strict=True):
        np.testing.assert_array_equal(tile, padded[:, y : y + 16, x : x + 16])
    with pytest.raises(ValueError, match="image size"):
        split_tiles(chw[:, :36], grid)


def hr_tiles(hr: np.ndarray, grid_positions: list[tuple[int, int]], tile: int) -> np.ndarray:
    size = tile * SCALE
    return np.stack([hr[:, SCALE * y : SCALE * y + size, SCALE * x : SCALE * x + size] for y, x in grid_positions])


@pytest.mark.parametrize("mode", ["smooth", "uniform"])
@pytest.mark.parametrize("height, width, overlap", [(37, 50, 4), (44, 30, 6), (40, 40, 0)])
def test_blend_reproduces_a_consistent_image(mode: str, height: int, width: int, overlap: int) -> None:
    # Tiles cut from one HR image agree on every overlap, so any normalised weighting must give it back.
    grid = plan_tiles(height, width, 16, overlap, 4)
    hr = RNG.uniform(-1, 1, (3, SCALE * grid.padded_hw[0], SCALE * grid.padded_hw[1])).astype(np.float32)
    out = blend_tiles(hr_tiles(hr, grid.positions, 16), grid, SCALE, mode)  # type: ignore[arg-type]
    assert out.shape == (3, SCALE * height, SCALE * width) and out.dtype == np.float32
    np.testing.assert_allclose(out, hr[:, : SCALE * height, : SCALE * width], rtol=0, atol=2e-6)


@pytest.mark.parametrize("mode", ["smooth", "uniform"])
def test_single_tile_is_the_untiled_output(mode: str) -> None:
    chw = RNG.uniform(-1, 1, (3, 20, 13)).astype(np.float32)
    grid = plan_tiles(20, 13, 32, 8, 8)
    assert len(grid.positions) == 1
    tiles = split_tiles(chw, grid)
    sr = np.repeat(np.repeat(tiles, SCALE, axis=2), SCALE, axis=3)  # a stand-in model
    out = blend_tiles(sr, grid, SCALE, mode)  # type: ignore[arg-type]
    np.testing.assert_array_equal(out, np.repeat(np.repeat(chw, SCALE, axis=1), SCALE, axis=2))


def max_jump(plane: np.ndarray) -> float:
    return float(max(np.abs(np.diff(plane, axis=-1)).max(), np.abs(np.diff(plane, axis=-2)).max()))


@pytest.mark.parametrize("height, width", [(32, 32), (44, 20)])  # 44: the last tile moved, overlapping more
def test_smooth_weights_are_continuous_uniform_steps(height: int, width: int) -> None:
    grid = plan_tiles(height, width, 16, 8, 4)
    n = len(grid.positions)
    # neighbouring tiles disagree completely (+1 / -1 in a checkerboard over the tile grid)
    values = [1.0 if (grid.row_starts.index(y) + grid.col_starts.index(x)) % 2 else -1.0 for y, x in grid.positions]
    tiles = np.stack([np.full((3, 64, 64), v, dtype=np.float32) for v in values])
    smooth = blend_tiles(tiles, grid, SCALE, "smooth")
    uniform = blend_tiles(tiles, grid, SCALE, "uniform")
    assert max_jump(smooth) < 0.2  # ramp over 8 LR = 32 HR pixels: slope <= 2 * pi / (2 * 32) ~ 0.1
    assert max_jump(uniform) >= 0.9  # -1 -> 0 at the edge of an overlap
    weights = tile_weights(grid, SCALE, "smooth")
    assert weights.min() > 0 and weights[0, 0, 0] == 1.0  # positive everywhere, 1 at the image corner
    canvas = np.zeros((n, SCALE * grid.padded_hw[0], SCALE * grid.padded_hw[1]), dtype=np.float32)
    for i, (y, x) in enumerate(grid.positions):
        canvas[i, SCALE * y : SCALE * y + 64, SCALE * x : SCALE * x + 64] = weights[i]
    normalised = canvas / canvas.sum(axis=0)
    assert max(max_jump(plane) for plane in normalised) < 0.1


def test_blend_validates_shapes() -> None:
    grid = plan_tiles(20, 20, 16, 4, 8)
    with pytest.raises(ValueError, match="sr_tiles shape"):
        blend_tiles(np.zeros((len(grid.positions), 3, 16, 16), np.float32), grid, SCALE)
    with pytest.raises(ValueError, match="mode"):
        blend_tiles(np.zeros((len(grid.positions), 3, 64, 64), np.float32), grid, SCALE, "feather")  # type: ignore[arg-type]


def test_light_modules_do_not_import_torch() -> None:
    code = "import sys, rsd.imagefile, rsd.imageops, rsd.noise; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("mode", ["smooth", "uniform"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("band_elements", [1 << 20, 3 * 192 * 5])  # bands of 128 rows (one tile), of 5 rows
def test_blend_and_to_uint8_equal_the_plain_formula_bit_for_bit(
    mode: str, dtype: type, band_elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The banded blend and the banded to_uint8 give the bytes of the whole-array formula, whether the
    bands cut the tiles or not, from a stacked array or a list of tiles."""
    monkeypatch.setattr(imageops, "_BLEND_BAND_ELEMENTS", band_elements)
    grid = plan_tiles(70, 45, 32, 8, 16)
    rng = np.random.default_rng(3)
    sr = rng.uniform(-1.3, 1.3, (len(grid.positions), 3, 128, 128)).astype(dtype)
    weights = tile_weights(grid, 4, mode)  # type: ignore[arg-type]
    canvas = np.zeros((3, grid.padded_hw[0] * 4, grid.padded_hw[1] * 4), np.float32)
    total = np.zeros(canvas.shape[1:], np.float32)
    for (y, x), tile, weight in zip(grid.positions, sr, weights, strict=True):
        canvas[:, 4 * y : 4 * y + 128, 4 * x : 4 * x + 128] += tile * weight
        total[4 * y : 4 * y + 128, 4 * x : 4 * x + 128] += weight
    plain = canvas[:, :280, :180] / total[:280, :180]
    expected = np.round((np.clip(plain, -1.0, 1.0) * np.float32(0.5) + np.float32(0.5)) * np.float32(255.0))
    blended = blend_tiles(sr, grid, 4, mode)  # type: ignore[arg-type]
    assert np.array_equal(blended, plain)
    assert np.array_equal(to_uint8(blended), expected.astype(np.uint8).transpose(1, 2, 0))
    assert np.array_equal(blend_to_uint8(list(sr), grid, 4, mode), expected.astype(np.uint8).transpose(1, 2, 0))  # type: ignore[arg-type]


def test_blend_to_uint8_refuses_non_finite_tiles() -> None:
    grid = plan_tiles(20, 20, 16, 4, 4)
    tiles = [np.zeros((3, 64, 64), np.float32) for _ in grid.positions]
    tiles[-1][1, 5, 7] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        blend_to_uint8(tiles, grid, SCALE)
    with pytest.raises(ValueError, match="sr_tiles shape"):
        blend_to_uint8([*tiles[:-1], np.zeros((3, 64, 60), np.float32)], grid, SCALE)
