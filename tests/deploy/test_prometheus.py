"""A real Prometheus (Debian's 2.42) scraping the loopback topology while the load generator runs.

loadtests.local_stack.LocalStack starts Redis, 2 API replicas, 2 workers with `--metrics-port` and nginx with
the repo's config; deploy/prometheus/prometheus.yml is rendered with loopback targets (same jobs, same rule
files, 1 s scrape and evaluation). After a known number of open-loop requests through nginx: every target is
up, every dashboard expression and recording rule evaluates without error (the core ones with data), the
request count Prometheus reports is the generator's within 5%, and p50/p90 from the histogram are within 15%
of what the client measured (docs/observability.md "Latency buckets"). The table is printed and written.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from loadtests import local_stack, openloop, report
from rsd.kinds import BUNDLED_MODEL
from tests.deploy.test_dashboard import EXPRESSIONS

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES = ROOT / "deploy" / "prometheus" / "rules"

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not os.path.exists(PROMETHEUS), reason=f"prometheus not found at {PROMETHEUS}"),
    pytest.mark.skipif(not os.path.exists(local_stack.NGINX), reason=f"nginx not found at {local_stack.NGINX}"),
    pytest.mark.skipif(not os.path.exists(local_stack.REDIS_SERVER), reason="redis-server not found"),
]

SIZES = [(16, 16), (24, 24), (32, 32), (48, 40)]  # 1 to 4 tiles of 32: a spread of latencies
REQUESTS, RATE = 60, 5.0
CORE = {"Requests/s (/upscale)", "Latency /upscale (200): p50 / p90 / p99", "Tiles/s", "Queue wait: p50 / p90 / p99"}
CORE_RULES = {"route:rsd_requests:rate5m", "route:rsd_request_duration_seconds:p90_5m", "rsd_tiles:rate5m",
              "rsd_queue_wait_seconds:p90_5m"}  # fmt: skip


def render_config(api_ports: list[int], worker_ports: list[int], own_port: int) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with loopback targets, the repo's rule files, 1 s intervals."""
    config = yaml.safe_load(CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES / Path(pattern).name) for pattern in config["rule_files"]]
    targets = {"rsd-api": api_ports, "rsd-worker": worker_ports, "prometheus": [own_port]}
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [f"127.0.0.1:{port}" for port in targets.pop(job["job_name"])]}]
    assert not targets, f"jobs missing from {CONFIG}: {sorted(targets)}"
    return config


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    return list(answer["data"]["result"])


def _scalar(base: str, expr: str) -> float:
    result = _query(base, expr)
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


def _wait_for(what: str, check: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_prometheus_counts_and_quantiles_match_the_load_generator(tmp_path: Path) -> None:
    began = time.monotonic()
    env = {"RSD_MODEL": str(BUNDLED_MODEL)}
    with local_stack.LocalStack(tmp_path / "stack", apis=2, workers=2, env=env) as stack:
        port = local_stack.free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump(render_config(stack.api_ports, stack.worker_ports, port)))
        log = open(tmp_path / "prometheus.log", "ab")  # noqa: SIM115 - owned by the process
        prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        stack.processes.append(prometheus)  # killed with the stack
        base = f"http://127.0.0.1:{port}"
        local_stack.wait_http(f"{base}/-/ready", 60, prometheus)
        _wait_for("every target up", lambda: len(_query(base, "up == 1")) == 5)
        started_s = time.monotonic() - began

        samples = openloop.make_samples(SIZES, variants=2, seed=5)
        plan = openloop.plan_requests(openloop.arrival_offsets(RATE, count=REQUESTS, arrivals="fixed"), len(samples), 7)

        async def load() -> tuple[list[openloop.RequestRecord], float]:
            async with openloop.make_client(stack.url, timeout_s=120) as client:
                return await openloop.open_loop(client, samples, plan, params={"tile": "32"})

        records, elapsed = asyncio.run(load())
        summary = report.summarize(records, elapsed)
        ok = [r for r in records if r.ok]
        assert summary["errors"] == 0 and len(ok) >= 0.9 * REQUESTS, summary

        upscale = 'rsd_request_duration_seconds{route="/upscale"}'.replace("seconds", "seconds_count")
        _wait_for(  # two more scrapes after the last answer
            "the last requests scraped", lambda: _scalar(base, f"sum({upscale})") >= len(records), timeout_s=20
        )
        time.sleep(2.5)
        counted = _scalar(base, f"sum({upscale})")
        assert abs(counted - len(records)) <= 0.05 * len(records), (counted, len(records))
        assert _scalar(base, "count(up == 1)") == 5, _query(base, "up")

        buckets = 'rsd_request_duration_seconds_bucket{route="/upscale",status="200"}'
        table = []
        for q, key in ((0.5, "p50_s"), (0.9, "p90_s"), (0.99, "p99_s")):
            server = _scalar(base, f"histogram_quantile({q}, sum by (le) ({buckets}))")
            table.append({"quantile": q, "client_s": summary[key], "prometheus_s": server,
                          "ratio": server / summary[key]})  # fmt: skip
        for row in table[:2]:  # p99 of 60 requests is the largest one or two: reported, not bounded
            assert abs(row["ratio"] - 1) <= 0.15, table

        # every dashboard expression (Grafana's $__rate_interval as 1m) and recording rule evaluates
        for title, expr in EXPRESSIONS:
            result = _query(base, expr.replace("$__rate_interval", "1m"))
            if title in CORE:
                assert result, f"{title}: no data for {expr}"
        _wait_for("rule evaluation", lambda: all(_query(base, name) for name in CORE_RULES), timeout_s=15)
        groups = httpx.get(f"{base}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert {rule["name"] for rule in rules} >= CORE_RULES
        assert all(rule["health"] == "ok" and not rule.get("lastError") for rule in rules), [
            (rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"
        ]
        firing = [a["labels"]["alertname"] for a in httpx.get(f"{base}/api/v1/alerts").json()["data"]["alerts"]
                  if a["state"] == "firing"]  # fmt: skip
        assert not firing, firing  # no errors, no dead jobs, every target up: nothing pages

    numbers = {"requests": REQUESTS, "rate_per_s": RATE, "ok": len(ok), "prometheus_count": counted,
               "quantiles": table, "startup_s": started_s, "total_s": time.monotonic() - began}  # fmt: skip
    (tmp_path / "prometheus_vs_client.json").write_text(json.dumps(numbers, indent=1))
    lines = [f"  p{row['quantile'] * 100:g}: client {row['client_s']:.3f} s, Prometheus {row['prometheus_s']:.3f} s "
             f"(x{row['ratio']:.3f})" for row in table]  # fmt: skip
    print(
        f"\nPrometheus vs client, {REQUESTS} requests at {RATE:g}/s through nginx; counted {counted:g}; "
        f"startup {started_s:.1f} s, total {numbers['total_s']:.1f} s\n" + "\n".join(lines)
    )
