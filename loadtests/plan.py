"""What a load run sends: the input images, the arrival times of an open-loop phase, each request's seed.

Pure and deterministic (no network): the same arguments give the same plan, so a test can replay it.
"""

from __future__ import annotations

import io
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

Arrivals = Literal["poisson", "fixed"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Sample:
    """One input image: encoded bytes and its size in pixels."""

    name: str
    data: bytes
    width: int
    height: int
    content_type: str = "image/png"


@dataclass(frozen=True)
class Planned:
    """One request: when (seconds from the phase start; None in a closed loop, where a request goes when
    the previous one answered), which image (an index into the samples), which seed."""

    index: int
    offset_s: float | None
    sample: int
    seed: int


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None:
        raise ValueError(f"image size {text!r} is not WIDTHxHEIGHT (e.g. 32x32)")
    return int(match.group(1)), int(match.group(2))


def make_samples(sizes: list[tuple[int, int]], variants: int = 2, seed: int = 0) -> list[Sample]:
    """Deterministic random-content PNGs, `variants` per size (smooth noise: a little like a photo)."""
    rng = np.random.default_rng(seed)
    samples = []
    for width, height in sizes:
        for variant in range(variants):
            coarse = rng.integers(0, 256, size=(max(1, height // 4), max(1, width // 4), 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            samples.append(Sample(f"{width}x{height}-{variant}", buffer.getvalue(), width, height))
    return samples


def load_samples(folder: Path) -> list[Sample]:
    """Every image file in `folder` (sorted by name); the size is read from the header."""
    samples = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            kind = (image.format or "png").lower()
        samples.append(Sample(path.name, data, width, height, f"image/{'jpeg' if kind == 'jpg' else kind}"))
    if not samples:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return samples


def samples_from_arg(text: str, variants: int, seed: int) -> list[Sample]:
    """`--images`: a folder, or sizes like "32x32,64x48"."""
    path = Path(text)
    if path.is_dir():
        return load_samples(path)
    return make_samples([parse_size(part) for part in text.split(",") if part.strip()], variants, seed)


def arrival_offsets(
    rate: float,
    duration_s: float | None = None,
    count: int | None = None,
    arrivals: Arrivals = "poisson",
    rng: random.Random | None = None,
) -> list[float]:
    """Send times (seconds from the phase start) at `rate` per second, independent of any answer.

    Poisson: exponential gaps (mean 1/rate), what many independent users produce; fixed: evenly spaced.
    Ends at `duration_s` (arrivals strictly before it) or after `count` arrivals, whichever is given.
    """
    if rate <= 0:
        raise ValueError(f"arrival rate {rate} must be > 0")
    if (duration_s is None) == (count is None):
        raise ValueError("give exactly one of duration_s and count")
    rng = rng or random.Random(0)
    offsets: list[float] = []
    t = 0.0 if arrivals == "fixed" else rng.expovariate(rate)
    while (count is None or len(offsets) < count) and (duration_s is None or t < duration_s):
        offsets.append(t)
        t += 1.0 / rate if arrivals == "fixed" else rng.expovariate(rate)
    return offsets


def plan_requests(offsets: list[float], n_samples: int, seed: int) -> list[Planned]:
    """Which image and seed each arrival sends: images round-robin, seeds drawn from `seed`."""
    rng = random.Random(seed)
    return [Planned(i, offset, i % n_samples, rng.randrange(2**31)) for i, offset in enumerate(offsets)]
