"""The shipped tiny recipes end to end through the CLI handlers: autoencoder -> teacher -> distill on
generated images (CPU, several minutes). The teacher loss and the distillation objective go down, and
the final artifact runs in the one-step graph and through the upscaling pipeline."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from rsd_cli.train import add_parsers
from tests.training.tiny import CONFIGS

pytestmark = pytest.mark.slow

ITERATIONS = {"autoencoder": 60, "teacher": 300, "distill": 40}


def write_config(stage: str, tmp_path: Path) -> Path:
    text = (CONFIGS / f"tiny_{stage}.toml").read_text().replace('"runs/', f'"{tmp_path}/runs/')
    text = re.sub(r"(?m)^iterations = \d+", f"iterations = {ITERATIONS[stage]}", text)
    text = re.sub(r"(?m)^log_every = \d+", "log_every = 5" if stage == "distill" else "log_every = 20", text)
    text = re.sub(r"(?m)^validate_every = \d+", "validate_every = 100", text)
    path = tmp_path / f"{stage}.toml"
    path.write_text(text)
    return path


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.handler(args)


def metrics(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_tiny_chain(tmp_path):
    torch.set_num_threads(1)
    for stage in ("autoencoder", "teacher", "distill"):
        assert cli("train", stage, "--config", str(write_config(stage, tmp_path))) == 0
    runs = tmp_path / "runs"

    teacher = metrics(runs / "tiny_teacher", "train")
    assert np.mean([r["loss"] for r in teacher[-3:]]) < 0.6 * np.mean([r["loss"] for r in teacher[:2]])
    val = metrics(runs / "tiny_teacher", "val")
    assert val[-1]["x0_mse"] < val[0]["x0_mse"]

    distill = [r["objective"] for r in metrics(runs / "tiny_distill", "train")]
    print(f"teacher loss {[round(r['loss'], 4) for r in teacher]}\ndistill objective {[round(v, 5) for v in distill]}")
    third = len(distill) // 3
    assert np.mean(distill[-third:]) < np.mean(distill[:third]), distill

    from rsd.backends import load_upscaler
    from rsd.onestep import OneStepSR
    from rsd.pipeline import upscale_array

    artifact = runs / "tiny_distill" / "artifact"
    model = OneStepSR.from_artifact(artifact)
    assert model.spec.net_noise_channels == 1 and model.spec.teacher is not None
    lq = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        sr = model(lq, torch.randn(1, model.noise_channels, 32, 32))
    assert sr.shape == (1, 3, 128, 128) and torch.isfinite(sr).all()
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    with load_upscaler(artifact, "torch") as upscaler:
        assert upscale_array(upscaler, rgb, seed=1).shape == (160, 200, 3)
