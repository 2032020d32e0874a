"""The Upscaler interface and `load_upscaler`: N in, N out, in order; seeds decide the noise; explicit kinds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rsd.backends import load_upscaler
from rsd.backends.torch_backend import TorchUpscaler
from tests.factories import make_tiny_artifact

TILE = 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_artifact(tmp_path_factory.mktemp("tiny_backends"))


@pytest.fixture(scope="module")
def torch_fp32(tiny: Path) -> TorchUpscaler:
    upscaler = load_upscaler(tiny, "torch", dtype="fp32")
    assert isinstance(upscaler, TorchUpscaler)
    return upscaler


def _tiles(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, TILE, TILE)).astype(np.float32)


def test_n_in_n_out_in_order(torch_fp32: TorchUpscaler) -> None:
    lq, seeds = _tiles(3), [11, 22, 33]
    together = torch_fp32.run(lq, seeds)
    assert together.shape == (3, 3, 4 * TILE, 4 * TILE) and together.dtype == np.float32
    assert together.min() >= -1.0 and together.max() <= 1.0
    for i in range(3):
        # same image up to float rounding (oneDNN may block a batch row differently from a lone tile)
        np.testing.assert_allclose(torch_fp32.run(lq[i : i + 1], seeds[i : i + 1])[0], together[i], atol=1e-3)


def test_seed_decides_the_noise(torch_fp32: TorchUpscaler) -> None:
    lq = np.repeat(_tiles(1), 3, axis=0)
    out = torch_fp32.run(lq, [5, 5, 6])
    np.testing.assert_allclose(out[0], out[1], atol=1e-3)
    assert np.abs(out[0] - out[2]).max() > 0.05


def test_codes_come_with_the_output_and_the_hook_is_removed(torch_fp32: TorchUpscaler) -> None:
    sr, codes = torch_fp32.run_with_codes(_tiles(2), [1, 2])
    assert codes is not None and codes.shape == (2, TILE, TILE) and codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < torch_fp32.spec.autoencoder.n_embed
    assert not torch_fp32.model.autoencoder.quantize._forward_hooks
    np.testing.assert_array_equal(sr, torch_fp32.run(_tiles(2), [1, 2]))


def test_mismatched_seeds_are_an_error(torch_fp32: TorchUpscaler) -> None:
    with pytest.raises(ValueError, match="2 tiles but 1 seeds"):
        torch_fp32.run(_tiles(2), [1])


def test_bf16_autocast_changes_the_arithmetic(tiny: Path, torch_fp32: TorchUpscaler) -> None:
    lq, seeds = _tiles(1), [3]
    bf16 = load_upscaler(tiny, "torch", dtype="bf16").run(lq, seeds)
    fp32 = torch_fp32.run(lq, seeds)
    assert bf16.dtype == np.float32 and np.isfinite(bf16).all()
    assert np.abs(bf16 - fp32).max() > 0


@pytest.mark.parametrize(
    ("kind", "device", "dtype", "message"),
    [
        ("caffe", "cpu", "fp32", "unknown or unavailable backend 'caffe'"),
        ("onnxruntime", "cpu", "bf16", "onnxruntime backend runs fp32 or fp16"),
        ("onnxruntime", "gpu0", "fp32", "device 'gpu0' is not 'cpu', 'cuda' or 'cuda:N'"),
        ("tensorrt", "cpu", "fp16", "tensorrt backend runs on a CUDA device"),
        ("torch", "cpu", "int8", "dtype 'int8' is not one of"),
    ],
)
def test_load_upscaler_rejects_bad_requests(tiny: Path, kind: str, device: str, dtype: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_upscaler(tiny, kind, device=device, dtype=dtype)  # type: ignore[arg-type]


@pytest.mark.slow
def test_torch_compile_matches_eager(tiny: Path, torch_fp32: TorchUpscaler) -> None:
    compiled = TorchUpscaler(tiny, compile=True)
    lq, seeds = _tiles(2), [1, 2]
    np.testing.assert_allclose(compiled.run(lq, seeds), torch_fp32.run(lq, seeds), atol=1e-3)
