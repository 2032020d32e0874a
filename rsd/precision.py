"""The one rule that turns a requested dtype (`auto` or explicit) into the dtype a backend runs.

`auto` (the default of `RSD_DTYPE` and `rsd upscale --dtype`) picks the fastest dtype that the backend
supports on the device at hand and that is safe for the model:

- torch on CPU: bf16 where the CPU has native bf16 arithmetic (x86: `amx_bf16` / `amx_tile` or
  `avx512_bf16` in /proc/cpuinfo; elsewhere torch's own mkldnn bf16 query), fp32 otherwise. Without
  native bf16, oneDNN emulates it and bf16 is slower than fp32. The bundled model's bf16-vs-fp32 PSNR
  is in its model card (models/rsd-tiny/MODEL_CARD.md).
- torch on CUDA: bf16 on compute capability 8.0 and later (tensor cores run bf16 as fast as fp16, and
  bf16 has fp32's exponent range, so no activation can overflow as in fp16); fp16 before 8.0, where
  bf16 has no tensor-core path.
- onnxruntime: fp32, the export every artifact can have (onnxruntime has no bf16 kernels on CPU, and
  an fp16 export is a separate file made by `rsd export onnx --dtype fp16`).
- TensorRT: fp16, the engine `rsd export tensorrt --fp16` builds.

A seed gives one image per (backend, dtype): results are byte-identical only at the same resolved dtype.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from rsd.kinds import DTYPE_CHOICES, DTYPES, DType, DTypeChoice

#: /proc/cpuinfo flags of native bf16 arithmetic, best first (AMX tiles, then AVX-512 BF16 dot products)
BF16_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16")
_X86 = {"x86_64", "amd64", "i386", "i686"}
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Precision:
    """A resolved dtype, what was asked for, and why this dtype."""

    dtype: DType
    requested: DTypeChoice
    #: the flag or capability behind an `auto` choice; "requested" for an explicit dtype
    reason: str = "requested"

    def describe(self) -> str:
        """The start-up log line: `dtype auto -> bf16 (avx512_bf16)` or `dtype fp32 (requested)`."""
        if self.requested == "auto":
            return f"dtype auto -> {self.dtype} ({self.reason})"
        return f"dtype {self.dtype} ({self.reason})"


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The union of the `flags` lines of a /proc/cpuinfo text (x86 Linux)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return frozenset(flags)


@cache
def _read_cpuinfo() -> str | None:
    try:
        return CPUINFO.read_text(errors="replace")
    except OSError:
        return None


def _torch_cpu_bf16() -> bool:
    """torch's own query (oneDNN), for CPUs whose flags we do not read (ARM, macOS, Windows)."""
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (ImportError, AttributeError, RuntimeError):
        return False


def cpu_native_bf16(cpuinfo: str | None = None, machine: str | None = None) -> str | None:
    """Why this CPU runs bf16 natively (the flag, or torch's query), or None when it does not.

    On x86 only the cpuinfo flags count: torch's query is also true for plain AVX-512, where oneDNN
    emulates bf16 more slowly than fp32. `cpuinfo` / `machine` default to this host's (tests pass fakes).
    """
    machine = (machine or platform.machine()).lower()
    text = cpuinfo if cpuinfo is not None else _read_cpuinfo()
    if machine in _X86 and text is not None:
        flags = cpu_flags(text)
        return next((flag for flag in BF16_FLAGS if flag in flags), None)
    return "torch mkldnn reports native bf16" if _torch_cpu_bf16() else None


def _cuda_capability(device: str) -> tuple[int, int] | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]
    except (ImportError, RuntimeError, AssertionError):
        return None


def resolve_dtype(
    requested: str,
    backend: str = "torch",
    device: str = "cpu",
    *,
    cpuinfo: str | None = None,
    machine: str | None = None,
    cuda_capability: tuple[int, int] | None = None,
) -> Precision:
    """The dtype `backend` runs on `device` for `requested` (module docstring). Explicit dtypes pass
    through (the backend rejects what it cannot run); `cpuinfo`, `machine` and `cuda_capability` stand
    in for this host's in tests."""
    if requested not in DTYPE_CHOICES:
        raise ValueError(f"dtype {requested!r} is not one of {', '.join(DTYPE_CHOICES)}")
    if requested != "auto":
        return Precision(requested, requested)  # type: ignore[arg-type]
    on_cuda = device.startswith("cuda")
    match backend:
        case "onnxruntime":
            return Precision("fp32", "auto", "onnxruntime runs the fp32 export: no bf16, fp16 is an extra export")
        case "tensorrt":
            return Precision("fp16", "auto", "TensorRT runs the fp16 engine of rsd export tensorrt --fp16")
    if on_cuda:
        capability = cuda_capability if cuda_capability is not None else _cuda_capability(device)
        if capability is None:
            return Precision("fp32", "auto", f"{device} is not available to torch")
        major, minor = capability
        if capability >= (8, 0):
            return Precision("bf16", "auto", f"compute capability {major}.{minor}: bf16 tensor cores, fp32 range")
        return Precision("fp16", "auto", f"compute capability {major}.{minor}: no bf16 tensor cores")
    native = cpu_native_bf16(cpuinfo, machine)
    if native is None:
        return Precision("fp32", "auto", "no native bf16 on this CPU (avx512_bf16 / amx)")
    return Precision("bf16", "auto", native)


def dtype_in_name(name: str) -> DType | None:
    """The dtype in an Upscaler's `name` (`torch-cpu-bf16`, `onnxruntime-cpu-fp32`, `tensorrt-fp16`):
    what a worker reports in its heartbeat, read from the loaded backend itself."""
    return next((part for part in name.split("-") if part in DTYPES), None)  # type: ignore[misc]
