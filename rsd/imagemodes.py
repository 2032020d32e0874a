"""Pillow's image modes reduced to what the model sees: RGB uint8, alpha, mode family and profile.

The decoding half of rsd.imagefile's work once Pillow has decoded the pixels: which mode becomes
which family, how 16-bit and float samples become 8 bits, CMYK through its profile, and which ICC
profile may travel with the output. numpy + Pillow only.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image

ModeFamily = Literal["L", "RGB"]
#: (rgb (H, W, 3) uint8, alpha (H, W) uint8 | None, mode family, ICC profile | None)
Reduced = tuple[np.ndarray, np.ndarray | None, ModeFamily, bytes | None]


def reduce_mode(image: Image.Image, icc: bytes | None) -> Reduced | None:
    """(rgb (H,W,3) u8, alpha (H,W) u8 | None, family, icc) for every mode Pillow yields, None for a
    mode it cannot reduce; the rules are listed at rsd.imagefile.read_image."""
    mode = image.mode
    transparent = image.has_transparency_data
    if mode in ("1", "L") and not transparent:
        return _gray(np.asarray(image.convert("L")), None, icc)
    if mode in ("1", "L", "LA", "La"):
        la = np.asarray(image.convert("LA"))
        return _gray(la[..., 0], la[..., 1], icc)
    if mode.startswith("I;16") or mode == "I":
        samples = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        return _gray((samples >> 8).astype(np.uint8), None, icc)
    if mode == "F":
        intensity = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
        return _gray(np.round(intensity * 255.0).astype(np.uint8), None, icc)
    if mode == "CMYK":
        return np.asarray(_cmyk_to_rgb(image, icc)), None, "RGB", None
    if mode in ("RGBA", "RGBa", "PA") or (mode in ("P", "RGB") and transparent):
        rgba = np.asarray(image.convert("RGBA"))
        return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3]), "RGB", icc
    if mode in ("P", "RGB", "RGBX", "YCbCr", "LAB", "HSV"):
        return np.asarray(image.convert("RGB")), None, "RGB", icc
    return None


def _gray(gray: np.ndarray, alpha: np.ndarray | None, icc: bytes | None) -> Reduced:
    rgb = np.repeat(gray[..., None], 3, axis=2)  # method.md 5.1 step 1: gray replicated to 3 channels
    return rgb, None if alpha is None else np.ascontiguousarray(alpha), "L", icc


def _cmyk_to_rgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """Through the embedded CMYK profile to sRGB when possible (print CMYK differs a lot from the naive
    formula), else Pillow's naive conversion."""
    if icc is not None and icc[16:20] == b"CMYK":
        try:
            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
            if converted is not None:
                return converted
        except Exception:  # no littlecms or a broken profile: fall back to the naive formula
            pass
    return image.convert("RGB")


def icc_for(icc: bytes | None, family: ModeFamily) -> bytes | None:
    """Keep a profile only if its colour space (ICC header bytes 16..20) is the output's."""
    if icc is None:
        return None
    expected = b"GRAY" if family == "L" else b"RGB "
    return icc if icc[16:20] == expected else None


def bit_depth(image: Image.Image, data: bytes) -> Literal[8, 16]:
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return 16
    if image.format == "PNG" and data[12:16] == b"IHDR":
        return 16 if data[24] > 8 else 8  # IHDR bit depth byte
    if image.format == "TIFF":
        bits = getattr(image, "tag_v2", {}).get(258, 8)  # BitsPerSample
        bits = max(bits) if isinstance(bits, tuple) else bits
        return 16 if int(bits) > 8 else 8
    return 8
