"""Sending requests to POST /upscale and recording what came back: one request, an open loop, a closed loop.

An open loop sends each planned request at its time whether or not earlier ones have answered (so
queueing shows as latency, 429s or 504s); a closed loop's clients each wait for their answer first.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx
from PIL import Image

from loadtests.plan import Planned, Sample

_TIMING = re.compile(r"(\w+);dur=([0-9.]+)")


@dataclass
class RequestRecord:
    """What happened to one request. `error` is "" for a correct 200, else a category (see `classify`)."""

    index: int
    sample: int
    seed: int
    scheduled_s: float | None  # open loop: when it was due (from the phase start); closed loop: None
    sent_s: float  # when it was sent (from the phase start)
    latency_s: float  # send to the last byte of the answer (or to the failure)
    status: int  # HTTP status; 0 when no answer came (timeout, connection error)
    error: str
    digest: str = ""  # sha256 of a 200's body
    server_queue_ms: float | None = None  # from Server-Timing
    server_compute_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


@dataclass(frozen=True)
class Sending:
    """How every request of a phase is sent: extra query parameters, and whether a 200 is decoded and
    checked to be exactly 4x the input."""

    params: Mapping[str, str] = field(default_factory=dict)
    verify: bool = True


def make_client(url: str, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """No connection limit: an open-loop client must never queue on its own pool."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    return httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits, transport=transport)


def classify(status: int, body: bytes, sample: Sample, verify: bool) -> str:
    """ "" for a correct answer; else rejected_429, http_<status>, undecodable or wrong_size."""
    if status == 429:
        return "rejected_429"
    if status != 200:
        return f"http_{status}"
    if not verify:
        return ""
    try:
        with Image.open(io.BytesIO(body)) as image:
            size = image.size
    except Exception:
        return "undecodable"
    return "" if size == (4 * sample.width, 4 * sample.height) else "wrong_size"


def _server_timing(header: str | None) -> dict[str, float]:
    return {name: float(value) for name, value in _TIMING.findall(header or "")}


async def send_request(
    client: httpx.AsyncClient, sample: Sample, planned: Planned, phase_start: float, how: Sending = Sending()
) -> RequestRecord:
    """POST /upscale (multipart `image`, `planned.seed`) and record the outcome; never raises for HTTP or
    network errors. `sample` is the image `planned.sample` names; times are from `phase_start`."""
    loop = asyncio.get_running_loop()
    sent = loop.time()
    files = {"image": (f"{sample.name}.png", sample.data, sample.content_type)}
    status, body, timing, error = 0, b"", {}, ""
    try:
        response = await client.post("/upscale", files=files, params={**how.params, "seed": str(planned.seed)})
        status, body = response.status_code, response.content
        timing = _server_timing(response.headers.get("server-timing"))
    except httpx.TimeoutException:
        error = "timeout"
    except httpx.HTTPError as exc:
        error = f"transport_{type(exc).__name__}"
    latency = loop.time() - sent
    if not error:
        error = classify(status, body, sample, how.verify)
    return RequestRecord(
        index=planned.index,
        sample=planned.sample,
        seed=planned.seed,
        scheduled_s=planned.offset_s,
        sent_s=sent - phase_start,
        latency_s=latency,
        status=status,
        error=error,
        digest=hashlib.sha256(body).hexdigest() if status == 200 else "",
        server_queue_ms=timing.get("queue"),
        server_compute_ms=timing.get("compute"),
    )


async def open_loop(
    client: httpx.AsyncClient,
    samples: list[Sample],
    plan: list[Planned],
    params: dict[str, str] | None = None,
    verify: bool = True,
    on_done: Callable[[RequestRecord], None] | None = None,
) -> tuple[list[RequestRecord], float]:
    """Send each planned request at its time, whatever the earlier ones are doing; wait for all answers.

    Returns the records in plan order and the elapsed seconds from the phase start to the last answer.
    """
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.02
    tasks: list[asyncio.Task[RequestRecord]] = []
    how = Sending(params or {}, verify)

    async def one(item: Planned) -> RequestRecord:
        record = await send_request(client, samples[item.sample], item, start, how)
        if on_done is not None:
            on_done(record)
        return record

    for item in plan:
        if item.offset_s is None:
            raise ValueError(f"planned request {item.index} has no send time: an open loop needs one for each")
        delay = start + item.offset_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(item)))
    records = list(await asyncio.gather(*tasks))
    return records, loop.time() - start


async def closed_loop(
    client: httpx.AsyncClient,
    samples: list[Sample],
    concurrency: int,
    duration_s: float,
    seed: int = 0,
    params: dict[str, str] | None = None,
    verify: bool = True,
    on_done: Callable[[RequestRecord], None] | None = None,
) -> tuple[list[RequestRecord], float]:
    """`concurrency` clients, each sending its next request when the last answered, until `duration_s`.

    Returns the records (in completion order) and the seconds from the start to the last answer.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    rng = random.Random(seed)
    records: list[RequestRecord] = []
    counter = 0
    how = Sending(params or {}, verify)

    async def client_loop() -> None:
        nonlocal counter
        while loop.time() - start < duration_s:
            index = counter
            counter += 1
            planned = Planned(index, None, index % len(samples), rng.randrange(2**31))
            record = await send_request(client, samples[planned.sample], planned, start, how)
            records.append(record)
            if on_done is not None:
                on_done(record)

    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return records, loop.time() - start
