"""Numbers and outputs of a load run: per-phase summaries, report.md, latency.png, results.json.

Latency percentiles are over the correct 200 answers only (a fast 429 is not a fast answer); they are
linear interpolations between order statistics (numpy's default), from send to the last byte.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class _Record(Protocol):
    status: int
    error: str
    latency_s: float
    scheduled_s: float | None
    sent_s: float
    server_queue_ms: float | None

    @property
    def ok(self) -> bool: ...


def percentile(values: Sequence[float], q: float) -> float | None:
    """q in [0, 100]; None for no values."""
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summarize(records: Sequence[_Record], elapsed_s: float) -> dict[str, Any]:
    """Counts, rates and latency percentiles of one phase (`elapsed_s`: phase start to the last answer)."""
    n = len(records)
    latencies = [r.latency_s for r in records if r.ok]
    rejected = [r for r in records if r.status == 429]
    failed = [r for r in records if not r.ok and r.status != 429]
    lag = [r.sent_s - r.scheduled_s for r in records if r.scheduled_s is not None]
    queue_ms = [r.server_queue_ms for r in records if r.ok and r.server_queue_ms is not None]
    return {
        "requests": n,
        "ok": len(latencies),
        "rejected_429": len(rejected),
        "errors": len(failed),
        "error_kinds": dict(Counter(r.error for r in failed)),
        "rate_429": len(rejected) / n if n else 0.0,
        "error_rate": len(failed) / n if n else 0.0,
        "throughput_rps": len(latencies) / elapsed_s if elapsed_s > 0 else 0.0,
        "p50_s": percentile(latencies, 50),
        "p90_s": percentile(latencies, 90),
        "p99_s": percentile(latencies, 99),
        "mean_s": float(np.mean(latencies)) if latencies else None,
        "max_s": max(latencies) if latencies else None,
        "p99_429_s": percentile([r.latency_s for r in rejected], 99),
        "send_lag_p99_s": percentile(lag, 99),
        "server_queue_p50_ms": percentile(queue_ms, 50),
    }


# ---------------------------------------------------------------------------------------------- markdown
def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|:---|" + "|".join("---:" for _ in header[1:]) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _server_cells(server: dict[str, Any] | None) -> list[str]:
    if not server:
        return ["-", "-", "-"]
    mean = server.get("batch_size_mean")
    return [
        _ms(server.get("queue_wait_mean_s")),
        _ms(server.get("compute_mean_s")),
        "-" if mean is None else f"{mean:.2f}",
    ]


def sweep_table(sweep: list[dict[str, Any]]) -> list[str]:
    header = ["concurrency", "requests", "ok req/s", "p50 ms", "p90 ms", "p99 ms", "429", "errors",
              "queue wait ms", "compute ms/batch", "batch tiles"]  # fmt: skip
    rows = []
    for phase in sweep:
        s = phase["summary"]
        rows.append([
            str(phase["concurrency"]), str(s["requests"]), f"{s['throughput_rps']:.2f}",
            _ms(s["p50_s"]), _ms(s["p90_s"]), _ms(s["p99_s"]), str(s["rejected_429"]), str(s["errors"]),
            *_server_cells(phase.get("server")),
        ])  # fmt: skip
    return _table(header, rows)


def open_table(phases: list[dict[str, Any]]) -> list[str]:
    header = ["load", "offered req/s", "requests", "ok req/s", "p50 ms", "p90 ms", "p99 ms", "429 rate",
              "error rate", "queue wait ms", "compute ms/batch", "batch tiles"]  # fmt: skip
    rows = []
    for phase in phases:
        s = phase["summary"]
        rows.append([
            f"{phase['load']:.0%}", f"{phase['offered_rps']:.2f}", str(s["requests"]), f"{s['throughput_rps']:.2f}",
            _ms(s["p50_s"]), _ms(s["p90_s"]), _ms(s["p99_s"]), _pct(s["rate_429"]), _pct(s["error_rate"]),
            *_server_cells(phase.get("server")),
        ])  # fmt: skip
    return _table(header, rows)


def batch_table(phases: list[dict[str, Any]]) -> list[str]:
    """Batches by size (tiles) per phase, from the rsd_batch_size_tiles histogram deltas."""
    with_counts = [p for p in phases if p.get("server") and p["server"].get("batch_size_counts")]
    if not with_counts:
        return []
    labels: list[str] = list(with_counts[0]["server"]["batch_size_counts"])
    used = [lab for lab in labels if any(p["server"]["batch_size_counts"].get(lab, 0) > 0 for p in with_counts)]
    rows = [[p["name"], *(f"{p['server']['batch_size_counts'].get(lab, 0):.0f}" for lab in used)] for p in with_counts]
    return _table(["phase", *(f"{lab} tiles" for lab in used)], rows) if used else []


def markdown(results: dict[str, Any], plot_link: str) -> str:
    lines = [
        "# Load test report",
        "",
        f"{results['date']}; host {results.get('host', '?')}; target {results['url']}; arrivals {results['arrivals']}; "
        f"{results['phase_seconds']:g} s per phase; answers verified: {'yes' if results['verify'] else 'no'}.",
        f"Images: {', '.join(results['images'])}. Parameters: {results['params'] or 'defaults'}.",
        "",
        *([f"Reproduce (from the repository root): `{results['command']}`", ""] if results.get("command") else []),
        *(f"- {note}" for note in results.get("notes", [])),
        "",
    ]
    if results["sweep"]:
        lines += ["## Closed-loop sweep", "", *sweep_table(results["sweep"]), ""]
    lines += [
        f"Peak throughput ({results['peak_from']}): **{results['peak_rps']:.2f} req/s**.",
        "",
        "## Open loop (constant arrival rate)",
        "",
        *open_table(results["open"]),
        "",
        f"![latency vs offered load]({plot_link})",
        "",
    ]
    batches = batch_table(results["sweep"] + results["open"])
    if batches:
        lines += ["## Batch sizes (model calls per size)", "", *batches, ""]
    lines += [
        "Latency: client side, send to last byte, correct 200s only. ok req/s: correct answers per second "
        "of the phase (to its last answer). Queue wait, compute and batch tiles: server-side means from "
        "the deltas of `rsd_queue_wait_seconds`, `rsd_batch_compute_seconds`, `rsd_batch_size_tiles`.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- plot
def plot(results: dict[str, Any], path: Path) -> None:
    """Left: closed-loop throughput and p50 vs concurrency. Right: p50/p90/p99 vs offered load, 429 rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep, opened = results["sweep"], results["open"]
    fig, axes = plt.subplots(1, 2 if sweep else 1, figsize=(12 if sweep else 7, 4.5), squeeze=False)
    if sweep:
        ax = axes[0][0]
        conc = [p["concurrency"] for p in sweep]
        ax.plot(conc, [p["summary"]["throughput_rps"] for p in sweep], "o-", color="tab:blue")
        ax.set_xscale("log", base=2)
        ax.set_xticks(conc, [str(c) for c in conc])
        ax.set_xlabel("concurrency (closed loop)")
        ax.set_ylabel("correct answers / s", color="tab:blue")
        ax.set_title(f"sweep: peak {results['peak_rps']:.2f} req/s")
        twin = ax.twinx()
        twin.plot(conc, [_none_nan(p["summary"]["p50_s"]) for p in sweep], "s--", color="tab:gray")
        twin.set_ylabel("p50 latency (s)", color="tab:gray")
    ax = axes[0][-1]
    offered = [p["offered_rps"] for p in opened]
    for key, style in (("p50_s", "o-"), ("p90_s", "s-"), ("p99_s", "^-")):
        ax.plot(offered, [_none_nan(p["summary"][key]) for p in opened], style, label=key[:3])
    ax.set_xlabel("offered load (req/s)")
    ax.set_ylabel("latency (s)")
    ax.set_title("open loop")
    for p in opened:
        ax.annotate(f"{p['load']:.0%}", (p["offered_rps"], _none_nan(p["summary"]["p99_s"])), fontsize=8,
                    textcoords="offset points", xytext=(0, 6), ha="center")  # fmt: skip
    twin = ax.twinx()
    twin.plot(offered, [100 * p["summary"]["rate_429"] for p in opened], "x:", color="tab:red", label="429 %")
    twin.set_ylabel("429 rate (%)", color="tab:red")
    twin.set_ylim(0, max([5.0] + [120 * p["summary"]["rate_429"] for p in opened]))
    lines, labels = ax.get_legend_handles_labels()
    more, more_labels = twin.get_legend_handles_labels()
    ax.legend(lines + more, labels + more_labels, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _none_nan(value: float | None) -> float:
    return float("nan") if value is None else value


# ---------------------------------------------------------------------------------------------- files
def _jsonable(results: dict[str, Any]) -> dict[str, Any]:
    out = dict(results)
    for key in ("sweep", "open"):
        out[key] = [{**phase, "records": [asdict(r) for r in phase["records"]]} for phase in results[key]]
    return out


def write_all(results: dict[str, Any], out: Path, report_path: Path | None = None) -> dict[str, Path]:
    """report.md (or `report_path`), latency.png and results.json; the report links the plot relatively."""
    out.mkdir(parents=True, exist_ok=True)
    report_path = report_path or out / "report.md"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    plot_path, json_path = out / "latency.png", out / "results.json"
    plot(results, plot_path)
    link = os.path.relpath(plot_path.resolve(), report_path.resolve().parent)
    report_path.write_text(markdown(results, link))
    json_path.write_text(json.dumps(_jsonable(results), indent=1))
    return {"report": report_path, "plot": plot_path, "json": json_path}
