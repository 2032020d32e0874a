"""Exported files of an artifact: where they live and what their metadata must say (torch-free).

Layout (one file per tile size and precision; only the batch dimension is dynamic, architecture.md
invariant 3):

    MODEL_DIR/export/tile64.onnx            fp32 graph (lq, noise) -> (sr, codes)
    MODEL_DIR/export/tile64.fp16.onnx       fp16 weights, fp32 inputs and outputs
    MODEL_DIR/export/export.json            one record per ONNX file: opset, exporter, parity numbers
    MODEL_DIR/export/tile64.fp16.plan       TensorRT engine built from tile64.onnx with --fp16
    MODEL_DIR/export/tile64.fp16.plan.json  its metadata (TensorRT version, GPU, batch profile, ...)

Every exported file carries the artifact's schedule hash; a file whose hash differs from the artifact's
`spec.json` is refused (architecture.md invariant 1). A TensorRT engine is also refused when it was built
for another GPU, compute capability or TensorRT version: engines are not portable, and the message says
how to rebuild. This module is shared by the exporter (model_export) and the backends (rsd.backends),
which is why it lives in rsd (arrows point toward rsd).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rsd.kinds import OnnxDType
from rsd.spec import ArtifactError, ModelSpec

EXPORT_DIR = "export"
EXPORT_INDEX = "export.json"
#: graph input / output names, shared by the exporter, the backends and the engine builder
INPUT_NAMES = ("lq", "noise")
OUTPUT_NAMES = ("sr", "codes")
#: keys of the metadata embedded in the ONNX file itself (`metadata_props`), so that a loose file
#: can still be checked against an artifact
META_SCHEDULE_HASH = "rsd.schedule_hash"
META_TILE = "rsd.tile"
META_NOISE_CHANNELS = "rsd.noise_channels"
META_DTYPE = "rsd.dtype"
META_MODEL_NAME = "rsd.model_name"


class ExportMismatchError(ArtifactError):
    """An exported ONNX file or engine does not belong to this artifact / runtime."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


_R = TypeVar("_R", bound=_Record)


class ParityRecord(_Record):
    """One backend against torch fp32 on the same tiles and seeds (model_export.verify)."""

    backend: str
    tiles: int
    batch_sizes: list[int]
    #: max |sr - sr_torch_fp32| over the tiles whose VQ codes all agree with torch fp32
    max_abs: float | None
    #: PSNR (peak-to-peak 2, the [-1, 1] range) over all tiles; None when bit-identical
    psnr_db: float | None
    #: fraction of tiles with at least one VQ code different from torch fp32 (quantisation ties)
    code_flip_fraction: float
    #: how it was judged: "max_abs" (<= limit, full precision) or "psnr" (>= limit dB, fp16 / bf16)
    criterion: Literal["max_abs", "psnr"]
    limit: float
    passed: bool


class OnnxRecord(_Record):
    """What `export.json` says about one ONNX file."""

    file: str
    tile: int
    dtype: OnnxDType
    opset: int
    exporter: str
    schedule_hash: str
    model_name: str
    noise_channels: int
    #: the batch size the quantiser's chunking is sized for (any batch runs; larger ones use more memory)
    max_batch: int
    torch_version: str
    export_seconds: float
    parity: dict[str, ParityRecord] = Field(default_factory=dict)


class ExportIndex(_Record):
    format_version: Literal[1] = 1
    files: dict[str, OnnxRecord] = Field(default_factory=dict)


class BatchProfile(_Record):
    """TensorRT optimisation profile over the batch dimension (the only dynamic one)."""

    min: int = Field(default=1, ge=1)
    opt: int = Field(default=4, ge=1)
    max: int = Field(default=8, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> BatchProfile:
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile needs min <= opt <= max, got {self.min}, {self.opt}, {self.max}")
        return self


class RuntimeInfo(_Record):
    """The machine an engine is built on or loaded on."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str


class EngineMeta(_Record):
    """Metadata JSON written beside a TensorRT engine (`<engine>.json`)."""

    format_version: Literal[1] = 1
    engine_file: str
    onnx_file: str
    tile: int
    schedule_hash: str
    model_name: str
    precision: list[Literal["fp32", "fp16", "bf16"]]
    batch_profile: BatchProfile
    workspace_bytes: int
    runtime: RuntimeInfo
    build_seconds: float
    parity: dict[str, ParityRecord] = Field(default_factory=dict)


# -- file layout ------------------------------------------------------------------------------------


def export_dir(model_dir: str | Path) -> Path:
    return Path(model_dir) / EXPORT_DIR


def onnx_file_name(tile: int, dtype: OnnxDType = "fp32") -> str:
    return f"tile{tile}.onnx" if dtype == "fp32" else f"tile{tile}.{dtype}.onnx"


def engine_file_name(tile: int, precision: list[str]) -> str:
    reduced = [p for p in precision if p != "fp32"]
    return f"tile{tile}.{'-'.join(reduced) or 'fp32'}.plan"


def engine_meta_path(engine: str | Path) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def find_export(model_dir: str | Path, name: str, what: str, hint: str, given: str | Path | None = None) -> Path:
    """`given` when the caller names a file itself, else `model_dir/export/name`, or an error listing
    what is there and how to make it."""
    if given is not None:
        return Path(given)
    path = export_dir(model_dir) / name
    if path.is_file():
        return path
    folder = export_dir(model_dir)
    present = sorted(p.name for p in folder.glob("tile*")) if folder.is_dir() else []
    listing = ", ".join(present) if present else "nothing"
    raise ArtifactError(f"{model_dir}: no {what} {EXPORT_DIR}/{name} (found {listing}); make it with: {hint}")


# -- export.json ------------------------------------------------------------------------------------


def _read_record(path: Path, record: type[_R], what: str) -> _R:
    try:
        return record.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ArtifactError(f"{path}: invalid {what}: {str(exc).splitlines()[0]}") from exc


def read_export_index(folder: str | Path) -> ExportIndex:
    """`folder/export.json`, or an empty index when there is none yet."""
    path = Path(folder) / EXPORT_INDEX
    return _read_record(path, ExportIndex, "export index") if path.is_file() else ExportIndex()


def write_export_record(folder: str | Path, record: OnnxRecord) -> Path:
    """Insert or replace `record` (keyed by its file name) in `folder/export.json`."""
    index = read_export_index(folder)
    index.files[record.file] = record
    path = Path(folder) / EXPORT_INDEX
    path.write_text(json.dumps(index.model_dump(mode="json"), indent=2) + "\n")
    return path


def read_engine_meta(engine: str | Path) -> EngineMeta:
    path = engine_meta_path(engine)
    if not path.is_file():
        raise ArtifactError(
            f"{engine}: no metadata file {path.name} beside the engine; rebuild it with `rsd export tensorrt`"
        )
    return _read_record(path, EngineMeta, "engine metadata")


def write_engine_meta(engine: str | Path, meta: EngineMeta) -> Path:
    path = engine_meta_path(engine)
    path.write_text(json.dumps(meta.model_dump(mode="json"), indent=2) + "\n")
    return path


# -- checks -----------------------------------------------------------------------------------------


def check_onnx_metadata(path: str | Path, props: dict[str, str], spec: ModelSpec, tile: int) -> None:
    """Refuse an ONNX file made from another schedule or for another tile (architecture.md invariants 1, 3).

    props: the file's `metadata_props` (onnx) / `custom_metadata_map` (onnxruntime).
    """
    found = props.get(META_SCHEDULE_HASH)
    if found is None:
        raise ExportMismatchError(
            f"{path}: no {META_SCHEDULE_HASH} in its metadata; re-export it with `rsd export onnx`"
        )
    if found != spec.schedule_hash:
        raise ExportMismatchError(
            f"{path}: exported with schedule hash {found}, but the artifact's is {spec.schedule_hash}; "
            "re-export it from this artifact with `rsd export onnx`"
        )
    if props.get(META_TILE) != str(tile):
        raise ExportMismatchError(f"{path}: built for tile {props.get(META_TILE)}, not {tile}")
    expected_noise = spec.graph_noise_channels
    if props.get(META_NOISE_CHANNELS) != str(expected_noise):
        raise ExportMismatchError(
            f"{path}: takes {props.get(META_NOISE_CHANNELS)} noise channels, the artifact needs {expected_noise}"
        )


def check_engine_meta(
    meta: EngineMeta, engine: str | Path, spec: ModelSpec, tile: int, runtime: RuntimeInfo | None
) -> None:
    """Refuse an engine that was not built from this artifact, for this tile, on this kind of machine.

    `runtime` None checks only what needs no GPU (tile, schedule hash); the backend calls it twice,
    before and after importing TensorRT, so the cheap refusals need no TensorRT at all.
    """
    flags = "".join(f" --{p}" for p in meta.precision if p != "fp32")
    rebuild = f"rebuild it on this machine: rsd export tensorrt --onnx {Path(engine).parent / meta.onnx_file}{flags}"
    problems = []
    if meta.tile != tile:
        problems.append(f"it was built for tile {meta.tile}, not {tile}")
    if meta.schedule_hash != spec.schedule_hash:
        problems.append(
            f"its schedule hash {meta.schedule_hash} differs from the artifact's {spec.schedule_hash} "
            f"(re-export the ONNX first: rsd export onnx --model MODEL_DIR --tile {tile})"
        )
    if runtime is not None:
        built = meta.runtime
        if built.tensorrt_version != runtime.tensorrt_version:
            problems.append(f"it was built with TensorRT {built.tensorrt_version}, this is {runtime.tensorrt_version}")
        if built.gpu_name != runtime.gpu_name:
            problems.append(f"it was built on {built.gpu_name!r}, this GPU is {runtime.gpu_name!r}")
        if built.compute_capability != runtime.compute_capability:
            problems.append(
                f"it was built for compute capability {built.compute_capability}, "
                f"this GPU has {runtime.compute_capability}"
            )
    if problems:
        raise ExportMismatchError(f"engine {engine} refused: {'; '.join(problems)}; {rebuild}")
