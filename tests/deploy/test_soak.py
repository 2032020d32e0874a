"""loadtests.soak: the checks judge memory growth and tail latency right, and a short real soak runs
against an embedded server (the 15-minute runs are in loadtests/RESULTS.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests import soak
from loadtests.client import RequestRecord

pytestmark = pytest.mark.timeout(240)


def _soak(rss_end: float, latency_end: float, redis_end: float = 10.0) -> soak.Soak:
    run = soak.Soak()
    for t in range(0, 101, 2):
        grow = t / 100
        rss = {"1 api": int((100 + grow * (rss_end - 100)) * 2**20)}
        used = int((10 + grow * (redis_end - 10)) * 2**20)
        run.samples.append(soak.MemorySample(float(t), rss, used))
    for i in range(90):
        latency = 0.2 if i < 60 else latency_end
        run.records.append(RequestRecord(i, 0, 0, i * 1.1, i * 1.1, latency, 200, ""))
    return run


def _options(**overrides: object):  # type: ignore[no-untyped-def]
    options = soak.build_parser().parse_args(["--embedded", "--seconds", "100", "--warmup-s", "20"])
    for key, value in overrides.items():
        setattr(options, key, value)
    return options


def test_checks_pass_flat_memory_and_fail_growth_or_a_slower_tail() -> None:
    flat = soak.checks(_soak(rss_end=101.0, latency_end=0.21), 100, _options())
    assert flat["ok"] and flat["rss"]["processes"]["1 api"]["growth"] < 0.02
    growing = soak.checks(_soak(rss_end=120.0, latency_end=0.21), 100, _options())
    assert not growing["ok"] and not growing["rss"]["ok"] and growing["p99"]["ok"]
    slower = soak.checks(_soak(rss_end=100.0, latency_end=0.5), 100, _options())
    assert not slower["ok"] and not slower["p99"]["ok"] and slower["p99"]["ratio"] == pytest.approx(2.5)
    redis_grows = soak.checks(_soak(rss_end=100.0, latency_end=0.2, redis_end=20.0), 100, _options())
    assert not redis_grows["redis_used_memory"]["ok"] and not redis_grows["ok"]


def test_short_soak_on_the_embedded_server(tmp_path: Path) -> None:
    out = tmp_path / "soak"
    options = soak.build_parser().parse_args(
        ["--embedded", "--seconds", "20", "--rate", "0.5", "--warmup-s", "5", "--sample-s", "1",
         "--env", "RSD_TORCH_THREADS=1", "--out", str(out)]
    )  # fmt: skip
    results = soak.run(options)
    verdict = results["checks"]
    assert verdict["errors"]["ok"], verdict["errors"]
    (name,) = verdict["rss"]["processes"]  # the one embedded process, sampled throughout
    assert name.endswith("embedded") and verdict["rss"]["processes"][name]["end_mib"] > 50
    assert verdict["p99"]["first_third_s"] is not None and results["requests"] >= 5
    saved = json.loads((out / "soak.json").read_text())
    assert len(saved["memory"]) >= 10 and saved["checks"]["errors"]["count"] == 0
    assert (out / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
