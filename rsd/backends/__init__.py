"""Backends that run the one-step graph: `load_upscaler(dir, kind)` is an explicit match, not a
registry (architecture.md invariant 4). onnxruntime and TensorRT are imported inside their modules."""

from __future__ import annotations

from pathlib import Path

from rsd.backends.base import TileRunner, Upscaler
from rsd.backends.device import Device
from rsd.kinds import BackendKind, DType, DTypeChoice
from rsd.precision import resolve_dtype

__all__ = ["BackendKind", "DType", "DTypeChoice", "Device", "TileRunner", "Upscaler", "load_upscaler"]


def load_upscaler(
    model_dir: str | Path,
    kind: BackendKind = "torch",
    device: str = "cpu",
    dtype: DTypeChoice = "auto",
    tile: int | None = None,
) -> Upscaler:
    """Build the Upscaler of `kind` for an artifact directory (`tile` picks an exported engine);
    `dtype="auto"` is resolved by rsd.precision.resolve_dtype."""
    dtype = resolve_dtype(dtype, kind, device).dtype
    match kind:
        case "torch":
            from rsd.backends.torch_backend import TorchUpscaler

            return TorchUpscaler(model_dir, device=device, dtype=dtype)
        case "onnxruntime":
            from rsd.backends.onnxruntime_backend import OnnxRuntimeUpscaler

            if dtype == "bf16":
                raise ValueError("the onnxruntime backend runs fp32 or fp16 exports, not bf16")
            parsed = Device.parse(device)
            return OnnxRuntimeUpscaler(model_dir, tile=tile, provider=parsed.kind, dtype=dtype, device_id=parsed.index)
        case "tensorrt":
            from rsd.backends.tensorrt_backend import TensorRTUpscaler

            if Device.parse(device).kind != "cuda":
                raise ValueError(f"the tensorrt backend runs on a CUDA device, not {device!r}")
            return TensorRTUpscaler(model_dir, tile=tile, device=device, precision=(dtype,))
        case _:
            raise ValueError(f"unknown or unavailable backend {kind!r}; choose torch, onnxruntime or tensorrt")
