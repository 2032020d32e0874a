"""`make setup` installs torch from the CPU index first, with the plain pin as the fallback (README "Quick start").

The Makefile's setup recipe runs in a copy of the repo's Makefile with a stub venv python that records its
arguments and fails for the CPU index, as when that index is unreachable.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def test_setup_tries_the_cpu_index_then_falls_back_to_the_pin(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    calls = tmp_path / "calls"
    stub = venv / "bin" / "python"  # records `-m pip ...`; the CPU index "does not answer"
    stub.write_text(f'#!/bin/sh\necho "$@" >> {calls}\ncase "$*" in *download.pytorch.org*) exit 1;; esac\n')
    stub.chmod(0o755)
    for name in ("pyproject.toml", "Makefile"):
        shutil.copy(ROOT / name, tmp_path / name)
    done = subprocess.run(
        ["make", "-C", str(tmp_path), f"VENV={venv}", f"{venv}/.setup-done"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    torch_calls = [line for line in calls.read_text().splitlines() if "torch==" in line and "-e" not in line.split()]
    assert torch_calls[0].endswith("--index-url https://download.pytorch.org/whl/cpu torch==2.13.0")
    assert torch_calls[1] == "-m pip install -q torch==2.13.0"
    assert "did not answer" in done.stderr
