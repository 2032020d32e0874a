"""Our LPIPS module (seeded random AlexNet) against a restatement of the lpips package's forward;
PSNR/SSIM against scikit-image; `rsd eval` end to end on a tiny artifact."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from training.evaluate import psnr_y, rgb_to_y, ssim_y
from training.lpips import LPIPS, LPIPSWeightsError, default_linear_weights

CHANNELS = (64, 192, 384, 256, 256)


def torchvision_alexnet_features() -> nn.Sequential:
    """torchvision.models.alexnet().features, layer for layer."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
    )


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    torch.manual_seed(0)
    features = torchvision_alexnet_features()
    folder = tmp_path_factory.mktemp("lpips")
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(4, 4)  # present in torchvision files, ignored
    torch.save(state, folder / "alexnet.pth")
    gen = torch.Generator().manual_seed(1)
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen) for i, c in enumerate(CHANNELS)}
    torch.save(lins, folder / "lin.pth")
    return folder / "alexnet.pth", folder / "lin.pth", features, lins


def reference_lpips(features: nn.Sequential, lins: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The lpips package's LPIPS.forward (v0.1, alex, spatial=False), restated with index slices."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    bounds = [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)]

    def taps(z):
        h, out = (z - shift) / scale, []
        for a, b in bounds:
            for i in range(a, b):
                h = features[i](h)
            out.append(h.clone())
        return out

    total = 0
    for k, (a, b) in enumerate(zip(taps(x), taps(y), strict=True)):
        na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        d = torch.nn.functional.conv2d((na - nb) ** 2, lins[f"lin{k}.model.1.weight"])
        total = total + d.mean(dim=(2, 3), keepdim=True)
    return total.flatten()


def test_lpips_matches_the_reference_forward(weight_files):
    alex, lin, features, lins = weight_files
    model = LPIPS.from_files(alex, lin)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    with torch.no_grad():
        ours = model(x, y)
        ref = reference_lpips(features.eval(), lins, x, y)
    assert ours.shape == (2,)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-7)
    assert (ours > 0).all()
    assert model(x, x).abs().max() < 1e-6
    # usable as a loss: gradients reach the input, never the frozen weights
    xg = x.clone().requires_grad_(True)
    model(xg, y).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_shipped_linear_heads_load(weight_files):
    path = default_linear_weights()
    if not path.is_file():
        pytest.skip("the lpips package (weights only) is not installed")
    model = LPIPS.from_files(weight_files[0])  # default heads
    assert all((lin.weight >= 0).all() for lin in model.lins)  # the published heads are non-negative


def test_lpips_missing_files_are_clear_errors(weight_files, tmp_path):
    with pytest.raises(LPIPSWeightsError, match="alexnet_weights"):
        LPIPS.from_files(None)
    with pytest.raises(LPIPSWeightsError, match="does not exist"):
        LPIPS.from_files(tmp_path / "none.pth", weight_files[1])
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, tmp_path / "partial.pth")
    with pytest.raises(LPIPSWeightsError, match=r"lack features\.0\.bias"):
        LPIPS.from_files(tmp_path / "partial.pth", weight_files[1])


def test_psnr_and_ssim_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    gen = torch.Generator().manual_seed(0)
    hr = torch.rand(1, 3, 48, 48, generator=gen)
    sr = (hr + 0.05 * torch.randn(hr.shape, generator=gen)).clamp(0, 1)
    y_hr, y_sr = rgb_to_y(hr)[0, 0].double().numpy(), rgb_to_y(sr)[0, 0].double().numpy()
    assert psnr_y(sr, hr).item() == pytest.approx(peak_signal_noise_ratio(y_hr, y_sr, data_range=1.0), abs=1e-4)
    ref = structural_similarity(
        y_hr, y_sr, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, win_size=11
    )
    assert ssim_y(sr, hr).item() == pytest.approx(ref, abs=1e-6)
    assert ssim_y(hr, hr).item() == pytest.approx(1.0, abs=1e-6)


def test_rsd_eval_writes_model_and_bicubic_metrics(tmp_path, capsys):
    from rsd_cli.train import add_parsers
    from tests.factories import make_tiny_artifact

    model = make_tiny_artifact(tmp_path / "model")
    data = tmp_path / "data"
    (data / "gt").mkdir(parents=True)
    (data / "lq").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        hr = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
        Image.fromarray(hr).save(data / "gt" / f"{i}.png")
        Image.fromarray(hr).resize((24, 16), Image.Resampling.BICUBIC).save(data / "lq" / f"{i}.png")
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "r.json")])
    assert args.handler(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["images"] == 2
    assert set(report["model"]) == set(report["bicubic"]) == {"psnr", "ssim"}
    assert report["model"] != report["bicubic"]
    assert 5 < report["bicubic"]["psnr"] < 40
    assert "bicubic" in capsys.readouterr().out
