"""From an HTTP upload to a priced Job: parameters, deadline, header check, cost in tiles (serving.md).

The shared front half of POST /upscale and POST /jobs. The parameters arrive validated (UpscaleParams,
completed here by the form fields); only the image header is read here (in a thread), which gives the
client its 400/413/415 at once and the job its exact cost in model tiles (the unit of admission); the
worker decodes the pixels. Deadlines: `X-Deadline-Ms` header, else `deadline_ms` parameter (milliseconds
from arrival), else RSD_DEFAULT_DEADLINE_S; above RSD_MAX_DEADLINE_S is a 422.
"""

from __future__ import annotations

import hashlib
import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from rsd.imageops import tile_count
from rsd.noise import random_seed
from service import metrics
from service.jobs import Job, JobParams, new_job_id
from service.schemas import ApiError, UpscaleParams
from service.served import ServedModels
from service.settings import ServiceSettings
from service.uploads import image_limits, image_size, read_upload


def deadline_s(settings: ServiceSettings, params: UpscaleParams) -> float:
    """The request's time budget in seconds (for the early admission check, before the form is read)."""
    given = params.budget_ms
    return settings.default_deadline_s if given is None else min(given / 1000, settings.max_deadline_s)


async def make_job(settings: ServiceSettings, models: ServedModels, request: Request, params: UpscaleParams) -> Job:
    """Read the upload, pick the model, check the header and price it; raises ApiError with the
    documented status."""
    arrived = time.time()
    data, form = await read_upload(request, settings.max_bytes)
    params = params.with_form(form)
    served = models.pick(params.model)
    spec = served.spec
    limits = image_limits(settings, spec.scale, params.outscale)
    tile = params.tile or spec.default_tile
    if tile not in spec.tiles:
        raise ApiError("invalid_parameters", f"tile {tile} is not one of the model's tiles {spec.tiles}")
    budget_ms = params.budget_ms
    budget_s = settings.default_deadline_s if budget_ms is None else budget_ms / 1000
    if budget_s > settings.max_deadline_s:
        raise ApiError("invalid_parameters", f"deadline {budget_s} s exceeds {settings.max_deadline_s} s")
    height, width = await run_in_threadpool(image_size, data, limits)
    metrics.INPUT_MEGAPIXELS.observe(height * width / 1e6)
    overlap = min(spec.default_overlap, tile // 2)  # a tile smaller than twice the default overlap
    job_params = JobParams(
        format=params.format or settings.default_format,
        quality=params.quality or settings.default_quality,
        seed=random_seed() if params.seed is None else params.seed,
        tile=tile,
        overlap=overlap,
        model=served.name,
        outscale=params.outscale,
    )
    # the same key must come with the same request: the bytes and the parameters the client chose
    fingerprint = hashlib.sha256(data + repr(sorted(params.explicit().items())).encode()).hexdigest()
    return Job(
        id=new_job_id(),
        params=job_params,
        data=data,
        cost_tiles=tile_count(height, width, tile, overlap, spec.lr_multiple),
        deadline=arrived + budget_s,
        width=width,
        height=height,
        created=arrived,
        idempotency_key=params.idempotency_key,
        fingerprint=fingerprint,
        result_bytes_bound=4 * height * width * spec.scale**2,
    )
