"""The names the project's choices take, spelled once: output formats, backends, dtypes, the bundled
model, and the positive-int rule the validators share.

Imports nothing heavy (no torch, numpy or Pillow) so that every process, the light API included,
reads its choices from here; argparse `choices=` and pydantic `Literal` fields both use these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

#: encoded output formats (rsd.imagefile.encode_image)
OutputFormat = Literal["png", "jpeg", "webp"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = get_args(OutputFormat)
#: file suffix -> output format (case-insensitive match on the lowered suffix)
SUFFIX_FORMATS: dict[str, OutputFormat] = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
#: output format -> the suffix written when the CLI names output files itself
FORMAT_SUFFIXES: dict[OutputFormat, str] = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
#: output format -> its media type (the service's Content-Type)
MEDIA_TYPES: dict[OutputFormat, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

#: the backends `rsd.backends.load_upscaler` builds (architecture.md invariant 4)
BackendKind = Literal["torch", "onnxruntime", "tensorrt"]
BACKENDS: tuple[BackendKind, ...] = get_args(BackendKind)
#: compute precisions a backend may run in
DType = Literal["fp32", "fp16", "bf16"]
DTYPES: tuple[DType, ...] = get_args(DType)
#: what a user may ask for: a dtype, or "auto" (resolved by rsd.precision.resolve_dtype)
DTypeChoice = Literal["auto", "fp32", "fp16", "bf16"]
DTYPE_CHOICES: tuple[DTypeChoice, ...] = get_args(DTypeChoice)
#: the precisions an ONNX export is written in (bf16 exists only as a TensorRT engine precision)
OnnxDType = Literal["fp32", "fp16"]
ONNX_DTYPES: tuple[OnnxDType, ...] = get_args(OnnxDType)

#: the model shipped with the repository (models/rsd-tiny): the CLI's and the service's default
BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "models" / "rsd-tiny"


def is_positive_int(value: object, integer_types: tuple[type, ...] = (int,)) -> bool:
    """`value` is an int >= 1; bools are not ints here. `integer_types` widens what counts as an int
    (rsd.noise also takes numpy integers)."""
    return not isinstance(value, bool) and isinstance(value, integer_types) and value >= 1  # type: ignore[operator]


def check_positive_int(name: str, value: object, *, integer_types: tuple[type, ...] = (int,)) -> None:
    """Raise ValueError naming `name` unless `value` is a positive int (`is_positive_int`)."""
    if not is_positive_int(value, integer_types):
        raise ValueError(f"{name} must be a positive int, got {value!r}")
