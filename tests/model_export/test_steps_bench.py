"""`rsd bench`'s 1 / 4 / 15-step table (issue 15 bar 5): rows, FLOP ratios under the step counts, CLI output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from model_export.steps_bench import format_steps_table, steps_table
from rsd_cli import export as export_cli
from tests.model_export.conftest import TILE


def test_steps_table_rows_and_ratios(tiny_dir: Path) -> None:
    rows = steps_table(tiny_dir, TILE, repeats=1)
    assert [(r.family, r.steps) for r in rows] == [("rsd", 1), ("resshift-s4", 4), ("resshift-s15", 15)]
    one, four, fifteen = rows
    assert one.time_ratio == one.flop_ratio == 1.0
    # the autoencoder is paid once: K steps cost more than one, less than K times as much
    assert 1.0 < four.flop_ratio < 4.0 and four.flop_ratio < fifteen.flop_ratio < 15.0
    assert all(r.ms_per_tile > 0 and r.gflops_per_tile > 0 for r in rows)
    text = format_steps_table(rows, TILE)
    assert "resshift-s15" in text and len(text.splitlines()) == 5


def test_rsd_bench_prints_the_steps_table(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser(prog="rsd")
    export_cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    argv = ["bench", "--model", str(tiny_dir), "--tile", str(TILE), "--backends", "torch-fp32", "--batches", "1"]
    args = parser.parse_args([*argv, "--repeats", "1", "--threads", "1", "--no-teacher", "--out", str(tmp_path)])
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert "steps table" in printed and "resshift-s4" in printed
    document = json.loads((tmp_path / f"bench_tiny-random_{TILE}.json").read_text())
    assert [row["steps"] for row in document["steps"]] == [1, 4, 15]
    assert (tmp_path / f"steps_tiny-random_{TILE}.png").stat().st_size > 1000
