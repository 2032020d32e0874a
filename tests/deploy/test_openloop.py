"""loadtests.openloop: the schedule is open loop, the numbers are right, the report is written."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import random
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
from PIL import Image

from loadtests import openloop, report, servermetrics
from service.api import create_app
from service.embedded import WorkerThread
from service.queue.inprocess import InProcessQueue
from service.settings import ServiceSettings
from tests.service.conftest import ThreadedServer
from tests.service.fakes import FakeUpscaler, write_fake_model

pytestmark = pytest.mark.timeout(120)


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def test_arrival_offsets_fixed_poisson_and_count() -> None:
    assert openloop.arrival_offsets(4.0, duration_s=1.0, arrivals="fixed") == [0.0, 0.25, 0.5, 0.75]
    assert len(openloop.arrival_offsets(10.0, count=7, arrivals="fixed")) == 7
    poisson = openloop.arrival_offsets(50.0, duration_s=200.0, rng=random.Random(1))
    gaps = [b - a for a, b in itertools.pairwise(poisson)]
    assert all(0 <= t < 200.0 for t in poisson) and all(g >= 0 for g in gaps)
    assert abs(len(poisson) / 200.0 - 50.0) < 2.0  # 10000 arrivals expected; sd 100
    assert abs(sum(gaps) / len(gaps) - 0.02) < 0.001
    same = openloop.arrival_offsets(50.0, duration_s=1.0, rng=random.Random(1))
    assert same == poisson[: len(same)]  # deterministic for a seed
    with pytest.raises(ValueError, match="exactly one"):
        openloop.arrival_offsets(1.0)
    with pytest.raises(ValueError, match="must be > 0"):
        openloop.arrival_offsets(0.0, count=3)


def test_percentiles_and_summary_on_known_data() -> None:
    values = [float(v) for v in range(1, 101)]
    assert report.percentile(values, 50) == pytest.approx(50.5)
    assert report.percentile(values, 90) == pytest.approx(90.1)
    assert report.percentile(values, 99) == pytest.approx(99.01)
    assert report.percentile([], 50) is None

    def record(i: int, status: int, latency: float, error: str = "") -> openloop.RequestRecord:
        return openloop.RequestRecord(i, 0, i, float(i), float(i) + 0.01, latency, status, error)

    records = [record(i, 200, v) for i, v in enumerate(values)]
    records += [record(100, 429, 0.001, "rejected_429"), record(101, 200, 9.0, "wrong_size")]
    records += [record(102, 0, 5.0, "timeout"), record(103, 503, 0.01, "http_503")]
    summary = report.summarize(records, elapsed_s=50.0)
    assert (summary["requests"], summary["ok"], summary["rejected_429"], summary["errors"]) == (104, 100, 1, 3)
    assert summary["error_kinds"] == {"wrong_size": 1, "timeout": 1, "http_503": 1}
    assert summary["throughput_rps"] == pytest.approx(2.0)
    assert summary["p50_s"] == pytest.approx(50.5) and summary["p99_s"] == pytest.approx(99.01)
    assert summary["rate_429"] == pytest.approx(1 / 104) and summary["error_rate"] == pytest.approx(3 / 104)
    assert summary["send_lag_p99_s"] == pytest.approx(0.01)


def test_classify_checks_the_x4_size() -> None:
    sample = openloop.Sample("s", _png(16, 8), 16, 8)
    assert openloop.classify(200, _png(64, 32), sample, verify=True) == ""
    assert openloop.classify(200, _png(64, 64), sample, verify=True) == "wrong_size"
    assert openloop.classify(200, b"not an image", sample, verify=True) == "undecodable"
    assert openloop.classify(200, b"not an image", sample, verify=False) == ""
    assert openloop.classify(429, b"{}", sample, verify=True) == "rejected_429"
    assert openloop.classify(504, b"{}", sample, verify=True) == "http_504"


def test_open_loop_sends_on_schedule_while_answers_are_slow() -> None:
    """20 arrivals/s for 10 requests against a server that takes 0.8 s each: all are sent before any answer."""
    started: list[float] = []
    answer = _png(64, 64)

    async def slow_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        started.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.8)
        seed = int(parse_qs(scope["query_string"].decode())["seed"][0])
        status, body = (429, b"{}") if seed % 5 == 0 else (200, answer)
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"image/png")]})
        await send({"type": "http.response.body", "body": body})

    samples = [openloop.Sample("a", _png(16, 16), 16, 16)]
    plan = [openloop.Planned(i, i * 0.05, 0, i) for i in range(10)]  # seeds 0 and 5 get a 429

    async def run() -> tuple[list[openloop.RequestRecord], float]:
        transport = httpx.ASGITransport(app=slow_app)
        async with openloop.make_client("http://test", 30.0, transport) as client:
            return await openloop.open_loop(client, samples, plan)

    records, elapsed = asyncio.run(run())
    assert [r.index for r in records] == list(range(10))
    for item, record in zip(plan, records, strict=True):
        assert record.scheduled_s == item.offset_s
        assert abs(record.sent_s - item.offset_s) < 0.1, (record.sent_s, item.offset_s)
    first_answer = min(r.sent_s + r.latency_s for r in records)
    assert max(r.sent_s for r in records) < first_answer  # never waited for an answer before sending
    assert max(started) - min(started) < 0.8  # the server held all 10 at once
    assert [r.status for r in records].count(429) == 2 and [r.error for r in records].count("") == 8
    assert all(r.latency_s >= 0.8 for r in records) and 1.2 < elapsed < 3.0


def test_server_metric_deltas() -> None:
    before = """\
# TYPE rsd_queue_wait_seconds histogram
rsd_queue_wait_seconds_bucket{le="0.1"} 1.0
rsd_queue_wait_seconds_bucket{le="+Inf"} 2.0
rsd_queue_wait_seconds_count 2.0
rsd_queue_wait_seconds_sum 1.0
# TYPE rsd_batch_size_tiles histogram
rsd_batch_size_tiles_bucket{le="1.0"} 0.0
rsd_batch_size_tiles_bucket{le="2.0"} 0.0
rsd_batch_size_tiles_bucket{le="4.0"} 0.0
rsd_batch_size_tiles_bucket{le="8.0"} 0.0
rsd_batch_size_tiles_bucket{le="+Inf"} 0.0
rsd_batch_size_tiles_count 0.0
rsd_batch_size_tiles_sum 0.0
# TYPE rsd_job_redeliveries counter
rsd_job_redeliveries_total 1.0
rsd_job_redeliveries_created 1.7e9
"""
    after = (
        before.replace("count 2.0", "count 6.0")
        .replace("sum 1.0", "sum 3.0")
        .replace('"1.0"} 0.0', '"1.0"} 3.0')
        .replace('"2.0"} 0.0', '"2.0"} 3.0')
        .replace('"4.0"} 0.0', '"4.0"} 5.0')
        .replace('"8.0"} 0.0', '"8.0"} 5.0')
        .replace('"+Inf"} 0.0', '"+Inf"} 5.0')
        .replace("tiles_count 0.0", "tiles_count 5.0")
        .replace("tiles_sum 0.0", "tiles_sum 9.0")
        .replace("redeliveries_total 1.0", "redeliveries_total 3.0")
    )
    early = servermetrics.Scrape({"u": servermetrics.parse_exposition(before)})
    late = servermetrics.Scrape({"u": servermetrics.parse_exposition(after), "gone": {}})
    stats = servermetrics.server_stats(servermetrics.delta(early, late))
    assert stats["queue_wait_mean_s"] == pytest.approx(0.5)  # 2 s over 4 jobs
    assert stats["batch_size_mean"] == pytest.approx(1.8)
    assert stats["batch_size_counts"] == {"1": 3.0, "2": 0.0, "3-4": 2.0, "5-8": 0.0, ">8": 0.0}
    assert stats["redeliveries"] == 2.0
    assert stats["compute_mean_s"] is None


def _embedded_app(model_dir: Path):  # type: ignore[no-untyped-def]
    settings = ServiceSettings(model_dir=model_dir, redis_url=None)
    queue = InProcessQueue(settings.max_backlog_tiles, settings.assumed_tiles_per_s)
    upscaler = FakeUpscaler(delay_s_per_tile=0.005)
    return create_app(settings, queue, WorkerThread(lambda: upscaler, queue, settings))


def test_quick_run_against_the_embedded_app_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with ThreadedServer(_embedded_app(write_fake_model(tmp_path / "model"))) as server:
        code = openloop.main([
            "--url", server.url, "--metrics-url", f"{server.url}/metrics", "--quick", "--phase-seconds", "1",
            "--images", "16x16,24x16", "--param", "tile=16", "--out", str(out), "--no-progress",
        ])  # fmt: skip
    assert code == 0
    text = (out / "report.md").read_text()
    assert "## Closed-loop sweep" in text and "## Open loop (constant arrival rate)" in text
    assert "| 1 |" in text and "| 2 |" in text  # the sweep's concurrency rows
    assert "| 50% |" in text and "| 110% |" in text  # the open-loop rows
    assert "![latency vs offered load](latency.png)" in text
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert [p["concurrency"] for p in results["sweep"]] == [1, 2]
    assert [p["load"] for p in results["open"]] == [0.5, 1.1]
    for phase in results["sweep"] + results["open"]:
        summary = phase["summary"]
        assert summary["ok"] > 0 and summary["errors"] == 0, summary
        # (embedded mode records no rsd_queue_wait_seconds: only the Redis worker does)
        assert phase["server"]["batches"] > 0 and phase["server"]["tiles"] > 0
        assert all(r["digest"] for r in phase["records"] if r["status"] == 200)
    assert results["peak_rps"] == max(p["summary"]["throughput_rps"] for p in results["sweep"])
    # the open phases offered the planned fraction of the peak
    assert results["open"][0]["offered_rps"] == pytest.approx(0.5 * results["peak_rps"])


@pytest.mark.parametrize(
    ("argv", "sizes"),
    [([], {(32, 32), (64, 64)}), (["--quick"], {(16, 16)}), (["--quick", "--images", "24x16"], {(24, 16)})],
)
def test_quick_picks_small_images_unless_images_are_given(argv: list[str], sizes: set[tuple[int, int]]) -> None:
    options = openloop.options_from_args(openloop.build_parser().parse_args(argv))
    assert {(s.width, s.height) for s in options.samples} == sizes
    assert (options.sweep, options.loads) == (
        ([1, 2], [0.5, 1.1]) if "--quick" in argv else ([1, 2, 4, 8, 16], [0.5, 0.8, 0.95, 1.1])
    )


def test_a_closed_loop_plan_cannot_drive_an_open_loop() -> None:
    async def run() -> None:
        async with openloop.make_client("http://test", 1.0) as client:
            await openloop.open_loop(
                client, [openloop.Sample("a", _png(4, 4), 4, 4)], [openloop.Planned(0, None, 0, 1)]
            )

    with pytest.raises(ValueError, match="planned request 0 has no send time"):
        asyncio.run(run())
