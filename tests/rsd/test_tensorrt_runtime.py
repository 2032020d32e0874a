"""The TensorRT runtime path without TensorRT: recording stand-ins for the engine, its contexts and CUDA.

The stand-in stream runs what is queued on it only when it is synchronised, as a CUDA stream would
finish it only then: a read before the synchronise, a launch on another stream or a missing copy gives
wrong numbers, not just a wrong call order. The builder's precision flags and timing-cache refusal are
checked here too (model_export.to_tensorrt). A real engine runs in tests/model_export/test_tensorrt.py
(gpu marker).
"""

from __future__ import annotations

import itertools
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_export import to_tensorrt
from model_export.to_tensorrt import EngineBuild, OnnxFacts, builder_flag
from rsd.backends import tensorrt_backend as trt_backend
from rsd.backends.exported import BatchProfile, ExportMismatchError
from rsd.backends.tensorrt_backend import EngineRunner, TensorRTUpscaler, chunk_bounds, numpy_dtype
from rsd.noise import draw_noise_batch
from rsd.spec import read_spec
from tests.factories import make_tiny_artifact
from tests.model_export.engines import H100, TILE, write_stand_in_engine

Compute = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class FakeLogger:
    WARNING = "warning"

    def __init__(self, level: str) -> None:
        self.level = level


def fake_trt() -> Any:
    """A stand-in `tensorrt` module (a module, as the real one: hashable, so trt_logger can key on it)."""
    trt: Any = types.ModuleType("tensorrt")
    trt.__version__ = H100.tensorrt_version
    trt.DataType = types.SimpleNamespace(FLOAT="float", HALF="half", INT32="int32", INT64="int64", BF16="bf16")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.Logger = FakeLogger
    return trt


class FakeCuda:
    """CudaOps on numpy: buffers by address, streams that run their queue when synchronised, and a
    per-thread current device."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.buffers: dict[int, np.ndarray] = {}
        self.streams: dict[int, list[Callable[[], None]]] = {}
        self._handles = itertools.count(1)
        self._addresses = itertools.count(0x1000, 0x1000)
        self._local = threading.local()

    def current(self) -> bool:
        return getattr(self._local, "active", False)

    def activate(self) -> None:
        self._local.active = True
        self.log.append(("activate", threading.get_ident()))

    def new_stream(self) -> int:
        handle = next(self._handles)
        self.streams[handle] = []
        return handle

    def stream_handle(self, stream: int) -> int:
        return stream

    def _buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> int:
        address = next(self._addresses)
        self.buffers[address] = np.zeros(shape, dtype)
        return address

    def device_buffer(self, shape: tuple[int, ...], dtype: np.dtype, stream: int) -> int:
        return self._buffer(shape, dtype)

    def host_buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> int:
        return self._buffer(shape, dtype)

    def host_array(self, buffer: int) -> np.ndarray:
        self.log.append(("host_array", buffer))
        return self.buffers[buffer]

    def address(self, buffer: int) -> int:
        return buffer

    def copy_async(self, dst: int, src: int, rows: int, stream: int) -> None:
        self.log.append(("copy", dst, src, rows, stream))

        def copy() -> None:
            self.buffers[dst][:rows] = self.buffers[src][:rows]

        self.streams[stream].append(copy)

    def synchronize(self, stream: int) -> None:
        self.log.append(("synchronize", stream))
        for job in self.streams[stream]:
            job()
        self.streams[stream].clear()


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def _log(self, *event: Any) -> None:
        self.engine.cuda.log.append((*event, id(self)))

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self._log("set_input_shape", name, shape)
        self.shapes[name] = tuple(shape)
        return name not in self.engine.fail.get("set_input_shape", ())

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        batches = {shape[0] for shape in self.shapes.values()}
        batch = batches.pop() if len(batches) == 1 else -1
        return (batch, *self.engine.rest[name])

    def set_tensor_address(self, name: str, address: int) -> bool:
        self._log("set_tensor_address", name, address)
        self.addresses[name] = address
        return name not in self.engine.fail.get("set_tensor_address", ())

    def execute_async_v3(self, stream_handle: int) -> bool:
        cuda, engine = self.engine.cuda, self.engine
        self._log("execute_async_v3", stream_handle, threading.get_ident())
        if "execute_async_v3" in engine.fail or not cuda.current():
            return False
        assert set(self.addresses) == set(engine.rest), "every I/O tensor needs an address"
        batch = self.get_tensor_shape(engine.outputs[0])[0]
        engine.batches.append(batch)
        if engine.barrier is not None:
            engine.barrier.wait(timeout=5)
        inputs, addresses = list(engine.inputs), dict(self.addresses)

        def launch() -> None:
            feeds = {name: cuda.buffers[addresses[name]][:batch].copy() for name in inputs}
            engine.seen.append(feeds)
            for name, value in engine.compute(feeds).items():
                cuda.buffers[addresses[name]][:batch] = value

        cuda.streams[stream_handle].append(launch)
        return True


class FakeEngine:
    """tensors: name -> (mode, TensorRT type, shape after the batch); compute: the graph, on numpy."""

    def __init__(
        self,
        cuda: FakeCuda,
        tensors: dict[str, tuple[str, str, tuple[int, ...]]],
        compute: Compute,
        profile: tuple[int, int, int] = (1, 2, 4),
    ) -> None:
        self.cuda, self.compute, self.profile = cuda, compute, profile
        self.tensors = tensors
        self.rest = {name: rest for name, (_, _, rest) in tensors.items()}
        self.inputs = [name for name, (mode, _, _) in tensors.items() if mode == "input"]
        self.outputs = [name for name, (mode, _, _) in tensors.items() if mode == "output"]
        self.fail: dict[str, tuple[str, ...]] = {}
        self.batches: list[int] = []
        self.seen: list[dict[str, np.ndarray]] = []
        self.contexts: list[FakeContext] = []
        self.barrier: threading.Barrier | None = None

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_mode(self, name: str) -> str:
        return self.tensors[name][0]

    def get_tensor_dtype(self, name: str) -> str:
        return self.tensors[name][1]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1, *self.rest[name])

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        assert profile == 0
        return [(n, *self.rest[name]) for n in self.profile]

    def create_execution_context(self) -> FakeContext:
        assert self.cuda.current(), "a context is made on the current device"
        context = FakeContext(self)
        self.contexts.append(context)
        return context


def affine_engine(cuda: FakeCuda, profile: tuple[int, int, int] = (1, 2, 4), dtype: str = "float") -> FakeEngine:
    """x (N, 2) -> y = 2x + 1, k = x[:, 0] as int32."""

    def compute(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["x"]
        return {"y": 2 * x + 1, "k": x[:, 0].astype(np.int32)}

    tensors = {"x": ("input", dtype, (2,)), "y": ("output", dtype, (2,)), "k": ("output", "int32", ())}
    return FakeEngine(cuda, tensors, compute, profile)


def _runner(profile: tuple[int, int, int] = (1, 2, 4), dtype: str = "float") -> tuple[EngineRunner, FakeEngine]:
    cuda = FakeCuda()
    engine = affine_engine(cuda, profile, dtype)
    return EngineRunner(fake_trt(), engine, cuda), engine


# -- chunk_bounds ---------------------------------------------------------------------------------


@given(st.integers(0, 200), st.integers(1, 16), st.integers(0, 16))
def test_chunk_bounds_cover_the_batch_within_the_profile(n: int, low: int, extra: int) -> None:
    high = low + extra
    chunks = chunk_bounds(n, low, high)
    assert [stop for _, stop, _ in chunks[:-1]] == [start for start, _, _ in chunks[1:]]  # contiguous
    assert (chunks[0][0] if chunks else 0) == 0 and (chunks[-1][1] if chunks else 0) == n
    assert len(chunks) == -(-n // high)
    for i, (start, stop, size) in enumerate(chunks):
        assert low <= size <= high and 0 < stop - start <= size
        if i < len(chunks) - 1:
            assert stop - start == size == high  # only the last chunk is short or padded
    assert sum(size - (stop - start) for start, stop, size in chunks) == (max(low - n % high, 0) if n % high else 0)


@pytest.mark.parametrize(
    ("n", "low", "high", "expected"),
    [
        (9, 2, 4, [(0, 4, 4), (4, 8, 4), (8, 9, 2)]),
        (1, 3, 8, [(0, 1, 3)]),
        (8, 1, 8, [(0, 8, 8)]),
        (0, 1, 8, []),
    ],
)
def test_chunk_bounds_examples(n: int, low: int, high: int, expected: list[tuple[int, int, int]]) -> None:
    assert chunk_bounds(n, low, high) == expected


@pytest.mark.parametrize(("n", "low", "high"), [(3, 0, 4), (3, 5, 4), (-1, 1, 4)])
def test_chunk_bounds_refuses_a_bad_profile_or_batch(n: int, low: int, high: int) -> None:
    with pytest.raises(ValueError, match=r"min <= max|negative"):
        chunk_bounds(n, low, high)


# -- dtypes -----------------------------------------------------------------------------------------


def test_dtypes_come_from_the_engine() -> None:
    trt = fake_trt()
    assert numpy_dtype(trt, "float", "lq") == np.float32 and numpy_dtype(trt, "half", "lq") == np.float16
    assert numpy_dtype(trt, "int32", "codes") == np.int32 and numpy_dtype(trt, "int64", "codes") == np.int64
    with pytest.raises(RuntimeError, match="engine tensor 'sr' is of type bf16"):
        numpy_dtype(trt, "bf16", "sr")


def test_half_io_engine_gets_half_buffers_and_float_feeds_converted() -> None:
    runner, engine = _runner(dtype="half")
    x = np.array([[0.5, 1.25], [3.0, -2.0]], np.float32)
    out = runner.run({"x": x})
    assert engine.seen[0]["x"].dtype == np.float16
    assert out["y"].dtype == np.float16 and np.array_equal(out["y"], (2 * x + 1).astype(np.float16))


# -- one run: call order, stream, synchronise ---------------------------------------------------------


def test_run_orders_shapes_addresses_copies_launch_and_sync_on_one_stream() -> None:
    runner, engine = _runner()
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = runner.run({"x": x})
    assert np.array_equal(out["y"], 2 * x + 1) and np.array_equal(out["k"], [0, 2, 4])
    log = engine.cuda.log
    (launch,) = [i for i, e in enumerate(log) if e[0] == "execute_async_v3"]
    stream = log[launch][1]
    for name in ("x", "y", "k"):
        assert any(e[:2] == ("set_tensor_address", name) for e in log[:launch]), name
    assert [e[1:3] for e in log[:launch] if e[0] == "set_input_shape"] == [("x", (3, 2))]
    copies = [(i, e) for i, e in enumerate(log) if e[0] == "copy"]
    assert {e[4] for _, e in copies} == {stream}  # copies and launch on the context's stream
    assert [i < launch for i, _ in copies] == [True, False, False]  # x in before; y, k out after
    (sync,) = [i for i, e in enumerate(log) if e == ("synchronize", stream)]
    slot = runner._free[0]
    output_hosts = {slot.host["y"], slot.host["k"]}
    reads = [i for i, e in enumerate(log) if e[0] == "host_array" and e[1] in output_hosts]
    assert reads and min(reads) > sync  # outputs read only after the synchronise


def test_outputs_are_copies_not_views_of_the_reused_buffers() -> None:
    runner, _ = _runner()
    first = runner.run({"x": np.ones((2, 2), np.float32)})
    runner.run({"x": np.zeros((2, 2), np.float32)})
    assert np.array_equal(first["y"], np.full((2, 2), 3.0))


@pytest.mark.parametrize("n", range(10))
def test_any_batch_is_split_and_padded_to_the_profile(n: int) -> None:
    runner, engine = _runner(profile=(2, 2, 3))
    x = np.random.default_rng(n).normal(size=(n, 2)).astype(np.float32)
    out = runner.run({"x": x})
    assert out["y"].shape == (n, 2) and np.allclose(out["y"], 2 * x + 1)
    assert engine.batches == [size for _, _, size in chunk_bounds(n, 2, 3)]
    assert all(2 <= b <= 3 for b in engine.batches)
    for (start, stop, size), seen in zip(chunk_bounds(n, 2, 3), engine.seen, strict=True):
        assert np.array_equal(seen["x"][: stop - start], x[start:stop])
        assert (seen["x"][stop - start : size] == x[stop - 1]).all()  # padding repeats the last row
    assert len(engine.contexts) == (1 if n else 0)


def test_feeds_must_match_the_engine_inputs() -> None:
    runner, _ = _runner()
    with pytest.raises(ValueError, match=r"takes \['x'\]"):
        runner.run({"lq": np.zeros((1, 2), np.float32)})
    with pytest.raises(ValueError, match="engine input 'x'"):
        runner.run({"x": np.zeros((1, 3), np.float32)})


@pytest.mark.parametrize(
    ("call", "name", "message"),
    [
        ("set_input_shape", "x", r"set_input_shape\('x', \(2, 2\)\) failed"),
        ("set_tensor_address", "k", r"set_tensor_address\('k'\) failed"),
        ("execute_async_v3", "", "execute_async_v3 failed"),
    ],
)
def test_a_false_return_is_an_error_naming_the_call_and_tensor(call: str, name: str, message: str) -> None:
    runner, engine = _runner()
    engine.fail[call] = (name,)
    with pytest.raises(RuntimeError, match=message):
        runner.run({"x": np.zeros((2, 2), np.float32)})
    del engine.fail[call]
    runner.run({"x": np.zeros((2, 2), np.float32)})
    assert len(engine.contexts) == 2  # the context whose run failed is not reused


# -- threads ----------------------------------------------------------------------------------------


def _in_thread(target: Callable[[], object]) -> None:
    errors: list[BaseException] = []

    def main() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=main)
    thread.start()
    thread.join(10)
    if errors:
        raise errors[0]


def test_a_run_in_another_thread_makes_the_device_current_there_and_reuses_the_context() -> None:
    runner, engine = _runner()
    runner.run({"x": np.zeros((1, 2), np.float32)})  # warm-up here ...
    _in_thread(lambda: runner.run({"x": np.ones((1, 2), np.float32)}))  # ... the device loop there
    launches = [e for e in engine.cuda.log if e[0] == "execute_async_v3"]
    assert len({e[2] for e in launches}) == 2 and len(engine.contexts) == 1
    assert engine.batches == [1, 1]  # the second launch found its device current (else it returns False)


def test_concurrent_runs_never_share_a_context() -> None:
    runner, engine = _runner()
    runner.run({"x": np.ones((2, 2), np.float32)})  # one context in the pool
    engine.barrier = threading.Barrier(2)  # both launches must be in flight at once
    threads = [threading.Thread(target=runner.run, args=({"x": np.ones((2, 2), np.float32)},)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    launches = [e for e in engine.cuda.log if e[0] == "execute_async_v3"][1:]
    assert len(launches) == 2 and launches[0][3] != launches[1][3]  # two contexts ...
    assert launches[0][1] != launches[1][1]  # ... each on its own stream
    engine.barrier = None
    runner.run({"x": np.ones((2, 2), np.float32)})
    assert len(engine.contexts) == 2  # the pooled one was reused, and both went back to the pool


def test_a_closed_runner_refuses_to_run() -> None:
    runner, _ = _runner()
    runner.close()
    with pytest.raises(RuntimeError, match="closed"):
        runner.run({"x": np.zeros((1, 2), np.float32)})


# -- the upscaler on a stand-in engine ------------------------------------------------------------


def tile_engine(cuda: FakeCuda, noise_channels: int, profile: tuple[int, int, int], names: tuple[str, ...]) -> Any:
    """(lq, noise) -> (sr, codes) as the exported graph's I/O (noise: the graph's noise channels, the
    first 3 for the output); sr = nearest x4 of lq + noise[:, :3]."""
    lq, noise, sr, codes = names

    def compute(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        mixed = feeds[lq] + feeds[noise][:, :3]
        return {sr: mixed.repeat(4, axis=2).repeat(4, axis=3), codes: (feeds[noise][:, 0] > 0).astype(np.int32)}

    tensors = {
        lq: ("input", "float", (3, TILE, TILE)),
        noise: ("input", "float", (noise_channels, TILE, TILE)),
        sr: ("output", "float", (3, 4 * TILE, 4 * TILE)),
        codes: ("output", "int32", (TILE, TILE)),
    }
    return FakeEngine(cuda, tensors, compute, profile)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_artifact(tmp_path_factory.mktemp("trt_runtime"))


def _upscaler(
    artifact: Path,
    monkeypatch: pytest.MonkeyPatch,
    profile: tuple[int, int, int] = (2, 2, 3),
    meta_profile: tuple[int, int, int] = (2, 2, 3),
    names: tuple[str, ...] = ("lq", "noise", "sr", "codes"),
    deserialized: bool = True,
) -> tuple[TensorRTUpscaler, FakeEngine]:
    spec = read_spec(artifact)
    cuda = FakeCuda()
    engine = tile_engine(cuda, spec.graph_noise_channels, profile, names)
    trt = fake_trt()

    class Runtime:
        def __init__(self, logger: Any) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Any:
            assert cuda.current(), "deserialised onto the current device"
            return engine if deserialized else None

    trt.Runtime = Runtime
    low, opt, high = meta_profile
    plan = write_stand_in_engine(artifact, batch_profile=BatchProfile(min=low, opt=opt, max=high))
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_backend, "runtime_info", lambda trt, device: H100)
    return TensorRTUpscaler(artifact, TILE, engine_path=plan, cuda=cuda), engine


@pytest.mark.parametrize("n", [1, 4, 7])
def test_upscaler_feeds_lq_and_host_noise_and_returns_sr_and_codes(
    artifact: Path, monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    upscaler, engine = _upscaler(artifact, monkeypatch)
    lq = np.random.default_rng(0).uniform(-1, 1, (n, 3, TILE, TILE)).astype(np.float32)
    seeds = list(range(100, 100 + n))
    sr, codes = upscaler.run_with_codes(lq, seeds)
    noise = draw_noise_batch(seeds, upscaler.noise_channels, TILE, TILE)
    expected = (lq + noise[:, :3]).repeat(4, axis=2).repeat(4, axis=3)
    assert sr.dtype == np.float32 and np.array_equal(sr, expected)
    assert codes is not None and np.array_equal(codes, (noise[:, 0] > 0).astype(np.int32))
    assert engine.batches == [size for _, _, size in chunk_bounds(n, 2, 3)]
    upscaler.close()
    upscaler.close()  # safe twice
    with pytest.raises(RuntimeError, match="closed"):
        upscaler.run(lq, seeds)


def test_engine_whose_profile_differs_from_its_metadata_is_refused(
    artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ExportMismatchError, match=r"batch profile 1\.\.8 but its metadata says 2\.\.3"):
        _upscaler(artifact, monkeypatch, profile=(1, 4, 8))


def test_engine_with_other_tensor_names_is_refused(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ExportMismatchError, match=r"inputs \['image', 'noise'\]"):
        _upscaler(artifact, monkeypatch, names=("image", "noise", "sr", "codes"))


def test_engine_that_does_not_deserialize_is_an_error(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeError, match=r"could not deserialize .*rsd export tensorrt"):
        _upscaler(artifact, monkeypatch, deserialized=False)


# -- the builder: precision flags and the timing cache -----------------------------------------------


class FakeConfig:
    def __init__(self, cache_ok: bool) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.cache_ok = cache_ok

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.calls.append(("pool", pool, size))

    def set_flag(self, flag: str) -> None:
        self.calls.append(("flag", flag))

    def add_optimization_profile(self, profile: Any) -> None:
        self.calls.append(("profile",))

    def create_timing_cache(self, data: bytes) -> object:
        return object()

    def set_timing_cache(self, cache: object, ignore_mismatch: bool) -> bool:
        self.calls.append(("timing_cache", ignore_mismatch))
        return self.cache_ok


def _configure(flags: dict[str, str], cache_ok: bool = True, **build: Any) -> FakeConfig:
    trt = types.SimpleNamespace(
        __version__="8.5.3",
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
        BuilderFlag=types.SimpleNamespace(**flags),
    )
    config = FakeConfig(cache_ok)
    profile = types.SimpleNamespace(set_shape=lambda *args: None)
    builder = types.SimpleNamespace(create_builder_config=lambda: config, create_optimization_profile=lambda: profile)
    facts = OnnxFacts(tile=TILE, schedule_hash="0123456789abcdef", noise_channels=4, model_name="m")
    to_tensorrt._configure(trt, builder, EngineBuild(onnx=Path("tile32.onnx"), **build), facts)
    return config


def test_builder_sets_the_workspace_pool_and_each_precision_flag() -> None:
    config = _configure({"FP16": "FP16", "BF16": "BF16"}, fp16=True, bf16=True, workspace_gib=1)
    assert config.calls[:3] == [("pool", "workspace", 2**30), ("flag", "FP16"), ("flag", "BF16")]
    fp32 = _configure({"FP16": "FP16", "BF16": "BF16"})
    assert not [c for c in fp32.calls if c[0] == "flag"]


def test_a_missing_builder_flag_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"TensorRT 8\.5\.3 has no BuilderFlag\.BF16.*--bf16"):
        _configure({"FP16": "FP16"}, bf16=True)
    assert builder_flag(types.SimpleNamespace(BuilderFlag=types.SimpleNamespace(FP16="F")), "fp16") == "F"


def test_a_timing_cache_from_another_gpu_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"other gpu")
    with pytest.raises(RuntimeError, match=r"timing cache .*trt\.cache was made on another GPU"):
        _configure({"FP16": "FP16"}, cache_ok=False, timing_cache=cache)
