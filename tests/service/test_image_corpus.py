"""A corpus of bad and tricky inputs built here: each gets its documented status and JSON error, never a
500; the good ones come back x4 with the right orientation, mode family, alpha and ICC profile."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageCms

from tests.service.conftest import embedded_client, wait_client_ready
from tests.service.fakes import FakeUpscaler, reference_bytes, write_fake_model

pytestmark = pytest.mark.timeout(120)

MAX_BYTES = 300_000
MAX_INPUT_PIXELS = 250_000


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _noise(width: int, height: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def _rgb(width: int = 24, height: int = 16) -> Image.Image:
    return Image.fromarray(_noise(width, height))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_with_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height (8-bit gray) with a tiny, incomplete IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _animated(fmt: str) -> bytes:
    frames = [Image.fromarray(_noise(16, 16, seed=i)) for i in range(3)]
    if fmt == "GIF":
        frames = [frame.convert("P") for frame in frames]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _corrupt_idat() -> bytes:
    data = bytearray(_save(_rgb(), "PNG"))
    start = data.index(b"IDAT") + 8
    data[start : start + 20] = bytes(20)
    return bytes(data)


def _exif_rotated() -> bytes:
    """Stored 24x16, left half black, right half white, orientation 6 (display: rotate 90 deg CW)."""
    pixels = np.zeros((16, 24, 3), np.uint8)
    pixels[:, 12:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())


def _gray_alpha() -> Image.Image:
    planes = _noise(24, 16, 2)
    return Image.merge("LA", [Image.fromarray(planes[..., 0]), Image.fromarray(planes[..., 1])])


def _cmyk_jpeg() -> bytes:
    return _save(_rgb().convert("CMYK"), "JPEG", quality=95)


def _png16() -> bytes:
    values = np.random.default_rng(1).integers(0, 65536, (16, 20), dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    return _save(image, "PNG")


def _png16_rgb() -> bytes:
    # 16-bit RGB PNG written by hand (Pillow cannot write it): IHDR bit depth 16, colour type 2
    rows = np.random.default_rng(2).integers(0, 65536, (12, 10, 3), dtype=np.uint16).astype(">u2")
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    ihdr = struct.pack(">IIBBBBB", 10, 12, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def _palette_transparent() -> bytes:
    image = Image.fromarray(_noise(20, 12)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _save(image, "PNG", transparency=0)


def _with_icc() -> bytes:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return _save(_rgb(), "PNG", icc_profile=profile)


def _bomb() -> bytes:
    return _save(Image.new("L", (4000, 4000)), "PNG", optimize=True)  # ~16 MP of zeros, a few kB


def _ftyp() -> bytes:
    return b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)


MULTIPART = "multipart/form-data"
# name -> (bytes factory, content type, expected status, expected error code or None for success)
BAD: dict[str, tuple[Callable[[], bytes], str, int, str]] = {
    "zero_bytes": (lambda: b"", MULTIPART, 400, "empty"),
    "zero_bytes_raw": (lambda: b"", "image/png", 400, "empty"),
    "truncated_png": (lambda: _save(_rgb(), "PNG")[:-40], MULTIPART, 400, "undecodable"),
    "truncated_jpeg": (lambda: _save(_rgb(64, 64), "JPEG")[:300], MULTIPART, 400, "undecodable"),
    "truncated_gif": (lambda: _save(_rgb().convert("P"), "GIF")[:40], MULTIPART, 400, "undecodable"),
    "header_only_png": (lambda: _save(_rgb(), "PNG")[:33], MULTIPART, 400, "undecodable"),
    "corrupt_idat": (_corrupt_idat, MULTIPART, 400, "undecodable"),
    "text_as_png": (lambda: b"hello, this is not an image\n" * 4, "image/png", 400, "undecodable"),
    "html_as_jpeg": (lambda: b"<html><body>nope</body></html>", "image/jpeg", 400, "undecodable"),
    "svg": (
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>',
        "image/svg+xml",
        400,
        "undecodable",
    ),
    "random_bytes": (lambda: np.random.default_rng(3).bytes(2048), MULTIPART, 400, "undecodable"),
    "decompression_bomb": (_bomb, MULTIPART, 413, "too_large"),
    "huge_dimensions": (lambda: _png_with_header(60000, 60000), MULTIPART, 413, "too_large"),
    "too_many_pixels": (lambda: _png_with_header(600, 600), "image/png", 413, "too_large"),
    "too_many_bytes": (lambda: _save(Image.fromarray(_noise(400, 300)), "BMP"), MULTIPART, 413, "too_large"),
    "animated_gif": (lambda: _animated("GIF"), MULTIPART, 415, "unsupported"),
    "animated_png": (lambda: _animated("PNG"), MULTIPART, 415, "unsupported"),
    "animated_webp": (lambda: _animated("WEBP"), MULTIPART, 415, "unsupported"),
    "ppm_format": (lambda: _save(_rgb(), "PPM"), MULTIPART, 415, "unsupported"),
    "heic_container": (_ftyp, MULTIPART, 415, "unsupported"),
    "text_plain_raw": (lambda: _save(_rgb(), "PNG"), "text/plain", 415, "unsupported"),
    "octet_stream_raw": (lambda: _save(_rgb(), "PNG"), "application/octet-stream", 415, "unsupported"),
}

# name -> (bytes factory, expected output mode, expected (width, height) of the input as displayed)
GOOD: dict[str, tuple[Callable[[], bytes], str, tuple[int, int]]] = {
    "rgb_png": (lambda: _save(_rgb(), "PNG"), "RGB", (24, 16)),
    "one_pixel": (lambda: _save(_rgb(1, 1), "PNG"), "RGB", (1, 1)),
    "thin_strip": (lambda: _save(_rgb(70, 1), "PNG"), "RGB", (70, 1)),
    "grayscale": (lambda: _save(_rgb().convert("L"), "PNG"), "L", (24, 16)),
    "grayscale_alpha": (lambda: _save(_gray_alpha(), "PNG"), "LA", (24, 16)),
    "rgba": (lambda: _save(Image.fromarray(_noise(24, 16, 4), "RGBA"), "PNG"), "RGBA", (24, 16)),
    "palette_transparency": (_palette_transparent, "RGBA", (20, 12)),
    "palette_opaque_gif": (lambda: _save(_rgb().convert("P"), "GIF"), "RGB", (24, 16)),
    "png_16bit_gray": (_png16, "L", (20, 16)),
    "png_16bit_rgb": (_png16_rgb, "RGB", (10, 12)),
    "cmyk_jpeg": (_cmyk_jpeg, "RGB", (24, 16)),
    "exif_rotated_jpeg": (_exif_rotated, "RGB", (16, 24)),
    "bmp": (lambda: _save(_rgb(), "BMP"), "RGB", (24, 16)),
    "tiff": (lambda: _save(_rgb(), "TIFF"), "RGB", (24, 16)),
    "webp": (lambda: _save(_rgb(), "WEBP", lossless=True), "RGB", (24, 16)),
    "icc_profile": (_with_icc, "RGB", (24, 16)),
}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    model = write_fake_model(tmp_path_factory.mktemp("model"))
    test_client, _, _ = embedded_client(
        model,
        FakeUpscaler(),
        max_bytes=MAX_BYTES,
        max_input_pixels=MAX_INPUT_PIXELS,
        max_output_pixels=16 * MAX_INPUT_PIXELS,
    )
    with test_client:
        wait_client_ready(test_client)
        yield test_client


def _send(client: TestClient, data: bytes, content_type: str):  # type: ignore[no-untyped-def]
    if content_type == MULTIPART:
        return client.post(
            "/upscale", files={"image": ("upload", data, "application/octet-stream")}, params={"seed": 5}
        )
    return client.post("/upscale", content=data, headers={"Content-Type": content_type}, params={"seed": 5})


def test_corpus_is_large_enough() -> None:
    assert len(BAD) + len(GOOD) >= 25


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_gets_documented_status(client: TestClient, name: str) -> None:
    factory, content_type, status, code = BAD[name]
    response = _send(client, factory(), content_type)
    assert response.status_code == status, (name, response.text)
    assert response.json() == {"error": {"code": code, "message": response.json()["error"]["message"]}}
    assert response.json()["error"]["message"]


def test_oversized_declared_body_is_refused_before_reading(client: TestClient) -> None:
    def body() -> Iterator[bytes]:
        yield b"\0" * 1024
        raise AssertionError("the body must not be read past the declared length check")

    response = client.post(
        "/upscale", content=body(), headers={"Content-Type": "image/png", "Content-Length": str(10 * MAX_BYTES)}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


def test_malformed_multipart_is_400(client: TestClient) -> None:
    response = client.post(
        "/upscale",
        content=b'--x\r\nContent-Disposition: form-data; name="image"\r\n\r\nabc',
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert response.status_code in (400, 422), response.text
    assert "error" in response.json()


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_input_comes_back_x4_in_its_mode_family(client: TestClient, name: str) -> None:
    factory, mode, (width, height) = GOOD[name]
    data = factory()
    response = _send(client, data, MULTIPART)
    assert response.status_code == 200, (name, response.text)
    with Image.open(io.BytesIO(response.content)) as out:
        assert out.format == "PNG"
        assert out.size == (4 * width, 4 * height)
        assert out.mode == mode
        if name == "icc_profile":
            with Image.open(io.BytesIO(data)) as source:
                assert out.info.get("icc_profile") == source.info["icc_profile"]
        if name == "exif_rotated_jpeg":
            gray = np.asarray(out.convert("L"), dtype=np.float32)
            # displayed upright: the stored left (black) half is now the top half
            assert gray[: 4 * height // 2 - 8].mean() < 60 and gray[4 * height // 2 + 8 :].mean() > 195
    assert response.content == reference_bytes(data, 5)
