"""Shared test fixtures: where the reference goldens live, seeded RNGs."""

from __future__ import annotations

import os

# Spinning OpenMP threads make every test 3-5x slower on a busy 2-core machine; passive waiting costs
# nothing when the machine is idle. Set before torch is imported by any test module.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import pytest

from tests.tools import on_ci, skip_is_allowed_on_ci

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "fixtures" / "reference"


def reference_dir() -> Path:
    """The reference fixtures folder (../shared/fixtures/reference relative to the repo root)."""
    if not (REFERENCE_DIR / "README.md").is_file():
        pytest.fail(
            f"reference fixtures not found at {REFERENCE_DIR}: the tests expect the shared/ folder "
            "beside the repository root (../shared/fixtures/reference)",
            pytrace=False,
        )
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def ref_dir() -> Path:
    return reference_dir()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Under CI=true a skip is a failure unless no CI machine could run the test (docs/architecture.md
    "Testing"): a missing redis-server, nginx or Chromium must not pass as green."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and on_ci()) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not skip_is_allowed_on_ci(reason):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which runs every test: {reason}"
