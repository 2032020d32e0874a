"""Test doubles for the serving tests: a numpy Upscaler, its spec, images, and a direct reference.

FakeUpscaler is deterministic per tile (pixels + seed), like the real graph (architecture.md
invariant 2): upsampled pixels plus noise drawn from the tile's seed. So a batch made of any tiles gives
the same rows, and any change in how the service tiles, seeds, blends or encodes shows in the bytes.

fcfs_next_batch is the batching policy the fair one replaced (first come, first served by tile), for
tests that show what fairness changes.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from rsd.config import DDConfig, ScheduleConfig, UNetConfig, VQConfig
from rsd.imagefile import encode_image, read_image
from rsd.noise import draw_noise_batch, tile_seed
from rsd.pipeline import upscale_array
from rsd.spec import ModelSpec, write_spec
from service.batching import BatchDecision, BatchSlice, PendingTiles, next_batch

FAKE_SPEC = ModelSpec(
    name="fake",
    student=UNetConfig(
        image_size=16, in_channels=3, lq_size=16, model_channels=32, channel_mult=[1, 2], num_res_blocks=[1, 1],
        attention_resolutions=[16], num_head_channels=8, swin_embed_dim=32, window_size=8, noise_channels=1,
    ),
    autoencoder=VQConfig(embed_dim=3, n_embed=64, ddconfig=DDConfig(ch=32, ch_mult=[1, 1, 1], num_res_blocks=1)),
    schedule=ScheduleConfig(),
    tiles=[16, 32, 64],
    default_tile=32,
    default_overlap=8,
)  # fmt: skip


def write_fake_model(directory: Path) -> Path:
    """An artifact directory with only spec.json: enough for the API process (it never loads weights)."""
    directory.mkdir(parents=True, exist_ok=True)
    write_spec(directory, FAKE_SPEC)
    return directory


class FakeUpscaler:
    """run(lq (N,3,t,t) in [-1,1], seeds) -> (N,3,4t,4t): nearest x4 + 0.1 * noise(seed), clipped.

    delay_s_per_tile simulates compute; log_path appends the tile seeds of every batch it computes (one
    line per batch, O_APPEND so several processes can share it); crash_seed makes the process die (os._exit) on a tile
    with that seed; fail_seed raises on it; oom_above raises MemoryError for batches larger than that;
    gate (if given) holds every batch except warm-ups (all seeds 0) until it is set.
    """

    name = "fake-numpy-fp32"  # computes in float32; the dtype part is what a worker reports (rsd.precision)

    def __init__(
        self,
        delay_s_per_tile: float = 0.0,
        log_path: str | None = None,
        crash_seed: int | None = None,
        fail_seed: int | None = None,
        oom_above: int | None = None,
        gate: threading.Event | None = None,
    ) -> None:
        self.spec = FAKE_SPEC
        self.delay_s_per_tile = delay_s_per_tile
        self.log_path = log_path
        self.crash_seed = crash_seed
        self.fail_seed = fail_seed
        self.oom_above = oom_above
        self.gate = gate
        self.batch_sizes: list[int] = []
        self.closed = False

    def run(self, lq_tiles: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        n, channels, t, _ = lq_tiles.shape
        assert lq_tiles.dtype == np.float32 and channels == 3 and len(seeds) == n
        if self.gate is not None and set(seeds) != {0}:
            self.gate.wait(30)
        if self.oom_above is not None and n > self.oom_above:
            raise MemoryError(f"fake out of memory at batch {n}")
        if self.fail_seed is not None and self.fail_seed in seeds:
            raise RuntimeError("fake model failure on a poison tile")
        if self.crash_seed is not None and self.crash_seed in seeds:
            os._exit(17)
        self.batch_sizes.append(n)
        if self.log_path is not None and seeds:
            with open(self.log_path, "a") as log:
                log.write(" ".join(str(seed) for seed in seeds) + "\n")
        if self.delay_s_per_tile:
            time.sleep(self.delay_s_per_tile * n)
        up = np.repeat(np.repeat(lq_tiles, 4, axis=2), 4, axis=3)
        noise = draw_noise_batch([int(s) for s in seeds], 3, t, t)
        noise = np.repeat(np.repeat(noise, 4, axis=2), 4, axis=3)
        return np.clip(up + 0.1 * noise, -1.0, 1.0).astype(np.float32)

    def close(self) -> None:
        self.closed = True


def fcfs_next_batch(
    pending: Sequence[PendingTiles], cap: int, delay_s: float, now: float, rotation: Sequence[str] = ()
) -> BatchDecision:
    """First come, first served: the batch of the tile size next_batch picks, filled oldest job first.

    So a job's tiles wait until every older job of its size has had all of its own batched. `rotation`
    is ignored: the order is arrival alone.
    """
    decision = next_batch(pending, cap, delay_s, now)
    if not decision.take:
        return decision
    tile = next(p.tile for p in pending if p.job_id == decision.take[0].job_id)
    take: list[BatchSlice] = []
    room = cap
    for p in sorted((p for p in pending if p.tile == tile and p.remaining > 0), key=lambda p: p.ready_at):
        n = min(room, p.remaining)
        if n > 0:
            take.append(BatchSlice(p.job_id, p.start, p.start + n))
            room -= n
    return BatchDecision(take=tuple(take), wait_s=0.0)


def reference_bytes(
    data: bytes, seed: int, fmt: str = "png", quality: int = 90, tile: int | None = None, **effort: int
) -> bytes:
    """The backend called directly on one image: what the service must return for (image, seed);
    `effort`: encode_image's png_compress_level / webp_method, when the service sets them."""
    decoded = read_image(data)
    tile = tile or FAKE_SPEC.default_tile
    overlap = min(FAKE_SPEC.default_overlap, tile // 2)
    sr = upscale_array(FakeUpscaler(), decoded.rgb, seed, tile=tile, overlap=overlap)
    return encode_image(sr, decoded, fmt, quality, **effort)  # type: ignore[arg-type]


def first_tile_seed(seed: int) -> int:
    return tile_seed(seed, 0)


def png_bytes(width: int, height: int, mode: str = "RGB", seed: int = 0) -> bytes:
    """A random-content PNG of the given size and mode."""
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size
