"""Real-ESRGAN degradation: kernels, operations, determinism, ranges (method.md 4.12)."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.training.tiny import REPO
from training.config import DegradationConfig
from training.data import synthetic_image, to_tensor01
from training.degradation import (
    BlurStage,
    DegradationTrace,
    bicubic_downsample,
    degrade,
    filter2d,
    gaussian_kernel,
    gaussian_noise,
    generalized_gaussian_kernel,
    jpeg_compress,
    plateau_kernel,
    poisson_noise,
    sample_blur_kernel,
    sinc_kernel,
)

CFG = DegradationConfig()


def hr_image(seed: int = 0, size: int = 64) -> torch.Tensor:
    return to_tensor01(synthetic_image(seed, size))


@pytest.mark.parametrize(
    "kernel",
    [
        gaussian_kernel(21, 2.0, 2.0, 0.0),
        gaussian_kernel(15, 0.5, 2.5, 0.7),
        generalized_gaussian_kernel(11, 1.0, 2.0, -1.0, 0.6),
        generalized_gaussian_kernel(11, 1.0, 2.0, 1.0, 3.5),
        plateau_kernel(13, 1.5, 0.8, 2.0, 1.7),
        sinc_kernel(9, math.pi / 2, pad_to=21),
    ],
)
def test_kernels_sum_to_one_and_are_centred(kernel):
    assert kernel.sum() == pytest.approx(1.0, abs=1e-10)
    k = kernel.shape[0]
    centre = kernel[k // 2, k // 2]
    assert centre == kernel.max()
    # point symmetry about the centre (every kernel family here is centrally symmetric)
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-12)


def test_kernel_shapes_follow_their_parameters():
    iso = gaussian_kernel(21, 2.0, 2.0, 0.0)
    np.testing.assert_allclose(iso, iso.T, atol=1e-12)  # isotropic
    aniso = gaussian_kernel(21, 3.0, 0.5, 0.0)  # sigma_x: wide along x (columns), narrow along y
    assert aniso[10, 15] > 50 * aniso[15, 10]
    rotated = gaussian_kernel(21, 3.0, 0.5, math.pi / 2)  # the same, turned 90 degrees
    np.testing.assert_allclose(rotated, aniso.T, atol=1e-12)
    # sinc: circular low-pass with ringing (negative lobes), unlike the Gaussians
    assert sinc_kernel(21, math.pi / 4).min() < 0
    assert gaussian_kernel(21, 2.0, 2.0, 0.0).min() > 0


def test_sampled_kernels_are_padded_to_the_configured_size():
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(200):
        kind, k = sample_blur_kernel(rng, BlurStage.of(CFG, 1)._replace(max_size=21, sinc_prob=0.1))
        kinds.add(kind)
        assert k.shape == (21, 21)
        assert k.sum() == pytest.approx(1.0, abs=1e-9)
    assert {"iso", "aniso", "generalized_iso", "plateau_iso", "sinc"} <= kinds


def test_filter_with_a_delta_is_identity_and_a_blur_smooths():
    img = hr_image()[None]
    delta = np.zeros((5, 5))
    delta[2, 2] = 1
    assert torch.allclose(filter2d(img, delta), img, atol=1e-6)
    blurred = filter2d(img, gaussian_kernel(11, 2.0, 2.0, 0.0))
    assert blurred.shape == img.shape
    assert blurred.diff(dim=-1).abs().mean() < 0.7 * img.diff(dim=-1).abs().mean()
    tiny = torch.rand(1, 3, 4, 4)  # smaller than the kernel radius: replicate padding instead of reflect
    assert filter2d(tiny, gaussian_kernel(21, 2.0, 2.0, 0.0)).shape == tiny.shape


def test_jpeg_quality_changes_the_bytes_and_the_image():
    img = hr_image(1)[None]
    low, high = jpeg_compress(img, 30), jpeg_compress(img, 95)
    assert low.shape == high.shape == img.shape
    assert not torch.equal(low, high)
    assert (high - img).abs().mean() < (low - img).abs().mean()
    u8 = (img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    sizes = []
    for q in (30, 95):
        buf = io.BytesIO()
        Image.fromarray(u8).save(buf, format="JPEG", quality=q)
        sizes.append(len(buf.getvalue()))
    assert sizes[0] < sizes[1]
    with pytest.raises(ValueError, match="quality"):
        jpeg_compress(img, 0)


def test_noise_models():
    rng = np.random.default_rng(0)
    flat = torch.full((1, 3, 64, 64), 0.5)
    noisy = gaussian_noise(rng, flat, sigma=10.0, gray=False)
    assert (noisy - flat).std().item() == pytest.approx(10 / 255, rel=0.1)
    gray = gaussian_noise(rng, flat, sigma=10.0, gray=True)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    assert not torch.equal(noisy[:, 0], noisy[:, 1])
    shot = poisson_noise(rng, hr_image()[None], scale=1.0, gray=False)
    assert shot.min() >= 0 and shot.max() <= 1
    # shot noise grows with brightness
    dark, bright = torch.full((1, 3, 64, 64), 0.1), torch.full((1, 3, 64, 64), 0.9)
    d = (poisson_noise(rng, dark, 1.0, False) - dark).std()
    b = (poisson_noise(rng, bright, 1.0, False) - bright).std()
    assert b > d


def test_degrade_shapes_ranges_and_quantisation():
    for seed in range(6):
        hr = hr_image(seed, 64)
        lr = degrade(hr, CFG, np.random.default_rng(seed))
        assert lr.shape == (3, 16, 16) and lr.dtype == torch.float32
        assert lr.min().item() >= 0.0 and lr.max().item() <= 1.0
        assert torch.equal(lr, (lr * 255).round() / 255)
    bic = bicubic_downsample(hr_image(0, 64))
    assert bic.shape == (3, 16, 16) and torch.equal(bic, (bic * 255).round() / 255)
    with pytest.raises(ValueError, match="multiple"):
        degrade(torch.rand(3, 30, 30), CFG, np.random.default_rng(0))


def test_same_seed_same_lr_other_seed_other_lr():
    hr = hr_image(3, 64)
    a = degrade(hr, CFG, np.random.default_rng(7))
    b = degrade(hr, CFG, np.random.default_rng(7))
    c = degrade(hr, CFG, np.random.default_rng(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_the_trace_follows_the_two_stage_order():
    seen_second = False
    for seed in range(12):
        trace = DegradationTrace()
        degrade(hr_image(seed, 64), CFG, np.random.default_rng(seed), trace)
        steps = [s.split()[0] for s in trace.steps]
        assert steps[:2] == ["blur", "resize"] and steps[2] in ("gaussian", "poisson") and steps[3] == "jpeg"
        assert sum(s == "jpeg" for s in steps) == 2  # first stage + final
        assert any("1/4" in s for s in trace.steps)  # resized back to the LR size
        seen_second |= any(s.startswith(("blur2",)) for s in steps) or len(steps) > 7
    assert seen_second


def test_grid_script_writes_a_png_of_the_expected_size(tmp_path):
    out = tmp_path / "grid.png"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "degradation_grid.py"),
            "--out",
            str(out),
            "--count",
            "3",
            "--hr-size",
            "32",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (3 * 32, 2 * 32)
        grid = np.asarray(im)
    # bottom row is the LR blown up by pixel repetition: constant 4x4 blocks
    lr = grid[32:, :32]
    assert np.array_equal(lr, lr[::4, ::4].repeat(4, 0).repeat(4, 1))
    assert not np.array_equal(grid[:32, :32], lr)
