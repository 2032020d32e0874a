"""`rsd bench`: measurement bookkeeping with stand-in backends, variant names, and one tiny end-to-end run."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from model_export.bench import BenchConfig, PeakRss, format_table, measure_backends
from model_export.variants import BASELINE, CPU_VARIANTS, CUDA_VARIANTS, make_variant
from rsd_cli import export as export_cli
from tests.model_export.conftest import TILE


class SleepyRunner:
    """Takes `per_tile` seconds per tile and returns `offset` everywhere."""

    def __init__(self, name: str, per_tile: float, offset: float) -> None:
        self.name, self.per_tile, self.offset = name, per_tile, offset

    def run(self, lq_tiles: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        time.sleep(self.per_tile * len(lq_tiles))
        return np.full((len(lq_tiles), 3, 4, 4), self.offset, np.float32)

    def close(self) -> None:
        pass


def test_measure_backends_reports_throughput_speedup_and_psnr() -> None:
    runners = {BASELINE: SleepyRunner(BASELINE, 0.02, 0.0), "fast": SleepyRunner("fast", 0.005, 0.02)}
    lq = np.zeros((2, 3, 1, 1), np.float32)
    results = measure_backends(runners, lq, [0, 1], [1, 2], repeats=2, device="cpu")  # type: ignore[arg-type]
    base, fast = results[BASELINE].batches, results["fast"].batches
    assert base[2].tiles_per_s == pytest.approx(2 / base[2].seconds)
    assert 2.0 < fast[2].tiles_per_s / base[2].tiles_per_s < 5.0
    assert len(fast[1].runs) == 2
    assert results[BASELINE].psnr_db is None  # the baseline against itself
    assert results["fast"].psnr_db == pytest.approx(10 * np.log10(4 / 0.02**2), rel=1e-4)
    table = format_table(results, [1, 2])
    assert "fast" in table and "exact" in table and len(table.splitlines()) == 5


def test_peak_rss_sees_an_allocation() -> None:
    with PeakRss() as rss:
        block = np.ones(64 * 2**20, np.uint8)  # 64 MiB, touched
        time.sleep(0.05)
    assert rss.peak_bytes >= 48 * 2**20 and block[-1] == 1


@pytest.mark.parametrize("name", ["torch-int8", "onnxruntime-fp32-turbo", "tensorrt", "jax-fp32"])
def test_unknown_variants_list_the_valid_ones(tiny_dir: Path, name: str) -> None:
    with pytest.raises(ValueError, match=r"torch-\{fp32,bf16,fp16\}"):
        make_variant(name, tiny_dir, TILE, "cpu", None)


def test_bench_end_to_end_on_the_tiny_artifact(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser(prog="rsd")
    export_cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "bench",
            "--model",
            str(tiny_dir),
            "--tile",
            str(TILE),
            "--backends",
            "onnxruntime-fp32",
            "--batches",
            "1,2",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert "onnxruntime-fp32" in printed and "teacher / one-step time ratio" in printed
    document = json.loads((tmp_path / f"bench_tiny-random_{TILE}.json").read_text())
    assert set(document["backends"]) == {BASELINE, "onnxruntime-fp32"}
    assert set(document["backends"]["onnxruntime-fp32"]["batches"]) == {"1", "2"}
    assert document["backends"]["onnxruntime-fp32"]["psnr_db"] > 50  # fp32 onnxruntime ~ torch fp32
    # 15 teacher UNet calls vs 1 student call, same encoder/decoder: more FLOPs, but under 15x
    assert 1.5 < document["teacher"]["flop_ratio"] < 15
    assert (tmp_path / f"bench_tiny-random_{TILE}.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("repeats", 0, "repeats must be a positive int"), ("batches", (1, 0), "batches must be positive ints")],
)
def test_bench_config_refuses_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BenchConfig(Path("m"), 64, **{field: value})  # type: ignore[arg-type]


def test_bench_batches_must_be_positive() -> None:
    parser = argparse.ArgumentParser(prog="rsd")
    export_cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--model", "m", "--batches", "1,0"])


def test_fast_torch_variants_build_by_name(tiny_dir: Path) -> None:
    runner = make_variant("torch-bf16-cast", tiny_dir, TILE, "cpu", None)
    assert getattr(runner, "cast", False) and runner.name == "torch-bf16-cast"
    runner.close()
    for name in ("torch-fp16-graphs", "torch-bf16-compile-graphs"):  # CUDA graph variants need CUDA
        with pytest.raises(ValueError, match="needs a CUDA device; got 'cpu'"):
            make_variant(name, tiny_dir, TILE, "cpu", None)
    with pytest.raises(ValueError, match=r"torch-\{bf16,fp16\}-cast"):
        make_variant("torch-fp32-cast", tiny_dir, TILE, "cpu", None)


def test_bench_default_variants_follow_the_device() -> None:
    assert all("graphs" not in name and "cast" not in name for name in CPU_VARIANTS)
    assert {"torch-fp16-cast", "torch-bf16-cast", "torch-fp16-graphs", "torch-bf16-graphs"} <= set(CUDA_VARIANTS)
    assert "torch-fp16-compile-graphs" in CUDA_VARIANTS and BASELINE in CUDA_VARIANTS
