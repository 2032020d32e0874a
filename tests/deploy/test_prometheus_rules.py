"""deploy/prometheus/rules/: `promtool check rules`, and `promtool test rules` with input series where every
alert fires once and stays silent once (docs/observability.md "Rules")."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules"
RULE_FILES = [RULES / "recording.yml", RULES / "alerting.yml"]
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

pytestmark = pytest.mark.skipif(not Path(PROMTOOL).exists(), reason=f"promtool not found at {PROMTOOL}")

WORKER_UP = 'up{job="rsd-worker",instance="w1:9101"}'
UPSCALE = 'rsd_request_duration_seconds{route="/upscale",status="200"'


def _slo(total: str, fast: str) -> dict[str, str]:
    return {f'{UPSCALE.replace("duration_seconds", "duration_seconds_count")}}}': total,
            f'{UPSCALE.replace("duration_seconds", "duration_seconds_bucket")},le="8.0"}}': fast}  # fmt: skip


def _waits(slow: str, fast: str) -> dict[str, str]:
    bounds = {"1.0": fast, "64.0": fast, "128.0": slow, "+Inf": slow}
    return {f'rsd_queue_wait_seconds_bucket{{le="{le}"}}': values for le, values in bounds.items()}


def _errors(errors: str) -> dict[str, str]:
    count = "rsd_request_duration_seconds_count"
    return {f'{count}{{route="/upscale",status="500"}}': errors, f'{count}{{route="/upscale",status="200"}}': "0+90x20"}


# alert -> (interval, eval time, series where it fires, labels it fires with, series where it stays silent)
CASES: dict[str, tuple[str, str, dict[str, str], dict[str, str], dict[str, str]]] = {
    "RsdLatencyBudgetFastBurn": ("1m", "70m", _slo("0+100x80", "0+50x80"), {}, _slo("0+100x80", "0+100x80")),
    "RsdLatencyBudgetSlowBurn": ("5m", "400m", _slo("0+100x100", "0+90x100"), {}, _slo("0+100x100", "0+99x100")),
    "RsdHigh5xxRatio": ("1m", "15m", _errors("0+10x20"), {}, _errors("0+1x20")),
    "RsdBacklogGrowing": ("1m", "30m", {'rsd_backlog_tiles{instance="api1"}': "0+20x40"}, {},
                          {'rsd_backlog_tiles{instance="api1"}': "500x40"}),
    "RsdQueueWaitTooLong": ("1m", "15m", _waits("0+10x20", "0x20"), {}, _waits("0+10x20", "0+10x20")),
    "RsdWorkerDown": ("1m", "7m", {WORKER_UP: "1 1 0 0 0 0 0 0"}, {"job": "rsd-worker", "instance": "w1:9101"},
                      {WORKER_UP: "1x10"}),
    "RsdNoWorkers": ("1m", "5m", {'up{job="rsd-api",instance="a1:8000"}': "1x10"}, {},
                     {WORKER_UP: "1x10"}),
    "RsdDeadLetteredJobs": ("1m", "5m", {'rsd_dead_jobs_total{instance="w1:9101"}': "0 0 0 1 1 1"}, {},
                            {'rsd_dead_jobs_total{instance="w1:9101"}': "0x10"}),
    "RsdRedisUnreachable": ("1m", "5m", {'rsd_queue_up{job="rsd-api",instance="a1:8000"}': "1 1 0 0 0 0"},
                            {"instance": "a1:8000"}, {'rsd_queue_up{job="rsd-api",instance="a1:8000"}': "1x10"}),
}  # fmt: skip


def _alert_rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load((RULES / "alerting.yml").read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def _expected(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    annotations = {
        k: v.replace("{{ $labels.instance }}", labels.get("instance", "")) for k, v in rule["annotations"].items()
    }
    return {"exp_labels": {**rule["labels"], **labels}, "exp_annotations": annotations}


def _unit_tests() -> dict[str, Any]:
    rules = _alert_rules()
    tests = []
    for alert, (interval, at, firing, labels, silent) in CASES.items():
        for series, expected in ((firing, [_expected(rules[alert], labels)]), (silent, [])):
            tests.append({
                "interval": interval,
                "input_series": [{"series": name, "values": values} for name, values in series.items()],
                "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": expected}],
            })  # fmt: skip
    return {"rule_files": [str(path) for path in RULE_FILES], "evaluation_interval": "1m", "tests": tests}


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run([PROMTOOL, "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_runbook_a_severity_and_both_cases() -> None:
    rules = _alert_rules()
    assert set(rules) == set(CASES)
    for name, rule in rules.items():
        assert len(rule["annotations"].get("runbook", "")) > 20, name
        assert rule["labels"]["severity"] in ("page", "ticket"), name


def test_promtool_unit_tests_fire_and_stay_silent(tmp_path: Path) -> None:
    path = tmp_path / "rules_test.yml"
    path.write_text(yaml.safe_dump(_unit_tests(), sort_keys=False))
    done = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_prometheus_yml_loads_the_rules() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
