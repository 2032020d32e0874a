"""The torch backend's fast path: weights cast once (checked here on CPU in bf16), fp32 VQ distances,
a forward that copies no host data after warm-up (what CUDA graph capture needs; traced on the meta
device), and the CUDA graph variants (`gpu` marker: they need a CUDA device)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from model_export.verify import psnr_db
from rsd.backends.torch_backend import TorchUpscaler
from rsd.nets.vqgan import VectorQuantizer
from rsd.onestep import OneStepSR
from tests.factories import make_tiny_artifact

TILE = 32
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device; none here")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_artifact(tmp_path_factory.mktemp("tiny_fast_path"))


def _tiles(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, TILE, TILE)).astype(np.float32)


def test_cast_path_holds_half_weights_channels_last_and_a_fp32_codebook(tiny: Path) -> None:
    upscaler = TorchUpscaler(tiny, dtype="bf16", cast=True)
    assert upscaler.name == "torch-cpu-bf16-cast"
    model = upscaler.model
    assert model.denoiser.net.input_blocks[0][0].weight.dtype == torch.bfloat16
    assert model.denoiser.net.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model.autoencoder.quantize.embedding.weight.dtype == torch.float32
    lq, seeds = _tiles(2), [4, 5]
    reference = TorchUpscaler(tiny).run(lq, seeds)
    out = upscaler.run(lq, seeds)
    assert out.dtype == np.float32 and out.shape == reference.shape
    assert np.abs(out - reference).max() > 0  # the arithmetic did change
    assert psnr_db(out, reference) > 25.0  # the tiny random model: autocast bf16 gives ~30 dB too
    np.testing.assert_array_equal(upscaler.run(lq, seeds), out)  # one seed, one image


def test_cast_fp32_is_the_plain_model(tiny: Path) -> None:
    upscaler = TorchUpscaler(tiny, dtype="fp32", cast=True)
    assert not upscaler.cast and upscaler.name == "torch-cpu-fp32"


def test_half_precision_latent_is_quantised_with_fp32_distances() -> None:
    quantizer = VectorQuantizer(512, 4)
    torch.nn.init.normal_(quantizer.embedding.weight)
    z = torch.randn(2, 4, 8, 8).to(torch.bfloat16)
    z_q, idx = quantizer(z)
    _, idx_fp32 = quantizer(z.float())  # the same values, in fp32 arithmetic
    assert z_q.dtype == torch.bfloat16
    torch.testing.assert_close(idx, idx_fp32, rtol=0, atol=0)


class _CpuTensors(TorchDispatchMode):
    """Records every op that reads or makes a CPU tensor (the model itself runs on the meta device)."""

    def __init__(self, ops: list[str]) -> None:
        super().__init__()
        self.ops = ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cpu" for t in tensors):
            self.ops.append(str(func))
        return out


class _TensorsFromData(TorchFunctionMode):
    """Records torch.tensor / torch.as_tensor calls: on CUDA each is a host-to-device copy (on the meta
    device they make no CPU tensor, so the dispatch mode above cannot see them)."""

    def __init__(self, ops: list[str]) -> None:
        super().__init__()
        self.ops = ops

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in (torch.tensor, torch.as_tensor):
            self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _host_data() -> Iterator[list[str]]:
    ops: list[str] = []
    with _TensorsFromData(ops), _CpuTensors(ops):
        yield ops


def test_forward_copies_no_host_data_after_one_call(tiny: Path) -> None:
    """A CUDA graph cannot capture a copy from pageable host memory: after the warm-up call, the forward
    must make no tensor from host data (schedule tables cached, taps built on the device, scalars as
    Python numbers). The meta device stands in for CUDA: a host tensor shows up as a CPU tensor."""
    model = OneStepSR.from_artifact(tiny).to("meta")
    lq = torch.zeros(2, 3, TILE, TILE, device="meta")
    noise = torch.zeros(2, model.noise_channels, TILE, TILE, device="meta")
    with torch.inference_mode():
        with _host_data() as first:
            model(lq, noise)
        with _host_data() as second:
            model(lq, noise)
    assert first, "the first call builds the device caches from host tables"
    assert second == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"graphs": "cuda"}, "CUDA graph capture needs a CUDA device; got 'cpu'"),
        ({"graphs": "compile"}, r"torch.compile\(mode='reduce-overhead'\) needs a CUDA device"),
        ({"graphs": "cuda", "dtype": "fp16"}, "graphs run fp16/bf16 with cast=True only"),
        ({"graphs": "cuda", "compile": True}, "alternatives"),
        ({"graphs": "trt"}, "graphs 'trt' is not one of none, cuda, compile"),
    ],
)
def test_graph_variants_say_what_they_need(tiny: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TorchUpscaler(tiny, **kwargs)  # type: ignore[arg-type]


@pytest.mark.gpu
@NEEDS_CUDA
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_cuda_graphs_replay_the_eager_cast_forward(tiny: Path, dtype: str) -> None:
    eager = TorchUpscaler(tiny, device="cuda", dtype=dtype, cast=True)
    graphs = TorchUpscaler(tiny, device="cuda", dtype=dtype, cast=True, graphs="cuda")
    graphs.warm_up([1, 2], TILE)
    assert graphs._forward.shapes == [(1, 3, TILE, TILE), (2, 3, TILE, TILE)]  # type: ignore[union-attr]
    for lq, seeds in ((_tiles(2, 1), [1, 2]), (_tiles(2, 2), [3, 4]), (_tiles(1, 3), [5])):
        np.testing.assert_allclose(graphs.run(lq, seeds), eager.run(lq, seeds), atol=2e-2)
    fp32 = TorchUpscaler(tiny, device="cuda").run(_tiles(2, 1), [1, 2])
    assert psnr_db(eager.run(_tiles(2, 1), [1, 2]), fp32) > 25.0


@pytest.mark.gpu
@NEEDS_CUDA
def test_reduce_overhead_compile_matches_eager(tiny: Path) -> None:
    eager = TorchUpscaler(tiny, device="cuda", dtype="fp16", cast=True)
    compiled = TorchUpscaler(tiny, device="cuda", dtype="fp16", cast=True, graphs="compile")
    lq, seeds = _tiles(2), [1, 2]
    first = compiled.run(lq, seeds)
    assert psnr_db(compiled.run(lq, seeds), eager.run(lq, seeds)) > 40.0
    np.testing.assert_array_equal(compiled.run(lq, seeds), first)


def test_channels_last_weights_keep_the_fp32_result(tiny: Path) -> None:
    """The cast path lays the weights out channels-last; in fp32 that changes only summation order
    (the Swin windows are partitioned with reshape, which accepts either layout)."""
    lq = torch.from_numpy(_tiles(2))
    model = OneStepSR.from_artifact(tiny)
    noise = torch.randn(2, model.noise_channels, TILE, TILE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = model(lq, noise)
        model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(lq, noise), reference, rtol=0, atol=1e-4)
