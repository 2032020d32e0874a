"""Exact resume: k steps + resume to n equals n uninterrupted steps, bit for bit (CPU, tiny recipes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.factories import make_teacher_artifact
from tests.training.tiny import tiny_recipe
from training.loop import ResumeError, find_checkpoint
from training.run import train


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return make_teacher_artifact(tmp_path_factory.mktemp("teacher") / "artifact")


def recipes(stage: str, teacher_dir: Path, out: Path, iterations: int):
    common = {
        "loop": {
            "iterations": iterations,
            "batch": 2,
            "microbatch": 1,
            "checkpoint_every": 100,
            "validate_every": 100,
            "log_every": 1,
        },
        "data": {"synthetic_count": 6, "val_count": 1},
    }
    if stage == "teacher":
        return tiny_recipe("teacher", out, autoencoder=str(teacher_dir), **common)
    return tiny_recipe(
        "distill", out, teacher=str(teacher_dir), distill={"fake_updates": 2, "cache_latents": 0}, **common
    )


def flat(state, prefix: str = "") -> dict[str, object]:
    """Nested checkpoint state -> {dotted key: leaf}."""
    out: dict[str, object] = {}
    if isinstance(state, dict):
        for k, v in state.items():
            out |= flat(v, f"{prefix}{k}.")
    elif isinstance(state, list | tuple):
        for i, v in enumerate(state):
            out |= flat(v, f"{prefix}{i}.")
    else:
        out[prefix.rstrip(".")] = state
    return out


def final_state(run_dir: Path) -> dict[str, object]:
    ckpt = torch.load(find_checkpoint(run_dir), map_location="cpu", weights_only=True)
    return flat(ckpt["stage"]) | {"step": ckpt["step"]}


@pytest.mark.parametrize("stage", ["teacher", "distill"])
def test_resume_equals_uninterrupted_run(stage, teacher_dir, tmp_path):
    train(recipes(stage, teacher_dir, tmp_path / "full", 4))
    train(recipes(stage, teacher_dir, tmp_path / "split", 2))
    halfway = final_state(tmp_path / "split")
    assert halfway["step"] == 2
    train(recipes(stage, teacher_dir, tmp_path / "split", 4), resume=tmp_path / "split")
    full, split = final_state(tmp_path / "full"), final_state(tmp_path / "split")
    assert full.keys() == split.keys()
    assert full["step"] == split["step"] == 4
    mismatched = [k for k, v in full.items() if not same(v, split[k])]
    assert not mismatched, mismatched[:5]
    # the comparison can fail: two steps fewer give different weights
    assert [k for k, v in full.items() if not same(v, halfway[k]) and k.endswith("weight")]


def same(a: object, b: object) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) else a == b


def test_resume_refuses_a_different_recipe(teacher_dir, tmp_path):
    train(recipes("teacher", teacher_dir, tmp_path / "run", 1))
    other = tiny_recipe(
        "teacher",
        tmp_path / "run",
        autoencoder=str(teacher_dir),
        optim={"lr": 1e-3},
        loop={"iterations": 2, "batch": 2, "microbatch": 1},
        data={"synthetic_count": 6, "val_count": 1},
    )
    with pytest.raises(ResumeError, match="optim"):
        train(other, resume=tmp_path / "run")
    with pytest.raises(ResumeError, match="no checkpoint"):
        train(other, resume=tmp_path / "nowhere")
