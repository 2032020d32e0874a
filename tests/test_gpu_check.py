"""scripts/gpu_check.sh cannot rot: its CPU dry run (a tiny config, the real code path, the service part
included) runs in the default test run, and the verdicts are checked against the thresholds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from gpu_check_report import TARGETS, CheckReport, Target, format_table, verdict  # noqa: E402

pytestmark = pytest.mark.timeout(180)
MEASURED = ("ms_per_call", "ms_per_tile", "tiles_per_s", "peak_mb")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    env = {k: v for k, v in os.environ.items() if k != "OUT"} | {"PYTHON": sys.executable}
    done = subprocess.run(
        [str(REPO / "scripts" / "gpu_check.sh"), "--cpu-dry-run", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert out.with_suffix(".txt").read_text().strip() in done.stdout
    return json.loads(out.read_text()), done.stdout


def test_every_row_is_there_with_finite_numbers(dry_run: tuple[dict, str]) -> None:  # type: ignore[type-arg]
    report, table = dry_run
    config = report["config"]
    assert report["complete"] and config["model"] == "tiny" and config["device"] == "cpu"
    rows = {(r["tile"], r["dtype"], r["mode"], r["batch"]): r for r in report["variants"]}
    expected = {(t, d, m, b) for t in config["tiles"] for d in ("fp16", "bf16") for m in ("eager", "graphs")
                for b in (1, 4, 8)}  # fmt: skip
    assert set(rows) == expected
    for (tile, dtype, mode, batch), row in rows.items():
        line = f"{tile:4d} {dtype:5s} {mode:6s} {batch:5d}"
        assert line in table
        assert "psnr_vs_device_fp32" in row and "psnr_vs_cpu_fp32" in row
        if mode == "graphs":  # no CUDA on the CPU: the row says so
            assert row["ms_per_call"] is None and "CUDA" in row["note"]
            continue
        assert all(math.isfinite(row[key]) for key in MEASURED)
        assert row["tiles_per_s"] == pytest.approx(1000 * batch / row["ms_per_call"])
        for key in ("psnr_vs_device_fp32", "psnr_vs_cpu_fp32"):  # None only where identical to fp32
            assert row[key] is None or 10 < row[key] < 200
    stages = {(s["tile"], s["dtype"], s["batch"]) for s in report["stages"]}
    assert stages == {(t, d, b) for t in config["tiles"] for d in ("fp16", "bf16") for b in (1, 8)}
    assert all(s[k] > 0 for s in report["stages"] for k in ("encode_ms", "unet_ms", "decode_ms"))
    assert set(report["references"]) == {str(t) for t in config["tiles"]}
    assert report["environment"]["torch"] and "python" in report["environment"]


def test_the_service_row_is_measured(dry_run: tuple[dict, str]) -> None:  # type: ignore[type-arg]
    report, table = dry_run
    service = report["service"]
    assert service is not None, report["service_note"]
    assert service["failed"] == 0 and service["images_in_window"] > 0
    assert service["direct_images_per_s"] > 0 and service["service_images_per_s"] > 0
    assert service["ratio"] == pytest.approx(service["service_images_per_s"] / service["direct_images_per_s"])
    assert 0 < service["busy"] <= 1
    assert "service/direct" in table and "device busy" in table


def test_verdicts_follow_the_thresholds(dry_run: tuple[dict, str]) -> None:  # type: ignore[type-arg]
    report, table = dry_run
    assert [t["key"] for t in report["targets"]] == [t.key for t in TARGETS]
    for target, row in zip(TARGETS, report["targets"], strict=True):
        assert row["verdict"] == verdict(row["measured"], target)
        assert row["verdict"] in ("PASS", "FAIL")  # every target measured in the dry run
        assert any(line.startswith(target.label) and line.endswith(row["verdict"]) for line in table.splitlines())


@pytest.mark.parametrize(
    ("value", "at_most", "expected"),
    [(2.9, True, "PASS"), (3.0, True, "PASS"), (3.1, True, "FAIL"), (0.89, False, "FAIL"), (0.9, False, "PASS"),
     (0.95, False, "PASS"), (None, True, "n/a"), (math.nan, False, "n/a")],
)  # fmt: skip
def test_verdict_on_both_sides_of_a_threshold(value: float | None, at_most: bool, expected: str) -> None:
    assert verdict(value, Target("x", "x", 3.0 if at_most else 0.9, at_most)) == expected


def test_a_missing_service_row_says_why() -> None:
    config = {"device": "cuda", "model": "official", "tiles": [64], "repeats": 1}
    environment = {"device_name": "card", "torch": "2.11", "cuda": "13.0", "python": "3.12"}
    report = CheckReport(config, environment, service_note="not run: No module named 'fastapi' (no wheels)")
    table = format_table(report)
    assert "service: not run: No module named 'fastapi' (no wheels)" in table
    assert any(line.startswith("service/direct ") and line.endswith("n/a") for line in table.splitlines())
