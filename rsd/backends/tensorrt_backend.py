"""The TensorRT backend: a serialized engine built by `rsd export tensorrt` (model_export.to_tensorrt).

TensorRT is imported here only, inside functions (architecture.md, invariant 4); without it the backend
raises an error naming the extra to install. Written against the TensorRT 10 Python API, which addresses
I/O tensors by name: `num_io_tensors` / `get_tensor_name` / `get_tensor_mode` / `get_tensor_dtype` /
`get_tensor_shape` / `get_tensor_profile_shape` on the engine, and per run `set_input_shape` and
`set_tensor_address` for every I/O tensor before `execute_async_v3(stream)`. All three return False on
failure (TensorRT logs why); each False is raised here naming the call and the tensor.

One run, all on one CUDA stream (its context's own, not the legacy default stream, which TensorRT would
synchronise around): pinned host -> device copies, the engine, device -> pinned host copies, one
synchronise, and only then are the host buffers read. The I/O dtypes are the engine's (an fp16 or bf16
engine built from `rsd export onnx` output keeps float32 inputs and outputs, README "Export"), never
assumed. Device and pinned host memory come from torch (`rsd.backends.cuda_ops.TorchCuda`), so no
pycuda / cuda-python is needed, and torch's caching allocator owns every buffer.

Threads: an IExecutionContext must not be used by two threads at once (TensorRT developer guide, "Thread
Safety"). A run takes a context, with its own stream and buffers, from a pool and puts it back after; a
new one is made only when every context is busy, so concurrent runs never share one and a worker whose
runs move between threads (warm-up, then the device loop) keeps one. The CUDA device is made current in
the thread that runs, since TensorRT works on the thread's current device.

Batches: the engine's optimisation profile bounds the batch; a larger batch runs in chunks of its max
and a last chunk below its min is padded with copies of its last tile, whose outputs are dropped (rows
are independent, architecture.md invariant 2). `chunk_bounds` is that plan.

An engine is refused before deserialisation when its metadata (`<engine>.json`) names another tile or
schedule hash than the artifact, or another TensorRT version, GPU or compute capability than this
machine (engines are not portable); the message says how to rebuild it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from rsd.backends.base import Upscaler, check_tiles
from rsd.backends.cuda_ops import CudaOps, TorchCuda
from rsd.backends.device import Device
from rsd.backends.exported import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    EngineMeta,
    ExportMismatchError,
    RuntimeInfo,
    check_engine_meta,
    engine_file_name,
    find_export,
    read_engine_meta,
)
from rsd.noise import draw_noise_batch
from rsd.spec import read_spec

TENSORRT_EXTRA = "pip install 'rsd-serve[tensorrt]'"
#: `rsd export tensorrt` builds one optimisation profile; contexts use it
PROFILE = 0


def import_tensorrt() -> Any:
    """The `tensorrt` module, or a RuntimeError that says how to install it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise RuntimeError(
            f"TensorRT is not installed: {TENSORRT_EXTRA} (needs an NVIDIA GPU with a CUDA 12 driver)"
        ) from exc
    return tensorrt


@cache
def trt_logger(trt: Any) -> Any:
    """One logger for every builder and runtime: TensorRT keeps a single logger per process."""
    return trt.Logger(trt.Logger.WARNING)


def runtime_info(trt: Any, device: str) -> RuntimeInfo:
    """TensorRT version, GPU name and compute capability of `device` (a torch CUDA device string).

    Also makes `device` the calling thread's current CUDA device: TensorRT builds, deserialises and runs
    on the current device, so the name recorded or checked is the one of the GPU it works on."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"the TensorRT backend needs a CUDA device; torch sees none (device {device!r})")
    index = Device.parse(device).index
    torch.cuda.set_device(index)
    major, minor = torch.cuda.get_device_capability(index)
    return RuntimeInfo(
        tensorrt_version=str(trt.__version__),
        gpu_name=torch.cuda.get_device_name(index),
        compute_capability=f"{major}.{minor}",
    )


# -- pure helpers -------------------------------------------------------------------------------------


def chunk_bounds(n: int, low: int, high: int) -> list[tuple[int, int, int]]:
    """How a batch of `n` runs on a profile of batch `low`..`high`: (start, stop, size) per chunk.

    Rows [start, stop) are real, `size` (within low..high, at least stop - start) is the batch the engine
    runs; the difference is padding. Chunks are of `high` but the last; only the last can be padded."""
    if not 1 <= low <= high:
        raise ValueError(f"batch profile needs 1 <= min <= max, got min {low}, max {high}")
    if n < 0:
        raise ValueError(f"batch size {n} is negative")
    return [(start, min(start + high, n), max(min(start + high, n) - start, low)) for start in range(0, n, high)]


_NUMPY_TYPES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT32": np.int32,
    "INT64": np.int64,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}


def numpy_dtype(trt: Any, dtype: Any, name: str) -> np.dtype:
    """The host dtype of the engine tensor `name` of TensorRT type `dtype` (BF16 has none: refused)."""
    for member, numpy_type in _NUMPY_TYPES.items():
        if hasattr(trt.DataType, member) and dtype == getattr(trt.DataType, member):
            return np.dtype(numpy_type)
    raise RuntimeError(
        f"engine tensor {name!r} is of type {dtype}, which has no host type here "
        f"({', '.join(_NUMPY_TYPES)}); build the engine from an `rsd export onnx` file (float32 I/O)"
    )


@dataclass(frozen=True)
class IOTensor:
    """One engine I/O tensor as the engine declares it."""

    name: str
    is_input: bool
    dtype: np.dtype
    #: the dimensions after the batch, which are fixed (architecture.md invariant 3)
    rest: tuple[int, ...]


def read_io(trt: Any, engine: Any) -> list[IOTensor]:
    """The engine's I/O tensors: names, directions and dtypes read from the engine, not assumed."""
    tensors = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        if not shape or any(d < 0 for d in shape[1:]):
            raise RuntimeError(
                f"engine tensor {name!r} has shape {shape}: only the batch (first) dimension may be dynamic"
            )
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        tensors.append(IOTensor(name, is_input, numpy_dtype(trt, engine.get_tensor_dtype(name), name), shape[1:]))
    return tensors


def profile_batch(engine: Any, inputs: Sequence[IOTensor]) -> tuple[int, int]:
    """(min, max) batch of the engine's optimisation profile, the same for every input."""
    bounds = {}
    for tensor in inputs:
        low, _opt, high = engine.get_tensor_profile_shape(tensor.name, PROFILE)
        bounds[tensor.name] = (int(low[0]), int(high[0]))
    if len(set(bounds.values())) != 1:
        raise RuntimeError(f"the engine's inputs disagree on the batch profile: {bounds}")
    return next(iter(bounds.values()))


def _check(ok: bool, call: str) -> None:
    if not ok:
        raise RuntimeError(f"TensorRT {call} failed (see the TensorRT log above)")


# -- contexts -----------------------------------------------------------------------------------------


class _Slot:
    """One execution context with its own stream and buffers for the profile's max batch. The pool
    (EngineRunner) gives it to one run at a time."""

    def __init__(self, engine: Any, tensors: list[IOTensor], cuda: CudaOps, max_batch: int) -> None:
        cuda.activate()
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        self.cuda, self.tensors = cuda, tensors
        self.stream = cuda.new_stream()
        self.device = {t.name: cuda.device_buffer((max_batch, *t.rest), t.dtype, self.stream) for t in tensors}
        self.host = {t.name: cuda.host_buffer((max_batch, *t.rest), t.dtype) for t in tensors}

    def run(self, feeds: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
        """Run a batch of `size` from n <= size rows per input (the rest repeat the last row); returns n
        rows per output, copied out of the buffers (they are reused by the next run)."""
        cuda, context = self.cuda, self.context
        cuda.activate()
        n = 0
        for t in (t for t in self.tensors if t.is_input):
            rows = feeds[t.name]
            n = len(rows)
            host = cuda.host_array(self.host[t.name])
            host[:n] = rows
            host[n:size] = rows[-1]
            shape = (size, *t.rest)
            _check(context.set_input_shape(t.name, shape), f"set_input_shape({t.name!r}, {shape})")
        for t in (t for t in self.tensors if not t.is_input):
            shape = tuple(int(d) for d in context.get_tensor_shape(t.name))
            if shape != (size, *t.rest):
                raise RuntimeError(f"engine output {t.name!r} has shape {shape} for a batch of {size}")
        for t in self.tensors:
            address = cuda.address(self.device[t.name])
            _check(context.set_tensor_address(t.name, address), f"set_tensor_address({t.name!r})")
        for t in (t for t in self.tensors if t.is_input):
            cuda.copy_async(self.device[t.name], self.host[t.name], size, self.stream)
        _check(context.execute_async_v3(cuda.stream_handle(self.stream)), "execute_async_v3")
        outputs = [t for t in self.tensors if not t.is_input]
        for t in outputs:
            cuda.copy_async(self.host[t.name], self.device[t.name], n, self.stream)
        cuda.synchronize(self.stream)  # the copies back are asynchronous: nothing is read before this
        return {t.name: cuda.host_array(self.host[t.name])[:n].copy() for t in outputs}


class EngineRunner:
    """A deserialised engine and its pool of execution contexts: `run(feeds)` for any batch size."""

    def __init__(self, trt: Any, engine: Any, cuda: CudaOps) -> None:
        self.tensors = read_io(trt, engine)
        self.inputs = [t for t in self.tensors if t.is_input]
        self.outputs = [t for t in self.tensors if not t.is_input]
        if not self.inputs or not self.outputs:
            raise RuntimeError(f"the engine has {len(self.inputs)} inputs and {len(self.outputs)} outputs")
        self.min_batch, self.max_batch = profile_batch(engine, self.inputs)
        self._engine, self._cuda = engine, cuda
        self._free: list[_Slot] = []
        self._lock = threading.Lock()
        self._closed = False

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """feeds: one array per engine input, all of N rows; returns N rows per engine output."""
        if set(feeds) != {t.name for t in self.inputs}:
            raise ValueError(f"the engine takes {[t.name for t in self.inputs]}, got {sorted(feeds)}")
        n = len(next(iter(feeds.values())))
        for t in self.inputs:
            if feeds[t.name].shape != (n, *t.rest):
                shape = ", ".join(str(d) for d in ("N", *t.rest))
                raise ValueError(f"engine input {t.name!r} takes ({shape}), got {feeds[t.name].shape}")
        parts: dict[str, list[np.ndarray]] = {t.name: [] for t in self.outputs}
        chunks = chunk_bounds(n, self.min_batch, self.max_batch)
        if chunks:
            slot = self._acquire()
            for start, stop, size in chunks:
                out = slot.run({name: rows[start:stop] for name, rows in feeds.items()}, size)
                for name, rows in out.items():
                    parts[name].append(rows)
            self._release(slot)  # a slot whose run raised is dropped, not reused
        return {
            t.name: np.concatenate(parts[t.name]) if parts[t.name] else np.empty((0, *t.rest), t.dtype)
            for t in self.outputs
        }

    def _acquire(self) -> _Slot:
        with self._lock:
            if self._closed:
                raise RuntimeError("this TensorRT engine is closed")
            if self._free:
                return self._free.pop()
        return _Slot(self._engine, self.tensors, self._cuda, self.max_batch)  # every context is busy

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            if not self._closed:
                self._free.append(slot)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._free.clear()  # the contexts go before the engine that made them
            self._engine = None


class TensorRTUpscaler(Upscaler):
    """Runs `MODEL_DIR/export/tile{tile}.{precision}.plan` (or `engine_path`) on a CUDA device, any batch
    size (split and padded to the engine's profile). `cuda` replaces torch's CUDA operations (tests)."""

    def __init__(
        self,
        model_dir: str | Path,
        tile: int | None = None,
        device: str = "cuda",
        precision: Sequence[str] = ("fp16",),
        engine_path: str | Path | None = None,
        cuda: CudaOps | None = None,
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
        self._cuda = cuda if cuda is not None else TorchCuda(device)
        self._runner: EngineRunner | None = self._load(trt, path)

    def _load(self, trt: Any, path: Path) -> EngineRunner:
        self._cuda.activate()  # the engine is deserialised onto the current device
        self._runtime = trt.Runtime(trt_logger(trt))
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {path}; rebuild it with `rsd export tensorrt`")
        runner = EngineRunner(trt, engine, self._cuda)
        names = ({t.name for t in runner.inputs}, {t.name for t in runner.outputs})
        if names[0] != set(INPUT_NAMES) or not set(OUTPUT_NAMES) <= names[1]:
            raise ExportMismatchError(
                f"engine {path} has inputs {sorted(names[0])} and outputs {sorted(names[1])}, not "
                f"{list(INPUT_NAMES)} -> {list(OUTPUT_NAMES)}; rebuild it from `rsd export onnx` output"
            )
        profile = self.meta.batch_profile
        if (runner.min_batch, runner.max_batch) != (profile.min, profile.max):
            raise ExportMismatchError(
                f"engine {path} has batch profile {runner.min_batch}..{runner.max_batch} but its metadata "
                f"says {profile.min}..{profile.max}: the metadata is another engine's; rebuild it"
            )
        return runner

    def run_with_codes(
        self, lq_tiles: np.ndarray, seeds: Sequence[int], with_codes: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        check_tiles(lq_tiles, seeds, self.tile, "engine")
        if self._runner is None:
            raise RuntimeError("this TensorRT upscaler is closed")
        out = self._runner.run(
            {
                INPUT_NAMES[0]: np.ascontiguousarray(lq_tiles, dtype=np.float32),
                INPUT_NAMES[1]: draw_noise_batch(list(seeds), self.noise_channels, self.tile, self.tile),
            }
        )
        sr = out[OUTPUT_NAMES[0]].astype(np.float32, copy=False)
        return sr, (out[OUTPUT_NAMES[1]] if with_codes else None)

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
        self._runner = None
        self._runtime = None  # after the engine: the runtime must outlive what it deserialised
