"""Locust users for POST /upscale (closed loop: each user waits for its answer, then thinks).

    pip install 'rsd-serve[load]'          # or: pip install locust
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 --headless -u 20 -r 5 -t 2m --csv out/locust

Environment:
    RSD_LOAD_IMAGES   sizes "32x32,64x64" (deterministic PNGs, the default) or a folder of images
    RSD_LOAD_PARAMS   extra query parameters, e.g. "tile=32&format=webp"
    RSD_LOAD_WAIT     think time range in seconds "MIN,MAX" (default "0.5,2")
    RSD_LOAD_SEED     seed of the generated images and the request seeds (default 0)

A 200 counts as a success only if it decodes to exactly 4x the input size. 429 (queue full) is a
failure of its own category, "429 queue full", so overload shows apart from real errors.
Locust measures closed-loop behaviour; for queueing under a fixed arrival rate use loadtests/openloop.py.
"""

from __future__ import annotations

import io
import itertools
import mimetypes
import os
import random
from pathlib import Path
from urllib.parse import parse_qsl

from locust import HttpUser, between, task
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def _generated(spec: str, seed: int) -> list[tuple[str, bytes, str, int, int]]:
    rng = random.Random(seed)
    samples = []
    for part in spec.split(","):
        width, height = (int(v) for v in part.lower().strip().split("x"))
        small = (max(1, width // 4), max(1, height // 4))
        coarse = Image.frombytes("RGB", small, rng.randbytes(small[0] * small[1] * 3))
        buffer = io.BytesIO()
        coarse.resize((width, height), Image.Resampling.BILINEAR).save(buffer, "PNG")
        samples.append((f"{width}x{height}.png", buffer.getvalue(), "image/png", width, height))
    return samples


def _folder(folder: Path) -> list[tuple[str, bytes, str, int, int]]:
    samples = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as image:
                kind = mimetypes.guess_type(path.name)[0] or f"image/{(image.format or 'png').lower()}"
                samples.append((path.name, data, kind, *image.size))
    if not samples:
        raise SystemExit(f"RSD_LOAD_IMAGES={folder}: no images there")
    return samples


SEED = int(os.environ.get("RSD_LOAD_SEED", "0"))
_IMAGES = os.environ.get("RSD_LOAD_IMAGES", "32x32,64x64")
SAMPLES = _folder(Path(_IMAGES)) if Path(_IMAGES).is_dir() else _generated(_IMAGES, SEED)
PARAMS = dict(parse_qsl(os.environ.get("RSD_LOAD_PARAMS", "")))
WAIT_MIN, WAIT_MAX = (float(v) for v in os.environ.get("RSD_LOAD_WAIT", "0.5,2").split(","))
_USERS = itertools.count()


class UpscaleUser(HttpUser):
    wait_time = between(WAIT_MIN, WAIT_MAX)

    def on_start(self) -> None:
        self.rng = random.Random(SEED * 1_000_003 + next(_USERS))  # each user its own reproducible sequence

    @task
    def upscale(self) -> None:
        name, data, kind, width, height = self.rng.choice(SAMPLES)
        params = {**PARAMS, "seed": str(self.rng.randrange(2**31))}
        with self.client.post(
            "/upscale", files={"image": (name, data, kind)}, params=params, name="/upscale", catch_response=True
        ) as response:
            if response.status_code == 429:
                response.failure("429 queue full")  # one category, whatever the Retry-After
            elif response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
            else:
                try:
                    with Image.open(io.BytesIO(response.content)) as image:
                        size = image.size
                except Exception:
                    response.failure("200 but not an image")
                    return
                if size != (4 * width, 4 * height):
                    response.failure(f"wrong size: {size} for a {width}x{height} input")
                else:
                    response.success()
