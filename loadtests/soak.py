"""Soak: a long open loop at a steady rate, watching memory (issue 13 bar 2; README "Load tests").

    python -m loadtests.soak --seconds 900 --embedded --out loadtests/results/soak-embedded
    python -m loadtests.soak --seconds 900 --spawn-local --out loadtests/results/soak-redis

Starts the server itself (`--embedded`: one `python -m service serve` without Redis; `--spawn-local`:
the loopback Redis stack of loadtests.local_stack) or uses `--url`. Without `--rate` it first measures
the peak (a closed loop) and runs at `--fraction` (0.8) of it. Every `--sample-s` it records the RSS of
every process of the server (each spawned process group, children included; psutil when installed,
else /proc) and Redis `used_memory`; every request's latency. Writes soak.json and soak.png, and checks:
0 errors; each process's RSS after the warm-up (`--warmup-s`, default the second minute) grows less
than `--rss-growth` (5%); Redis used_memory flat (grows less than `--redis-growth` or 1 MiB); p99 of the
last third of the requests within `--p99-ratio` (1.5x) of the first third's. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtests.client import RequestRecord, closed_loop, make_client, open_loop
from loadtests.local_stack import REPO, LocalStack, free_port, wait_http
from loadtests.plan import arrival_offsets, make_samples, plan_requests
from loadtests.report import percentile

#: the sizes of the issue's soak (48x48 to 48x104 uploads)
SOAK_SIZES = [(48, 48), (48, 64), (48, 80), (48, 104)]
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class MemorySample:
    t_s: float
    rss: dict[str, int]  # "pid name" -> bytes
    redis_used: int | None = None


@dataclass
class Soak:
    samples: list[MemorySample] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)


def _group_pids(pgids: set[int]) -> dict[int, str]:
    """Every live process in one of the process groups `pgids`: pid -> short name."""
    try:
        import psutil
    except ImportError:
        psutil = None
    found: dict[int, str] = {}
    if psutil is not None:
        for proc in psutil.process_iter(["pid", "name"]):
            with contextlib.suppress(psutil.Error):
                if os.getpgid(proc.pid) in pgids:
                    found[proc.pid] = proc.info["name"]
        return found
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) in pgids:  # field 5 of stat: the process group
                found[int(entry.name)] = name
    return found


def _rss_bytes(pid: int) -> int | None:
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return None


def _label(pid: int, name: str, cmdline_hint: dict[int, str]) -> str:
    return f"{pid} {cmdline_hint.get(pid, name)}"


class Sampler(threading.Thread):
    """Samples memory every `period_s` until stopped."""

    def __init__(self, pgids: dict[int, str], redis_url: str | None, period_s: float, soak: Soak) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.pgids, self.period_s, self.soak = pgids, period_s, soak
        self.redis = None
        if redis_url:
            import redis

            self.redis = redis.Redis.from_url(redis_url, socket_timeout=5)
        self.halt = threading.Event()
        self.start_t = time.monotonic()

    def run(self) -> None:
        while True:
            self.sample()
            if self.halt.wait(self.period_s):
                return

    def sample(self) -> None:
        rss: dict[str, int] = {}
        for pid, name in _group_pids(set(self.pgids)).items():
            size = _rss_bytes(pid)
            if size is not None:
                role = self.pgids.get(pid)  # the group leaders are named by their role
                rss[f"{pid} {role or name}"] = size
        used = None
        if self.redis is not None:
            with contextlib.suppress(Exception):
                used = int(self.redis.info("memory")["used_memory"])
        self.soak.samples.append(MemorySample(time.monotonic() - self.start_t, rss, used))


def _window_median(values: list[tuple[float, float]], start: float, stop: float) -> float | None:
    inside = [v for t, v in values if start <= t <= stop]
    return statistics.median(inside) if inside else None


def checks(soak: Soak, seconds: float, options: argparse.Namespace) -> dict[str, Any]:
    """The bar's checks; each with its numbers and `ok`."""
    warmup = options.warmup_s if options.warmup_s is not None else min(120.0, seconds / 4)
    window = max(options.sample_s * 3, min(30.0, (seconds - warmup) / 4))
    end = max(s.t_s for s in soak.samples)
    result: dict[str, Any] = {"warmup_s": warmup, "window_s": window}
    errors = [r for r in soak.records if not r.ok]
    kinds: dict[str, int] = {}
    for r in errors:
        kinds[r.error or str(r.status)] = kinds.get(r.error or str(r.status), 0) + 1
    result["errors"] = {"count": len(errors), "kinds": kinds, "ok": not errors}
    processes: dict[str, Any] = {}
    names = {name for s in soak.samples for name in s.rss}
    for name in sorted(names):
        series = [(s.t_s, float(s.rss[name])) for s in soak.samples if name in s.rss]
        first = _window_median(series, warmup, warmup + window)
        last = _window_median(series, end - window, end)
        if first is None or last is None:
            continue  # a short-lived helper process (not alive over the whole soak)
        growth = last / first - 1
        processes[name] = {"after_warmup_mib": first / 2**20, "end_mib": last / 2**20, "growth": growth,
                           "ok": growth < options.rss_growth}  # fmt: skip
    result["rss"] = {"processes": processes, "limit": options.rss_growth,
                     "ok": bool(processes) and all(p["ok"] for p in processes.values())}  # fmt: skip
    used = [(s.t_s, float(s.redis_used)) for s in soak.samples if s.redis_used is not None]
    if used:
        first, last = _window_median(used, warmup, warmup + window), _window_median(used, end - window, end)
        if first is not None and last is not None:
            growth = last / first - 1
            result["redis_used_memory"] = {"after_warmup_mib": first / 2**20, "end_mib": last / 2**20,
                                           "growth": growth, "limit": options.redis_growth,
                                           "ok": growth < options.redis_growth or last - first < 2**20}  # fmt: skip
    ordered = sorted(soak.records, key=lambda r: r.sent_s)
    third = max(1, len(ordered) // 3)
    p99_first = percentile([r.latency_s for r in ordered[:third] if r.ok], 99)
    p99_last = percentile([r.latency_s for r in ordered[-third:] if r.ok], 99)
    ratio = (p99_last / p99_first) if p99_first and p99_last else None
    result["p99"] = {"first_third_s": p99_first, "last_third_s": p99_last, "ratio": ratio,
                     "limit": options.p99_ratio, "ok": ratio is not None and ratio <= options.p99_ratio}  # fmt: skip
    result["ok"] = all(v["ok"] for v in result.values() if isinstance(v, dict) and "ok" in v)
    return result


def plot(soak: Soak, verdict: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rss, ax_lat) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    for name in sorted({n for s in soak.samples for n in s.rss}):
        series = [(s.t_s, s.rss[name] / 2**20) for s in soak.samples if name in s.rss]
        ax_rss.plot([t for t, _ in series], [v for _, v in series], label=f"RSS {name}")
    used = [(s.t_s, s.redis_used / 2**20) for s in soak.samples if s.redis_used is not None]
    if used:
        ax_rss.plot([t for t, _ in used], [v for _, v in used], "k--", label="Redis used_memory")
    ax_rss.axvline(verdict["warmup_s"], color="grey", linestyle=":", label="end of warm-up")
    ax_rss.set_ylabel("MiB")
    ax_rss.legend(fontsize=7, loc="upper left")
    ax_rss.set_title(title)
    ok = [r for r in soak.records if r.ok]
    ax_lat.plot([r.sent_s for r in ok], [r.latency_s for r in ok], ".", markersize=2, label="latency")
    bad = [r for r in soak.records if not r.ok]
    if bad:
        ax_lat.plot([r.sent_s for r in bad], [r.latency_s for r in bad], "rx", label="errors")
    ax_lat.set_xlabel("seconds")
    ax_lat.set_ylabel("latency (s)")
    ax_lat.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@contextlib.contextmanager
def embedded_server(workdir: Path, env: dict[str, str]):  # type: ignore[no-untyped-def]
    """`python -m service serve` without Redis (API + worker thread in one process), in its own session."""
    port = free_port()
    log = open(workdir / "embedded.log", "ab")  # noqa: SIM115 - owned by the process
    clean = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")}
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port)],
        cwd=REPO, env={**clean, "OMP_WAIT_POLICY": "PASSIVE", **env}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/readyz", 180, process)
        yield url, {process.pid: "embedded"}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


async def _peak(url: str, samples: list[Any], seconds: float, concurrency: int) -> float:
    async with make_client(url, 120) as client:
        records, elapsed = await closed_loop(client, samples, concurrency, seconds)
    done = sum(1 for r in records if r.ok)
    return done / elapsed


async def _soak(url: str, samples: list[Any], rate: float, seconds: float, soak: Soak) -> None:
    plan = plan_requests(arrival_offsets(rate, duration_s=seconds), len(samples), seed=13)
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(plan), desc=f"soak {rate:.2f}/s", unit="req", mininterval=5)
    except ImportError:
        bar = None
    async with make_client(url, 300) as client:
        records, _ = await open_loop(client, samples, plan, on_done=(lambda _: bar.update(1)) if bar else None)
    if bar is not None:
        bar.close()
    soak.records = records


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests.soak", description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--embedded", action="store_true", help="start one embedded `python -m service serve`")
    target.add_argument("--spawn-local", action="store_true", help="start the loopback Redis stack")
    target.add_argument("--url", help="a running server (only this process's client is measured then)")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rate", type=float, default=None, help="requests/s; default: --fraction of the peak")
    parser.add_argument("--fraction", type=float, default=0.8)
    parser.add_argument("--peak-seconds", type=float, default=30.0)
    parser.add_argument("--peak-concurrency", type=int, default=4)
    parser.add_argument("--apis", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--sample-s", type=float, default=2.0)
    parser.add_argument("--warmup-s", type=float, default=None)
    parser.add_argument("--rss-growth", type=float, default=0.05)
    parser.add_argument("--redis-growth", type=float, default=0.05)
    parser.add_argument("--p99-ratio", type=float, default=1.5)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server processes")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/soak"))
    return parser


def run(options: argparse.Namespace) -> dict[str, Any]:
    options.out.mkdir(parents=True, exist_ok=True)
    env = dict(item.split("=", 1) for item in options.env)
    samples = make_samples(SOAK_SIZES, variants=2, seed=13)
    with contextlib.ExitStack() as stack:
        redis_url: str | None = None
        if options.embedded:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
            url, groups = stack.enter_context(embedded_server(workdir, env))
            where = "embedded (python -m service serve, no Redis)"
        elif options.spawn_local:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
            local = stack.enter_context(LocalStack(workdir, apis=options.apis, workers=options.workers, env=env))
            url, redis_url = local.url, local.redis_url
            roles = ["redis"] + [f"worker-{i}" for i in range(options.workers)]
            roles += [f"api-{i}" for i in range(options.apis)] + ["nginx"]
            groups = {p.pid: role for p, role in zip(local.processes, roles, strict=False)}
            where = " ".join(local.describe())
        else:
            url, groups, where = options.url, {}, f"external server {options.url}"
        peak = None
        rate = options.rate
        if rate is None:
            peak = asyncio.run(_peak(url, samples, options.peak_seconds, options.peak_concurrency))
            rate = options.fraction * peak
        soak = Soak()
        sampler = Sampler(groups, redis_url, options.sample_s, soak)
        sampler.start()
        try:
            asyncio.run(_soak(url, samples, rate, options.seconds, soak))
        finally:
            sampler.halt.set()
            sampler.join(10)
    verdict = checks(soak, options.seconds, options)
    results = {
        "where": where, "seconds": options.seconds, "rate": rate, "peak_rps": peak, "fraction": options.fraction,
        "requests": len(soak.records), "checks": verdict,
        "memory": [asdict(s) for s in soak.samples],
        "latencies": [[r.sent_s, r.latency_s, r.status, r.error] for r in soak.records],
    }  # fmt: skip
    (options.out / "soak.json").write_text(json.dumps(results, indent=1))
    plot(soak, verdict, options.out / "soak.png", f"soak {options.seconds:.0f} s at {rate:.2f} req/s: {where[:80]}")
    return results


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    results = run(options)
    verdict = results["checks"]
    print(json.dumps({k: v for k, v in verdict.items() if k != "rss"}, indent=1))
    for name, proc in verdict["rss"]["processes"].items():
        print(f"RSS {name}: {proc['after_warmup_mib']:.1f} -> {proc['end_mib']:.1f} MiB ({proc['growth']:+.1%})")
    print(f"{results['requests']} requests at {results['rate']:.2f}/s; wrote {options.out}/soak.json, soak.png")
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
