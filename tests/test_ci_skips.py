"""Under CI=true a skipped test fails unless no CI machine could run it (tests/tools.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.tools import missing_tool_reason, skip_is_allowed_on_ci

ROOT = Path(__file__).resolve().parents[1]

PROBE = f"""
import pytest

def test_needs_a_missing_tool():
    pytest.skip({missing_tool_reason("nginx")!r})

@pytest.mark.skipif(True, reason="needs a CUDA device")
def test_needs_a_gpu():
    pass

def test_runs():
    pass
"""


def _run_probe(tmp_path: Path, ci: str | None) -> str:
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_runtest_makereport  # noqa: F401\n")
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if ci is not None:
        env["CI"] = ci
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    return result.stdout.strip().splitlines()[-1]


def test_a_missing_tool_fails_under_ci(tmp_path: Path) -> None:
    assert _run_probe(tmp_path, "true").startswith("1 failed, 1 passed, 1 skipped")


def test_a_missing_tool_only_skips_locally(tmp_path: Path) -> None:
    assert _run_probe(tmp_path, None).startswith("1 passed, 2 skipped")


def test_only_hardware_no_ci_machine_has_may_skip_on_ci() -> None:
    assert skip_is_allowed_on_ci("Skipped: needs a CUDA device")
    assert skip_is_allowed_on_ci("TensorRT is not installed")
    assert not skip_is_allowed_on_ci(missing_tool_reason("chromium"))
    assert not skip_is_allowed_on_ci("redis-server not found at /usr/bin/redis-server")
