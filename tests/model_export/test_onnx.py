"""ONNX export and the onnxruntime backend on the tiny artifact (tile 32): shapes, parity, refusals."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from model_export.to_onnx import export_onnx
from model_export.verify import candidate, parity_tiles, verify
from rsd.backends import load_upscaler
from rsd.backends.exported import ExportMismatchError, read_export_index
from rsd.backends.onnxruntime_backend import OnnxRuntimeUpscaler
from rsd.backends.torch_backend import TorchUpscaler
from rsd.spec import ArtifactError, read_spec
from rsd_cli import export as export_cli
from tests.model_export.conftest import CHUNKS, MAX_BATCH, TILE


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_graph_has_fixed_tile_and_dynamic_batch(tiny_dir: Path) -> None:
    model = onnx.load(str(tiny_dir / "export" / "tile32.onnx"))
    inputs = {i.name: _dims(i) for i in model.graph.input}
    outputs = {o.name: _dims(o) for o in model.graph.output}
    noise_channels = read_spec(tiny_dir).graph_noise_channels
    assert noise_channels == 3 + 1  # the tiny student: a 3-channel latent's prior noise + 1 channel xi
    assert list(inputs) == ["lq", "noise"]
    assert isinstance(inputs["lq"][0], str) and inputs["lq"][0] == inputs["noise"][0] == outputs["sr"][0]
    assert inputs["lq"][1:] == [3, TILE, TILE]
    assert inputs["noise"][1:] == [noise_channels, TILE, TILE]
    assert outputs["sr"][1:] == [3, 4 * TILE, 4 * TILE]
    assert outputs["codes"][1:] == [TILE, TILE]
    ops = [node.op_type for node in model.graph.node]
    # Swin shift masks are cached per resolution and trace to constants: nothing builds them at run time
    assert "Range" not in ops and "GreaterOrEqual" not in ops
    assert ops.count("ArgMin") == CHUNKS > 1  # the chunked quantiser, one argmin per chunk
    props = {p.key: p.value for p in model.metadata_props}
    assert props["rsd.schedule_hash"] == read_spec(tiny_dir).schedule_hash
    assert props["rsd.tile"] == str(TILE)


def test_export_record_written_beside_the_file(tiny_dir: Path) -> None:
    record = read_export_index(tiny_dir / "export").files["tile32.onnx"]
    assert record.tile == TILE and record.dtype == "fp32" and record.exporter == "torchscript"
    assert record.schedule_hash == read_spec(tiny_dir).schedule_hash
    assert record.opset == 17 and record.max_batch == MAX_BATCH


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_torch_fp32(tiny_dir: Path, batch: int) -> None:
    lq, seeds = parity_tiles(TILE, 3, seed=5)
    with TorchUpscaler(tiny_dir) as reference:
        ref_sr, ref_codes = reference.run_with_codes(lq[:batch], seeds[:batch])
    ort = load_upscaler(tiny_dir, "onnxruntime", tile=TILE)
    assert isinstance(ort, OnnxRuntimeUpscaler)
    sr, codes = ort.run_with_codes(lq[:batch], seeds[:batch])
    assert sr.shape == (batch, 3, 4 * TILE, 4 * TILE) and sr.dtype == np.float32
    assert codes is not None and ref_codes is not None
    same_codes = (codes == ref_codes).reshape(batch, -1).all(axis=1)
    assert same_codes.any(), "every tile flipped a VQ code: not a tie, a mismatch"
    assert np.abs(sr - ref_sr)[same_codes].max() <= 1e-3


def test_batch_composition_does_not_change_a_tile(tiny_dir: Path) -> None:
    lq, seeds = parity_tiles(TILE, 3, seed=7)
    ort = OnnxRuntimeUpscaler(tiny_dir, TILE)
    together = ort.run(lq, seeds)
    alone = ort.run(lq[2:], seeds[2:])
    swapped = ort.run(lq[::-1].copy(), seeds[::-1])
    np.testing.assert_allclose(together[2:], alone, atol=1e-5)
    np.testing.assert_allclose(together[::-1], swapped, atol=1e-5)
    assert np.abs(together[0] - together[1]).max() > 0.01  # different tiles and seeds, different images


def test_verify_writes_parity_and_fails_above_tolerance(tiny_dir: Path) -> None:
    ok = verify(tiny_dir, TILE, [candidate("onnxruntime-fp32", tiny_dir, TILE)], tiles=2, batch_sizes=[1, 2])
    assert ok[0].passed and ok[0].criterion == "max_abs"
    assert ok[0].max_abs is not None and ok[0].max_abs <= 1e-3
    stored = read_export_index(tiny_dir / "export").files["tile32.onnx"].parity["onnxruntime-fp32"]
    assert stored.batch_sizes == [1, 2] and stored.max_abs == ok[0].max_abs
    strict = verify(
        tiny_dir, TILE, [candidate("onnxruntime-fp32", tiny_dir, TILE)], tiles=2, batch_sizes=[2], tolerance=1e-12
    )
    assert not strict[0].passed


def test_verify_judges_reduced_precision_by_psnr(tiny_dir: Path) -> None:
    (record,) = verify(
        tiny_dir, TILE, [candidate("torch-bf16", tiny_dir, TILE)], tiles=2, batch_sizes=[2], min_psnr=10.0
    )
    assert record.criterion == "psnr" and record.limit == 10.0
    assert record.psnr_db is not None and 10.0 < record.psnr_db < 80.0  # bf16 does change the output


def _copy_with_schedule(src: Path, dst: Path, kappa: float) -> Path:
    shutil.copytree(src, dst)
    spec = json.loads((dst / "spec.json").read_text())
    spec["schedule"]["kappa"] = kappa
    spec["schedule_hash"] = ""  # recomputed from the new schedule
    (dst / "spec.json").write_text(json.dumps(spec))
    return dst


def test_onnx_with_another_schedule_hash_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    other = _copy_with_schedule(tiny_dir, tmp_path / "other", kappa=1.5)
    assert read_spec(other).schedule_hash != read_spec(tiny_dir).schedule_hash
    with pytest.raises(ExportMismatchError, match=r"schedule hash .* re-export"):
        load_upscaler(other, "onnxruntime", tile=TILE)


def test_missing_export_names_the_command(tiny_dir: Path) -> None:
    with pytest.raises(ArtifactError, match=r"rsd export onnx --model .* --tile 64"):
        load_upscaler(tiny_dir, "onnxruntime", tile=64)


def test_wrong_tile_input_is_an_error(tiny_dir: Path) -> None:
    ort = OnnxRuntimeUpscaler(tiny_dir, TILE)
    with pytest.raises(ValueError, match="takes \\(N, 3, 32, 32\\)"):
        ort.run(np.zeros((1, 3, 64, 64), np.float32), [0])
    with pytest.raises(ValueError, match="2 tiles but 1 seeds"):
        ort.run(np.zeros((2, 3, TILE, TILE), np.float32), [0])


def test_export_refuses_a_tile_the_net_cannot_take(tiny_dir: Path) -> None:
    multiple = read_spec(tiny_dir).lr_multiple
    with pytest.raises(ValueError, match=f"tile {multiple + 8} must be a positive multiple of {multiple}"):
        export_onnx(tiny_dir, multiple + 8)


def test_gpu_provider_missing_is_a_clear_error(tiny_dir: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        load_upscaler(tiny_dir, "onnxruntime", device="cuda", tile=TILE)


def test_cli_fp16_export_runs_with_fp32_io_and_is_verified(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    work = shutil.copytree(tiny_dir, tmp_path / "fp16")
    args = _export_cli("--model", str(work), "--tile", str(TILE), "--dtype", "fp16")
    assert args.handler(args) == 0
    assert "onnxruntime-fp16" in capsys.readouterr().out
    model = onnx.load(str(work / "export" / "tile32.fp16.onnx"))
    assert {i.type.tensor_type.elem_type for i in model.graph.input} == {onnx.TensorProto.FLOAT}
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    parity = read_export_index(work / "export").files["tile32.fp16.onnx"].parity["onnxruntime-fp16"]
    assert parity.criterion == "psnr" and parity.passed and parity.batch_sizes == [1, 3]


def _export_cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rsd")
    export_cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["export", "onnx", *argv])


def test_cli_export_outside_the_artifact_is_verified_too(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "elsewhere" / "model.onnx"
    args = _export_cli("--model", str(tiny_dir), "--tile", str(TILE), "--out", str(out))
    assert args.handler(args) == 0
    assert "onnxruntime-fp32" in capsys.readouterr().out
    parity = read_export_index(out.parent).files["model.onnx"].parity["onnxruntime-fp32"]
    assert parity.criterion == "max_abs" and parity.passed and parity.batch_sizes == [1, 3]


def test_cli_export_without_verify_says_so(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "unchecked.onnx"
    args = _export_cli("--model", str(tiny_dir), "--tile", str(TILE), "--out", str(out), "--no-verify")
    assert args.handler(args) == 0
    assert "parity not checked (--no-verify)" in capsys.readouterr().out
    assert read_export_index(tmp_path).files["unchecked.onnx"].parity == {}


def test_bundled_layout_exports_and_matches_torch(tmp_path: Path) -> None:
    """8 continuous latent channels, no VQ attention, the LR-consistency step: one graph, same numbers;
    no quantiser runs, so the codes output is all zeros on both sides."""
    from tests.factories import make_tiny_artifact

    directory = make_tiny_artifact(tmp_path, teacher=True, continuous=True)
    export_onnx(directory, 16)
    lq, seeds = parity_tiles(16, 2, seed=1)
    with TorchUpscaler(directory) as reference:
        ref_sr, ref_codes = reference.run_with_codes(lq, seeds)
    sr, codes = load_upscaler(directory, "onnxruntime", tile=16).run_with_codes(lq, seeds)  # type: ignore[attr-defined]
    assert codes is not None and ref_codes is not None and not codes.any() and not ref_codes.any()
    assert codes.shape == (2, 16, 16)
    assert np.abs(sr - ref_sr).max() <= 1e-4


@pytest.mark.slow
def test_dynamo_exporter_is_exact_too(tiny_dir: Path, tmp_path: Path) -> None:
    work = shutil.copytree(tiny_dir, tmp_path / "dynamo")
    export_onnx(work, TILE, exporter="dynamo")
    (parity,) = verify(work, TILE, [candidate("onnxruntime-fp32", work, TILE)])
    assert parity.passed, parity
