"""Model loading for the worker (serving.md "Worker loop"): the one place the service turns settings
into an Upscaler. Imported only where a model runs (the worker process, the embedded mode)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from service.settings import ServiceSettings

if TYPE_CHECKING:
    from rsd.backends.base import Upscaler

log = logging.getLogger(__name__)


def load_model(settings: ServiceSettings, model_dir: Path | None = None) -> Upscaler:
    """The Upscaler of `model_dir` (default: the settings' default model) on the settings' backend."""
    from rsd.backends import load_upscaler
    from rsd.precision import resolve_dtype

    if settings.torch_threads is not None and settings.backend == "torch":
        import torch

        torch.set_num_threads(settings.torch_threads)

    precision = resolve_dtype(settings.dtype, settings.backend, settings.device)  # one line names it and why
    model_dir = model_dir or next(iter(settings.model_dirs.values()))
    log.info("loading %s (%s, %s), %s", model_dir, settings.backend, settings.device, precision.describe())
    return load_upscaler(model_dir, settings.backend, settings.device, precision.dtype)
