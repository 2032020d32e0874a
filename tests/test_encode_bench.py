"""bench/encode_bench.py runs and reports against the library defaults it measured (it cannot rot).

Not a timing test: the speed-ups are the benchmark's; here the table's shape and the byte ratios,
which do not depend on the machine, are checked on one photo.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import encode_bench  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def test_encode_bench_writes_its_table(tmp_path: Path) -> None:
    assert encode_bench.main(["--photos", "1", "--repeats", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "encode.json").read_text())
    assert (tmp_path / "encode.png").stat().st_size > 0
    summary = {(e["format"], e["setting"]): e for e in report["summary"]}
    assert set(summary) == set(encode_bench.SETTINGS)
    for fmt, default in encode_bench.LIBRARY_DEFAULTS.items():
        assert summary[fmt, default]["bytes_ratio"] == 1.0 and summary[fmt, default]["speedup"] == 1.0
    # zlib: more effort, fewer bytes (lossless at every level); the fastest level costs bytes
    png = [summary["png", level]["bytes_ratio"] for level in (1, 3, 6, 9)]
    assert png == sorted(png, reverse=True) and png[0] > 1.05
    assert all(abs(summary["webp", m]["psnr_delta_db"]) < 1.0 for m in (0, 1, 2, 6))
