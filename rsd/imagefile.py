"""Image files in and out, with the hygiene the service promises (serving.md "Image hygiene").

One module for the CLI and the HTTP service; numpy + Pillow only (the API process must stay light).
Reading caps the bytes, checks the pixel caps from the header before decoding, refuses animations,
decodes fully (truncation is an error), applies the EXIF orientation, keeps a fitting ICC profile and
reduces every mode to RGB uint8 (what the model sees) + alpha + mode family ("L" or "RGB"). Writing
converts the model's RGB output back to that family, re-attaches the separately resampled alpha,
embeds the profile. Bad input raises `ImageError` whose `code` the
service maps: empty/undecodable -> 400, unsupported -> 415, too_large -> 413 (serving.md).
The mode reduction lives in rsd.imagemodes; atomic file writes in rsd.atomicfile. Importing this
module changes no Pillow setting: the bomb guard is set where images are opened (`_open_checked`).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps

from rsd.imagemodes import ModeFamily, bit_depth, icc_for, reduce_mode
from rsd.kinds import OUTPUT_FORMATS, SUFFIX_FORMATS, OutputFormat, check_positive_int
from rsd.outscale import check_outscale, output_size, resize_plane

ErrorCode = Literal["empty", "undecodable", "unsupported", "too_large"]

#: encoder effort (serving.md "Output encoding"): encoding is the host's largest cost per result, so
#: the defaults favour speed. zlib level 1 writes a PNG 3.3-4.4x faster than level 6 for 16-20% more
#: bytes; libwebp method 1 writes 2.3-2.4x faster than its default 4 for 3-16% more bytes at the same
#: quality setting and PSNR (2-14 Mpx photos, `bench/encode_bench.py`). PNG stays lossless at every level.
PNG_COMPRESS_LEVELS = range(10)
WEBP_METHODS = range(7)
DEFAULT_PNG_COMPRESS_LEVEL = 1
DEFAULT_WEBP_METHOD = 1

#: formats accepted as input (Pillow format names); MPO is how Pillow names a JPEG carrying extra
#: pictures (camera depth maps, previews): it is a JPEG and its primary picture is used.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
#: formats with a reliable signature that we recognise only to answer "unsupported" (415) rather than
#: "undecodable" (400). Weak-signature plugins (TGA, SPIDER, ...) are left out so that random bytes
#: are not misnamed.
_RECOGNISED_UNSUPPORTED = (
    "AVIF", "BLP", "DCX", "DDS", "EPS", "FITS", "FLI", "ICNS", "ICO", "JPEG2000", "PPM", "PSD", "QOI",
    "SGI", "SUN", "WMF", "XBM", "XPM",
)  # fmt: skip

#: Pillow's decompression-bomb guard, set explicitly: Pillow warns above this many pixels and raises
#: above twice as many. Our own header check (ImageLimits) is the authoritative limit and may not exceed
#: it, so the guard only ever fires on images we reject anyway; it is a backstop for code paths
#: (frame seeks) that run before our check. Pillow reads it from a process global, which
#: `_open_checked` sets before each open (not at import: importing a module changes no setting).
PILLOW_MAX_IMAGE_PIXELS = 8192 * 8192


class ImageError(ValueError):
    """Bad input image. `code` names the kind of problem; the message is one line saying what is wrong."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code


@dataclass(frozen=True)
class ImageLimits:
    """Size caps checked before decoding.

    max_bytes: encoded size. max_input_pixels: H*W of the input. max_output_pixels: pixels of the
    final output, x`scale` or x`outscale` when given (rsd.outscale; at x4 the output is 16x the input
    area, so this is usually the binding cap: the defaults admit at most a 2048x2048 input, 8192x8192 out).
    """

    max_bytes: int = 20 * 1024 * 1024
    max_input_pixels: int = 4096 * 4096
    max_output_pixels: int = 8192 * 8192
    scale: int = 4
    outscale: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_input_pixels", "max_output_pixels", "scale"):
            check_positive_int(f"ImageLimits.{name}", getattr(self, name))
        check_outscale(self.outscale, self.scale)
        if self.max_input_pixels > PILLOW_MAX_IMAGE_PIXELS:
            raise ValueError(
                f"ImageLimits.max_input_pixels={self.max_input_pixels} exceeds the decoder's bomb guard "
                f"PILLOW_MAX_IMAGE_PIXELS={PILLOW_MAX_IMAGE_PIXELS}"
            )


@dataclass
class DecodedImage:
    """A decoded, oriented input image.

    rgb: (H, W, 3) uint8, what the model sees (grayscale replicated to 3 channels, method.md 5.1 step 1).
    alpha: (H, W) uint8 or None. mode_family: "L" (grayscale in, grayscale out) or "RGB".
    icc_profile: the source profile when its colour space matches the family, else None.
    source_format / source_mode: Pillow's names for the file ("PNG", "I;16", ...).
    bit_depth: 16 when the source stored more than 8 bits per sample (reduced to 8 bits here), else 8.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    mode_family: ModeFamily
    icc_profile: bytes | None
    source_format: str
    source_mode: str
    bit_depth: Literal[8, 16]

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def read_image(data: bytes, limits: ImageLimits | None = None) -> DecodedImage:
    """Decode encoded image bytes into a `DecodedImage`, or raise `ImageError`.

    Modes: 1/L -> L; I;16*/I (16-bit) -> L, reduced to 8 bits by keeping the high byte (`v >> 8`), the
    same reduction Pillow applies to 16-bit RGB(A) PNGs, so a 16-bit image reads the same whatever its
    channel count (the model is an 8-bit model; finer levels would be lost at its input anyway); I values
    outside 0..65535 are clipped; F (float) is read as intensity in [0, 1] and rounded to 8 bits.
    LA/La -> L + alpha; P/PA -> RGB, + alpha when the palette has transparency; RGBA/RGBa -> RGB +
    alpha; a tRNS colour key on L/RGB -> alpha; CMYK -> RGB (through its ICC profile when present, which is
    then dropped: the result is sRGB); YCbCr/LAB/HSV/RGBX -> RGB.
    """
    limits = limits or ImageLimits()
    # Escalate Pillow's bomb warning to an error for the open/decode below. catch_warnings swaps the
    # process-wide filter list; concurrent use can at worst leave this one escalation installed.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open_checked(data, limits)
        try:
            return _decode(image, data)
        finally:
            image.close()


#: EXIF orientations that turn the image by 90 degrees (the decoded image has width and height swapped)
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})


def read_header(data: bytes, limits: ImageLimits | None = None) -> tuple[int, int]:
    """(height, width) of the image as `read_image` would return it, from the header alone.

    Every check `read_image` makes before decoding (bytes, pixel caps, format, frames) is made here, so
    a caller that must answer at once (an HTTP API) rejects the same uploads without decoding pixels;
    only corrupt pixel data is left for the full decode to find.
    """
    limits = limits or ImageLimits()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open_checked(data, limits)
        try:
            width, height = image.size
            with contextlib.suppress(Exception):  # unreadable EXIF: read_image ignores it too
                if image.getexif().get(0x0112) in _TRANSPOSED_ORIENTATIONS:
                    width, height = height, width
            return height, width
        finally:
            image.close()


def _open_checked(data: bytes, limits: ImageLimits) -> Image.Image:
    """Byte cap, header parse and the header checks: the open image, not decoded yet."""
    if not data:
        raise ImageError("empty", "the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageError("too_large", f"the image has {len(data)} bytes, above the limit of {limits.max_bytes}")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Truncated files must fail to decode, not come back padded. Pillow's default is False; someone
        # in this process switched it: a programming error, not bad input.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; rsd.imagefile requires False")
    # the same value on every call, so concurrent decodes cannot disagree about it
    Image.MAX_IMAGE_PIXELS = PILLOW_MAX_IMAGE_PIXELS
    image = _open(data)
    try:
        _check_header(image, limits)
    except BaseException:
        image.close()
        raise
    return image


def read_image_file(path: str | os.PathLike[str], limits: ImageLimits | None = None) -> DecodedImage:
    """Read and decode an image file; the byte cap is checked on the file size before reading."""
    limits = limits or ImageLimits()
    size = os.stat(path).st_size
    if size > limits.max_bytes:
        raise ImageError("too_large", f"{os.fspath(path)} has {size} bytes, above the limit of {limits.max_bytes}")
    with open(path, "rb") as file:
        data = file.read(limits.max_bytes + 1)  # the file may have grown since stat
    return read_image(data, limits)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _decode_error(exc: Exception) -> Exception:
    """The ImageError for an exception Pillow raised while reading; MemoryError stays itself."""
    if isinstance(exc, MemoryError):
        return exc
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return ImageError("too_large", f"the image is too large to decode ({_one_line(exc)})")
    return ImageError("undecodable", f"the image data cannot be decoded ({_one_line(exc)})")


def _open(data: bytes) -> Image.Image:
    """Parse the header only (Pillow opens lazily); map failures to ImageError."""
    try:
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("too_large", f"the image is too large to decode ({_one_line(exc)})") from exc
    except Exception as exc:
        other = _identify_unsupported(data)
        if other is not None:
            raise ImageError(
                "unsupported", f"{other} images are not supported; send PNG, JPEG, WEBP, GIF, BMP or TIFF"
            ) from exc
        if isinstance(exc, Image.UnidentifiedImageError):
            message = "the data is not a readable PNG, JPEG, WEBP, GIF, BMP or TIFF image"
        else:
            message = f"the image header cannot be read ({_one_line(exc)})"
        raise ImageError("undecodable", message) from exc


def _identify_unsupported(data: bytes) -> str | None:
    """Name of a recognised but unsupported format, or None."""
    if data[4:8] == b"ftyp":  # ISO base media container: HEIC/HEIF/AVIF photos
        return f"HEIF/AVIF (brand {data[8:12].decode('ascii', 'replace').strip()!r})"
    Image.init()
    formats = [name for name in _RECOGNISED_UNSUPPORTED if name in Image.OPEN]
    try:
        with Image.open(io.BytesIO(data), formats=formats) as image:
            return str(image.format)
    except Exception:  # anything unreadable is simply not recognised
        return None


def _check_header(image: Image.Image, limits: ImageLimits) -> None:
    """Pixel caps, then frame count, from the header (no pixel data decoded yet)."""
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError("undecodable", f"the image header declares an empty size {width}x{height}")
    pixels = width * height
    if pixels > limits.max_input_pixels:
        raise ImageError(
            "too_large",
            f"the image is {width}x{height} = {pixels} pixels, above the input limit of {limits.max_input_pixels}",
        )
    out_height, out_width = output_size(height, width, limits.outscale, limits.scale)
    out_pixels = out_height * out_width
    if out_pixels > limits.max_output_pixels:
        factor = check_outscale(limits.outscale, limits.scale)
        raise ImageError(
            "too_large",
            f"the x{factor:g} output of a {width}x{height} image would have {out_pixels} pixels, "
            f"above the output limit of {limits.max_output_pixels}",
        )
    try:  # MPO extra frames are previews/depth maps of the same shot, not an animation
        animated = image.format != "MPO" and bool(getattr(image, "is_animated", False))
    except Exception as exc:  # finding frame 2 reads past the first frame: any corruption shows here
        raise _decode_error(exc) from exc
    if animated:
        raise ImageError(
            "unsupported",
            f"animated or multi-frame {image.format} images are not supported; send a single frame",
        )


def _decode(image: Image.Image, data: bytes) -> DecodedImage:
    """Full decode (truncation is an error), orientation, then reduction to RGB + alpha."""
    icc = image.info.get("icc_profile") or None
    try:
        image.load()
        oriented = ImageOps.exif_transpose(image)
    except Exception as exc:  # truncated or corrupt data of every kind; never a 500 for bad input
        raise _decode_error(exc) from exc
    source_mode = image.mode
    reduced = reduce_mode(oriented, icc)
    if reduced is None:
        raise ImageError("unsupported", f"image mode {oriented.mode!r} is not supported")
    rgb, alpha, family, icc = reduced
    return DecodedImage(
        rgb=rgb,
        alpha=alpha,
        mode_family=family,
        icc_profile=icc_for(icc, family),
        source_format=str(image.format),
        source_mode=source_mode,
        bit_depth=bit_depth(image, data),
    )


def upscale_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    """alpha: (H, W) uint8 -> (scale*H, scale*W) uint8, Pillow BICUBIC.

    Bicubic rather than Lanczos: it rings less at hard mask edges (cut-outs, text), and it is the same
    family of kernel as the model's own x4 conditioning path (method.md 5.1 step 4), so the mask edges
    sit where the upscaled content's edges do. Pillow's resize is pixel-centre aligned, like the model.
    """
    if alpha.ndim != 2 or alpha.dtype != np.uint8:
        raise ValueError(f"alpha must be (H, W) uint8, got {alpha.shape} {alpha.dtype}")
    check_positive_int("scale", scale)
    height, width = alpha.shape
    plane = Image.fromarray(np.ascontiguousarray(alpha))
    return np.asarray(plane.resize((width * scale, height * scale), Image.Resampling.BICUBIC))


def encode_image(
    sr_rgb: np.ndarray,
    source: DecodedImage,
    fmt: OutputFormat = "png",
    quality: int = 95,
    outscale: float | None = None,
    *,
    png_compress_level: int = DEFAULT_PNG_COMPRESS_LEVEL,
    webp_method: int = DEFAULT_WEBP_METHOD,
) -> bytes:
    """Encode the model output in the source's mode family, with its alpha and ICC profile.

    sr_rgb: (s*H, s*W, 3) uint8, an integer multiple s of the source size. `outscale` in (1, s]: the
    image and its resampled alpha are then resized with Lanczos to `output_size(H, W, outscale)`.
    Grayscale sources come back as L/LA (Pillow's ITU-R 601-2 luma of the output); RGB-family sources
    as RGB/RGBA. Alpha is the source alpha resampled (`upscale_alpha`); JPEG has no alpha, so the image
    is composited over white (transparent areas read as white, like most viewers show them). WebP has
    no gray mode: Pillow stores L as RGB with equal channels. EXIF is not copied (the orientation is
    already applied). `quality` (1..100) applies to JPEG and WebP; PNG is lossless.
    `png_compress_level` (zlib, 0..9) and `webp_method` (libwebp, 0..6) trade encode time for bytes.
    """
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(map(repr, OUTPUT_FORMATS))}, got {fmt!r}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an int in 1..100, got {quality!r}")
    for name, value, allowed in (
        ("png_compress_level", png_compress_level, PNG_COMPRESS_LEVELS),
        ("webp_method", webp_method, WEBP_METHODS),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
            raise ValueError(f"{name} must be an int in {allowed.start}..{allowed.stop - 1}, got {value!r}")
    if sr_rgb.ndim != 3 or sr_rgb.shape[2] != 3 or sr_rgb.dtype != np.uint8:
        raise ValueError(f"sr_rgb must be (H, W, 3) uint8, got {sr_rgb.shape} {sr_rgb.dtype}")
    height, width = source.height, source.width
    scale = sr_rgb.shape[0] // height
    if scale < 1 or sr_rgb.shape[:2] != (scale * height, scale * width):
        raise ValueError(f"sr_rgb size {sr_rgb.shape[:2]} is not an integer multiple of the source {height}x{width}")
    alpha = None if source.alpha is None else upscale_alpha(source.alpha, scale)
    if outscale is not None:
        final = output_size(height, width, outscale, scale)
        sr_rgb = resize_plane(sr_rgb, *final)
        alpha = None if alpha is None else resize_plane(alpha, *final)
    if fmt == "jpeg" and alpha is not None:
        a = alpha[..., None].astype(np.uint32)
        composited = (sr_rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255  # over white
        sr_rgb, alpha = composited.astype(np.uint8), None
    image = Image.fromarray(np.ascontiguousarray(sr_rgb))
    if source.mode_family == "L":
        image = image.convert("L")
    if alpha is not None:
        image.putalpha(Image.fromarray(alpha))
    options: dict[str, object] = {}
    if source.icc_profile is not None:
        options["icc_profile"] = source.icc_profile
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, "PNG", compress_level=png_compress_level, **options)
    elif fmt == "jpeg":
        image.save(buffer, "JPEG", quality=quality, **options)
    else:
        image.save(buffer, "WEBP", quality=quality, method=webp_method, **options)
    return buffer.getvalue()


def format_from_suffix(path: str | os.PathLike[str]) -> OutputFormat:
    """'png' | 'jpeg' | 'webp' from the file suffix (case-insensitive)."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        raise ValueError(
            f"cannot write {os.fspath(path)!r}: suffix {suffix or '(none)'!r} is not one of {', '.join(SUFFIX_FORMATS)}"
        )
    return SUFFIX_FORMATS[suffix]
