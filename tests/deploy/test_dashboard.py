"""The Grafana dashboard queries metrics that the service really exports, under the names Prometheus stores.

A running app (embedded mode, fake model) serves one upscale and one refused request, so that every
histogram and labelled counter has samples; its /metrics is parsed with prometheus_client's parser, and
every `rsd_*` name in the dashboard's PromQL must be one of the exposed sample names (`_bucket`, `_count`,
`_sum`, `_total` included), with the label values it selects on actually present. A `level:metric:op`
name is a recording rule of deploy/prometheus/rules/recording.yml.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.conftest import DEPLOY, load_yaml
from tests.service.conftest import embedded_client, wait_client_ready
from tests.service.fakes import png_bytes

pytestmark = pytest.mark.timeout(60)

DASHBOARD: dict[str, Any] = json.loads((DEPLOY / "grafana" / "dashboards" / "rsd.json").read_text())
PANELS = DASHBOARD["panels"]
EXPRESSIONS = [(panel["title"], target["expr"]) for panel in PANELS for target in panel["targets"]]
METRIC = re.compile(r"(?<![\w:])rsd_[a-z0-9_]+(?![\w:])")
RECORDED = re.compile(r"\b[a-z_]*:?rsd_[a-z0-9_]+:[a-z0-9_]+")
SELECTOR = re.compile(r"\b(rsd_[a-z0-9_]+|up)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def _scrape_after_traffic(fake_model: Path) -> dict[str, list[dict[str, str]]]:
    """Sample name -> label sets, from an app that has served one image and refused one request."""
    client, _, _ = embedded_client(fake_model)
    with client:
        wait_client_ready(client)
        ok = client.post("/upscale", files={"image": ("in.png", png_bytes(40, 24, seed=3), "image/png")})
        assert ok.status_code == 200, ok.text
        refused = client.post("/upscale", content=b"not an image", headers={"Content-Type": "text/plain"})
        assert refused.status_code == 415, refused.text
        text = client.get("/metrics").text
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    return samples


def test_dashboard_metric_names_and_label_values_exist_in_a_running_servers_metrics(fake_model: Path) -> None:
    samples = _scrape_after_traffic(fake_model)
    used = {name for _, expr in EXPRESSIONS for name in METRIC.findall(expr)}
    missing = sorted(used - set(samples))
    assert not missing, f"the dashboard queries metrics the service does not export: {missing}"
    for title, expr in EXPRESSIONS:
        for name, body in SELECTOR.findall(expr):
            for label, op, value in MATCHER.findall(body):
                if name == "up" or op != "=":
                    continue
                assert any(labels.get(label) == value for labels in samples[name]), (
                    f"{title}: no {name} sample has {label}={value!r}"
                )


def test_dashboard_recorded_names_are_recording_rules() -> None:
    groups = load_yaml(DEPLOY / "prometheus" / "rules" / "recording.yml")["groups"]
    recorded = {rule["record"] for group in groups for rule in group["rules"]}
    used = {name for _, expr in EXPRESSIONS for name in RECORDED.findall(expr)}
    assert used and used <= recorded, used - recorded


def test_dashboard_queries_are_well_formed_for_their_metric_types() -> None:
    for title, expr in EXPRESSIONS:
        queried = METRIC.search(expr) or RECORDED.search(expr) or re.search(r"\bup\{", expr)
        assert queried, f"{title}: queries no service metric: {expr}"
        assert expr.count("(") == expr.count(")"), f"{title}: unbalanced parentheses: {expr}"
        if "_bucket" in expr:
            assert "histogram_quantile(" in expr and "le" in expr, f"{title}: buckets outside a quantile: {expr}"
        if re.search(r"rsd_\w+_(total|count|sum|bucket)\b", expr):
            assert re.search(r"\b(rate|increase)\(", expr), f"{title}: a counter is shown without rate(): {expr}"
    latency = [expr for title, expr in EXPRESSIONS if "rsd_request_duration_seconds_bucket" in expr]
    assert {re.search(r"histogram_quantile\(([\d.]+)", expr).group(1) for expr in latency} == {"0.5", "0.9", "0.99"}  # type: ignore[union-attr]


def test_dashboard_covers_the_service_and_uses_the_provisioned_datasource_and_jobs() -> None:
    used = {name for _, expr in EXPRESSIONS for name in METRIC.findall(expr)}
    required = {
        "rsd_request_duration_seconds_bucket",  # latency quantiles
        "rsd_request_duration_seconds_count",  # throughput
        "rsd_tiles_total",
        "rsd_batch_size_tiles_bucket",
        "rsd_backlog_tiles",
        "rsd_requests_rejected_total",
        "rsd_queue_wait_seconds_bucket",
        "rsd_batch_compute_seconds_bucket",
        "rsd_job_redeliveries_total",
        "rsd_dead_jobs_total",
        "rsd_inflight_requests",
    }
    assert required <= used, f"no panel for {sorted(required - used)}"
    ids = [panel["id"] for panel in PANELS]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in PANELS:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]

    (datasource,) = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    for panel in PANELS:
        for holder in (panel, *panel["targets"]):
            assert holder["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
    jobs = {job["job_name"] for job in load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]}
    for title, expr in EXPRESSIONS:
        for job in re.findall(r'job="([^"]+)"', expr):
            assert job in jobs, f"{title}: Prometheus has no job {job!r}"
