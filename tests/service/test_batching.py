"""The batching policy (pure): full batches, delay, round-robin across jobs, one tile size per batch."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.batching import BatchSlice, PendingTiles, next_batch, share


def test_nothing_pending_waits_the_delay() -> None:
    decision = next_batch([], 8, 0.01, now=5.0)
    assert decision.take == () and decision.wait_s == 0.01


def test_partial_batch_waits_until_the_oldest_tile_has_waited_the_delay() -> None:
    pending = [PendingTiles("a", 0, 3, ready_at=10.0, tile=64)]
    early = next_batch(pending, 8, 0.05, now=10.02)
    assert early.take == () and early.wait_s == pytest.approx(0.03)
    late = next_batch(pending, 8, 0.05, now=10.05)
    assert late.take == (BatchSlice("a", 0, 3),)


def test_a_full_batch_runs_at_once_shared_equally_across_jobs() -> None:
    pending = [PendingTiles("a", 2, 5, 1.0, 64), PendingTiles("b", 0, 4, 1.1, 64), PendingTiles("c", 0, 9, 1.2, 64)]
    decision = next_batch(pending, 6, 10.0, now=1.2)
    assert decision.take == (BatchSlice("a", 2, 4), BatchSlice("b", 0, 2), BatchSlice("c", 0, 2))
    assert decision.wait_s == 0.0


def test_a_job_needing_less_than_its_share_leaves_the_rest_to_the_others() -> None:
    assert share([1, 100], 4) == [1, 3]
    assert share([2, 9, 9], 7) == [2, 3, 2]  # the uneven slot goes to the first in the rotation
    assert share([5, 5, 5], 2) == [1, 1, 0]
    assert share([1, 2], 8) == [1, 2]


def test_a_small_job_arriving_beside_a_large_one_is_in_the_very_next_batch() -> None:
    large = PendingTiles("large", 100, 256, 1.0, 32)
    first = next_batch([large], 4, 0.01, now=5.0)
    assert first.take == (BatchSlice("large", 100, 104),)
    pending = [PendingTiles("large", 104, 256, 1.0, 32), PendingTiles("small", 0, 1, 5.0, 32)]
    decision = next_batch(pending, 4, 0.01, now=5.0, rotation=first.rotation)
    assert decision.take == (BatchSlice("large", 104, 107), BatchSlice("small", 0, 1))


def test_tile_sizes_never_mix_and_the_oldest_ready_size_runs_first() -> None:
    pending = [PendingTiles("a", 0, 1, 1.0, 32), PendingTiles("b", 0, 8, 1.5, 64), PendingTiles("c", 0, 1, 1.6, 32)]
    # size 64 is full, size 32 has waited long enough too: 32 holds the oldest tile
    both_ready = next_batch(pending, 8, 0.1, now=2.0)
    assert both_ready.take == (BatchSlice("a", 0, 1), BatchSlice("c", 0, 1))
    # only 64 is ready (full): it runs although 32 is older
    only_full = next_batch(pending, 8, 5.0, now=2.0)
    assert only_full.take == (BatchSlice("b", 0, 8),)


def test_tile_sizes_take_turns_when_the_rotation_is_passed_on() -> None:
    starts = {"a": 0, "b": 0}
    tiles = {"a": 32, "b": 64}
    rotation: tuple[str, ...] = ()
    sizes = []
    for _ in range(6):
        pending = [PendingTiles(job, starts[job], 100, 1.0, tiles[job]) for job in ("a", "b")]
        decision = next_batch(pending, 4, 0.0, now=2.0, rotation=rotation)
        (piece,) = decision.take
        sizes.append(tiles[piece.job_id])
        starts[piece.job_id] = piece.stop
        rotation = decision.rotation
    assert sizes == [32, 64] * 3


def test_a_stream_of_one_tile_jobs_does_not_starve_a_large_job_at_batch_cap_one() -> None:
    # least attained service would serve every newcomer (0 tiles so far) before the large job
    large_start, rotation = 0, ()
    for i in range(10):
        pending = [PendingTiles("large", large_start, 50, 0.0, 32), PendingTiles(f"s{i}", 0, 1, float(i), 32)]
        decision = next_batch(pending, 1, 0.0, now=float(i), rotation=rotation)
        (piece,) = decision.take
        if piece.job_id == "large":
            large_start = piece.stop
        rotation = decision.rotation
    assert large_start >= 4


def test_invalid_batch_size_is_an_error() -> None:
    with pytest.raises(ValueError, match="max_batch_tiles"):
        next_batch([], 0, 0.1, now=0.0)


@dataclass
class _Job:
    total: int
    tile: int
    arrives: int
    start: int = 0
    ready_at: float = 0.0


def bound(remaining: int, hold: int, cap: int, one_size: bool) -> int:
    """The module docstring's bound, in batches."""
    per_service = max(1, cap // hold)
    services = math.ceil(remaining / per_service)
    return (math.ceil(hold / cap) if one_size else hold) * services


def _simulate(cap: int, hold: int, jobs: list[_Job], pass_rotation: bool) -> dict[int, list[tuple[int, int, int]]]:
    """Run the policy like the worker: up to `hold` jobs in hand, arrivals claimed as room frees.

    Checks every batch (one size, full when that size has enough tiles, contiguous slices) and every
    tile (batched once, none skipped); returns, per job, (batch index, tiles left, index it finished).
    """
    waiting, hand = deque(range(len(jobs))), dict[int, _Job]()
    seen: dict[int, list[int]] = {i: [] for i in range(len(jobs))}
    observed: dict[int, list[tuple[int, int]]] = {i: [] for i in range(len(jobs))}
    finished: dict[int, int] = {}
    rotation: tuple[str, ...] = ()
    step = 0
    while waiting or hand:
        if not hand:
            step = max(step, jobs[waiting[0]].arrives)
        while waiting and jobs[waiting[0]].arrives <= step and len(hand) < hold:
            index = waiting.popleft()
            jobs[index].ready_at = float(step)
            hand[index] = jobs[index]
        pending = [PendingTiles(str(i), j.start, j.total, j.ready_at, j.tile) for i, j in hand.items()]
        for i, j in hand.items():
            observed[i].append((step, j.total - j.start))
        decision = next_batch(pending, cap, 0.0, float(step), rotation if pass_rotation else ())
        assert decision.take and decision.wait_s == 0.0
        (tile,) = {hand[int(s.job_id)].tile for s in decision.take}
        of_size = sum(j.total - j.start for j in hand.values() if j.tile == tile)
        assert sum(s.stop - s.start for s in decision.take) == min(cap, of_size)
        for piece in decision.take:
            job = hand[int(piece.job_id)]
            assert piece.start == job.start < piece.stop <= job.total
            seen[int(piece.job_id)] += list(range(piece.start, piece.stop))
            job.start = piece.stop
            if job.start == job.total:
                finished[int(piece.job_id)] = step
                del hand[int(piece.job_id)]
        rotation = decision.rotation
        assert {str(i) for i in hand} <= set(rotation)  # (and the jobs just finished, until the next call)
        step += 1
        assert step < 100_000
    assert all(seen[i] == list(range(job.total)) for i, job in enumerate(jobs))
    return {i: [(s, r, finished[i]) for s, r in observed[i]] for i in observed}


@st.composite
def _workloads(draw: st.DrawFn) -> tuple[int, int, list[_Job], bool]:
    cap = draw(st.integers(1, 8))
    hold = draw(st.integers(1, 6))
    one_size = draw(st.booleans())
    sizes = [32] if one_size else [16, 32, 64]
    arrivals = draw(st.lists(st.tuples(st.integers(1, 40), st.sampled_from(sizes), st.integers(0, 3)), max_size=25))
    jobs, at = [], 0
    for total, tile, gap in arrivals:
        at += gap  # batches after the previous arrival (0: queued at once, refilled as room frees)
        jobs.append(_Job(total, tile, at))
    return cap, hold, jobs, one_size


@settings(max_examples=300, deadline=None)
@given(_workloads())
def test_every_job_is_fully_batched_within_the_stated_bound_whatever_arrives(
    workload: tuple[int, int, list[_Job], bool],
) -> None:
    cap, hold, jobs, one_size = workload
    for job_id, history in _simulate(cap, hold, [replace(j) for j in jobs], pass_rotation=True).items():
        for at, left, done in history:
            assert done - at + 1 <= bound(left, hold, cap, one_size), (job_id, at, left, done)
    # without the rotation (every call starts from arrival order) batches stay full and exact, and
    # with one size and no more jobs than slots every job still gets its share of every batch
    for history in _simulate(cap, hold, jobs, pass_rotation=False).values():
        if one_size and hold <= cap:
            assert all(done - at + 1 <= bound(left, hold, cap, True) for at, left, done in history)


@given(
    sizes=st.lists(st.tuples(st.integers(1, 12), st.sampled_from([32, 64])), min_size=1, max_size=8),
    max_batch=st.integers(1, 16),
)
def test_draining_covers_every_tile_once_in_order(sizes: list[tuple[int, int]], max_batch: int) -> None:
    state = {f"j{i}": [0, total, tile] for i, (total, tile) in enumerate(sizes)}
    seen: dict[str, list[int]] = {job: [] for job in state}
    rotation: tuple[str, ...] = ()
    for _ in range(1000):
        pending = [PendingTiles(job, s[0], s[1], float(i), s[2]) for i, (job, s) in enumerate(state.items())]
        decision = next_batch(pending, max_batch, 0.0, now=100.0, rotation=rotation)
        if not decision.take:
            break
        rotation = decision.rotation
        assert sum(s.stop - s.start for s in decision.take) <= max_batch
        assert len({state[s.job_id][2] for s in decision.take}) == 1
        for piece in decision.take:
            seen[piece.job_id] += list(range(piece.start, piece.stop))
            state[piece.job_id][0] = piece.stop
    assert all(seen[job] == list(range(state[job][1])) for job in state)
