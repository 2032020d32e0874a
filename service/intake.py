"""From an HTTP upload to a priced Job: parameters, deadline, decode, cost in tiles (serving.md).

The shared front half of POST /upscale and POST /jobs. Decoding here (in a thread) gives the client
its 400/413/415 at once and the job its exact cost in model tiles (the unit of admission); the worker
decodes the same bytes again. Deadlines: `X-Deadline-Ms` header, else `deadline_ms` parameter
(milliseconds from arrival), else RSD_DEFAULT_DEADLINE_S; above RSD_MAX_DEADLINE_S is a 422.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from rsd.imagefile import ImageLimits
from rsd.imageops import tile_count
from rsd.noise import random_seed
from rsd.spec import ModelSpec
from service import metrics
from service.codec import decode_upload, read_upload
from service.jobs import Job, JobParams, new_job_id
from service.schemas import ApiError, UpscaleParams, first_error
from service.settings import ServiceSettings

#: Idempotency-Key: 1-128 visible ASCII characters
IDEMPOTENCY_KEY = r"^[!-~]+$"


def deadline_s(settings: ServiceSettings, query: dict[str, Any], deadline_header: int | None) -> float:
    """The request's time budget (header first, then the query), for the early admission check."""
    given = deadline_header if deadline_header is not None else query.get("deadline_ms")
    return settings.default_deadline_s if given is None else min(given / 1000, settings.max_deadline_s)


def _params(form: dict[str, str], query: dict[str, Any], deadline_header: int | None) -> UpscaleParams:
    merged: dict[str, Any] = {k: v for k, v in form.items() if k in UpscaleParams.model_fields}
    merged.update({k: v for k, v in query.items() if v is not None})
    if deadline_header is not None:
        merged["deadline_ms"] = deadline_header
    try:
        return UpscaleParams.model_validate(merged)
    except ValidationError as exc:
        raise ApiError(422, "invalid_parameters", first_error(exc.errors())) from exc


async def make_job(
    settings: ServiceSettings,
    spec: ModelSpec,
    limits: ImageLimits,
    request: Request,
    query: dict[str, Any],
    deadline_header: int | None,
    idempotency_key: str | None,
) -> Job:
    """Read, validate, decode and price an upload; raises ApiError with the documented status."""
    arrived = time.time()
    data, form = await read_upload(request, settings.max_bytes)
    params = _params(form, query, deadline_header)
    tile = params.tile or spec.default_tile
    if tile not in spec.tiles:
        raise ApiError(422, "invalid_parameters", f"tile {tile} is not one of the model's tiles {spec.tiles}")
    budget_s = settings.default_deadline_s if params.deadline_ms is None else params.deadline_ms / 1000
    if budget_s > settings.max_deadline_s:
        raise ApiError(422, "invalid_parameters", f"deadline {budget_s} s exceeds {settings.max_deadline_s} s")
    decoded = await run_in_threadpool(decode_upload, data, limits)
    metrics.INPUT_MEGAPIXELS.observe(decoded.height * decoded.width / 1e6)
    overlap = min(spec.default_overlap, tile // 2)  # a tile smaller than twice the default overlap
    job_params = JobParams(
        format=params.format or settings.default_format,
        quality=params.quality or settings.default_quality,
        seed=random_seed() if params.seed is None else params.seed,
        tile=tile,
        overlap=overlap,
    )
    # the same key must come with the same request: the bytes and the parameters the client chose
    explicit = params.model_dump(exclude={"deadline_ms"})
    fingerprint = hashlib.sha256(data + repr(sorted(explicit.items())).encode()).hexdigest()
    return Job(
        id=new_job_id(),
        params=job_params,
        data=data,
        cost_tiles=tile_count(decoded.height, decoded.width, tile, overlap, spec.lr_multiple),
        deadline=arrived + budget_s,
        width=decoded.width,
        height=decoded.height,
        created=arrived,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
    )
