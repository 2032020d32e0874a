"""The TensorRT backend: a serialized engine built by `rsd export tensorrt` (model_export.to_tensorrt).

TensorRT is imported here only, inside functions (architecture.md invariant 4); without it the backend
raises an error naming the extra to install. Device memory comes from torch CUDA tensors: their
`data_ptr()` is handed to `IExecutionContext.set_tensor_address`, and the context runs on the current
torch CUDA stream (`execute_async_v3(stream.cuda_stream)`), so no pycuda / cuda-python is needed at run
time and torch's caching allocator owns every buffer.

An engine is refused before deserialisation when its metadata (`<engine>.json`) names another tile or
schedule hash than the artifact, or another TensorRT version, GPU or compute capability than this
machine (engines are not portable); the message says how to rebuild it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsd.backends.base import Upscaler, check_tiles
from rsd.backends.exported import (
    EngineMeta,
    RuntimeInfo,
    check_engine_meta,
    engine_file_name,
    find_export,
    read_engine_meta,
)
from rsd.noise import draw_noise_batch
from rsd.spec import read_spec

TENSORRT_EXTRA = "pip install 'rsd-serve[tensorrt]'"


def import_tensorrt() -> Any:
    """The `tensorrt` module, or a RuntimeError that says how to install it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise RuntimeError(
            f"TensorRT is not installed: {TENSORRT_EXTRA} (needs an NVIDIA GPU with a CUDA 12 driver)"
        ) from exc
    return tensorrt


def runtime_info(trt: Any, device: str) -> RuntimeInfo:
    """TensorRT version, GPU name and compute capability of `device` (a torch CUDA device string)."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"the TensorRT backend needs a CUDA device; torch sees none (device {device!r})")
    index = torch.device(device).index or 0
    major, minor = torch.cuda.get_device_capability(index)
    return RuntimeInfo(
        tensorrt_version=str(trt.__version__),
        gpu_name=torch.cuda.get_device_name(index),
        compute_capability=f"{major}.{minor}",
    )


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
    }
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    if dtype not in table:
        raise RuntimeError(f"engine tensor type {dtype} is not supported by this backend")
    return table[dtype]


class TensorRTUpscaler(Upscaler):
    """Runs `MODEL_DIR/export/tile{tile}.{precision}.plan` (or `engine_path`) on a CUDA device.

    Batches larger than the engine profile's max are split; smaller than its min are refused.
    """

    def __init__(
        self,
        model_dir: str | Path,
        tile: int | None = None,
        device: str = "cuda",
        precision: Sequence[str] = ("fp16",),
        engine_path: str | Path | None = None,
    ) -> None:
        self.spec = read_spec(model_dir)
        self.tile = self.spec.default_tile if tile is None else tile
        path = find_export(
            model_dir,
            engine_file_name(self.tile, list(precision)),
            "TensorRT engine",
            f"rsd export tensorrt --onnx {Path(model_dir) / 'export' / f'tile{self.tile}.onnx'} "
            + " ".join(f"--{p}" for p in precision if p != "fp32"),
            given=engine_path,
        )
        meta = read_engine_meta(path)
        check_engine_meta(meta, path, self.spec, self.tile, runtime=None)  # cheap refusals first
        trt = import_tensorrt()
        check_engine_meta(meta, path, self.spec, self.tile, runtime=runtime_info(trt, device))
        self.meta: EngineMeta = meta
        self.device = device
        self.noise_channels = self.spec.graph_noise_channels
        self.name = f"tensorrt-{'-'.join(meta.precision)}"
        self._trt = trt
        self._load(trt, path)

    def _load(self, trt: Any, path: Path) -> None:
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {path}; rebuild it with `rsd export tensorrt`")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]

    def run_with_codes(
        self, lq_tiles: np.ndarray, seeds: Sequence[int], with_codes: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        check_tiles(lq_tiles, seeds, self.tile, "engine")
        profile = self.meta.batch_profile
        if len(lq_tiles) < profile.min:
            raise ValueError(f"batch {len(lq_tiles)} is below the engine profile's min batch {profile.min}")
        srs, codes = [], []
        for start in range(0, len(lq_tiles), profile.max):
            stop = start + profile.max
            sr, code = self._run_batch(lq_tiles[start:stop], list(seeds[start:stop]))
            srs.append(sr)
            codes.append(code)
        return np.concatenate(srs), (np.concatenate(codes) if with_codes else None)

    def _run_batch(self, lq_tiles: np.ndarray, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        noise = draw_noise_batch(seeds, self.noise_channels, self.tile, self.tile)
        host = {"lq": np.ascontiguousarray(lq_tiles, dtype=np.float32), "noise": noise}
        buffers: dict[str, torch.Tensor] = {}
        for name in self._inputs:
            buffers[name] = torch.from_numpy(host[name]).to(self.device)
            self._context.set_input_shape(name, tuple(buffers[name].shape))
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            dtype = _torch_dtype(self._trt, self._engine.get_tensor_dtype(name))
            buffers[name] = torch.empty(shape, dtype=dtype, device=self.device)
        for name, tensor in buffers.items():
            self._context.set_tensor_address(name, tensor.data_ptr())
        stream = torch.cuda.current_stream(torch.device(self.device))
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        stream.synchronize()
        return buffers["sr"].float().cpu().numpy(), buffers["codes"].cpu().numpy()

    def close(self) -> None:
        self._context = None
        self._engine = None
