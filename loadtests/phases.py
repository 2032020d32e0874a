"""The phases of a load run: warm-up, the closed-loop sweep that finds the peak, the open-loop rates.

Before and after each phase the `metrics_urls` are scraped for the server's queue wait, compute time
and batch sizes (loadtests.servermetrics); each phase's numbers come from loadtests.report.summarize.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx

from loadtests import report, servermetrics
from loadtests.client import RequestRecord, Sending, closed_loop, make_client, open_loop, send_request
from loadtests.plan import Arrivals, Planned, Sample, arrival_offsets, plan_requests


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
            await send_request(client, sample, Planned(-1, None, 0, i), 0.0, Sending(params, verify=False))
        peak = options.peak
        if peak is None:
            best, stale = 0.0, 0
            for concurrency in options.sweep:
                phase = await _phase(
                    client, options, f"closed c={concurrency}",
                    partial(  # run(done): done is closed_loop's last argument, on_done
                        closed_loop, client, options.samples, concurrency, options.phase_seconds,
                        options.seed + concurrency, params, options.verify,
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
                partial(open_loop, client, options.samples, plan, params, options.verify),  # + on_done
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
