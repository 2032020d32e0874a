"""The backend interface, in one place (architecture.md invariant 4).

N tiles in, N tiles out, in order. Tiles are fixed-size LR crops in the model's value range; the
noise for tile i is drawn on the host from `seeds[i]` (rsd.noise), so a seed gives the same image on
every backend and in every batch composition.

- `TileRunner` is what the whole-image pipeline (rsd.pipeline) calls: `spec` and `run`. Anything with
  those two serves there, the evaluation's teacher sampler and the tests' fakes included.
- `Upscaler` is what every backend implements (torch, onnxruntime, TensorRT) and what the service,
  `rsd bench` and `rsd verify` hold: `run_with_codes` (the output and the VQ codes it used), `run`
  derived from it, a `name` for metrics and tables, and `close`.
- `check_tiles` is the input check the backends share.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from rsd.spec import ModelSpec


class TileRunner(Protocol):
    """Runs the one-step graph `(lq_tile, noise) -> sr_tile` on batches of tiles."""

    spec: ModelSpec

    def run(self, lq_tiles: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        """lq_tiles: (N, 3, t, t) float32 in [-1, 1]; seeds: N ints.

        Returns (N, 3, 4t, 4t) float32 in [-1, 1], row i computed from lq_tiles[i] and seeds[i] only.
        """
        ...


class Upscaler(TileRunner, ABC):
    """A backend: a TileRunner that also reports the VQ codes, has a name and releases its resources."""

    spec: ModelSpec
    #: short backend name used in metrics and benchmark tables ("torch-cpu-fp32", "onnxruntime-cpu", ...)
    name: str

    @abstractmethod
    def run_with_codes(
        self, lq_tiles: np.ndarray, seeds: Sequence[int], with_codes: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """run(), plus the (N, t, t) VQ codes the decoder used when `with_codes` (None otherwise);
        `rsd verify` compares them across backends."""

    def run(self, lq_tiles: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        return self.run_with_codes(lq_tiles, seeds, with_codes=False)[0]

    def close(self) -> None:
        """Release device memory / sessions. Safe to call twice."""

    def __enter__(self) -> Upscaler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_tiles(lq_tiles: np.ndarray, seeds: Sequence[int], tile: int | None = None, what: str = "backend") -> None:
    """One seed per tile and (N, 3, t, t) tiles; `tile` given: t must be it (an exported graph's size)."""
    if len(lq_tiles) != len(seeds):
        raise ValueError(f"{len(lq_tiles)} tiles but {len(seeds)} seeds")
    if tile is None:
        if lq_tiles.ndim != 4:
            raise ValueError(f"lq_tiles must be (N, 3, t, t), got shape {lq_tiles.shape}")
    elif lq_tiles.ndim != 4 or tuple(lq_tiles.shape[1:]) != (3, tile, tile):
        raise ValueError(f"this {what} takes (N, 3, {tile}, {tile}) tiles, got {lq_tiles.shape}")
