"""bench/device_sim.py runs (the busy-fraction benchmark cannot rot): one short window per worker.

Not a timing test: it checks the simulated device's outputs and accounting, and that both workers
serve the photo uploads without a failure; the figures themselves come from the benchmark run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from rsd.spec import read_spec

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
from device_sim import SimulatedDevice, measure, photo_uploads  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def test_simulated_device_returns_x4_outputs_and_counts_its_time() -> None:
    device = SimulatedDevice(read_spec(REPO / "models" / "rsd-tiny"), ms_per_tile=5)
    tiles = np.random.default_rng(0).uniform(-1, 1, (3, 3, 16, 16)).astype(np.float32)
    out = device.run(tiles, [1, 2, 3])
    assert out.shape == (3, 3, 64, 64) and out.dtype == np.float32
    assert np.array_equal(out[:, :, ::4, ::4], tiles)
    start, stop = device.intervals[0]
    assert stop - start >= 0.015
    assert device.busy_s(start, stop) == pytest.approx(stop - start)
    assert device.busy_s(stop, stop + 1) == 0.0


@pytest.mark.parametrize("pipeline", [True, False])
def test_both_workers_serve_the_photo_uploads(pipeline: bool) -> None:
    uploads = photo_uploads(4)
    assert {fmt for _, fmt in uploads} == {"png", "webp"}
    device = SimulatedDevice(read_spec(REPO / "models" / "rsd-tiny"), ms_per_tile=1)
    window = measure(device, uploads[:2], pipeline, window_s=1.0, warmup_s=0.5)
    assert window.failed == 0 and window.images_per_s > 0
    assert 0 < window.busy <= 1
