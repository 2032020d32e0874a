"""Backend variants by name, for `rsd bench` and `rsd verify` (an explicit match, not a registry).

    torch-{fp32,bf16,fp16}[-compile]                 torch on the bench device (autocast eager, or torch.compile)
    torch-{bf16,fp16}-cast                           weights cast once to bf16/fp16, channels-last, no autocast
    torch-{fp32,bf16,fp16}-[compile-]graphs          CUDA graphs per (batch, tile) over the cast weights:
                                                     torch.cuda.CUDAGraph, or torch.compile(mode="reduce-overhead")
    onnxruntime-{fp32,fp16}[-{all,extended,basic,disable}]   onnxruntime CPU provider, graph optimisation level
    onnxruntime-{cuda,tensorrt}-{fp32,fp16}          onnxruntime GPU providers (onnxruntime-gpu)
    tensorrt-{fp32,fp16,bf16}                        a TensorRT engine built by `rsd export tensorrt`

ONNX variants export the tile graph first when the artifact has no export for it yet.
"""

from __future__ import annotations

from pathlib import Path

from model_export.to_onnx import export_onnx
from rsd.backends.base import Upscaler
from rsd.backends.device import Device
from rsd.backends.exported import export_dir, onnx_file_name
from rsd.kinds import DTYPES, ONNX_DTYPES

BASELINE = "torch-fp32"
#: `rsd bench` without --backends: on CPU, and on CUDA (eager vs CUDA graphs x fp16/bf16; see README "Benchmarks")
CPU_VARIANTS = ("torch-fp32", "torch-bf16", "onnxruntime-fp32")
CUDA_VARIANTS = (
    "torch-fp32",
    "torch-fp32-graphs",
    "torch-fp16",
    "torch-fp16-cast",
    "torch-fp16-graphs",
    "torch-fp16-compile-graphs",
    "torch-bf16-cast",
    "torch-bf16-graphs",
)
VARIANT_HELP = (
    "torch-{fp32,bf16,fp16}[-compile], torch-{bf16,fp16}-cast, torch-{fp32,bf16,fp16}-[compile-]graphs, "
    "onnxruntime-{fp32,fp16}[-{all,extended,basic,disable}], "
    "onnxruntime-{cuda,tensorrt}-{fp32,fp16}, tensorrt-{fp32,fp16,bf16}"
)
_LEVELS = ("all", "extended", "basic", "disable")


def ensure_onnx(model_dir: Path, tile: int, dtype: str) -> Path:
    """The artifact's ONNX export for (tile, dtype), exported now if missing."""
    path = export_dir(model_dir) / onnx_file_name(tile, dtype)  # type: ignore[arg-type]
    if not path.is_file():
        print(f"exporting {path} (once) ...", flush=True)
        export_onnx(model_dir, tile, dtype=dtype)  # type: ignore[arg-type]
    return path


def _check_dtype(name: str, dtype: str, allowed: tuple[str, ...]) -> None:
    if dtype not in allowed:
        raise ValueError(f"variant {name!r}: dtype {dtype!r} is not one of {', '.join(allowed)}; use {VARIANT_HELP}")


def make_variant(name: str, model_dir: Path, tile: int, device: str, threads: int | None) -> Upscaler:
    """Build the backend called `name` (see the module docstring) for `tile` x `tile` LR tiles."""
    from rsd.backends.onnxruntime_backend import OnnxRuntimeUpscaler
    from rsd.backends.torch_backend import Graphs, TorchUpscaler

    runner: Upscaler
    match name.split("-"):
        case ["torch", dtype, *rest] if rest in ([], ["compile"]):
            _check_dtype(name, dtype, DTYPES)
            runner = TorchUpscaler(model_dir, device=device, dtype=dtype, compile=bool(rest))
        case ["torch", ("bf16" | "fp16") as dtype, "cast"]:
            runner = TorchUpscaler(model_dir, device=device, dtype=dtype, cast=True)
        case ["torch", dtype, *rest] if rest in (["graphs"], ["compile", "graphs"]):
            _check_dtype(name, dtype, DTYPES)
            graphs: Graphs = "compile" if rest[0] == "compile" else "cuda"
            runner = TorchUpscaler(model_dir, device=device, dtype=dtype, cast=dtype != "fp32", graphs=graphs)
        case ["onnxruntime", ("cuda" | "tensorrt") as provider, dtype]:
            _check_dtype(name, dtype, ONNX_DTYPES)
            runner = OnnxRuntimeUpscaler(
                model_dir,
                tile,
                provider=provider,
                dtype=dtype,  # type: ignore[arg-type]
                device_id=Device.parse(device).index,
                onnx_path=ensure_onnx(model_dir, tile, dtype),
            )
        case ["onnxruntime", dtype, *rest] if len(rest) <= 1 and set(rest) <= set(_LEVELS):
            _check_dtype(name, dtype, ONNX_DTYPES)
            level = rest[0] if rest else "all"
            runner = OnnxRuntimeUpscaler(
                model_dir,
                tile,
                provider="cpu",
                dtype=dtype,  # type: ignore[arg-type]
                intra_op_threads=threads,
                optimization=level,  # type: ignore[arg-type]
                onnx_path=ensure_onnx(model_dir, tile, dtype),
            )
        case ["tensorrt", precision]:
            _check_dtype(name, precision, DTYPES)
            from rsd.backends.tensorrt_backend import TensorRTUpscaler

            runner = TensorRTUpscaler(model_dir, tile, device=device, precision=(precision,))
        case _:
            raise ValueError(f"unknown backend variant {name!r}; use {VARIANT_HELP}")
    runner.name = name
    return runner
