"""The container as deployed, built and run with podman: scripts/container_check.sh (docs/deployment.md
"Without Docker: podman").

The script builds the Dockerfile's `cpu` target from a debootstrap-made base image and a wheel directory
(both cached outside the repository, with podman's layer cache), starts an API and a worker container on
a private Redis and checks /readyz, an upscale with the host's bytes, uid 10001, the HEALTHCHECK and a
clean SIGTERM stop with a job in hand. A cold run (base image, wheels, full build) takes about 5 minutes
on two cores; a cached one well under a minute plus the rebuild of what changed.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.deploy.conftest import REPO
from tests.tools import require_tool

SCRIPT = REPO / "scripts" / "container_check.sh"

pytestmark = pytest.mark.timeout(1500)


def test_the_cpu_image_builds_serves_the_hosts_bytes_and_stops_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    for tool in ("podman", "runc", "debootstrap", "redis-server", "curl"):
        require_tool(tool)
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=1400)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and lines[-1] == "container_check: ok", (result.stdout[-4000:], result.stderr[-4000:])
    with capsys.disabled():
        print("\n" + next(line for line in lines if line.startswith("container_check: timings:")))
