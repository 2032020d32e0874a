"""The batching policy (pure): full batches, delay, FIFO across jobs, one tile size per batch."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.batching import BatchSlice, PendingTiles, next_batch


def test_nothing_pending_waits_the_delay() -> None:
    decision = next_batch([], 8, 0.01, now=5.0)
    assert decision.take == () and decision.wait_s == 0.01


def test_partial_batch_waits_until_the_oldest_tile_has_waited_the_delay() -> None:
    pending = [PendingTiles("a", 0, 3, ready_at=10.0, tile=64)]
    early = next_batch(pending, 8, 0.05, now=10.02)
    assert early.take == () and early.wait_s == pytest.approx(0.03)
    late = next_batch(pending, 8, 0.05, now=10.05)
    assert late.take == (BatchSlice("a", 0, 3),)


def test_full_batch_runs_at_once_first_come_first_served_across_jobs() -> None:
    pending = [PendingTiles("a", 2, 5, 1.0, 64), PendingTiles("b", 0, 4, 1.1, 64), PendingTiles("c", 0, 9, 1.2, 64)]
    decision = next_batch(pending, 6, 10.0, now=1.2)
    assert decision.take == (BatchSlice("a", 2, 5), BatchSlice("b", 0, 3))
    assert decision.wait_s == 0.0


def test_tile_sizes_never_mix_and_the_oldest_ready_size_runs() -> None:
    pending = [PendingTiles("a", 0, 1, 1.0, 32), PendingTiles("b", 0, 8, 1.5, 64), PendingTiles("c", 0, 1, 1.6, 32)]
    # size 64 is full, size 32 has waited long enough too: 32 holds the oldest tile
    both_ready = next_batch(pending, 8, 0.1, now=2.0)
    assert both_ready.take == (BatchSlice("a", 0, 1), BatchSlice("c", 0, 1))
    # only 64 is ready (full): it runs although 32 is older
    only_full = next_batch(pending, 8, 5.0, now=2.0)
    assert only_full.take == (BatchSlice("b", 0, 8),)


def test_invalid_batch_size_is_an_error() -> None:
    with pytest.raises(ValueError, match="max_batch_tiles"):
        next_batch([], 0, 0.1, now=0.0)


@given(
    sizes=st.lists(st.tuples(st.integers(1, 12), st.sampled_from([32, 64])), min_size=1, max_size=8),
    max_batch=st.integers(1, 16),
)
def test_draining_covers_every_tile_once_in_order(sizes: list[tuple[int, int]], max_batch: int) -> None:
    state = {f"j{i}": [0, total, tile] for i, (total, tile) in enumerate(sizes)}
    seen: dict[str, list[int]] = {job: [] for job in state}
    for _ in range(1000):
        pending = [PendingTiles(job, s[0], s[1], float(i), s[2]) for i, (job, s) in enumerate(state.items())]
        decision = next_batch(pending, max_batch, 0.0, now=100.0)
        if not decision.take:
            break
        assert sum(s.stop - s.start for s in decision.take) <= max_batch
        assert len({state[s.job_id][2] for s in decision.take}) == 1
        for piece in decision.take:
            seen[piece.job_id] += list(range(piece.start, piece.stop))
            state[piece.job_id][0] = piece.stop
    assert all(seen[job] == list(range(state[job][1])) for job in state)
