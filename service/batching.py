"""Batching policy: which tiles run together next (serving.md "Worker loop", architecture.md invariant 5).

A pure function over the worker's pending tiles. Tiles of different jobs share a batch (the model's
batch dimension is free, and a tile's result depends only on its pixels and seed, so batching never
changes an output) when they have the same tile size (engines take (N, 3, t, t), architecture.md
invariant 3). A tile size is ready when it has `max_batch_tiles` tiles or its oldest tile has waited
`max_batch_delay_s`; otherwise the worker may wait (and claim more jobs) for the returned time.

Policy: round-robin across jobs, each batch shared equally. The jobs stand in a rotation (least
recently served first; a job joins at the back). The first job in the rotation whose tile size is ready
picks the batch's tile size, so sizes take turns as their jobs do. The batch is split equally across the
jobs of that size (water-filling: a job needing less than its share leaves the rest to the others),
the slots that do not divide evenly go one each in rotation order, so the batch is full whenever that
size has `max_batch_tiles` tiles pending. Every job served moves to the back.

Why not least attained service (fewest tiles batched first): a job that arrives has attained nothing and
stays ahead of a large job until it has caught up with it, so a stream of small jobs, refilled as each
finishes, starves the large one without bound. This is deficit round-robin with unit-cost tiles (the
deficit after each visit is always zero, so the only state is the rotation); turns between tile sizes
are counted in batches, not pixels. The equal share, not the rotation, is what puts a small job into the
very next batch of its size: with at most `max_batch_tiles` jobs of that size in hand every one gets a
tile in every batch, however many tiles the others have left.

State: `rotation` (job ids) comes back in each decision; pass it to the next call. Without it the order
restarts from arrival (oldest first) each call: jobs of one size still share every batch equally, but
the choice between sizes and the uneven slots fall back to oldest first.

Bound (passing `rotation` on): let J be the most jobs with unbatched tiles in hand (the worker holds at
most `claim_max_jobs`), C = `max_batch_tiles` and q = max(1, floor(C / J)). Counting the batches decided
once a job has waited `max_batch_delay_s` (from then on its size is always ready), a job with r
unbatched tiles is fully batched within J * ceil(r / q) batches, whatever arrives and however large the
others are; if every job in hand has its tile size, within ceil(J / C) * ceil(r / q) batches (for J <= C:
it gets at least floor(C / J) tiles in every batch). Why: each batch serves the first ready job of the
rotation, and every served job moves behind every unserved one (arrivals join behind too), so a job
with k jobs ahead is served within k + 1 <= J batches (ceil(J / C) with one size: C of the jobs ahead
are served at once), and a service gives it at least q tiles or all it has left.
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
    """Either run `take` now (non-empty), or wait up to `wait_s` for more tiles (take empty).

    `rotation`: the live jobs, next to be served first; pass it to the next call.
    """

    take: tuple[BatchSlice, ...]
    wait_s: float
    rotation: tuple[str, ...] = ()


def share(remaining: Sequence[int], room: int) -> list[int]:
    """Split `room` slots equally across jobs with `remaining` tiles; uneven slots go first to first.

    Water-filling: each job gets min(remaining, level) for the highest level that fits, then one more
    each, in order, while slots are left. Fills the room when the jobs have that many tiles.
    """
    if sum(remaining) <= room:
        return list(remaining)
    level = 0
    while sum(min(r, level + 1) for r in remaining) <= room:
        level += 1
    given = [min(r, level) for r in remaining]
    left = room - sum(given)
    for i, r in enumerate(remaining):
        if left == 0:
            break
        if r > given[i]:
            given[i] += 1
            left -= 1
    return given


def next_batch(
    pending: Sequence[PendingTiles],
    max_batch_tiles: int,
    max_batch_delay_s: float,
    now: float,
    rotation: Sequence[str] = (),
) -> BatchDecision:
    """The next batch: round-robin across jobs, shared equally within one tile size (module docstring).

    pending: in arrival order. rotation: the previous decision's. Of the ready sizes, the one of the
    first ready job in the rotation runs. With none ready, `take` is empty and `wait_s` is the time
    until the first becomes ready; with nothing pending, `wait_s` is `max_batch_delay_s` (the caller
    blocks on its queue instead).
    """
    if max_batch_tiles <= 0:
        raise ValueError(f"max_batch_tiles must be positive, got {max_batch_tiles}")
    live = {p.job_id: p for p in pending if p.remaining > 0}
    if not live:
        return BatchDecision(take=(), wait_s=max_batch_delay_s)
    kept = [job_id for job_id in dict.fromkeys(rotation) if job_id in live]
    kept_ids = set(kept)
    arrivals = sorted((p for job_id, p in live.items() if job_id not in kept_ids), key=lambda p: p.ready_at)
    order = [live[job_id] for job_id in kept] + arrivals
    groups: dict[int, list[PendingTiles]] = {}
    for p in order:
        groups.setdefault(p.tile, []).append(p)
    ready: set[int] = set()
    wait_s = max_batch_delay_s
    for tile, members in groups.items():
        waited = now - min(p.ready_at for p in members)
        if sum(p.remaining for p in members) >= max_batch_tiles or waited >= max_batch_delay_s:
            ready.add(tile)
        else:
            wait_s = min(wait_s, max_batch_delay_s - waited)
    ids = tuple(p.job_id for p in order)
    if not ready:
        return BatchDecision(take=(), wait_s=wait_s, rotation=ids)
    tile = next(p.tile for p in order if p.tile in ready)
    members = groups[tile]
    counts = share([p.remaining for p in members], max_batch_tiles)
    take = tuple(BatchSlice(p.job_id, p.start, p.start + n) for p, n in zip(members, counts, strict=True) if n)
    served = {s.job_id for s in take}
    rotation_after = tuple(j for j in ids if j not in served) + tuple(j for j in ids if j in served)
    return BatchDecision(take=take, wait_s=0.0, rotation=rotation_after)
