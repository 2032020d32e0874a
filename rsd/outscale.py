"""Any output scale in (1, 4]: the model's x4 result resized with Lanczos, alpha alike (numpy/Pillow only).

The one home of the rule, shared by `rsd upscale --outscale`, the service's `outscale` parameter and the
output-pixel limit (rsd.imagefile.ImageLimits checks the final size, not the x4 one). Sizes follow
Real-ESRGAN's `--outscale`: the final side is floor(side x outscale).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

#: the model's own scale: the largest output scale (nothing is upscaled past what the model made)
MODEL_SCALE = 4


def check_outscale(outscale: float | None, scale: int = MODEL_SCALE) -> float:
    """`outscale` as a float in (1, scale]; None means the model's scale. Anything else is an error."""
    if outscale is None:
        return float(scale)
    if isinstance(outscale, bool) or not isinstance(outscale, int | float) or not math.isfinite(outscale):
        raise ValueError(f"outscale must be a number in (1, {scale}], got {outscale!r}")
    if not 1 < outscale <= scale:
        raise ValueError(f"outscale {outscale:g} must be in (1, {scale}]")
    return float(outscale)


def output_size(height: int, width: int, outscale: float | None, scale: int = MODEL_SCALE) -> tuple[int, int]:
    """(H', W') of the final image for an H x W input: floor(side x outscale), at least 1."""
    factor = check_outscale(outscale, scale)
    # the epsilon keeps exact products exact (45 x 2.2 = 99.00000000000001, 100 x 0.29 would be 28.99...)
    return tuple(max(1, math.floor(side * factor + 1e-9)) for side in (height, width))  # type: ignore[return-value]


def resize_plane(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) or (h, w, 3) uint8 -> (height, width[, 3]) uint8, Pillow Lanczos (pixel-centre aligned)."""
    if plane.dtype != np.uint8 or plane.ndim not in (2, 3):
        raise ValueError(f"expected an (h, w) or (h, w, 3) uint8 plane, got {plane.shape} {plane.dtype}")
    if plane.shape[:2] == (height, width):
        return plane
    image = Image.fromarray(np.ascontiguousarray(plane))
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS))
