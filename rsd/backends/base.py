"""The `Upscaler` interface every backend implements (architecture.md invariant 4).

N tiles in, N tiles out, in order. Tiles are fixed-size LR crops in the model's value range; the
noise for tile i is drawn on the host from `seeds[i]` (rsd.noise), so a seed gives the same image on
every backend and in every batch composition.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from rsd.spec import ModelSpec


class Upscaler(ABC):
    """Runs the one-step graph `(lq_tile, noise) -> sr_tile` on batches of tiles."""

    spec: ModelSpec
    #: short backend name used in metrics and benchmark tables ("torch-cpu-fp32", "onnxruntime-cpu", ...)
    name: str

    @abstractmethod
    def run(self, lq_tiles: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        """lq_tiles: (N, 3, t, t) float32 in [-1, 1]; seeds: N ints.

        Returns (N, 3, 4t, 4t) float32 in [-1, 1], row i computed from lq_tiles[i] and seeds[i] only.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to release
        """Release device memory / sessions. Safe to call twice."""

    def __enter__(self) -> Upscaler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
