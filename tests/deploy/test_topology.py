"""The scaled topology on loopback: nginx (deploy/nginx/nginx.conf) -> 2 API replicas -> Redis -> 2 workers.

Open-loop load through nginx with the bundled model; one worker is SIGKILLed while it holds jobs. Every
request must get its final answer, and every answer must be the bytes the model gives when called
directly for the same image and seed; the killed worker's jobs are redelivered to the other one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from loadtests import local_stack, openloop, report, servermetrics
from rsd.kinds import BUNDLED_MODEL
from service.queue.keys import RedisKeys
from tests.service.conftest import REDIS_SERVER, Processes, RedisServer, free_port, wait_ready

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not os.path.exists(local_stack.NGINX), reason=f"nginx not found at {local_stack.NGINX}"),
    pytest.mark.skipif(not os.path.exists(REDIS_SERVER), reason=f"redis-server not found at {REDIS_SERVER}"),
]

PREFIX = "topo"
TILE = 32  # every image below fits one LR tile: about 0.1 s of model time on a busy CPU core
SIZES = [(16, 16), (24, 24), (32, 32)]
REQUESTS, RATE = 48, 4.0  # 12 s of fixed-interval arrivals
LEASE_S = 3.0


def _metric(samples: servermetrics.Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, pairs), value in samples.items()
        if sample == name and all(dict(pairs).get(k) == v for k, v in labels.items())
    )


def _scrape(url: str) -> servermetrics.Samples:
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return servermetrics.parse_exposition(response.text)


def _stopped(pid: int) -> bool:
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state in ("T", "t")
    return False


def _pending_of(client: object, consumer: str) -> int:
    summary = client.xpending(RedisKeys(PREFIX).jobs(BUNDLED_MODEL.name), "workers")  # type: ignore[attr-defined]
    for entry in summary.get("consumers") or []:
        if entry["name"] in (consumer, consumer.encode()):
            return int(entry["pending"])
    return 0


def _reference_digests(samples: list[openloop.Sample], plan: list[openloop.Planned]) -> dict[int, str]:
    """sha256 of what the bundled model gives for each planned (image, seed), called in this process."""
    import torch

    from rsd.backends import load_upscaler
    from rsd.imagefile import encode_image, read_image
    from rsd.pipeline import upscale_array

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers run (RSD_TORCH_THREADS=1); restored for the tests after this one
    digests = {}
    try:
        with load_upscaler(BUNDLED_MODEL) as upscaler:
            overlap = min(upscaler.spec.default_overlap, TILE // 2)  # as service/intake.py
            for item in plan:
                decoded = read_image(samples[item.sample].data)
                sr = upscale_array(upscaler, decoded.rgb, item.seed, tile=TILE, overlap=overlap)
                digests[item.index] = hashlib.sha256(encode_image(sr, decoded, "png", 90)).hexdigest()
    finally:
        torch.set_num_threads(threads)
    return digests


def test_load_through_nginx_two_apis_two_workers_survives_a_killed_worker(
    redis_server: RedisServer, processes: Processes, tmp_path: Path
) -> None:
    began = time.monotonic()
    nginx: subprocess.Popen[bytes] | None = None
    try:
        env = {
            "REDIS_URL": redis_server.url, "RSD_MODEL": str(BUNDLED_MODEL), "RSD_REDIS_PREFIX": PREFIX,
            "RSD_LEASE_S": str(LEASE_S), "RSD_TORCH_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
        }  # fmt: skip

        def metrics_dir(name: str) -> dict[str, str]:  # one registry per process: each is scraped alone
            directory = tmp_path / "metrics" / name
            directory.mkdir(parents=True)
            return {"PROMETHEUS_MULTIPROC_DIR": str(directory), "RSD_INSTANCE": name}

        worker_ports = {name: free_port() for name in ("worker-a", "worker-b")}
        workers = {
            name: processes.spawn(
                ["-m", "service", "worker", "--metrics-port", str(port)], {**env, **metrics_dir(name)}, name
            )
            for name, port in worker_ports.items()
        }
        api_ports = [free_port(), free_port()]
        apis = [
            processes.spawn(["-m", "service", "serve", "--port", str(port)], {**env, **metrics_dir(name)}, name)
            for name, port in zip(("api-0", "api-1"), api_ports, strict=True)
        ]
        prefix = tmp_path / "nginx"
        listen = free_port()
        conf = local_stack.render_nginx(prefix, listen, api_ports)
        nginx_log = open(tmp_path / "nginx.log", "ab")  # noqa: SIM115 - owned by the process
        nginx = subprocess.Popen(
            local_stack.nginx_command(prefix, conf), stdout=nginx_log, stderr=subprocess.STDOUT, start_new_session=True
        )
        processes.running.append(nginx)  # killed with the others by the fixture
        url = f"http://127.0.0.1:{listen}"
        for port, api in zip(api_ports, apis, strict=True):
            wait_ready(f"http://127.0.0.1:{port}", timeout_s=120, process=api)
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/readyz", timeout=5).json().get("workers") != 2:  # both workers warmed
            assert time.monotonic() < deadline, [processes.log(name) for name in workers]
            assert all(w.poll() is None for w in workers.values()), [processes.log(name) for name in workers]
            time.sleep(0.2)
        started_s = time.monotonic() - began

        samples = openloop.make_samples(SIZES, variants=2, seed=3)
        plan = openloop.plan_requests(
            openloop.arrival_offsets(RATE, count=REQUESTS, arrivals="fixed"), len(samples), seed=11
        )
        victim = workers["worker-a"]
        redis_client = redis_server.client()
        kill: dict[str, float] = {}

        async def kill_while_holding_jobs() -> None:
            """SIGSTOP the victim; if Redis shows it holding jobs, SIGKILL it, else let it go on and retry."""
            await asyncio.sleep(REQUESTS / RATE * 0.3)
            for _ in range(400):
                os.kill(victim.pid, signal.SIGSTOP)
                while not _stopped(victim.pid):
                    await asyncio.sleep(0.001)
                held = _pending_of(redis_client, "worker-a")
                if held > 0:
                    os.kill(victim.pid, signal.SIGKILL)
                    kill.update(held=held, at_s=time.monotonic() - load_began)
                    return
                os.kill(victim.pid, signal.SIGCONT)
                await asyncio.sleep(0.02)

        async def load() -> tuple[list[openloop.RequestRecord], float]:
            async with openloop.make_client(url, timeout_s=120) as client:
                results = await asyncio.gather(
                    openloop.open_loop(client, samples, plan, params={"tile": str(TILE)}), kill_while_holding_jobs()
                )
            return results[0]

        load_began = time.monotonic()
        records, elapsed = asyncio.run(load())
        victim.wait(10)
        assert kill.get("held", 0) >= 1, "the victim never held a job while the load ran"

        # --- every request got its final answer; accepted ones are correct and complete ---
        summary = report.summarize(records, elapsed)
        statuses = [r.status for r in records]
        rejected = statuses.count(429)
        assert len(records) == REQUESTS and 0 not in statuses, [r.error for r in records if r.status == 0]
        assert summary["errors"] == 0, summary["error_kinds"]
        assert summary["ok"] + rejected == REQUESTS  # 429s are the only other outcome, and they are counted
        references = _reference_digests(samples, plan)
        wrong = [r.index for r in records if r.ok and r.digest != references[r.index]]
        assert not wrong, f"answers differ from the model called directly: requests {wrong}"

        # --- the server side agrees: both replicas got traffic through nginx, the victim's jobs were redelivered
        api_samples = [_scrape(f"http://127.0.0.1:{port}/metrics") for port in api_ports]
        per_api = [_metric(s, "rsd_request_duration_seconds_count", route="/upscale") for s in api_samples]
        survivor = _scrape(f"http://127.0.0.1:{worker_ports['worker-b']}/metrics")
        redeliveries = _metric(survivor, "rsd_job_redeliveries_total")
        assert sum(per_api) >= REQUESTS and min(per_api) > 0, per_api
        assert redeliveries >= kill["held"], (redeliveries, kill)
        assert int(redis_client.get(f"{PREFIX}:backlog") or 0) == 0
        assert redis_client.xpending(RedisKeys(PREFIX).jobs(BUNDLED_MODEL.name), "workers")["pending"] == 0
        assert httpx.get(f"{url}/metrics").status_code == 404  # metrics are per replica, not via the balancer

        numbers = {
            "requests": REQUESTS, "rate_per_s": RATE, "ok": summary["ok"], "rejected_429": rejected, "lost": 0,
            "p50_s": summary["p50_s"], "p90_s": summary["p90_s"], "p99_s": summary["p99_s"],
            "max_s": summary["max_s"], "elapsed_s": elapsed, "per_api_upscale_requests": per_api,
            "killed_worker_held_jobs": kill["held"], "killed_at_s": kill["at_s"], "redeliveries": redeliveries,
            "startup_s": started_s, "total_s": time.monotonic() - began,
        }  # fmt: skip
        (tmp_path / "topology.json").write_text(json.dumps(numbers, indent=1))
        print(
            f"\ntopology: {REQUESTS} requests at {RATE:g}/s through nginx -> 2 APIs -> 2 workers "
            f"(worker-a killed at {kill['at_s']:.1f} s holding {kill['held']} job(s)): {summary['ok']} ok, "
            f"{rejected} x 429, lost 0; p50 {summary['p50_s']:.3f} s, p99 {summary['p99_s']:.3f} s, "
            f"max {summary['max_s']:.3f} s; per API {per_api}; redeliveries {redeliveries:g}; "
            f"startup {started_s:.1f} s, total {numbers['total_s']:.1f} s ({tmp_path / 'topology.json'})"
        )
    finally:  # the fixtures kill every process and redis-server
        if nginx is not None and nginx.poll() is None:
            nginx.terminate()  # nginx reaps its own worker processes on SIGTERM; kill_all follows anyway
            with contextlib.suppress(subprocess.TimeoutExpired):
                nginx.wait(5)
