"""Artifact -> ONNX: one file per tile size, only the batch dimension dynamic (architecture.md invariant 3).

The graph is the artifact's own (`rsd.sampler.load_graph`: one step, or K ancestral steps unrolled;
invariant 2), traced with its VQ codes exposed as a second output for parity checks:

    inputs   lq    (N, 3, t, t)               float32 in [-1, 1]
             noise (N, graph.noise_channels, t, t) float32 standard normal, from rsd.noise: C + student noise
                   channels for one step, C x K for K steps (C latent channels)
    outputs  sr    (N, 3, 4t, 4t)             float32 in [-1, 1]
             codes (N, t, t)                  int32 VQ codebook indices (method.md 3); zeros when the
                                              autoencoder has a continuous latent (decode_quantized off)

Exporter: the TorchScript-based exporter (`dynamo=False`) is the default. It is exact (official x4
config, tile 64, random weights: max-abs 4.6e-5 against torch fp32 at batch 1 and 3, no VQ code flips;
torch's own batch-1 vs batch-3 spread is 3.1e-5) and fast (22 s on 2 idle CPU cores), because H and W are
static: the Swin shift masks are built once per resolution and cached by the blocks (method.md 2.2), so
they trace to constants, and the chunked quantiser loops over a static number of positions. The dynamo
exporter (`exporter="dynamo"`, opset 18) is equally exact (max-abs 4.6e-5) but takes 3x longer (70 s);
it stays as the option for when the TorchScript exporter (deprecated since torch 2.9, present in 2.13)
goes away.
A `.fp16.onnx` file holds fp16 weights and activations behind fp32 inputs and outputs, meant for GPU
execution providers (onnxruntime's CPU provider runs it too, which is how it is verified without a GPU;
TensorRT builds its fp16 engines from the fp32 file with `--fp16` instead).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from rsd.backends.exported import (
    INPUT_NAMES,
    META_DTYPE,
    META_MODEL_NAME,
    META_NOISE_CHANNELS,
    META_SCHEDULE_HASH,
    META_TILE,
    OUTPUT_NAMES,
    OnnxDType,
    OnnxRecord,
    export_dir,
    onnx_file_name,
    write_export_record,
)
from rsd.kinds import check_positive_int
from rsd.nets.vqgan import DISTANCE_BUDGET_BYTES
from rsd.onestep import SRGraph, forward_with_codes
from rsd.sampler import load_graph

Exporter = Literal["torchscript", "dynamo"]
#: opset per exporter: the dynamo exporter emits opset 18 natively (converting it down fails on Pad)
DEFAULT_OPSET = {"torchscript": 17, "dynamo": 18}
_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
#: batch of the example inputs the TorchScript tracer runs; 2, not 1, so no size-1 batch gets baked in
_TRACE_BATCH = 2


class ExportGraph(nn.Module):
    """The artifact's graph with fp32 inputs/outputs and the VQ codes as a second output.

    The codes are read with a forward hook on the quantiser, so the traced computation is exactly the
    graph's `forward`; the hook only names an intermediate tensor as an extra graph output.
    """

    def __init__(self, model: SRGraph, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, lq: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """lq: (N, 3, t, t) float32; noise: (N, C, t, t) float32 -> sr (N, 3, 4t, 4t) float32, codes int32."""
        # int32 codes: TensorRT and the GPU providers handle it natively; 8192 codes fit easily.
        sr, codes = forward_with_codes(self.model, lq.to(self.dtype), noise.to(self.dtype))
        return sr.float(), codes


def _size_quantiser_chunks(model: SRGraph, max_batch: int) -> None:
    """Make the traced quantiser chunks fit the distance budget at `max_batch` (method.md 3 export notes).

    The chunk length is fixed at trace time; both exporters see the batch as symbolic there, so the
    quantiser budgets per sample. Dividing the budget by `max_batch` keeps the graph's
    (max_batch x chunk x n_embed) float32 distance block within DISTANCE_BUDGET_BYTES. The result does
    not depend on the chunking (argmin is per position).
    """
    model.autoencoder.quantize.distance_budget_bytes = max(1, DISTANCE_BUDGET_BYTES // max_batch)


def _example_inputs(model: SRGraph, tile: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    lq = torch.rand(batch, 3, tile, tile, generator=gen) * 2 - 1
    noise = torch.randn(batch, model.noise_channels, tile, tile, generator=gen)
    return lq, noise


def _trace(
    graph: ExportGraph, inputs: tuple[torch.Tensor, ...], path: Path, exporter: Exporter, opset: int, max_batch: int
) -> None:
    if exporter == "torchscript":
        axes = {name: {0: "batch"} for name in (*INPUT_NAMES, *OUTPUT_NAMES)}
        torch.onnx.export(
            graph,
            inputs,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamic_axes=axes,
            dynamo=False,
            do_constant_folding=True,
        )
    else:
        batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
        program = torch.onnx.export(
            graph,
            inputs,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamic_shapes={"lq": {0: batch}, "noise": {0: batch}},
            dynamo=True,
            verbose=False,
        )
        assert program is not None
        program.save(str(path))


def _stamp(path: Path, props: dict[str, str]) -> None:
    """Write `props` into the file's metadata_props (the backends check them at load)."""
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


def _check_arguments(dtype: str, exporter: str, max_batch: int) -> None:
    if dtype not in _TORCH_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(_TORCH_DTYPES)}")
    if exporter not in DEFAULT_OPSET:
        raise ValueError(f"exporter {exporter!r} is not one of {', '.join(DEFAULT_OPSET)}")
    check_positive_int("max_batch", max_batch)


def export_onnx(
    model_dir: str | Path,
    tile: int,
    out: str | Path | None = None,
    dtype: OnnxDType = "fp32",
    max_batch: int = 8,
    exporter: Exporter = "torchscript",
    opset: int | None = None,
) -> tuple[Path, OnnxRecord]:
    """Export the artifact's graph for `tile` x `tile` LR tiles.

    Writes `out` (default `model_dir/export/tile{tile}[.fp16].onnx`) and its record in `export.json`
    beside it (without parity numbers: `model_export.verify` adds them). Returns (path, record).
    """
    _check_arguments(dtype, exporter, max_batch)
    opset = DEFAULT_OPSET[exporter] if opset is None else opset
    model = load_graph(model_dir)
    spec = model.spec
    if tile <= 0 or tile % spec.lr_multiple:
        raise ValueError(f"tile {tile} must be a positive multiple of {spec.lr_multiple} for this model")
    path = Path(out) if out is not None else export_dir(model_dir) / onnx_file_name(tile, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch_dtype = _TORCH_DTYPES[dtype]
    graph = ExportGraph(model.to(torch_dtype), torch_dtype).eval()
    _size_quantiser_chunks(model, max_batch)
    start = time.perf_counter()
    # not inference_mode: torch.export refuses inference tensors
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python-level shape check; with H and W fixed per file they are
        # constants by design, and the batch never enters a Python branch.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        # chosen deliberately for fixed-size tiles (module docstring); the dynamo path stays available
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        _trace(graph, _example_inputs(model, tile, _TRACE_BATCH), path, exporter, opset, max_batch)
    _stamp(
        path,
        {
            META_SCHEDULE_HASH: spec.schedule_hash,
            META_TILE: str(tile),
            META_NOISE_CHANNELS: str(model.noise_channels),
            META_DTYPE: dtype,
            META_MODEL_NAME: spec.name,
        },
    )
    record = OnnxRecord(
        file=path.name,
        tile=tile,
        dtype=dtype,
        opset=opset,
        exporter=exporter,
        schedule_hash=spec.schedule_hash,
        model_name=spec.name,
        noise_channels=model.noise_channels,
        max_batch=max_batch,
        torch_version=torch.__version__,
        export_seconds=round(time.perf_counter() - start, 2),
    )
    write_export_record(path.parent, record)
    return path, record
