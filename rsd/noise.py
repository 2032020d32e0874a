"""Host-side noise: one seed gives the same image on every backend and in every batch (architecture.md
invariant 2).

The one-step graph takes its noise as an input. Each tile's noise comes from its own seed, derived from
the image seed and the tile's index in the grid, so a tile's output never depends on which other tiles
(or jobs) shared its batch, on the batch order, or on the backend. (The reference instead consumes one
global RNG stream across tiles and images, method.md 5.1, which makes outputs order-dependent.)
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np

from rsd.kinds import check_positive_int

#: seeds are 63-bit so they fit a signed 64-bit integer (JSON clients, Redis, SQL, int64 tensors)
SEED_LIMIT = 2**63


def _check_seed(name: str, seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{name} must be an int in [0, 2**63), got {seed!r}")


def _check_dims(channels: int, height: int, width: int) -> None:
    for name, value in (("channels", channels), ("height", height), ("width", width)):
        check_positive_int(name, value, integer_types=(int, np.integer))


def tile_seed(image_seed: int, tile_index: int) -> int:
    """A 63-bit seed for tile `tile_index` of the image seeded with `image_seed`.

    SeedSequence hashes the pair, so neighbouring seeds and indices give unrelated streams.
    """
    _check_seed("image_seed", image_seed)
    if isinstance(tile_index, bool) or not isinstance(tile_index, int | np.integer) or tile_index < 0:
        raise ValueError(f"tile_index must be a non-negative int, got {tile_index!r}")
    state = np.random.SeedSequence([int(image_seed), int(tile_index)]).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


def draw_noise(seed: int, channels: int, height: int, width: int) -> np.ndarray:
    """(channels, height, width) float32 standard normal from PCG64(seed)."""
    _check_seed("seed", seed)
    _check_dims(channels, height, width)
    generator = np.random.Generator(np.random.PCG64(int(seed)))
    return generator.standard_normal((int(channels), int(height), int(width)), dtype=np.float32)


def draw_noise_batch(seeds: Sequence[int], channels: int, height: int, width: int) -> np.ndarray:
    """(N, channels, height, width) float32; row i is exactly `draw_noise(seeds[i], ...)`."""
    _check_dims(channels, height, width)
    out = np.empty((len(seeds), int(channels), int(height), int(width)), dtype=np.float32)
    for i, seed in enumerate(seeds):
        out[i] = draw_noise(seed, channels, height, width)
    return out


def random_seed() -> int:
    """A fresh seed in [0, 2**63) from the operating system's entropy."""
    return secrets.randbits(63)
