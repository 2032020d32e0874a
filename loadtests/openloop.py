"""Open-loop load generator for POST /upscale: a closed-loop sweep finds the peak, then constant arrival rates.

    python -m loadtests.openloop --url http://127.0.0.1:8000 --metrics-url http://127.0.0.1:8000/metrics
    python -m loadtests.openloop --spawn-local --apis 2 --workers 2 --out loadtests/results \
        --report loadtests/RESULTS.md
    python -m loadtests.openloop --quick --url ...        # seconds, for a smoke test

Closed-loop tools hide queueing: a slow server slows the clients down and the queue never shows
(serving.md "Load testing"). So, two kinds of phase:

1. Closed loop, concurrency 1, 2, 4, ...: each of c clients sends its next request when the previous one
   answered, for `--phase-seconds`. Peak throughput = the best rate of correct answers (req/s).
2. Open loop at `--loads` x peak: arrivals scheduled by the wall clock (Poisson or evenly spaced),
   sent whether or not earlier ones have answered, so queueing shows up as latency, 429s or 504s.

Every request carries an explicit `seed`; every 200 is decoded and checked to be exactly 4x the input
(`--no-verify` skips it). Before and after each phase the `--metrics-url`s are scraped for the server's
queue wait, compute time and batch sizes. Writes `report.md`, `latency.png` and `results.json` into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
from PIL import Image

if not __package__:  # `python loadtests/openloop.py`: make `loadtests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtests import report, servermetrics

Arrivals = Literal["poisson", "fixed"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
_TIMING = re.compile(r"(\w+);dur=([0-9.]+)")


@dataclass(frozen=True)
class Sample:
    """One input image: encoded bytes and its size in pixels."""

    name: str
    data: bytes
    width: int
    height: int
    content_type: str = "image/png"


@dataclass(frozen=True)
class Planned:
    """One request of an open-loop phase: when (seconds from the phase start), which image, which seed."""

    index: int
    offset_s: float
    sample: int
    seed: int


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


# ---------------------------------------------------------------------------------------------- inputs
def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None:
        raise ValueError(f"image size {text!r} is not WIDTHxHEIGHT (e.g. 32x32)")
    return int(match.group(1)), int(match.group(2))


def make_samples(sizes: list[tuple[int, int]], variants: int = 2, seed: int = 0) -> list[Sample]:
    """Deterministic random-content PNGs, `variants` per size (smooth noise: a little like a photo)."""
    rng = np.random.default_rng(seed)
    samples = []
    for width, height in sizes:
        for variant in range(variants):
            coarse = rng.integers(0, 256, size=(max(1, height // 4), max(1, width // 4), 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            samples.append(Sample(f"{width}x{height}-{variant}", buffer.getvalue(), width, height))
    return samples


def load_samples(folder: Path) -> list[Sample]:
    """Every image file in `folder` (sorted by name); the size is read from the header."""
    samples = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            kind = (image.format or "png").lower()
        samples.append(Sample(path.name, data, width, height, f"image/{'jpeg' if kind == 'jpg' else kind}"))
    if not samples:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return samples


def samples_from_arg(text: str, variants: int, seed: int) -> list[Sample]:
    """`--images`: a folder, or sizes like "32x32,64x48"."""
    path = Path(text)
    if path.is_dir():
        return load_samples(path)
    return make_samples([parse_size(part) for part in text.split(",") if part.strip()], variants, seed)


# ---------------------------------------------------------------------------------------------- schedule
def arrival_offsets(
    rate: float,
    duration_s: float | None = None,
    count: int | None = None,
    arrivals: Arrivals = "poisson",
    rng: random.Random | None = None,
) -> list[float]:
    """Send times (seconds from the phase start) at `rate` per second, independent of any answer.

    Poisson: exponential gaps (mean 1/rate), what many independent users produce; fixed: evenly spaced.
    Ends at `duration_s` (arrivals strictly before it) or after `count` arrivals, whichever is given.
    """
    if rate <= 0:
        raise ValueError(f"arrival rate {rate} must be > 0")
    if (duration_s is None) == (count is None):
        raise ValueError("give exactly one of duration_s and count")
    rng = rng or random.Random(0)
    offsets: list[float] = []
    t = 0.0 if arrivals == "fixed" else rng.expovariate(rate)
    while (count is None or len(offsets) < count) and (duration_s is None or t < duration_s):
        offsets.append(t)
        t += 1.0 / rate if arrivals == "fixed" else rng.expovariate(rate)
    return offsets


def plan_requests(offsets: list[float], n_samples: int, seed: int) -> list[Planned]:
    """Which image and seed each arrival sends: images round-robin, seeds drawn from `seed`."""
    rng = random.Random(seed)
    return [Planned(i, offset, i % n_samples, rng.randrange(2**31)) for i, offset in enumerate(offsets)]


# ---------------------------------------------------------------------------------------------- requests
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
    client: httpx.AsyncClient,
    sample: Sample,
    sample_index: int,
    seed: int,
    index: int,
    phase_start: float,
    scheduled_s: float | None = None,
    params: dict[str, str] | None = None,
    verify: bool = True,
) -> RequestRecord:
    """POST /upscale (multipart `image`) and record the outcome; never raises for HTTP or network errors."""
    loop = asyncio.get_running_loop()
    sent = loop.time()
    files = {"image": (f"{sample.name}.png", sample.data, sample.content_type)}
    status, body, timing, error = 0, b"", {}, ""
    try:
        response = await client.post("/upscale", files=files, params={**(params or {}), "seed": str(seed)})
        status, body = response.status_code, response.content
        timing = _server_timing(response.headers.get("server-timing"))
    except httpx.TimeoutException:
        error = "timeout"
    except httpx.HTTPError as exc:
        error = f"transport_{type(exc).__name__}"
    latency = loop.time() - sent
    if not error:
        error = classify(status, body, sample, verify)
    return RequestRecord(
        index=index,
        sample=sample_index,
        seed=seed,
        scheduled_s=scheduled_s,
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

    async def one(item: Planned) -> RequestRecord:
        record = await send_request(
            client, samples[item.sample], item.sample, item.seed, item.index, start, item.offset_s, params, verify
        )
        if on_done is not None:
            on_done(record)
        return record

    for item in plan:
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

    async def client_loop() -> None:
        nonlocal counter
        while loop.time() - start < duration_s:
            index = counter
            counter += 1
            sample = index % len(samples)
            record = await send_request(
                client, samples[sample], sample, rng.randrange(2**31), index, start, None, params, verify
            )
            records.append(record)
            if on_done is not None:
                on_done(record)

    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return records, loop.time() - start


# ---------------------------------------------------------------------------------------------- phases
@dataclass
class Options:
    url: str
    samples: list[Sample]
    sweep: list[int]
    phase_seconds: float
    loads: list[float]
    peak: float | None = None
    arrivals: Arrivals = "poisson"
    metrics_urls: tuple[str, ...] = ()
    seed: int = 0
    params: tuple[tuple[str, str], ...] = ()
    timeout_s: float = 120.0
    warmup: int = 2
    verify: bool = True
    progress: bool = True
    pause_s: float = 1.0
    sweep_patience: int = 2


def _progress_bar(options: Options, desc: str, total: int | None) -> tuple[Any, Callable[[RequestRecord], None]]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="req", disable=not options.progress, dynamic_ncols=True)
    counts = {"ok": 0, "429": 0, "err": 0}

    def done(record: RequestRecord) -> None:
        key = "ok" if record.ok else ("429" if record.status == 429 else "err")
        counts[key] += 1
        bar.set_postfix(counts, refresh=False)
        bar.update(1)

    return bar, done


async def _phase(
    client: httpx.AsyncClient, options: Options, name: str, run: Callable[[Callable[[RequestRecord], None]], Any],
    total: int | None, extra: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    before = await servermetrics.scrape(list(options.metrics_urls))
    bar, done = _progress_bar(options, name, total)
    try:
        records, elapsed = await run(done)
    finally:
        bar.close()
    after = await servermetrics.scrape(list(options.metrics_urls))
    server = servermetrics.server_stats(servermetrics.delta(before, after)) if options.metrics_urls else None
    phase = {"name": name, **extra, "elapsed_s": elapsed, "summary": report.summarize(records, elapsed)}
    phase["server"] = server
    phase["scrape_errors"] = {**before.errors, **after.errors}
    phase["records"] = records
    return phase


async def run_phases(options: Options, transport: httpx.AsyncBaseTransport | None = None) -> dict[str, Any]:
    """Warm-up, the closed-loop sweep (unless `options.peak` is given), then the open-loop phases."""
    params = dict(options.params)
    sweep: list[dict[str, Any]] = []
    opened: list[dict[str, Any]] = []
    async with make_client(options.url, options.timeout_s, transport) as client:
        for i in range(options.warmup):
            sample = options.samples[i % len(options.samples)]
            await send_request(client, sample, 0, i, -1, 0.0, params=params, verify=False)
        peak = options.peak
        if peak is None:
            best, stale = 0.0, 0
            for concurrency in options.sweep:
                phase = await _phase(
                    client, options, f"closed c={concurrency}",
                    lambda done, c=concurrency: closed_loop(
                        client, options.samples, c, options.phase_seconds, options.seed + c, params, options.verify,
                        done,
                    ),
                    None, {"kind": "closed", "concurrency": concurrency},
                )  # fmt: skip
                sweep.append(phase)
                rate = phase["summary"]["throughput_rps"]
                stale = 0 if rate > best * 1.05 else stale + 1
                best = max(best, rate)
                await asyncio.sleep(options.pause_s)
                if stale >= options.sweep_patience:  # the throughput stopped growing: past the knee
                    break
            if best <= 0:
                raise RuntimeError("the closed-loop sweep completed no correct request: no peak to scale from")
            peak = best
        for load in options.loads:
            rate = load * peak
            offsets = arrival_offsets(
                rate, duration_s=options.phase_seconds, arrivals=options.arrivals,
                rng=random.Random(options.seed * 1000 + round(load * 100)),
            )  # fmt: skip
            if not offsets:
                offsets = [0.0]
            plan = plan_requests(offsets, len(options.samples), options.seed + round(load * 1000))
            phase = await _phase(
                client, options, f"open {load:.0%}",
                lambda done, plan=plan: open_loop(client, options.samples, plan, params, options.verify, done),
                len(plan),
                {"kind": "open", "load": load, "offered_rps": rate, "scheduled_s": options.phase_seconds},
            )  # fmt: skip
            opened.append(phase)
            await asyncio.sleep(options.pause_s)
    return {
        "url": options.url,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        # how to measure it again: the module and the arguments it was started with
        "command": " ".join(["python -m loadtests.openloop", *sys.argv[1:]]),
        "peak_rps": peak,
        "peak_from": "given" if options.peak is not None else "sweep",
        "arrivals": options.arrivals,
        "phase_seconds": options.phase_seconds,
        "images": [f"{s.name} ({s.width}x{s.height}, {len(s.data)} B)" for s in options.samples],
        "params": params,
        "metrics_urls": list(options.metrics_urls),
        "verify": options.verify,
        "sweep": sweep,
        "open": opened,
    }


# ---------------------------------------------------------------------------------------------- CLI
def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests.openloop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="service base URL (or the load balancer's)")
    parser.add_argument("--images", default="32x32,64x64", help="sizes WxH,... (generated PNGs) or a folder")
    parser.add_argument("--variants", type=int, default=2, help="generated images per size")
    parser.add_argument("--sweep-concurrency", type=_ints, default=[1, 2, 4, 8, 16])
    parser.add_argument("--sweep-patience", type=int, default=2, help="stop after this many levels without +5%%")
    parser.add_argument("--phase-seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--loads", type=_floats, default=[0.5, 0.8, 0.95, 1.1], help="open-loop rates / peak")
    parser.add_argument("--peak", type=float, default=None, help="peak req/s: skip the closed-loop sweep")
    parser.add_argument("--arrivals", choices=["poisson", "fixed"], default="poisson")
    parser.add_argument("--metrics-url", action="append", default=[], help="a /metrics URL (repeat, or comma list)")
    parser.add_argument("--param", action="append", default=[], help="extra query parameter KEY=VALUE (tile=32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120.0, help="client timeout per request, seconds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests before the first phase")
    parser.add_argument("--no-verify", action="store_true", help="do not decode the answers")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results"), help="folder for the outputs")
    parser.add_argument("--report", type=Path, default=None, help="markdown report path (default OUT/report.md)")
    parser.add_argument("--quick", action="store_true", help="tiny run (seconds): sweep 1,2; loads 0.5,1.1")
    local = parser.add_argument_group("--spawn-local: redis + API replicas + workers + nginx on loopback")
    local.add_argument("--spawn-local", action="store_true", help="start the stack, run against nginx, stop it")
    local.add_argument("--apis", type=int, default=2)
    local.add_argument("--workers", type=int, default=2)
    local.add_argument("--model", default=None, help="artifact directory for the workers (default RSD_MODEL/bundled)")
    local.add_argument("--worker-threads", type=int, default=1, help="RSD_TORCH_THREADS per worker")
    local.add_argument("--no-nginx", action="store_true", help="round-robin is skipped: load goes to the first API")
    local.add_argument("--env", action="append", default=[], help="KEY=VALUE for every service process")
    return parser


def _pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{what} {item!r} is not KEY=VALUE")
        pairs.append((key, value))
    return pairs


def options_from_args(args: argparse.Namespace) -> Options:
    if args.quick:
        args.sweep_concurrency, args.phase_seconds, args.loads = [1, 2], min(args.phase_seconds, 2.0), [0.5, 1.1]
        args.warmup = min(args.warmup, 1)
        if args.images == build_parser().get_default("images"):
            args.images = "16x16"
    metrics_urls = tuple(url for group in args.metrics_url for url in group.split(",") if url.strip())
    return Options(
        url=args.url.rstrip("/"),
        samples=samples_from_arg(args.images, args.variants, args.seed),
        sweep=args.sweep_concurrency,
        phase_seconds=args.phase_seconds,
        loads=args.loads,
        peak=args.peak,
        arrivals=args.arrivals,
        metrics_urls=metrics_urls,
        seed=args.seed,
        params=tuple(_pairs(args.param, "--param")),
        timeout_s=args.timeout,
        warmup=args.warmup,
        verify=not args.no_verify,
        progress=not args.no_progress,
        pause_s=0.2 if args.quick else 1.0,
        sweep_patience=args.sweep_patience,
    )


def host_description() -> str:
    """CPU model and count (numbers from different hosts are not comparable)."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def run(options: Options, out: Path, report_path: Path | None = None, notes: list[str] | None = None) -> dict[str, Any]:
    """Run every phase and write report.md (or `report_path`), latency.png and results.json into `out`."""
    results = asyncio.run(run_phases(options))
    results["notes"] = notes or []
    results["host"] = host_description()
    report.write_all(results, out, report_path)
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = options_from_args(args)
    out: Path = args.out
    if not args.spawn_local:
        run(options, out, args.report)
    else:
        from loadtests.local_stack import LocalStack

        env = dict(_pairs(args.env, "--env"))
        workdir = Path(tempfile.mkdtemp(prefix="rsd-loadtest-"))
        print(f"local stack: logs, nginx prefix and redis dir in {workdir}", file=sys.stderr)
        with LocalStack(
            workdir, apis=args.apis, workers=args.workers, model=args.model,
            worker_threads=args.worker_threads, nginx=not args.no_nginx, env=env,
        ) as stack:  # fmt: skip
            options.url = stack.url
            options.metrics_urls = (*stack.metrics_urls, *options.metrics_urls)
            run(options, out, args.report, stack.describe())
    print(f"wrote {args.report or out / 'report.md'}, {out / 'latency.png'}, {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
