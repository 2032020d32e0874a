"""ONNX tile graph -> TensorRT engine, with the metadata that lets the backend refuse a wrong engine.

Written against the TensorRT 10 Python API: `trt.Builder`, `create_network(0)` (explicit batch is the
only mode), `trt.OnnxParser.parse_from_file`, `IBuilderConfig.set_memory_pool_limit(WORKSPACE, ...)`,
one optimisation profile over the batch (`create_optimization_profile` / `set_shape` per input,
`add_optimization_profile`), an on-disk timing cache (`create_timing_cache` / `set_timing_cache`, saved
after the build), `BuilderFlag.FP16` / `BuilderFlag.BF16`, `build_serialized_network` (None on failure).
TensorRT is imported inside `build_engine` only; everything else here is testable without it.

The precision flags only allow reduced precision inside the network: its inputs and outputs keep the
ONNX file's types (float32 from `rsd export onnx`), which the backend reads from the engine. The build
runs on the current CUDA device, which `runtime_info` makes `--device` before the builder exists.

The engine is written beside the ONNX file (`tile64.fp16.plan`) with its metadata (`tile64.fp16.plan.json`:
TensorRT version, GPU name, compute capability, tile, schedule hash, batch profile). Engines are specific
to the GPU model and TensorRT version they were built with; the backend checks both.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rsd.backends.exported import (
    INPUT_NAMES,
    META_NOISE_CHANNELS,
    META_SCHEDULE_HASH,
    META_TILE,
    BatchProfile,
    EngineMeta,
    engine_file_name,
    write_engine_meta,
)
from rsd.backends.tensorrt_backend import import_tensorrt, runtime_info, trt_logger
from rsd.kinds import DType

Precision = DType  # the engine precisions are the backends' dtypes


class EngineBuild(BaseModel):
    """Everything `rsd export tensorrt` decides (validated before TensorRT is touched)."""

    model_config = ConfigDict(extra="forbid")

    onnx: Path
    out: Path | None = None
    fp16: bool = False
    bf16: bool = False
    batch: BatchProfile = Field(default_factory=BatchProfile)
    workspace_gib: float = Field(default=4.0, gt=0)
    timing_cache: Path | None = None
    device: str = "cuda"

    @property
    def precision(self) -> list[Precision]:
        chosen: list[Precision] = []
        if self.fp16:
            chosen.append("fp16")
        if self.bf16:
            chosen.append("bf16")
        return chosen or ["fp32"]

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gib * 2**30)


class OnnxFacts(BaseModel):
    """What the builder needs to know about the ONNX file (from its embedded metadata)."""

    model_config = ConfigDict(extra="forbid")

    tile: int
    schedule_hash: str
    noise_channels: int
    model_name: str


def read_onnx_facts(path: Path) -> OnnxFacts:
    """Tile, schedule hash and noise channels stamped into the file by `rsd export onnx`."""
    import onnx

    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file {path}; make it with `rsd export onnx`")
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    missing = [k for k in (META_SCHEDULE_HASH, META_TILE, META_NOISE_CHANNELS) if k not in props]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)} in its metadata: not made by `rsd export onnx`")
    return OnnxFacts(
        tile=int(props[META_TILE]),
        schedule_hash=props[META_SCHEDULE_HASH],
        noise_channels=int(props[META_NOISE_CHANNELS]),
        model_name=props.get("rsd.model_name", ""),
    )


def profile_shapes(facts: OnnxFacts, batch: BatchProfile) -> dict[str, tuple[tuple[int, ...], ...]]:
    """{input: (min, opt, max) shapes}: only the batch varies (architecture.md invariant 3)."""
    channels = {INPUT_NAMES[0]: 3, INPUT_NAMES[1]: facts.noise_channels}
    return {
        name: tuple((n, c, facts.tile, facts.tile) for n in (batch.min, batch.opt, batch.max))
        for name, c in channels.items()
    }


def engine_path(build: EngineBuild, facts: OnnxFacts) -> Path:
    return (
        build.out
        if build.out is not None
        else build.onnx.with_name(engine_file_name(facts.tile, list(build.precision)))
    )


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    network = builder.create_network(0)  # TensorRT 10: explicit batch is implied
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    # keep the parser alive as long as the network (it owns the weights it parsed)
    return network, parser


def _configure(trt: Any, builder: Any, build: EngineBuild, facts: OnnxFacts) -> tuple[Any, Any]:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, build.workspace_bytes)
    for precision in build.precision:
        if precision != "fp32":
            config.set_flag(builder_flag(trt, precision))
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes(facts, build.batch).items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    cached = build.timing_cache.read_bytes() if build.timing_cache and build.timing_cache.is_file() else b""
    cache = config.create_timing_cache(cached)
    if cache is None:
        raise RuntimeError(f"TensorRT could not read the timing cache {build.timing_cache}; delete it")
    # ignore_mismatch=False: a cache from another GPU or TensorRT version is refused (False), not used
    if config.set_timing_cache(cache, False) is False:
        raise RuntimeError(
            f"the timing cache {build.timing_cache} was made on another GPU or TensorRT version; "
            "delete it or name another --timing-cache"
        )
    return config, cache


def builder_flag(trt: Any, precision: str) -> Any:
    """`trt.BuilderFlag.FP16` / `BF16` for "fp16" / "bf16", or an error naming the flag and the version."""
    flag = getattr(trt.BuilderFlag, precision.upper(), None)
    if flag is None:
        raise RuntimeError(
            f"TensorRT {getattr(trt, '__version__', '?')} has no BuilderFlag.{precision.upper()}, so it "
            f"cannot build {precision} engines; install a TensorRT that has it, or leave out --{precision}"
        )
    return flag


def build_engine(build: EngineBuild) -> tuple[Path, EngineMeta]:
    """Build and write the engine and its metadata JSON. Needs TensorRT and a CUDA GPU."""
    facts = read_onnx_facts(build.onnx)
    trt = import_tensorrt()
    runtime = runtime_info(trt, build.device)  # also makes build.device current: the builder works there
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, build.onnx)
    config, cache = _configure(trt, builder, build, facts)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {build.onnx} (see the log above)")
    seconds = time.perf_counter() - start
    out = engine_path(build, facts)
    out.write_bytes(bytes(serialized))
    if build.timing_cache is not None:
        build.timing_cache.write_bytes(bytes(cache.serialize()))
    meta = EngineMeta(
        engine_file=out.name,
        onnx_file=build.onnx.name,
        tile=facts.tile,
        schedule_hash=facts.schedule_hash,
        model_name=facts.model_name,
        precision=list(build.precision),
        batch_profile=build.batch,
        workspace_bytes=build.workspace_bytes,
        runtime=runtime,
        build_seconds=round(seconds, 1),
    )
    write_engine_meta(out, meta)
    return out, meta
