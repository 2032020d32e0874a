"""Whole-image upscaling on top of any `Upscaler` (numpy only; torch-free).

The split is shared by the CLI, eval and the service worker: `prepare_image` pads and cuts an image
into fixed tiles with one seed per tile, `finish_image` blends the upscaled tiles back. Because the
noise of tile i depends only on `tile_seed(seed, i)`, tiles may be batched with any other tiles (the
service batches across requests) and the image is the same bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rsd.backends.base import TileRunner  # what the pipeline calls of a backend
from rsd.imageops import TileGrid, blend_to_uint8, plan_tiles, split_tiles, to_model_range
from rsd.kinds import check_positive_int
from rsd.noise import tile_seed
from rsd.spec import ModelSpec

Blend = Literal["smooth", "uniform"]


@dataclass(frozen=True)
class PreparedImage:
    """tiles: (N, 3, t, t) float32 in [-1, 1]; seeds: one per tile; grid: where each tile sits."""

    tiles: np.ndarray
    seeds: list[int]
    grid: TileGrid


def prepare_image(rgb: np.ndarray, seed: int, tile: int, overlap: int, multiple: int) -> PreparedImage:
    """rgb: (H, W, 3) uint8. Pads (reflect, edge where too small) and splits into tile x tile LR tiles."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"image has zero size {rgb.shape[:2]}")
    grid = plan_tiles(rgb.shape[0], rgb.shape[1], tile, overlap, multiple)
    tiles = split_tiles(to_model_range(rgb), grid)
    return PreparedImage(tiles, [tile_seed(seed, i) for i in range(len(tiles))], grid)


def finish_image(
    sr_tiles: Sequence[np.ndarray], prepared: PreparedImage, scale: int = 4, blend: Blend = "smooth"
) -> np.ndarray:
    """sr_tiles: N tiles (3, s*t, s*t) in [-1, 1] (an array or a list: no need to stack them) ->
    (s*H, s*W, 3) uint8 (cropped to the original size)."""
    if len(sr_tiles) != len(prepared.seeds):
        raise ValueError(f"got {len(sr_tiles)} upscaled tiles for {len(prepared.seeds)} input tiles")
    return blend_to_uint8(sr_tiles, prepared.grid, scale, mode=blend)


def run_tile_chunks(upscaler: TileRunner, tiles: np.ndarray, seeds: Sequence[int], batch: int) -> Iterator[np.ndarray]:
    """Run tiles through `upscaler` in batches of exactly `batch` (the last one padded with blank tiles),
    yielding each call's outputs (the padding dropped) as it returns.

    Kernels pick different algorithms for different batch sizes (oneDNN, cuDNN, TensorRT tactics), which
    moves results by ~1e-4 and can flip a VQ code or a rounded pixel. A constant batch size makes a
    tile's result independent of which other tiles share its batch, so batching across requests never
    changes an image (serving.md; verified in tests). On CPU use batch 1 (no padding waste); on GPU the
    engine's batch.
    """
    check_positive_int("batch", batch)
    n = len(seeds)
    if len(tiles) != n:
        raise ValueError(f"{len(tiles)} tiles but {n} seeds")
    for start in range(0, n, batch):
        chunk, chunk_seeds = tiles[start : start + batch], list(seeds[start : start + batch])
        missing = batch - len(chunk_seeds)
        if missing:
            chunk = np.concatenate([chunk, np.zeros((missing, *chunk.shape[1:]), chunk.dtype)])
            chunk_seeds += [0] * missing
        yield upscaler.run(chunk, chunk_seeds)[: batch - missing]


def run_tiles(upscaler: TileRunner, tiles: np.ndarray, seeds: Sequence[int], batch: int) -> np.ndarray:
    """`run_tile_chunks` joined into one (N, 3, s*t, s*t) array."""
    return np.concatenate(list(run_tile_chunks(upscaler, tiles, seeds, batch)))


def choose_tile(spec: ModelSpec, height: int, width: int, tile: int | None) -> int:
    """`tile` if given (must be a multiple of the net's LR multiple), else the spec's default."""
    if tile is None:
        return spec.default_tile
    if tile <= 0 or tile % spec.lr_multiple:
        raise ValueError(f"tile {tile} must be a positive multiple of {spec.lr_multiple}")
    return tile


def upscale_array(
    upscaler: TileRunner,
    rgb: np.ndarray,
    seed: int,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 1,
    blend: Blend = "smooth",
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Upscale one (H, W, 3) uint8 image x4. `progress(n)` is called with the tiles done per batch.

    `batch_size` is a fixed batch (see `run_tiles`): the same seed and batch size give the same bytes."""
    spec = upscaler.spec
    tile = choose_tile(spec, rgb.shape[0], rgb.shape[1], tile)
    overlap = spec.default_overlap if overlap is None else overlap
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} must be in [0, tile={tile})")
    prepared = prepare_image(rgb, seed, tile, overlap, spec.lr_multiple)
    outputs = []
    for start in range(0, len(prepared.seeds), batch_size):
        stop = start + batch_size
        outputs.append(run_tiles(upscaler, prepared.tiles[start:stop], prepared.seeds[start:stop], batch_size))
        if progress is not None:
            progress(len(prepared.seeds[start:stop]))
    return finish_image([tile for batch in outputs for tile in batch], prepared, spec.scale, blend)
