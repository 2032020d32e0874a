"""Batching policy: which tiles run together next (serving.md "Worker loop", architecture.md invariant 5).

A pure function over the worker's pending tiles. Tiles of different jobs share a batch (the model's
batch dimension is free, and a tile's result depends only on its pixels and seed, so batching never
changes an output) when they have the same tile size (engines take (N, 3, t, t), architecture.md
invariant 3). A batch runs when it is full, or when its oldest tile has waited `max_batch_delay_s`;
otherwise the worker may wait (and claim more jobs) for the returned time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PendingTiles:
    """The not-yet-batched tiles `[start, total)` of one job, of side `tile`, ready since `ready_at` (s)."""

    job_id: str
    start: int
    total: int
    ready_at: float
    tile: int

    @property
    def remaining(self) -> int:
        return self.total - self.start


@dataclass(frozen=True)
class BatchSlice:
    """Tiles `[start, stop)` of job `job_id` go into the batch."""

    job_id: str
    start: int
    stop: int


@dataclass(frozen=True)
class BatchDecision:
    """Either run `take` now (non-empty), or wait up to `wait_s` for more tiles (take empty)."""

    take: tuple[BatchSlice, ...]
    wait_s: float


def next_batch(
    pending: Sequence[PendingTiles], max_batch_tiles: int, max_batch_delay_s: float, now: float
) -> BatchDecision:
    """First-come first-served across jobs of one tile size: fill up to `max_batch_tiles`.

    pending: in arrival order. A tile size is ready when it has `max_batch_tiles` tiles or its oldest
    tile has waited `max_batch_delay_s`; of the ready sizes the one holding the oldest tile runs.
    With none ready, `take` is empty and `wait_s` is the time until the first becomes ready; with
    nothing pending, `wait_s` is `max_batch_delay_s` (the caller blocks on its queue instead).
    """
    if max_batch_tiles <= 0:
        raise ValueError(f"max_batch_tiles must be positive, got {max_batch_tiles}")
    live = [p for p in pending if p.remaining > 0]
    if not live:
        return BatchDecision(take=(), wait_s=max_batch_delay_s)
    groups: dict[int, list[PendingTiles]] = {}
    for p in live:
        groups.setdefault(p.tile, []).append(p)
    ready: list[tuple[float, int]] = []
    wait_s = max_batch_delay_s
    for tile, members in groups.items():
        oldest = min(p.ready_at for p in members)
        waited = now - oldest
        if sum(p.remaining for p in members) >= max_batch_tiles or waited >= max_batch_delay_s:
            ready.append((oldest, tile))
        else:
            wait_s = min(wait_s, max_batch_delay_s - waited)
    if not ready:
        return BatchDecision(take=(), wait_s=wait_s)
    _, tile = min(ready)
    take: list[BatchSlice] = []
    room = max_batch_tiles
    for p in groups[tile]:
        if room == 0:
            break
        n = min(room, p.remaining)
        take.append(BatchSlice(p.job_id, p.start, p.start + n))
        room -= n
    return BatchDecision(take=tuple(take), wait_s=0.0)
