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
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

from loadtests import report

# The names below are the load generator's public interface, used by tests and other tools as
# `openloop.NAME`; they live in loadtests.plan, loadtests.client and loadtests.phases.
from loadtests.client import RequestRecord, Sending, classify, closed_loop, make_client, open_loop, send_request
from loadtests.phases import Options, run_phases
from loadtests.plan import Planned, Sample, arrival_offsets, make_samples, plan_requests, samples_from_arg

__all__ = [
    "Options",
    "Planned",
    "RequestRecord",
    "Sample",
    "Sending",
    "arrival_offsets",
    "classify",
    "closed_loop",
    "main",
    "make_client",
    "make_samples",
    "open_loop",
    "plan_requests",
    "run",
    "run_phases",
    "send_request",
]

DEFAULT_IMAGES = "32x32,64x64"
QUICK_IMAGES = "16x16"


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests.openloop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="service base URL (or the load balancer's)")
    parser.add_argument(
        "--images", default=None, help=f"sizes WxH,... (generated PNGs) or a folder (default {DEFAULT_IMAGES})"
    )
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
    images = args.images if args.images is not None else (QUICK_IMAGES if args.quick else DEFAULT_IMAGES)
    metrics_urls = tuple(url for group in args.metrics_url for url in group.split(",") if url.strip())
    return Options(
        url=args.url.rstrip("/"),
        samples=samples_from_arg(images, args.variants, args.seed),
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
