"""rsd: one-step residual-shifting diffusion x4 super-resolution (the model core).

The public names are loaded lazily so that light consumers (the HTTP API process, which must not
import torch) can use the numpy/Pillow leaves `rsd.imagefile`, `rsd.imageops` and `rsd.noise`
without paying for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from rsd.artifact import load_artifact, save_artifact
    from rsd.backends import Upscaler, load_upscaler
    from rsd.onestep import OneStepSR
    from rsd.pipeline import upscale_array
    from rsd.spec import ModelSpec

_LAZY = {
    "OneStepSR": "rsd.onestep",
    "ModelSpec": "rsd.spec",
    "load_artifact": "rsd.artifact",
    "save_artifact": "rsd.artifact",
    "Upscaler": "rsd.backends",
    "load_upscaler": "rsd.backends",
    "upscale_array": "rsd.pipeline",
}

__all__ = [
    "ModelSpec",
    "OneStepSR",
    "Upscaler",
    "__version__",
    "load_artifact",
    "load_upscaler",
    "save_artifact",
    "upscale_array",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rsd' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
