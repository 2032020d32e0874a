"""CUDA graphs for the torch backend: one graph per input shape (batch, tile, dtype), captured at warm-up.

A one-step forward on a GPU is a few hundred small kernels; at small batches the host's launch time,
not the device, bounds it. A captured graph replays them with one launch (CUDA programming guide,
"CUDA Graphs"; torch.cuda.CUDAGraph). Capture needs a forward that copies nothing from host memory
and never synchronises: the schedule's tables are cached on the device after the first call and the
VQ upsampling taps are built on the device (rsd.schedule, rsd.nets.vqgan), so the warm-up calls made
before each capture leave no host copy in the captured forward.

Each graph owns static input and output tensors: a replay overwrites the output, so the caller must
copy it out before the next call, and one GraphCache serves one thread (the backend's device thread).
Each graph has its own memory pool: peak memory grows with the number of shapes captured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

#: forward calls on a side stream before a capture (lazy initialisation, caches, cuDNN autotuning)
WARMUP_CALLS = 2


def require_cuda(device: torch.device, what: str) -> None:
    """A clear error where `what` would run on a device that is not CUDA, or CUDA is missing."""
    if device.type != "cuda":
        raise ValueError(f"{what} needs a CUDA device; got {str(device)!r}")
    if not torch.cuda.is_available():
        raise RuntimeError(f"{what} needs CUDA, which is not available to torch")


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    lq: Tensor
    noise: Tensor
    out: Tensor


class GraphCache:
    """`forward(lq, noise)` through a CUDA graph captured for each new (lq, noise) shape and dtype."""

    def __init__(self, forward: Callable[[Tensor, Tensor], Tensor], device: torch.device) -> None:
        require_cuda(device, "CUDA graph capture")
        self._forward = forward
        self._device = device
        self._graphs: dict[tuple[tuple[int, ...], tuple[int, ...], torch.dtype], _Captured] = {}

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """The lq shapes captured so far."""
        return [key[0] for key in self._graphs]

    def __call__(self, lq: Tensor, noise: Tensor) -> Tensor:
        """The forward's output in the graph's static buffer (overwritten by the next call)."""
        key = (tuple(lq.shape), tuple(noise.shape), lq.dtype)
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(lq, noise)
        captured.lq.copy_(lq)
        captured.noise.copy_(noise)
        captured.graph.replay()
        return captured.out

    def _capture(self, lq: Tensor, noise: Tensor) -> _Captured:
        static_lq, static_noise = lq.clone(), noise.clone()
        current = torch.cuda.current_stream(self._device)
        side = torch.cuda.Stream(self._device)
        side.wait_stream(current)
        # Warm-up on a side stream, as torch.cuda.graph's documentation asks, so that lazy
        # initialisation inside the forward happens before the capture.
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self._forward(static_lq, static_noise)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._forward(static_lq, static_noise)
        return _Captured(graph, static_lq, static_noise, out)
