"""The onnxruntime backend: an exported tile graph (rsd.backends.exported) on the CPU, CUDA or TensorRT
execution provider. onnxruntime is imported here only (architecture.md invariant 4).

Settings: graph optimisation level "all" by default (constant folding, conv + activation fusion, layout
transforms); on CPU, `intra_op_threads` sets the thread pool (default: onnxruntime's, one per physical
core) and operators run sequentially (one graph at a time, as the worker runs it). On a GPU provider,
inputs are bound to device memory with IO binding and only `sr` is copied back.

GPU providers (onnxruntime execution provider options): CUDA with `device_id` and
`do_copy_in_default_stream` (copies on the compute stream, the documented safe setting); TensorRT with
`device_id`, `trt_fp16_enable` for the fp16 export only (on the fp32 file it would silently run fp16,
and `rsd verify` would judge that as fp32), and an engine cache per dtype under `export/ort_trt_cache/`
(a cached engine is only valid for the settings it was built with). onnxruntime falls back to the CPU,
with only a log line (hidden at the error-only level set here), when a GPU provider cannot load;
`open_session` compares `session.get_providers()` with the provider asked for and refuses that.
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


PROVIDER_NAMES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def provider_list(
    ort: Any, provider: Provider, device_id: int, dtype: OnnxDType = "fp32", trt_cache: Path | None = None
) -> list[Any]:
    """onnxruntime providers (with options) for `provider`, in priority order: a node the first cannot
    run goes to the next (per node; a whole session on a lower one is refused by `open_session`)."""
    available = set(ort.get_available_providers())
    wanted = PROVIDER_NAMES[provider]
    if wanted not in available:
        raise RuntimeError(f"onnxruntime has no {wanted} here (available: {', '.join(sorted(available))}); {_GPU_HINT}")
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    cuda = ("CUDAExecutionProvider", {"device_id": device_id, "do_copy_in_default_stream": True})
    if provider == "cuda":
        return [cuda, "CPUExecutionProvider"]
    trt_options: dict[str, Any] = {"device_id": device_id, "trt_fp16_enable": dtype == "fp16"}
    if trt_cache is not None:
        trt_options |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache)}
    return [("TensorrtExecutionProvider", trt_options), cuda, "CPUExecutionProvider"]


def check_providers(session: Any, provider: Provider) -> None:
    """Refuse a session on which onnxruntime left out the provider asked for (it falls back silently)."""
    wanted = PROVIDER_NAMES[provider]
    enabled = list(session.get_providers())
    if wanted not in enabled:
        raise RuntimeError(
            f"onnxruntime could not enable {wanted} for this session (it would run on {', '.join(enabled)}); "
            f"a CUDA, cuDNN or TensorRT library that onnxruntime-gpu needs is missing or of another version "
            f"({_GPU_HINT})"
        )


def open_session(ort: Any, path: Path, options: Any, provider: Provider, dtype: OnnxDType, device_id: int) -> Any:
    """An InferenceSession of `path` on `provider`, checked to really run there."""
    trt_cache = path.parent / "ort_trt_cache" / dtype if provider == "tensorrt" else None
    providers = provider_list(ort, provider, device_id, dtype, trt_cache)
    if trt_cache is not None:
        trt_cache.mkdir(parents=True, exist_ok=True)
    session = ort.InferenceSession(str(path), options, providers=providers)
    check_providers(session, provider)
    return session


def run_bound(
    ort: Any, session: Any, feeds: dict[str, np.ndarray], outputs: list[str], device_id: int
) -> list[np.ndarray]:
    """IO binding: inputs copied to the GPU once, outputs left there by the graph and copied back once."""
    binding = session.io_binding()
    for name, array in feeds.items():
        value = ort.OrtValue.ortvalue_from_numpy(array, "cuda", device_id)
        binding.bind_ortvalue_input(name, value)
    for name in outputs:
        binding.bind_output(name, "cuda", device_id)
    binding.synchronize_inputs()  # the input copies are done before the graph's stream reads them
    session.run_with_iobinding(binding)
    binding.synchronize_outputs()  # and the graph is done before its outputs are copied back
    return list(binding.copy_outputs_to_cpu())


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
        self.session = open_session(ort, path, options, provider, dtype, device_id)
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
            results = run_bound(self._ort, self.session, feeds, outputs, self.device_id)
        return results[0], (results[1] if with_codes else None)

    def close(self) -> None:
        self.session = None
