"""rsd.imagefile: decoding every mode into RGB + alpha, hygiene errors, encoding back."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from rsd import imagefile
from rsd.imagefile import (
    DecodedImage,
    ImageError,
    ImageLimits,
    encode_image,
    format_from_suffix,
    read_header,
    read_image,
    read_image_file,
    upscale_alpha,
)
from rsd.kinds import OUTPUT_FORMATS

RNG = np.random.default_rng(0)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw: bytes | None) -> bytes:
    """A minimal PNG written by hand (no IDAT when raw is None: a header-only file)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = b"" if raw is None else chunk(b"IDAT", zlib.compress(raw))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


def upscale4(rgb: np.ndarray) -> np.ndarray:
    """A stand-in for the model: nearest x4."""
    return np.repeat(np.repeat(rgb, 4, axis=0), 4, axis=1)


def decode_pillow(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def srgb_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# ---------------------------------------------------------------- decoding modes


def test_rgb_png_round_trip() -> None:
    rgb = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    decoded = read_image(encode(Image.fromarray(rgb), "PNG"))
    np.testing.assert_array_equal(decoded.rgb, rgb)
    assert decoded.alpha is None and decoded.mode_family == "RGB" and decoded.bit_depth == 8
    assert (decoded.source_format, decoded.source_mode) == ("PNG", "RGB")
    sr = upscale4(decoded.rgb)
    out = decode_pillow(encode_image(sr, decoded))
    assert out.mode == "RGB" and out.size == (28, 20)
    np.testing.assert_array_equal(np.asarray(out), sr)


def test_gray_png_stays_gray() -> None:
    gray = RNG.integers(0, 256, (6, 4), dtype=np.uint8)
    decoded = read_image(encode(Image.fromarray(gray), "PNG"))
    assert decoded.mode_family == "L" and decoded.alpha is None
    for channel in range(3):  # replicated for the model
        np.testing.assert_array_equal(decoded.rgb[..., channel], gray)
    out = decode_pillow(encode_image(upscale4(decoded.rgb), decoded))
    assert out.mode == "L" and out.size == (16, 24)
    np.testing.assert_array_equal(np.asarray(out), upscale4(gray[..., None])[..., 0])


def test_la_png_keeps_alpha_and_gray_family() -> None:
    la = RNG.integers(0, 256, (4, 5, 2), dtype=np.uint8)
    decoded = read_image(encode(Image.fromarray(la), "PNG"))
    assert decoded.mode_family == "L" and decoded.source_mode == "LA"
    np.testing.assert_array_equal(decoded.rgb[..., 0], la[..., 0])
    np.testing.assert_array_equal(decoded.alpha, la[..., 1])
    out = decode_pillow(encode_image(upscale4(decoded.rgb), decoded))
    assert out.mode == "LA" and out.size == (20, 16)
    np.testing.assert_array_equal(np.asarray(out)[..., 1], upscale_alpha(la[..., 1], 4))


@pytest.mark.parametrize("fmt, mode", [("png", "RGBA"), ("webp", "RGBA"), ("jpeg", "RGB")])
def test_rgba_alpha_reattached(fmt: str, mode: str) -> None:
    rgba = RNG.integers(0, 256, (6, 6, 4), dtype=np.uint8)
    decoded = read_image(encode(Image.fromarray(rgba), "PNG"))
    np.testing.assert_array_equal(decoded.rgb, rgba[..., :3])
    np.testing.assert_array_equal(decoded.alpha, rgba[..., 3])
    out = decode_pillow(encode_image(upscale4(decoded.rgb), decoded, fmt=fmt))  # type: ignore[arg-type]
    assert out.mode == mode and out.size == (24, 24)
    if fmt == "png":
        np.testing.assert_array_equal(np.asarray(out)[..., 3], upscale_alpha(rgba[..., 3], 4))


def test_jpeg_composites_alpha_over_white() -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red-ish colour, fully transparent on the left half, opaque on the right
    rgba[:, 4:, 3] = 255
    decoded = read_image(encode(Image.fromarray(rgba), "PNG"))
    out = np.asarray(decode_pillow(encode_image(upscale4(decoded.rgb), decoded, fmt="jpeg", quality=100)))
    assert np.abs(out[:, :6].astype(int) - 255).max() <= 3  # transparent -> white
    assert np.abs(out[:, -6:].astype(int) - [200, 0, 0]).max() <= 3  # opaque -> its colour


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_gives_alpha(fmt: str) -> None:
    index = RNG.integers(0, 3, (5, 6), dtype=np.uint8)
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255]
    image = Image.new("P", (6, 5))
    image.putpalette(palette + [0] * (768 - len(palette)))
    image.putdata(index.ravel().tolist())
    decoded = read_image(encode(image, fmt, transparency=1))
    assert decoded.mode_family == "RGB" and decoded.alpha is not None
    np.testing.assert_array_equal(decoded.alpha, np.where(index == 1, 0, 255))
    colours = np.array(palette, dtype=np.uint8).reshape(3, 3)
    opaque = index != 1
    np.testing.assert_array_equal(decoded.rgb[opaque], colours[index[opaque]])
    out = decode_pillow(encode_image(upscale4(decoded.rgb), decoded))
    assert out.mode == "RGBA"


def test_palette_without_transparency_is_rgb() -> None:
    index = RNG.integers(0, 2, (3, 3), dtype=np.uint8)
    image = Image.new("P", (3, 3))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putdata(index.ravel().tolist())
    decoded = read_image(encode(image, "PNG"))
    assert decoded.alpha is None and decoded.mode_family == "RGB" and decoded.source_mode == "P"
    np.testing.assert_array_equal(decoded.rgb, np.array([[10, 20, 30], [200, 100, 50]], np.uint8)[index])


def test_cmyk_jpeg_converted_to_rgb() -> None:
    image = Image.new("CMYK", (16, 16), (255, 0, 0, 0))  # pure cyan ink
    decoded = read_image(encode(image, "JPEG", quality=100))
    assert decoded.source_mode == "CMYK" and decoded.mode_family == "RGB" and decoded.icc_profile is None
    assert np.abs(decoded.rgb.astype(int) - [0, 255, 255]).max() <= 4


def test_16bit_gray_png_keeps_high_byte() -> None:
    values = RNG.integers(0, 65536, (4, 6), dtype=np.uint16)
    decoded = read_image(encode(Image.fromarray(values), "PNG"))
    assert decoded.source_mode.startswith("I;16") and decoded.bit_depth == 16 and decoded.mode_family == "L"
    np.testing.assert_array_equal(decoded.rgb[..., 1], (values >> 8).astype(np.uint8))


def test_16bit_rgb_png_matches_gray_rule() -> None:
    values = RNG.integers(0, 65536, (3, 5, 3), dtype=np.uint16).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in values)  # filter 0 per row
    decoded = read_image(png_bytes(5, 3, 16, 2, raw))
    assert decoded.bit_depth == 16 and decoded.mode_family == "RGB"
    np.testing.assert_array_equal(decoded.rgb, (values >> 8).astype(np.uint8))


def test_exif_orientation_applied() -> None:
    stored = np.zeros((32, 64, 3), dtype=np.uint8)  # quadrants: red, green / blue, white
    stored[:16, :32] = (255, 0, 0)
    stored[:16, 32:] = (0, 255, 0)
    stored[16:, :32] = (0, 0, 255)
    stored[16:, 32:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    decoded = read_image(encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes()))
    assert decoded.rgb.shape == (64, 32, 3)
    error = np.abs(decoded.rgb.astype(int) - np.rot90(stored, k=-1)).mean()
    wrong_way = np.abs(decoded.rgb.astype(int) - np.rot90(stored, k=1)).mean()
    assert error < 8 < wrong_way


def test_read_header_matches_the_decoded_size_and_applies_the_caps() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = encode(Image.new("RGB", (64, 32)), "JPEG", exif=exif.tobytes())
    assert read_header(turned) == read_image(turned).rgb.shape[:2] == (64, 32)
    plain = encode(Image.new("RGB", (30, 20)), "PNG")
    assert read_header(plain) == (20, 30)
    with pytest.raises(ImageError) as caught:
        read_header(plain, ImageLimits(max_input_pixels=500))
    assert caught.value.code == "too_large"
    with pytest.raises(ImageError) as caught:
        read_header(b"not an image at all")
    assert caught.value.code == "undecodable"


def test_one_pixel_image() -> None:
    decoded = read_image(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    assert decoded.rgb.tolist() == [[[1, 2, 3]]]
    out = decode_pillow(encode_image(upscale4(decoded.rgb), decoded))
    assert out.size == (4, 4) and np.all(np.asarray(out) == [1, 2, 3])


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_icc_profile_kept(fmt: str) -> None:
    profile = srgb_profile()
    decoded = read_image(encode(Image.new("RGB", (4, 4), (9, 99, 199)), "PNG", icc_profile=profile))
    assert decoded.icc_profile == profile
    out = decode_pillow(encode_image(upscale4(decoded.rgb), decoded, fmt=fmt))  # type: ignore[arg-type]
    assert out.info.get("icc_profile") == profile


def test_icc_profile_of_other_colour_space_dropped() -> None:
    # an RGB profile on a grayscale image does not describe the L output
    decoded = read_image(encode(Image.new("L", (4, 4), 7), "PNG", icc_profile=srgb_profile()))
    assert decoded.mode_family == "L" and decoded.icc_profile is None


def test_mpo_reads_primary_picture() -> None:
    first, second = Image.new("RGB", (8, 8), (250, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 250))
    decoded = read_image(encode(first, "MPO", save_all=True, append_images=[second]))
    assert decoded.source_format == "MPO" and decoded.rgb[..., 0].min() > 230


# ---------------------------------------------------------------- errors


def assert_code(data: bytes, code: str, limits: ImageLimits | None = None) -> ImageError:
    with pytest.raises(ImageError) as info:
        read_image(data, limits)
    assert info.value.code == code, str(info.value)
    assert "\n" not in str(info.value) and str(info.value)
    return info.value


def test_empty_bytes() -> None:
    assert_code(b"", "empty")


def test_truncated_png() -> None:
    data = encode(Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")
    assert_code(data[: len(data) // 2], "undecodable")


def test_truncated_jpeg() -> None:
    data = encode(Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    assert_code(data[: len(data) // 2], "undecodable")


def test_text_bytes() -> None:
    assert_code(b"this is plainly not an image\n" * 4, "undecodable")


def test_animated_gif() -> None:
    frames = [Image.new("RGB", (4, 4), colour) for colour in ("red", "green", "blue")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert "animated" in str(assert_code(data, "unsupported"))


def test_multi_page_tiff() -> None:
    pages = [Image.new("RGB", (4, 4), (i, i, i)) for i in (0, 99)]
    assert_code(encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]), "unsupported")


def test_recognised_other_format_is_unsupported() -> None:
    message = str(assert_code(encode(Image.new("RGB", (4, 4)), "PPM"), "unsupported"))
    assert "PPM" in message


@pytest.mark.parametrize("side", [100_000, 10_000])  # Pillow's bomb error / escalated bomb warning
def test_decompression_bomb_header(side: int) -> None:
    assert_code(png_bytes(side, side, 8, 2, None), "too_large")


def test_pixel_caps_checked_before_decoding() -> None:
    # A header-only PNG: decoding it would fail, so "too_large" proves the check ran first.
    assert_code(png_bytes(64, 64, 8, 2, None), "undecodable")
    message = str(assert_code(png_bytes(5000, 5000, 8, 2, None), "too_large"))
    assert "input limit" in message
    message = str(assert_code(png_bytes(3000, 3000, 8, 2, None), "too_large"))  # 9 MP in, 144 MP out
    assert "output" in message


def test_too_many_bytes() -> None:
    data = encode(Image.fromarray(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)), "PNG")
    assert_code(data, "too_large", ImageLimits(max_bytes=len(data) - 1))
    assert read_image(data, ImageLimits(max_bytes=len(data))).rgb.shape == (32, 32, 3)


def test_read_image_file_checks_size_first(tmp_path: Path) -> None:
    path = tmp_path / "in.png"
    path.write_bytes(encode(Image.new("RGB", (3, 2), (5, 6, 7)), "PNG"))
    assert read_image_file(path).rgb.shape == (2, 3, 3)
    with pytest.raises(ImageError) as info:
        read_image_file(path, ImageLimits(max_bytes=10))
    assert info.value.code == "too_large"


def test_limits_validated() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        ImageLimits(max_bytes=0)
    with pytest.raises(ValueError, match="max_input_pixels"):
        ImageLimits(max_input_pixels=imagefile.PILLOW_MAX_IMAGE_PIXELS + 1)


def test_refuses_to_run_with_truncation_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        read_image(encode(Image.new("RGB", (2, 2)), "PNG"))


# ---------------------------------------------------------------- encoding and writing


def rgb_source(height: int = 4, width: int = 4) -> DecodedImage:
    return read_image(encode(Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)), "PNG"))


def test_quality_changes_jpeg() -> None:
    source = rgb_source(8, 8)
    sr = upscale4(source.rgb)
    low, high = encode_image(sr, source, "jpeg", quality=10), encode_image(sr, source, "jpeg", quality=95)
    assert low != high and len(low) < len(high)


@pytest.mark.parametrize("quality", [0, 101, True, 9.5])
def test_quality_validated(quality: object) -> None:
    source = rgb_source()
    with pytest.raises(ValueError, match="quality"):
        encode_image(upscale4(source.rgb), source, "jpeg", quality=quality)  # type: ignore[arg-type]


def test_png_level_trades_bytes_and_stays_lossless() -> None:
    source = rgb_source(32, 32)
    sr = np.ascontiguousarray(upscale4(source.rgb) // 8 * 8)  # compressible, so the levels differ
    stored, fast, small = (encode_image(sr, source, "png", png_compress_level=level) for level in (0, 1, 9))
    assert len(stored) > len(fast) > len(small)
    for data in (stored, fast, small):
        assert np.array_equal(np.asarray(decode_pillow(data).convert("RGB")), sr)


def test_webp_method_is_applied() -> None:
    source = rgb_source(32, 32)
    sr = upscale4(source.rgb)
    assert encode_image(sr, source, "webp", webp_method=0) != encode_image(sr, source, "webp", webp_method=6)


@pytest.mark.parametrize(
    ("option", "value"),
    [("png_compress_level", -1), ("png_compress_level", 10), ("png_compress_level", True),
     ("webp_method", 7), ("webp_method", 1.0)],
)  # fmt: skip
def test_encoder_effort_validated(option: str, value: object) -> None:
    source = rgb_source()
    with pytest.raises(ValueError, match=option):
        encode_image(upscale4(source.rgb), source, "png", **{option: value})  # type: ignore[arg-type]


def test_encode_rejects_size_mismatch() -> None:
    source = rgb_source(4, 4)
    with pytest.raises(ValueError, match="multiple"):
        encode_image(np.zeros((16, 12, 3), np.uint8), source)


def test_upscale_alpha() -> None:
    alpha = np.full((3, 5), 77, dtype=np.uint8)
    alpha[1, 2] = 255
    out = upscale_alpha(alpha, 4)
    assert out.shape == (12, 20) and out.dtype == np.uint8
    assert out[0, 0] == 77 and out[6, 10] > 200  # flat stays flat, the bright pixel stays bright


def test_format_from_suffix() -> None:
    assert format_from_suffix("a/b.PNG") == "png"
    assert format_from_suffix("x.jpg") == format_from_suffix("x.jpeg") == "jpeg"
    assert format_from_suffix(Path("x.webp")) == "webp"
    with pytest.raises(ValueError, match=r"\.tif"):
        format_from_suffix("x.tif")


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP"])
def test_corrupted_input_only_raises_image_error(fmt: str) -> None:
    """Bad input must map to a status, never to an unexpected exception (serving.md: never a 500)."""
    rng = np.random.default_rng(5)
    data = encode(Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)), fmt)
    for trial in range(40):
        mutated = bytearray(data)
        if trial % 2:
            mutated = mutated[: int(rng.integers(0, len(data)))]
        for _ in range(int(rng.integers(1, 4)) * (1 - trial % 2)):
            mutated[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        try:
            decoded = read_image(bytes(mutated))
        except ImageError as error:
            assert error.code in ("empty", "undecodable", "unsupported", "too_large")
        else:
            assert decoded.rgb.dtype == np.uint8 and decoded.rgb.ndim == 3


def test_import_changes_no_pillow_setting() -> None:
    """The bomb guard is set when an image is opened, not as a side effect of importing the module."""
    code = """if True:
        import sys
        from PIL import Image
        default = Image.MAX_IMAGE_PIXELS
        import rsd.imagefile as f
        assert Image.MAX_IMAGE_PIXELS == default, "set at import"
        f.read_header(sys.stdin.buffer.read())
        assert Image.MAX_IMAGE_PIXELS == f.PILLOW_MAX_IMAGE_PIXELS, "not set when opening"
    """
    png = encode(Image.new("RGB", (2, 2)), "PNG")
    result = subprocess.run([sys.executable, "-c", code], input=png, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
