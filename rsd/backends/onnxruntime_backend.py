"""The onnxruntime backend: an exported tile graph (rsd.backends.exported) on the CPU, CUDA or TensorRT
execution provider. onnxruntime is imported here only (architecture.md invariant 4).

Settings: graph optimisation level "all" by default (constant folding, conv + activation fusion, layout
transforms); on CPU, `intra_op_threads` sets the thread pool (default: onnxruntime's, one per physical
core) and operators run sequentially (one graph at a time, as the worker runs it). On a GPU provider,
inputs are bound to device memory with IO binding and only `sr` is copied back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rsd.backends.base import Upscaler, check_tiles
from rsd.backends.exported import (
    INPUT_NAMES,
    OnnxDType,
    check_onnx_metadata,
    find_export,
    onnx_file_name,
)
from rsd.noise import draw_noise_batch
from rsd.spec import read_spec

Provider = Literal["cpu", "cuda", "tensorrt"]
Optimization = Literal["disable", "basic", "extended", "all"]

_GPU_HINT = "install onnxruntime-gpu (in place of onnxruntime) on a machine with CUDA"


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeError("onnxruntime is not installed: pip install 'rsd-serve[export]'") from exc
    return onnxruntime


def provider_list(ort: Any, provider: Provider, device_id: int, trt_cache: Path | None) -> list[Any]:
    """onnxruntime providers (with options) for `provider`, each falling back to the next."""
    available = set(ort.get_available_providers())
    wanted = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[
        provider
    ]
    if wanted not in available:
        raise RuntimeError(f"onnxruntime has no {wanted} here (available: {', '.join(sorted(available))}); {_GPU_HINT}")
    cuda = ("CUDAExecutionProvider", {"device_id": device_id})
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    if provider == "cuda":
        return [cuda, "CPUExecutionProvider"]
    trt_options: dict[str, Any] = {"device_id": device_id, "trt_fp16_enable": True}
    if trt_cache is not None:
        trt_options |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache)}
    return [("TensorrtExecutionProvider", trt_options), cuda, "CPUExecutionProvider"]


class OnnxRuntimeUpscaler(Upscaler):
    """Runs `MODEL_DIR/export/tile{tile}[.fp16].onnx` (or `onnx_path`) with onnxruntime.

    provider: "cpu", "cuda" or "tensorrt" (the last two need onnxruntime-gpu); device_id picks the GPU.
    """

    def __init__(
        self,
        model_dir: str | Path,
        tile: int | None = None,
        provider: Provider = "cpu",
        dtype: OnnxDType = "fp32",
        intra_op_threads: int | None = None,
        optimization: Optimization = "all",
        device_id: int = 0,
        onnx_path: str | Path | None = None,
    ) -> None:
        ort = _import_onnxruntime()
        self.spec = read_spec(model_dir)
        self.tile = self.spec.default_tile if tile is None else tile
        path = find_export(
            model_dir,
            onnx_file_name(self.tile, dtype),
            "ONNX export",
            f"rsd export onnx --model {model_dir} --tile {self.tile} --dtype {dtype}",
            given=onnx_path,
        )
        options = ort.SessionOptions()
        levels = {
            "disable": "ORT_DISABLE_ALL",
            "basic": "ORT_ENABLE_BASIC",
            "extended": "ORT_ENABLE_EXTENDED",
            "all": "ORT_ENABLE_ALL",
        }
        if optimization not in levels:
            raise ValueError(f"optimization {optimization!r} is not one of {', '.join(levels)}")
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, levels[optimization])
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: warnings repeat for every fp16 node it cannot fold
        trt_cache = path.parent / "ort_trt_cache" if provider == "tensorrt" else None
        self.session = ort.InferenceSession(
            str(path), options, providers=provider_list(ort, provider, device_id, trt_cache)
        )
        check_onnx_metadata(path, dict(self.session.get_modelmeta().custom_metadata_map), self.spec, self.tile)
        self.noise_channels = self.spec.graph_noise_channels
        self.path = path
        self.provider = provider
        self.device_id = device_id
        self._ort = ort
        self.name = f"onnxruntime-{provider}-{dtype}" + ("" if optimization == "all" else f"-opt-{optimization}")

    def run_with_codes(
        self, lq_tiles: np.ndarray, seeds: Sequence[int], with_codes: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        check_tiles(lq_tiles, seeds, self.tile, "ONNX graph")
        feeds = {
            INPUT_NAMES[0]: np.ascontiguousarray(lq_tiles, dtype=np.float32),
            INPUT_NAMES[1]: draw_noise_batch(list(seeds), self.noise_channels, self.tile, self.tile),
        }
        outputs = ["sr", "codes"] if with_codes else ["sr"]
        if self.provider == "cpu":
            results = self.session.run(outputs, feeds)
        else:
            results = self._run_bound(feeds, outputs)
        return results[0], (results[1] if with_codes else None)

    def _run_bound(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """IO binding: inputs copied to the GPU once, outputs left there by the graph and copied back once."""
        binding = self.session.io_binding()
        for name, array in feeds.items():
            value = self._ort.OrtValue.ortvalue_from_numpy(array, "cuda", self.device_id)
            binding.bind_ortvalue_input(name, value)
        for name in outputs:
            binding.bind_output(name, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    def close(self) -> None:
        self.session = None
