"""The torch backend: the artifact's graph (one or K steps, rsd.sampler.load_graph) in eager mode
(optionally torch.compile or CUDA graphs), CPU or CUDA, fp32/fp16/bf16.

Reduced precision comes in two forms:

- autocast (the default): fp32 weights, autocast per call (GroupNorm and the softmax stay fp32, as in
  the reference's fp16 mode, method.md 2.7). On CPUs with AMX / avx512_bf16, bf16 autocast runs the
  convolutions and matmuls through oneDNN's bf16 kernels; fp16 is meant for CUDA.
- `cast=True`: the weights are cast to fp16/bf16 once at load and laid out channels-last, and each call
  runs on half-precision inputs with no autocast (no per-op casts, half the weight traffic). The UNet's
  GroupNorm32 still normalises in fp32; the VQ codebook stays fp32.

Either way the VQ quantiser computes its distances in fp32: in bf16 they flipped the code of 9% of the
latent positions on the official config, against 4% from the reduced-precision x0 alone.

`graphs` (CUDA only) replays the forward as CUDA graphs, one per (batch, tile): "cuda" captures them
with torch.cuda.CUDAGraph on the first call of each shape (`warm_up` does it ahead), "compile" uses
torch.compile(mode="reduce-overhead") (inductor kernels in CUDA graph trees). `compile=True` wraps the
graph in plain `torch.compile`; the first call of each batch size compiles (minutes for the official
config). The noise is drawn on the host from the seeds in every mode (rsd.noise).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from rsd.backends.base import Upscaler, check_tiles
from rsd.noise import draw_noise_batch
from rsd.onestep import forward_with_codes
from rsd.sampler import load_graph

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
Graphs = Literal["none", "cuda", "compile"]
GRAPHS: tuple[Graphs, ...] = ("none", "cuda", "compile")


class TorchUpscaler(Upscaler):
    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        dtype: str = "fp32",
        compile: bool = False,
        cast: bool = False,
        graphs: Graphs = "none",
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
        if graphs not in GRAPHS:
            raise ValueError(f"graphs {graphs!r} is not one of {', '.join(GRAPHS)}")
        if compile and graphs != "none":
            raise ValueError("compile=True and graphs are alternatives; graphs='compile' is torch.compile with graphs")
        if graphs != "none" and dtype != "fp32" and not cast:
            raise ValueError(
                "graphs run fp16/bf16 with cast=True only (autocast's weight cache does not mix with capture)"
            )
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available to torch")
        self.device = torch.device(device)
        self.dtype = _DTYPES[dtype]
        self.model = load_graph(model_dir, device=self.device)
        self.spec = self.model.spec
        self.cast = cast and self.dtype != torch.float32
        if self.cast:
            self.model.to(dtype=self.dtype)
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # documented overload
            self.model.autoencoder.quantize.float()  # fp32 codebook: distances in fp32 (module docstring)
        suffix = "-cast" if self.cast else ""
        suffix += "-compile" if compile else {"none": "", "cuda": "-graphs", "compile": "-reduce-overhead"}[graphs]
        self.name = f"torch-{self.device.type}-{dtype}{suffix}"
        self.graphs = graphs
        self._forward = self._build_forward(compile, graphs)

    def _build_forward(self, compile: bool, graphs: Graphs) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        if compile:
            return torch.compile(self.model, dynamic=False)
        if graphs == "none":
            return self.model
        from rsd.backends.cuda_graphs import GraphCache, require_cuda

        if graphs == "cuda":
            return GraphCache(self.model, self.device)
        require_cuda(self.device, "torch.compile(mode='reduce-overhead')")
        compiled = torch.compile(self.model, mode="reduce-overhead", dynamic=False)

        def step(lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
            # one inference step per call: the graph tree may reuse the previous call's output memory
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(lq, noise)

        return step

    @property
    def _autocast(self) -> bool:
        return self.dtype != torch.float32 and not self.cast

    def warm_up(self, batch_sizes: Sequence[int], tile: int) -> None:
        """One call per batch size at `tile` x `tile`: compiles / captures the graphs ahead of traffic."""
        for n in batch_sizes:
            self.run(np.zeros((n, 3, tile, tile), np.float32), list(range(n)))

    def run_with_codes(
        self, lq_tiles: np.ndarray, seeds: Sequence[int], with_codes: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """run(), plus the (N, t, t) VQ codes when `with_codes` (read by a hook on the quantiser; eager only)."""
        check_tiles(lq_tiles, seeds)
        _, _, h, w = lq_tiles.shape
        noise = draw_noise_batch(list(seeds), self.model.noise_channels, h, w)
        # cast path: inputs in the weights' dtype (no autocast to convert them)
        input_dtype = self.dtype if self.cast else torch.float32
        lq = torch.from_numpy(np.ascontiguousarray(lq_tiles, dtype=np.float32)).to(self.device, input_dtype)
        eps = torch.from_numpy(noise).to(self.device, input_dtype)
        eager = with_codes or self._forward is self.model  # codes are read by a hook: eager only
        # no_grad, not inference_mode, under torch.compile: dynamo's guards on the schedule tables
        # (numpy -> tensor inside the graph) fail against inference tensors (torch 2.13).
        grad_off = torch.inference_mode() if eager or self.graphs == "cuda" else torch.no_grad()
        codes = None
        # Reduced precision via autocast unless cast; GroupNorm runs in fp32 as in the reference's fp16
        # mode (method.md 2.7). The quantiser keeps its distances in fp32 (see the module docstring).
        with grad_off, torch.autocast(self.device.type, dtype=self.dtype, enabled=self._autocast):
            if with_codes:
                sr, code_tensor = forward_with_codes(self.model, lq, eps)
                codes = code_tensor.cpu().numpy()
            else:
                sr = self._forward(lq, eps)
            out = sr.float().cpu().numpy()  # copied out before the next replay overwrites a graph's output
        return out, codes

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        self._forward = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
