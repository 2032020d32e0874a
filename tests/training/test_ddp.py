"""DDP: two torchrun processes (gloo, CPU) give the same update as one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.factories import make_teacher_artifact
from tests.training.test_resume import flat
from tests.training.tiny import REPO, tiny_recipe
from training.loop import find_checkpoint

WORKER = Path(__file__).with_name("ddp_worker.py")


def run(recipe, nproc: int, tmp_path: Path) -> dict[str, object]:
    path = tmp_path / f"recipe_{nproc}.json"
    path.write_text(json.dumps(recipe.model_dump(mode="json")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*launcher, str(WORKER), str(path)] if nproc > 1 else [sys.executable, str(WORKER), str(path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(find_checkpoint(Path(recipe.loop.out_dir)), map_location="cpu", weights_only=True)
    assert ckpt["world_size"] == nproc
    return flat(ckpt["stage"])


@pytest.mark.parametrize("stage", ["distill", pytest.param("teacher", marks=pytest.mark.slow)])
def test_two_processes_match_one_process(stage, tmp_path):
    teacher = make_teacher_artifact(tmp_path / "teacher")
    sections = {
        "loop": {"iterations": 2, "batch": 4, "microbatch": 2, "checkpoint_every": 100, "validate_every": 100},
        "data": {"synthetic_count": 8, "val_count": 1},
    }
    if stage == "distill":
        sections |= {"teacher": str(teacher), "distill": {"fake_updates": 1, "cache_latents": 0}}
    else:
        sections |= {"autoencoder": str(teacher), "init_from": str(teacher)}
    one = run(tiny_recipe(stage, tmp_path / "one", **sections), 1, tmp_path)
    two = run(tiny_recipe(stage, tmp_path / "two", **sections), 2, tmp_path)
    assert one.keys() == two.keys()
    worst, moved = 0.0, 0.0
    for key, a in one.items():
        b = two[key]
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            worst = max(worst, (a - b).abs().max().item() / (a.abs().max().item() + 1e-6))
        elif isinstance(a, torch.Tensor):
            assert torch.equal(a, b), key
        else:
            assert a == b, key
    # equal microbatches and a power-of-two world make the all-reduce mean exact here
    assert worst < 1e-6, worst
    # two steps really moved the weights (so the comparison above compares updates)
    start = make_start_weights(stage, teacher)
    key = "student.input_blocks.0.0.weight" if stage == "distill" else "net.input_blocks.0.0.weight"
    moved = (one[key] - start).abs().max().item()
    assert moved > 1e-5


def make_start_weights(stage: str, teacher: Path) -> torch.Tensor:
    from rsd.artifact import load_artifact

    _, states = load_artifact(teacher)
    w = states["teacher"]["input_blocks.0.0.weight"]
    return torch.cat([w, torch.zeros_like(w[:, :1])], dim=1) if stage == "distill" else w
