"""The README's tiny chain runs as written: the commands of scripts/tiny_recipe.sh (which the README block
reproduces line for line), from the data step to `rsd upscale` with the distilled artifact, each stage cut
to a few iterations (the only change: the configs' loop lengths; every path is the recipe's, under a
temporary working directory)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "scripts" / "tiny_recipe.sh"
LOOP = {"iterations": 4, "log_every": 2, "checkpoint_every": 2, "validate_every": 4}

pytestmark = pytest.mark.timeout(600)


def recipe_commands() -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in RECIPE.read_text().splitlines()]
    return [line for line in lines if line]


def test_the_readme_block_is_the_recipe() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### The tiny chain on a CPU", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]
    assert commands == recipe_commands()


def _argv(command: str) -> list[str]:
    words = shlex.split(command)
    if words[0] == "rsd":
        return [sys.executable, "-m", "rsd_cli.main", *words[1:]]
    assert words[0] == "python", command
    return [sys.executable, str(ROOT / words[1]), *words[2:]]


def test_the_recipe_runs_to_an_artifact_that_upscales(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    for config in (ROOT / "configs").glob("tiny_*.toml"):
        text = config.read_text()
        for key, value in LOOP.items():
            text = re.sub(rf"(?m)^{key} = \d+", f"{key} = {value}", text)
        (tmp_path / "configs" / config.name).write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    for command in recipe_commands():
        done = subprocess.run(_argv(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    lq = Image.open(tmp_path / "runs" / "tiny_data" / "eval_degraded" / "lq" / "coffee.png")
    sr = Image.open(tmp_path / "coffee_x4.png")
    assert sr.size == (lq.width * 4, lq.height * 4)
