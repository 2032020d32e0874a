"""A stand-in TensorRT engine file with its metadata, for the tests of the engine checks and runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rsd.backends.exported import BatchProfile, EngineMeta, RuntimeInfo, write_engine_meta
from rsd.spec import read_spec
from tests.model_export.conftest import TILE

H100 = RuntimeInfo(tensorrt_version="10.3.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0")


def write_stand_in_engine(artifact: Path, **changes: Any) -> Path:
    """`<artifact>/export/tile32.fp16.plan` (bytes no TensorRT can read) and its metadata, as built on an
    H100 for `artifact`'s spec with a 1..4 batch profile; `changes` override metadata fields."""
    spec = read_spec(artifact)
    engine = artifact / "export" / f"tile{TILE}.fp16.plan"
    engine.parent.mkdir(exist_ok=True)
    engine.write_bytes(b"not a real engine")
    meta = EngineMeta(
        engine_file=engine.name,
        onnx_file=f"tile{TILE}.onnx",
        tile=TILE,
        schedule_hash=spec.schedule_hash,
        model_name=spec.name,
        precision=["fp16"],
        batch_profile=BatchProfile(min=1, opt=2, max=4),
        workspace_bytes=2**30,
        runtime=H100,
        build_seconds=1.0,
    )
    write_engine_meta(engine, meta.model_copy(update=changes))
    return engine
