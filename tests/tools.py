"""The one rule for tests that need a system tool or an optional package (docs/architecture.md "Testing").

Locally a missing tool skips with a reason that names it; under CI=true (tests/conftest.py) every skip
fails unless its reason starts with one of NEVER_ON_CI, the things no CI machine here can have.
"""

from __future__ import annotations

import os
import shutil

import pytest

#: words of skip reasons that stay skips under CI=true: hardware and wheels no CI machine has
NEVER_ON_CI = ("CUDA", "TensorRT")


def tool_path(name: str) -> str | None:
    """`name` on PATH, or in /usr/sbin or /usr/bin where Debian puts daemons outside a user's PATH."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/bin"):
        candidate = os.path.join(folder, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def missing_tool_reason(name: str) -> str:
    return f"{name} is not installed (scripts/system_packages.sh installs it)"


def require_tool(name: str) -> str:
    """The tool's path; skips the calling test when it is missing."""
    path = tool_path(name)
    if path is None:
        pytest.skip(missing_tool_reason(name))
    return path


def needs_tool(name: str) -> pytest.MarkDecorator:
    """A skipif marker for a test module or function that needs `name`."""
    return pytest.mark.skipif(tool_path(name) is None, reason=missing_tool_reason(name))


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_is_allowed_on_ci(reason: str) -> bool:
    return any(word in reason for word in NEVER_ON_CI)
