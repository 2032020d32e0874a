"""Server-side numbers for a load phase: scrape /metrics before and after, report the deltas.

Each URL is one Prometheus exposition (an API replica's `/metrics`, a worker's `--metrics-port`).
Samples of several URLs are added, so pass each process once: with a shared
PROMETHEUS_MULTIPROC_DIR one API's `/metrics` already aggregates every process on the host.
Names are those of service/metrics.py (serving.md "Metrics").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

#: (sample name, sorted label pairs) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Scrape:
    """Samples per URL; `errors` names the URLs that did not answer (their deltas are left out)."""

    by_url: dict[str, Samples] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def parse_exposition(text: str) -> Samples:
    """Prometheus text format -> samples (the `_created` timestamps dropped: they are not values)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = samples.get(key, 0.0) + float(sample.value)
    return samples


async def scrape(urls: list[str], timeout_s: float = 10.0) -> Scrape:
    result = Scrape()
    if not urls:
        return result
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        for url in urls:
            try:
                response = await client.get(url)
                response.raise_for_status()
                result.by_url[url] = parse_exposition(response.text)
            except (httpx.HTTPError, ValueError) as exc:
                result.errors[url] = f"{type(exc).__name__}: {exc}"
    return result


def delta(before: Scrape, after: Scrape) -> Samples:
    """after - before, summed over the URLs that answered both times (a counter reset counts from 0)."""
    total: Samples = {}
    for url, late in after.by_url.items():
        early = before.by_url.get(url)
        if early is None:
            continue
        for key, value in late.items():
            change = value - early.get(key, 0.0)
            if change < 0:  # the process restarted between the scrapes
                change = value
            total[key] = total.get(key, 0.0) + change
    return total


def _sum(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, pairs), value in samples.items()
        if sample == name and all(dict(pairs).get(k) == v for k, v in labels.items())
    )


def _by_label(samples: Samples, name: str, label: str, **match: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (sample, pairs), value in samples.items():
        found = dict(pairs)
        if sample == name and label in found and all(found.get(k) == v for k, v in match.items()):
            out[found[label]] = out.get(found[label], 0.0) + value
    return out


def _mean(samples: Samples, histogram: str) -> float | None:
    count = _sum(samples, f"{histogram}_count")
    return _sum(samples, f"{histogram}_sum") / count if count > 0 else None


def _bucket_label(low: float, high: float) -> str:
    """Integer buckets of tile counts: (4, 6] is "5-6"; +Inf is ">64"."""
    if math.isinf(high):
        return f">{low:g}"
    first = math.floor(low) + 1
    return str(int(high)) if first >= high else f"{first}-{int(high)}"


def histogram_counts(samples: Samples, histogram: str) -> dict[str, float]:
    """Cumulative `le` buckets -> count per bucket, labelled by range, in bucket order."""
    cumulative = _by_label(samples, f"{histogram}_bucket", "le")
    edges = sorted(cumulative, key=float)
    counts: dict[str, float] = {}
    previous_edge, previous_count = 0.0, 0.0
    for edge in edges:
        high = float(edge)
        counts[_bucket_label(previous_edge, high)] = cumulative[edge] - previous_count
        previous_edge, previous_count = high, cumulative[edge]
    return counts


def server_stats(changes: Samples) -> dict[str, Any]:
    """The numbers a phase report needs from the deltas (None where nothing was observed)."""
    batch_counts = histogram_counts(changes, "rsd_batch_size_tiles")
    return {
        "queue_wait_mean_s": _mean(changes, "rsd_queue_wait_seconds"),
        "queue_wait_count": _sum(changes, "rsd_queue_wait_seconds_count"),
        "compute_mean_s": _mean(changes, "rsd_batch_compute_seconds"),
        "compute_total_s": _sum(changes, "rsd_batch_compute_seconds_sum"),
        "batches": _sum(changes, "rsd_batch_compute_seconds_count"),
        "batch_size_mean": _mean(changes, "rsd_batch_size_tiles"),
        "batch_size_counts": batch_counts,
        "tiles": _sum(changes, "rsd_tiles_total"),
        "rejected": _by_label(changes, "rsd_requests_rejected_total", "reason"),
        "redeliveries": _sum(changes, "rsd_job_redeliveries_total"),
        "dead_jobs": _sum(changes, "rsd_dead_jobs_total"),
        "upscale_by_status": _by_label(changes, "rsd_request_duration_seconds_count", "status", route="/upscale"),
    }
