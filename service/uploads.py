"""Parsing uploads: the request body (multipart field `image` or a raw image body) under the byte cap,
and the image header for the size checks (serving.md "HTTP contract", "Image hygiene").

The API reads only the header (rsd.imagefile.read_header: byte cap, pixel caps, format, frames); the
worker decodes the pixels. Image errors map to statuses through the one table, service.schemas.ERROR_STATUS.
"""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import Message

from rsd.imagefile import ImageError, ImageLimits, read_header
from service.schemas import ApiError
from service.settings import ServiceSettings


def image_limits(settings: ServiceSettings, scale: int = 4, outscale: float | None = None) -> ImageLimits:
    """The caps for one job: the output-pixel cap applies to the final size (x`outscale` when given)."""
    return ImageLimits(
        max_bytes=settings.max_bytes,
        max_input_pixels=settings.max_input_pixels,
        max_output_pixels=settings.max_output_pixels,
        scale=scale,
        outscale=outscale,
    )


def image_size(data: bytes, limits: ImageLimits) -> tuple[int, int]:
    """(height, width) from the header, or ApiError with the documented status."""
    try:
        return read_header(data, limits)
    except ImageError as error:
        raise ApiError(error.code, str(error)) from error


#: room for multipart boundaries and the small form fields around the image part
MULTIPART_SLACK = 64 * 1024


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, dict[str, str]]:
    """(image bytes, form fields) from a multipart field `image` or a raw body with an image type.

    The byte cap is enforced before the body is read fully: a declared Content-Length above it is
    refused at once, and the streamed body is cut off as soon as it passes the cap (413).
    """
    content_type = request.headers.get("content-type", "").lower()
    multipart = content_type.startswith("multipart/form-data")
    if not multipart and not content_type.startswith("image/"):
        raise ApiError(
            "unsupported",
            f"content type {content_type or '(none)'!r}: send multipart/form-data with a field 'image', "
            "or the image bytes with an image/* content type",
        )
    cap = max_bytes + (MULTIPART_SLACK if multipart else 0)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise ApiError("too_large", f"the request body has {declared} bytes, above the limit of {cap}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise ApiError("too_large", f"the request body exceeds the limit of {cap} bytes")
    if not multipart:
        return bytes(body), {}
    return await _parse_multipart(request, bytes(body))


async def _parse_multipart(request: Request, body: bytes) -> tuple[bytes, dict[str, str]]:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except (MultiPartException, HTTPException, ValueError) as exc:
        raise ApiError("bad_multipart", f"the multipart body cannot be parsed: {exc}") from exc
    try:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise ApiError("missing_image", "the multipart body has no file field 'image'")
        data = await upload.read()
        fields = {key: value for key, value in form.multi_items() if isinstance(value, str)}
    finally:
        await form.close()
    return data, fields
