"""The official x4 configuration (random weights) exports to ONNX and matches torch fp32 (slow: minutes on CPU)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from model_export.random_artifact import write_random_artifact
from model_export.to_onnx import export_onnx
from model_export.verify import candidate, verify
from rsd.backends.exported import read_export_index


@pytest.mark.slow
def test_official_config_onnx_matches_torch_at_batch_1_and_3(tmp_path: Path) -> None:
    model_dir = write_random_artifact(tmp_path / "official", teacher=False)
    path, record = export_onnx(model_dir, 64, max_batch=4)
    assert path.stat().st_size > 600e6  # ~174 M fp32 parameters
    dims = [
        d.dim_param or d.dim_value
        for d in onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    ]
    assert isinstance(dims[0], str) and dims[1:] == [3, 64, 64]
    (parity,) = verify(model_dir, 64, [candidate("onnxruntime-fp32", model_dir, 64)], tiles=3, batch_sizes=[1, 3])
    print(f"official tile 64: export {record.export_seconds:.0f} s; {parity}")
    assert parity.passed, parity
    assert parity.code_flip_fraction < 1.0
    assert read_export_index(path.parent).files[path.name].parity["onnxruntime-fp32"].max_abs == parity.max_abs
