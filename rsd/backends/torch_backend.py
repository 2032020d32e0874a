"""The torch backend: the artifact's graph (one or K steps, rsd.sampler.load_graph) in eager mode
(optionally torch.compile), CPU or CUDA, fp32/fp16/bf16.

Reduced precision is autocast over the fp32 weights (GroupNorm and the softmax stay fp32, as in the
reference's fp16 mode, method.md 2.7). On CPUs with AMX / avx512_bf16, bf16 autocast runs the
convolutions and matmuls through oneDNN's bf16 kernels; fp16 is meant for CUDA.
`compile=True` wraps the graph in `torch.compile` (inductor); the first call of each batch size
compiles (minutes for the official config), later calls reuse it.

The VQ quantiser computes its distances in fp32 even under autocast: in bf16 they flipped the code of
9% of the latent positions on the official config, against 4% from the reduced-precision x0 alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rsd.backends.base import Upscaler
from rsd.noise import draw_noise_batch
from rsd.onestep import forward_with_codes
from rsd.sampler import load_graph

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchUpscaler(Upscaler):
    def __init__(self, model_dir: str | Path, device: str = "cpu", dtype: str = "fp32", compile: bool = False) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available to torch")
        self.device = torch.device(device)
        self.dtype = _DTYPES[dtype]
        self.model = load_graph(model_dir, device=self.device)
        self.spec = self.model.spec
        self.name = f"torch-{self.device.type}-{dtype}" + ("-compile" if compile else "")
        self._forward = torch.compile(self.model, dynamic=False) if compile else self.model

    def run_with_codes(
        self, lq_tiles: np.ndarray, seeds: Sequence[int], with_codes: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """run(), plus the (N, t, t) VQ codes when `with_codes` (read by a hook on the quantiser; eager only)."""
        if len(lq_tiles) != len(seeds):
            raise ValueError(f"{len(lq_tiles)} tiles but {len(seeds)} seeds")
        if lq_tiles.ndim != 4:
            raise ValueError(f"lq_tiles must be (N, 3, t, t), got shape {lq_tiles.shape}")
        _, _, h, w = lq_tiles.shape
        noise = draw_noise_batch(list(seeds), self.model.noise_channels, h, w)
        lq = torch.from_numpy(np.ascontiguousarray(lq_tiles, dtype=np.float32)).to(self.device)
        eps = torch.from_numpy(noise).to(self.device)
        eager = with_codes or self._forward is self.model  # codes are read by a hook: eager only
        # no_grad, not inference_mode, under torch.compile: dynamo's guards on the schedule tables
        # (numpy -> tensor inside the graph) fail against inference tensors (torch 2.13).
        grad_off = torch.inference_mode() if eager else torch.no_grad()
        codes = None
        # Reduced precision via autocast; GroupNorm runs in fp32 as in the reference's fp16 mode
        # (method.md 2.7). The quantiser keeps its distances in fp32 (see the module docstring).
        with grad_off, torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            if with_codes:
                sr, code_tensor = forward_with_codes(self.model, lq, eps)
                codes = code_tensor.cpu().numpy()
            else:
                sr = self._forward(lq, eps)
        return sr.float().cpu().numpy(), codes

    def run(self, lq_tiles: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        return self.run_with_codes(lq_tiles, seeds, with_codes=False)[0]

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        self._forward = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
