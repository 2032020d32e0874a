"""Fixtures for the export tests: one tiny artifact (with teacher) exported once per session at tile 32."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_export.to_onnx import export_onnx
from tests.factories import make_tiny_artifact

TILE = 32
MAX_BATCH = 1024
#: 64 MiB / 1024 = 64 KiB per chunk and sample; a position costs 64 codes x 4 bytes -> 256 positions a chunk
CHUNKS = TILE * TILE // (64 * 2**20 // MAX_BATCH // (64 * 4))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random artifact with `export/tile32.onnx` (fp32, TorchScript exporter).

    max_batch 1024 sizes the quantiser chunks at 256 of the 1024 latent positions, so the graph holds
    several chunks (CHUNKS), as the official config's does.
    """
    directory = make_tiny_artifact(tmp_path_factory.mktemp("tiny_export"), teacher=True)
    export_onnx(directory, TILE, max_batch=MAX_BATCH)
    return directory
