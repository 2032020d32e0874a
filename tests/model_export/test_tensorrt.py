"""TensorRT: engine build orchestration (with a stand-in `tensorrt` module), metadata checks and refusals.

TensorRT itself is not installable on CPU machines; the builder calls are checked against a recording
stand-in, the refusal paths need no TensorRT at all, and one `gpu` test builds and runs a real engine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_export import to_tensorrt
from model_export.to_tensorrt import EngineBuild, build_engine, profile_shapes, read_onnx_facts
from rsd.backends import load_upscaler
from rsd.backends import tensorrt_backend as trt_backend
from rsd.backends.exported import BatchProfile, ExportMismatchError, RuntimeInfo
from rsd.backends.tensorrt_backend import TensorRTUpscaler
from rsd.spec import read_spec
from rsd_cli import export as export_cli
from tests.model_export.conftest import TILE
from tests.model_export.engines import H100, write_stand_in_engine


class FakeTensorRT(types.ModuleType):
    """Records what the builder is asked to do; returns fixed bytes for the engine and timing cache."""

    def __init__(self, parse_ok: bool = True) -> None:
        super().__init__("tensorrt")
        self.__version__ = H100.tensorrt_version
        self.calls: list[tuple[Any, ...]] = []
        calls, ok = self.calls, parse_ok

        class Logger:
            WARNING = "warning"

            def __init__(self, level: str) -> None:
                calls.append(("logger", level))

        class Profile:
            def set_shape(self, name: str, low: tuple, opt: tuple, high: tuple) -> None:
                calls.append(("set_shape", name, low, opt, high))

        class Cache:
            def serialize(self) -> bytes:
                return b"CACHE"

        class Config:
            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                calls.append(("pool", pool, size))

            def set_flag(self, flag: str) -> None:
                calls.append(("flag", flag))

            def add_optimization_profile(self, profile: Profile) -> None:
                calls.append(("profile",))

            def create_timing_cache(self, data: bytes) -> Cache:
                calls.append(("create_timing_cache", data))
                return Cache()

            def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> None:
                calls.append(("set_timing_cache", ignore_mismatch))

        class Builder:
            def __init__(self, logger: Logger) -> None:
                pass

            def create_network(self, flags: int) -> str:
                calls.append(("create_network", flags))
                return "network"

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: str, config: Config) -> bytes:
                calls.append(("build", network))
                return b"ENGINE"

        class OnnxParser:
            num_errors = 0 if ok else 1

            def __init__(self, network: str, logger: Logger) -> None:
                pass

            def parse_from_file(self, path: str) -> bool:
                calls.append(("parse", path))
                return ok

            def get_error(self, index: int) -> str:
                return "Unsupported operator Foo"

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        self.BuilderFlag = types.SimpleNamespace(FP16="FP16", BF16="BF16")


@pytest.fixture()
def work(tiny_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the exported tiny artifact (engines and metadata are written into it)."""
    return shutil.copytree(tiny_dir, tmp_path / "work")


def test_batch_profile_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="min <= opt <= max"):
        BatchProfile(min=4, opt=2, max=8)


def test_profile_shapes_vary_only_the_batch(work: Path) -> None:
    facts = read_onnx_facts(work / "export" / "tile32.onnx")
    assert facts.tile == TILE and facts.schedule_hash == read_spec(work).schedule_hash
    shapes = profile_shapes(facts, BatchProfile(min=1, opt=2, max=4))
    assert shapes["lq"] == ((1, 3, 32, 32), (2, 3, 32, 32), (4, 3, 32, 32))
    assert shapes["noise"] == (
        (1, facts.noise_channels, 32, 32),
        (2, facts.noise_channels, 32, 32),
        (4, facts.noise_channels, 32, 32),
    )


def test_build_engine_drives_the_builder_and_writes_metadata(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTensorRT()
    monkeypatch.setattr(to_tensorrt, "import_tensorrt", lambda: fake)
    monkeypatch.setattr(to_tensorrt, "runtime_info", lambda trt, device: H100)
    cache = work / "timing.cache"
    build = EngineBuild(
        onnx=work / "export" / "tile32.onnx",
        fp16=True,
        batch=BatchProfile(min=1, opt=2, max=4),
        workspace_gib=0.5,
        timing_cache=cache,
    )
    path, meta = build_engine(build)
    assert path == work / "export" / "tile32.fp16.plan" and path.read_bytes() == b"ENGINE"
    assert cache.read_bytes() == b"CACHE"
    assert ("pool", "workspace", 2**29) in fake.calls and ("flag", "FP16") in fake.calls
    assert ("flag", "BF16") not in fake.calls and ("create_network", 0) in fake.calls
    shapes = {c[1]: c[2:] for c in fake.calls if c[0] == "set_shape"}
    assert shapes["lq"] == ((1, 3, 32, 32), (2, 3, 32, 32), (4, 3, 32, 32))
    assert fake.calls.index(("profile",)) < fake.calls.index(("build", "network"))
    stored = json.loads((work / "export" / "tile32.fp16.plan.json").read_text())
    assert stored["tile"] == TILE and stored["schedule_hash"] == read_spec(work).schedule_hash
    assert stored["runtime"]["gpu_name"] == H100.gpu_name and stored["precision"] == ["fp16"]
    assert stored["batch_profile"] == {"min": 1, "opt": 2, "max": 4} and meta.onnx_file == "tile32.onnx"


def test_parser_errors_are_reported(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(to_tensorrt, "import_tensorrt", lambda: FakeTensorRT(parse_ok=False))
    monkeypatch.setattr(to_tensorrt, "runtime_info", lambda trt, device: H100)
    with pytest.raises(RuntimeError, match=r"could not parse .*Unsupported operator Foo"):
        build_engine(EngineBuild(onnx=work / "export" / "tile32.onnx"))


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rsd")
    export_cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_without_tensorrt_names_the_extra(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    args = _cli(
        [
            "export",
            "tensorrt",
            "--onnx",
            str(work / "export" / "tile32.onnx"),
            "--fp16",
            "--min-batch",
            "1",
            "--opt-batch",
            "2",
            "--max-batch",
            "4",
            "--workspace",
            "2",
        ]
    )
    with pytest.raises(RuntimeError, match=r"pip install 'rsd-serve\[tensorrt\]'"):
        args.handler(args)


def test_cli_rejects_a_disordered_profile(work: Path) -> None:
    args = _cli(["export", "tensorrt", "--onnx", str(work / "export" / "tile32.onnx"), "--opt-batch", "16"])
    with pytest.raises(ValueError, match="min <= opt <= max"):
        args.handler(args)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tile": 64}, "built for tile 64, not 32"),
        ({"schedule_hash": "0123456789abcdef"}, "schedule hash 0123456789abcdef differs"),
    ],
)
def test_engine_for_another_tile_or_schedule_is_refused_without_tensorrt(
    work: Path, monkeypatch: pytest.MonkeyPatch, changes: dict, message: str
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # refused before TensorRT is needed
    engine = write_stand_in_engine(work, **changes)
    with pytest.raises(ExportMismatchError, match=f"{message}.*rebuild it on this machine: rsd export tensorrt"):
        TensorRTUpscaler(work, TILE, engine_path=engine)


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        (
            H100.model_copy(update={"gpu_name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}),
            "built on 'NVIDIA H100 80GB HBM3', this GPU is 'NVIDIA A100-SXM4-80GB'.*compute capability 9.0",
        ),
        (H100.model_copy(update={"tensorrt_version": "10.8.0"}), "built with TensorRT 10.3.0, this is 10.8.0"),
    ],
)
def test_engine_for_another_gpu_or_tensorrt_is_refused(
    work: Path, monkeypatch: pytest.MonkeyPatch, runtime: RuntimeInfo, message: str
) -> None:
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: FakeTensorRT())
    monkeypatch.setattr(trt_backend, "runtime_info", lambda trt, device: runtime)
    with pytest.raises(ExportMismatchError, match=f"{message}.*--fp16"):
        TensorRTUpscaler(work, TILE, engine_path=write_stand_in_engine(work))


def test_matching_engine_without_tensorrt_names_the_extra(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    write_stand_in_engine(work)
    with pytest.raises(RuntimeError, match=r"TensorRT is not installed: pip install 'rsd-serve\[tensorrt\]'"):
        load_upscaler(work, "tensorrt", device="cuda", dtype="fp16", tile=TILE)


def test_engine_without_metadata_is_refused(work: Path) -> None:
    engine = work / "export" / "tile32.fp16.plan"
    engine.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"no metadata file tile32\.fp16\.plan\.json"):
        TensorRTUpscaler(work, TILE, engine_path=engine)


def test_tensorrt_backend_needs_a_cuda_device(work: Path) -> None:
    with pytest.raises(ValueError, match="CUDA device, not 'cpu'"):
        load_upscaler(work, "tensorrt", device="cpu", tile=TILE)


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installed")
def test_real_engine_matches_torch(work: Path) -> None:
    from model_export.verify import candidate, verify

    build_engine(EngineBuild(onnx=work / "export" / "tile32.onnx", batch=BatchProfile(min=1, opt=2, max=3)))
    (fp32,) = verify(work, TILE, [candidate("tensorrt-fp32", work, TILE)])
    assert fp32.passed, fp32
    upscaler = load_upscaler(work, "tensorrt", device="cuda", dtype="fp32", tile=TILE)
    out = upscaler.run(np.zeros((5, 3, TILE, TILE), np.float32), list(range(5)))  # split over max batch 3
    assert out.shape == (5, 3, 4 * TILE, 4 * TILE)
