"""CUDA memory, streams and copies for the engine runtimes, behind a small interface (CudaOps).

Production uses torch's (`TorchCuda`): CUDA tensors from its caching allocator, pinned CPU tensors for
the host side, copies queued on a given stream. The TensorRT backend (rsd.backends.tensorrt_backend)
runs its copies and its launch through this interface, so the tests can put a recorder in its place
and check the order of calls without a GPU. torch is imported when a TorchCuda is made, not here.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from rsd.backends.device import Device


class CudaOps(Protocol):
    """The CUDA operations a run needs: torch's in production (TorchCuda), a recorder in the tests."""

    def activate(self) -> None:
        """Make the device current in the calling thread."""

    def new_stream(self) -> Any: ...

    def stream_handle(self, stream: Any) -> int:
        """The cudaStream_t handle of `stream`, for execute_async_v3."""

    def device_buffer(self, shape: tuple[int, ...], dtype: np.dtype, stream: Any) -> Any: ...

    def host_buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        """Pinned (page-locked) host memory, so that the copies are asynchronous on the stream."""

    def host_array(self, buffer: Any) -> np.ndarray:
        """A numpy view of a host buffer."""

    def address(self, buffer: Any) -> int: ...

    def copy_async(self, dst: Any, src: Any, rows: int, stream: Any) -> None:
        """Copy the first `rows` rows of `src` into `dst`, queued on `stream`."""

    def synchronize(self, stream: Any) -> None: ...


class TorchCuda:
    """CudaOps on torch: CUDA tensors and pinned CPU tensors, copies queued on the given stream."""

    def __init__(self, device: str) -> None:
        import torch

        self._torch = torch
        self.device = torch.device("cuda", Device.parse(device).index)

    def activate(self) -> None:
        self._torch.cuda.set_device(self.device)

    def new_stream(self) -> Any:
        return self._torch.cuda.Stream(device=self.device)

    def stream_handle(self, stream: Any) -> int:
        return int(stream.cuda_stream)

    def _dtype(self, dtype: np.dtype) -> Any:
        return self._torch.from_numpy(np.empty(0, dtype)).dtype

    def device_buffer(self, shape: tuple[int, ...], dtype: np.dtype, stream: Any) -> Any:
        # allocated on the stream that uses it, so the caching allocator ties the block to that stream
        with self._torch.cuda.stream(stream):
            return self._torch.empty(shape, dtype=self._dtype(dtype), device=self.device)

    def host_buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        return self._torch.empty(shape, dtype=self._dtype(dtype), pin_memory=True)

    def host_array(self, buffer: Any) -> np.ndarray:
        return buffer.numpy()  # type: ignore[no-any-return]

    def address(self, buffer: Any) -> int:
        return int(buffer.data_ptr())

    def copy_async(self, dst: Any, src: Any, rows: int, stream: Any) -> None:
        with self._torch.cuda.stream(stream):
            dst[:rows].copy_(src[:rows], non_blocking=True)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()
