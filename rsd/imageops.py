"""uint8 <-> model range, padding, fixed-size overlapping tiles and their blending (numpy only).

Engines take fixed `(N, 3, tile, tile)` inputs (architecture.md invariant 3), so every tile here is
exactly `tile x tile` LR pixels: the image is padded up to at least one tile, tile starts follow the
reference rule (method.md 5.2), and the x`scale` outputs are blended back with either smooth
(feathered) weights or the reference's uniform average.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rsd.kinds import check_positive_int

BlendMode = Literal["smooth", "uniform"]
#: elements per band of to_uint8 (~1 MB of float32: cache-sized, few Python-level steps)
_BAND_ELEMENTS = 1 << 18
#: float32 elements per band of the blend canvas (4 MB: a few tile rows' worth of Python-level steps)
_BLEND_BAND_ELEMENTS = 1 << 20


def to_model_range(rgb: np.ndarray) -> np.ndarray:
    """rgb: (H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1], `(u8/255 - 0.5)/0.5` (method.md 1.1)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    x = rgb.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    return (x - np.float32(0.5)) / np.float32(0.5)


def to_uint8(chw: np.ndarray) -> np.ndarray:
    """chw: (3, H, W) float in [-1, 1] -> (H, W, 3) uint8: clamp, `x*0.5+0.5`, `round(x*255)` (method.md 1.1).

    Values outside [-1, 1] are clamped (the reference does the same); NaN/inf is a model failure and
    raises instead of becoming an arbitrary colour.
    """
    if chw.ndim != 3 or chw.shape[0] != 3 or not np.issubdtype(chw.dtype, np.floating):
        raise ValueError(f"chw must be (3, H, W) float, got {chw.shape} {chw.dtype}")
    height, width = chw.shape[1:]
    out = np.empty((height, width, 3), dtype=np.uint8)
    band = max(1, _BAND_ELEMENTS // max(1, 3 * width))
    bad = sum(_quantise(chw[:, top : top + band], out[top : top + band]) for top in range(0, height, band))
    if bad:
        raise ValueError(f"chw has {bad} non-finite values (NaN or inf)")
    return out


def _quantise(chw: np.ndarray, out: np.ndarray) -> int:
    """Writes the uint8 of a (3, h, w) float band into `out` (h, w, 3); returns its non-finite count.

    In-place steps on a cache-sized band: the same element-wise float32 operations in the same order as
    on the whole array (so the same bytes), without five full-size temporaries (serving.md "Worker loop").
    """
    x = chw.astype(np.float32)
    bad = x.size - int(np.count_nonzero(np.isfinite(x)))
    if bad:
        return bad
    np.clip(x, -1.0, 1.0, out=x)
    x *= np.float32(0.5)
    x += np.float32(0.5)
    x *= np.float32(255.0)
    np.round(x, out=x)
    out[...] = x.transpose(1, 2, 0)
    return 0


def pad_to(chw: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad (C, H, W) on the bottom/right to at least (height, width).

    Reflect padding as the reference (method.md 5.1 step 2); reflection needs the pad to be smaller than
    the side (the reference fails otherwise), so such an axis is edge-replicated instead. Returns the
    input itself when no padding is needed.
    """
    if chw.ndim != 3:
        raise ValueError(f"chw must be (C, H, W), got shape {chw.shape}")
    out = chw
    for axis, target in ((1, height), (2, width)):
        side = out.shape[axis]
        pad = max(0, target - side)
        if pad == 0:
            continue
        widths = [(0, 0)] * 3
        widths[axis] = (0, pad)
        out = np.pad(out, widths, mode="reflect" if pad < side else "edge")
    return out


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one image lie. All sizes in LR pixels.

    image_hw: original (H, W); padded_hw: after padding (each >= tile); positions: top-left (y, x) of
    every tile, row-major (rows of equal y, x increasing).
    """

    image_hw: tuple[int, int]
    padded_hw: tuple[int, int]
    tile: int
    overlap: int
    positions: list[tuple[int, int]]

    @property
    def row_starts(self) -> list[int]:
        return sorted({y for y, _ in self.positions})

    @property
    def col_starts(self) -> list[int]:
        return sorted({x for _, x in self.positions})


def _validate(height: int, width: int, tile: int, overlap: int, multiple: int) -> None:
    for name, value in (("height", height), ("width", width), ("tile", tile), ("multiple", multiple)):
        check_positive_int(name, value)
    if tile % multiple:
        raise ValueError(f"tile={tile} must be a multiple of {multiple}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < tile:
        raise ValueError(f"overlap must be an int in [0, tile={tile}), got {overlap!r}")


def _padded_length(length: int, tile: int, multiple: int) -> int:
    return max(-(-length // multiple) * multiple, tile)


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts along one padded axis (method.md 5.2): 0, stride, ..., overflowing starts moved to L - tile."""
    starts: list[int] = []
    for start in range(0, length, tile - overlap):
        start = min(start, length - tile)
        if start not in starts:
            starts.append(start)
    return starts


def plan_tiles(height: int, width: int, tile: int, overlap: int, multiple: int) -> TileGrid:
    """Plan `tile x tile` tiles over an (height, width) LR image.

    The image is padded up to a multiple of `multiple` and to at least one tile per axis; starts per axis
    are 0, tile - overlap, ... with the last one at padded_length - tile, de-duplicated.
    """
    _validate(height, width, tile, overlap, multiple)
    padded = (_padded_length(height, tile, multiple), _padded_length(width, tile, multiple))
    ys = _starts(padded[0], tile, overlap)
    xs = _starts(padded[1], tile, overlap)
    return TileGrid(
        image_hw=(height, width),
        padded_hw=padded,
        tile=tile,
        overlap=overlap,
        positions=[(y, x) for y in ys for x in xs],
    )


def tile_count(height: int, width: int, tile: int, overlap: int, multiple: int) -> int:
    """Number of tiles `plan_tiles` makes (admission cost), without building the grid."""
    _validate(height, width, tile, overlap, multiple)
    rows = _starts(_padded_length(height, tile, multiple), tile, overlap)
    cols = _starts(_padded_length(width, tile, multiple), tile, overlap)
    return len(rows) * len(cols)


def split_tiles(chw: np.ndarray, grid: TileGrid) -> np.ndarray:
    """chw: (3, H, W) float in [-1, 1] with (H, W) == grid.image_hw -> (N, 3, tile, tile) float32."""
    if chw.ndim != 3 or chw.shape[1:] != grid.image_hw:
        raise ValueError(f"chw shape {chw.shape} does not match the grid's image size {grid.image_hw}")
    padded = pad_to(chw, *grid.padded_hw)
    t = grid.tile
    tiles = [padded[:, y : y + t, x : x + t] for y, x in grid.positions]
    return np.ascontiguousarray(np.stack(tiles), dtype=np.float32)


def _ramp(n: int) -> np.ndarray:
    """(n,) raised-cosine rise sampled at pixel centres: in (0, 1), and ramp + reversed ramp == 1."""
    u = (np.arange(n, dtype=np.float64) + 0.5) / n
    return 0.5 - 0.5 * np.cos(np.pi * u)


def _axis_weights(starts: list[int], tile: int, scale: int) -> list[np.ndarray]:
    """One (scale*tile,) weight vector per start along an axis.

    A side that overlaps a neighbouring tile rises/falls over the whole overlap with that neighbour
    (at least the nominal overlap; the last tile, moved to L - tile, may overlap more), so two tiles
    cross-fade with weights summing to 1; sides on the image border stay 1. Weights are > 0 everywhere.
    """
    size = tile * scale
    vectors = []
    for i, start in enumerate(starts):
        w = np.ones(size, dtype=np.float64)
        if i > 0:
            rise = (starts[i - 1] + tile - start) * scale
            w[:rise] *= _ramp(rise)
        if i < len(starts) - 1:
            fall = (start + tile - starts[i + 1]) * scale
            w[size - fall :] *= _ramp(fall)[::-1]
        vectors.append(w)
    return vectors


def _weight_table(grid: TileGrid, scale: int, mode: BlendMode) -> Callable[[int, int], np.ndarray]:
    """weight(y, x): the (scale*tile, scale*tile) float32 weight of the tile at (y, x), shared between
    tiles with the same weight (interior tiles all have the same one)."""
    size = grid.tile * scale
    if mode == "uniform":  # the reference: plain sum / count (method.md 5.2)
        ones = np.ones((size, size), dtype=np.float32)
        return lambda y, x: ones
    if mode != "smooth":
        raise ValueError(f"mode must be 'smooth' or 'uniform', got {mode!r}")
    rows, cols = grid.row_starts, grid.col_starts
    wy = dict(zip(rows, _axis_weights(rows, grid.tile, scale), strict=True))
    wx = dict(zip(cols, _axis_weights(cols, grid.tile, scale), strict=True))
    shapes: dict[tuple[bytes, bytes], np.ndarray] = {}

    def weight(y: int, x: int) -> np.ndarray:
        key = (wy[y].tobytes(), wx[x].tobytes())
        if key not in shapes:
            shapes[key] = np.outer(wy[y], wx[x]).astype(np.float32)
        return shapes[key]

    return weight


def tile_weights(grid: TileGrid, scale: int, mode: BlendMode = "smooth") -> np.ndarray:
    """(N, scale*tile, scale*tile) float32 blending weight of each tile (before normalisation)."""
    weight = _weight_table(grid, scale, mode)
    return np.stack([weight(y, x) for y, x in grid.positions])


def _check_tiles(sr_tiles: Sequence[np.ndarray], grid: TileGrid, scale: int) -> None:
    check_positive_int("scale", scale)
    size = grid.tile * scale
    expected = (len(grid.positions), 3, size, size)
    shapes = {tuple(tile.shape) for tile in sr_tiles}
    if len(sr_tiles) != len(grid.positions) or shapes != {expected[1:]}:
        got = (len(sr_tiles), *shapes.pop()) if len(shapes) == 1 else f"{len(sr_tiles)} tiles of {sorted(shapes)}"
        raise ValueError(f"sr_tiles shape {got} != {expected} for this grid at x{scale}")


def _blended_bands(
    sr_tiles: Sequence[np.ndarray], grid: TileGrid, scale: int, mode: BlendMode
) -> Iterator[tuple[int, np.ndarray]]:
    """(top, band) from top to bottom: band is (3, rows, scale*W) float32 of the blended image.

    Weighted sum over the padded canvas divided by the weight sum, one band of output rows at a time:
    each pixel gets the same float32 operations in the same order (tiles in grid order, from zero) as
    on a whole canvas, so the same values, without a full-size float canvas (12 bytes per output pixel)
    that every large result would fault in afresh (serving.md "Worker loop").
    """
    _check_tiles(sr_tiles, grid, scale)
    weight = _weight_table(grid, scale, mode)
    size = grid.tile * scale
    out_h, out_w = grid.image_hw[0] * scale, grid.image_hw[1] * scale
    width = grid.padded_hw[1] * scale
    rows = max(1, min(size, _BLEND_BAND_ELEMENTS // (3 * width)))
    tile_rows: dict[int, list[tuple[int, np.ndarray]]] = {}  # y -> its tiles, x increasing (grid order)
    for (y, x), tile in zip(grid.positions, sr_tiles, strict=True):
        tile_rows.setdefault(y, []).append((x, tile))
    canvas = np.empty((3, rows, width), dtype=np.float32)
    total = np.empty((rows, width), dtype=np.float32)
    # One product buffer reused for every slice: the same arithmetic as `canvas += tile * weight`
    # (the buffer has that product's dtype), without a fresh temporary per tile.
    product = np.empty((3, rows, size), dtype=np.result_type(sr_tiles[0].dtype, np.float32))
    for top in range(0, out_h, rows):
        bottom = min(top + rows, out_h)
        canvas.fill(0)
        total.fill(0)
        for y, row in tile_rows.items():
            lo, hi = max(top, y * scale), min(bottom, y * scale + size)
            if lo >= hi:
                continue
            band, part = slice(lo - top, hi - top), slice(lo - y * scale, hi - y * scale)
            for x, tile in row:
                cols = slice(x * scale, x * scale + size)
                w = weight(y, x)[part]
                np.multiply(tile[:, part], w, out=product[:, : hi - lo])
                canvas[:, band, cols] += product[:, : hi - lo]
                total[band, cols] += w
        n = bottom - top
        image = canvas[:, :n, :out_w]
        np.divide(image, total[:n, :out_w], out=image)
        yield top, image


def blend_tiles(sr_tiles: Sequence[np.ndarray], grid: TileGrid, scale: int, mode: BlendMode = "smooth") -> np.ndarray:
    """sr_tiles: N tiles (3, scale*tile, scale*tile) float in [-1, 1] -> (3, scale*H, scale*W) float32.

    "smooth" feathers overlaps (an improvement over the reference); "uniform" is the reference's
    average, kept for parity runs (method.md 5.2). A lone tile comes back unchanged in both modes.
    """
    out = np.empty((3, grid.image_hw[0] * scale, grid.image_hw[1] * scale), dtype=np.float32)
    for top, band in _blended_bands(sr_tiles, grid, scale, mode):
        out[:, top : top + band.shape[1]] = band
    return out


def blend_to_uint8(
    sr_tiles: Sequence[np.ndarray], grid: TileGrid, scale: int, mode: BlendMode = "smooth"
) -> np.ndarray:
    """`to_uint8(blend_tiles(...))`, the same bytes, band by band: the only full-size array is the
    (scale*H, scale*W, 3) uint8 result."""
    out = np.empty((grid.image_hw[0] * scale, grid.image_hw[1] * scale, 3), dtype=np.uint8)
    bad = 0
    for top, band in _blended_bands(sr_tiles, grid, scale, mode):
        bad += _quantise(band, out[top : top + band.shape[1]])
    if bad:
        raise ValueError(f"chw has {bad} non-finite values (NaN or inf)")
    return out
