"""The bundled model models/rsd-tiny: it loads strictly, upscales a held-out photo sensibly, stays
within its size budget, and the numbers of its model card are those of its metrics.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.training.tiny import REPO

MODEL = REPO / "models" / "rsd-tiny"
NUMBER = r"([\d.]+)"
CARD_ROW = re.compile(
    rf"^\| (?P<lr>[^|]+) \| (?P<method>[^|]+) \| (?P<psnr>{NUMBER}) \| (?P<ssim>{NUMBER}) \| (?P<detail>{NUMBER}) \|$"
)


def held_out_pair(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A coffee crop (held out from training): hr (1, 3, 4s, 4s), lr (1, 3, s, s) in [-1, 1]."""
    import skimage.data

    from training.degradation import bicubic_downsample

    rgb = np.asarray(Image.open(Path(skimage.data.__file__).parent / "coffee.png").convert("RGB"))
    hr = torch.from_numpy(rgb[100 : 100 + 4 * size, 200 : 200 + 4 * size].copy()).permute(2, 0, 1).float() / 255
    return hr[None] * 2 - 1, bicubic_downsample(hr)[None] * 2 - 1


def test_artifact_files_and_size():
    files = sorted(p.name for p in MODEL.iterdir())
    for name in ("spec.json", "weights.safetensors", "MODEL_CARD.md", "metrics.json", "before_after.png"):
        assert name in files, files
    assert (MODEL / "weights.safetensors").stat().st_size <= 25 * 2**20


def test_loads_strictly_and_upscales_held_out_photo():
    from rsd.onestep import OneStepSR
    from rsd.sampler import TeacherSampler
    from training.evaluate import image_metrics

    torch.manual_seed(0)
    model = OneStepSR.from_artifact(MODEL)  # strict: missing/unexpected/mis-shaped weights raise
    assert TeacherSampler.from_artifact(MODEL).spec == model.spec
    hr, lr = held_out_pair()
    with torch.no_grad():
        sr = model(lr, torch.randn(1, model.noise_channels, *lr.shape[-2:]))
    assert sr.shape == hr.shape and torch.isfinite(sr).all()
    grey = torch.zeros_like(hr) + hr.mean()
    psnr = image_metrics(sr, hr)["psnr"][0]
    assert psnr > image_metrics(grey, hr)["psnr"][0] + 5, psnr
    assert psnr > 20.0, psnr


def test_model_card_numbers_match_metrics_json():
    from scripts.tiny_eval import METHODS, SETS

    metrics = json.loads((MODEL / "metrics.json").read_text())
    card = (MODEL / "MODEL_CARD.md").read_text()
    rows = [m.groupdict() for m in map(CARD_ROW.match, card.splitlines()) if m]
    expected = [(key, label, name, text) for key, _, label in SETS for name, text in METHODS]
    assert len(rows) == len(expected), rows
    for row, (key, label, name, text) in zip(rows, expected, strict=True):
        assert (row["lr"], row["method"]) == (label, text)
        m = metrics[key][name]
        assert float(row["psnr"]) == pytest.approx(m["psnr"], abs=0.005 + 1e-9)
        assert float(row["ssim"]) == pytest.approx(m["ssim"], abs=5e-5 + 1e-9)
        assert float(row["detail"]) == pytest.approx(m["detail"], abs=5e-4 + 1e-9)
    t = metrics["timing"]
    assert t["ratio"] == pytest.approx(t["teacher_s"] / t["student_s"])
    assert f"ratio {t['ratio']:.1f}x" in card and f"{t['upscale_256_s']:.2f} s" in card
