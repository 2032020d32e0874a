"""Reading published-style checkpoints (method.md 6): wrappers, prefixes, strictness, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rsd.official import convert_family, read_checkpoint
from rsd.onestep import OneStepSR
from rsd.spec import ArtifactError
from tests.factories import golden_artifact
from tests.golden import golden_configs, load_npz


def _save(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def published(ref_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """Golden weights saved the way the published files are laid out (method.md 6)."""
    d = tmp_path_factory.mktemp("published")
    student, _ = load_npz(ref_dir / "unet_swin_small_student.npz")
    teacher, _ = load_npz(ref_dir / "unet_swin_small.npz")
    vq, _ = load_npz(ref_dir / "vq_f4_small.npz")
    # Student as saved from a DDP-wrapped EMA: `module.` prefixes, Swin buffers dropped (regenerated).
    ddp_student = {f"module.{k}": v for k, v in student.items() if "attn_mask" not in k}
    return {
        "student": _save(d / "ema_model.pth", ddp_student),
        "teacher": _save(d / "teacher.pth", {"state_dict": {f"_orig_mod.{k}": v for k, v in teacher.items()}}),
        "vq": _save(d / "vq.pth", vq),
    }


def _convert(ref_dir: Path, published: dict[str, Path], out: Path, **files: Path) -> Path:
    teacher_cfg, _, vq_cfg = golden_configs(ref_dir)
    kwargs = {
        "student": published["student"],
        "autoencoder": published["vq"],
        "teacher": published["teacher"],
    }
    kwargs.update(files)
    return convert_family(
        "rsd",
        kwargs["student"],
        kwargs["autoencoder"],
        out,
        teacher=kwargs["teacher"],
        tiles=(64,),
        unet_config=teacher_cfg,
        vq_config=vq_cfg,
    )


def test_read_checkpoint_unwraps_and_strips(published):
    state = read_checkpoint(published["teacher"])
    assert "input_blocks.0.0.weight" in state
    assert not any(k.startswith(("module.", "_orig_mod.", "state_dict")) for k in state)


def test_conversion_reproduces_the_golden_model_exactly(ref_dir, published, tmp_path):
    converted = _convert(ref_dir, published, tmp_path / "converted")
    reference = golden_artifact(ref_dir, tmp_path / "reference")
    spec = json.loads((converted / "spec.json").read_text())
    assert spec["student"]["noise_channels"] == 1 and spec["teacher"]["noise_channels"] == 0
    a, b = OneStepSR.from_artifact(converted), OneStepSR.from_artifact(reference)
    lq = torch.rand(1, 3, 64, 64) * 2 - 1
    noise = torch.randn(1, a.noise_channels, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(lq, noise), b(lq, noise))
    # regenerated buffers equal the stored reference ones
    golden_student, _ = load_npz(ref_dir / "unet_swin_small_student.npz")
    state = a.denoiser.net.state_dict()
    masks = [k for k in golden_student if "attn_mask" in k]
    assert masks and all(torch.equal(state[k], golden_student[k]) for k in masks)


def test_teacher_given_as_student_is_refused(ref_dir, published, tmp_path):
    with pytest.raises(ArtifactError, match=r"teacher .*checkpoint.*--teacher"):
        _convert(ref_dir, published, tmp_path / "x", student=published["teacher"])
    assert not (tmp_path / "x").exists()


def test_student_given_as_teacher_and_vq_as_unet_are_refused(ref_dir, published, tmp_path):
    with pytest.raises(ArtifactError, match="student checkpoint, not the teacher"):
        _convert(ref_dir, published, tmp_path / "x", teacher=published["student"])
    with pytest.raises(ArtifactError, match="not a UNet checkpoint"):
        _convert(ref_dir, published, tmp_path / "x", student=published["vq"])
    with pytest.raises(ArtifactError, match="UNet checkpoint, not the VQ-f4"):
        _convert(ref_dir, published, tmp_path / "x", autoencoder=published["teacher"])
    assert not (tmp_path / "x").exists()


def test_wrong_shape_names_key_and_both_shapes(ref_dir, published, tmp_path):
    vq = read_checkpoint(published["vq"])
    vq["quantize.embedding.weight"] = torch.zeros(100, 3)
    bad = _save(tmp_path / "bad_vq.pth", vq)
    with pytest.raises(
        ArtifactError, match=r"quantize\.embedding\.weight: expected shape \[256, 3\], found \[100, 3\]"
    ):
        _convert(ref_dir, published, tmp_path / "x", autoencoder=bad)


def test_missing_keys_truncated_and_non_checkpoint_files(ref_dir, published, tmp_path):
    vq = read_checkpoint(published["vq"])
    del vq["decoder.conv_out.weight"]
    with pytest.raises(ArtifactError, match="1 missing and 0 unexpected keys"):
        _convert(ref_dir, published, tmp_path / "x", autoencoder=_save(tmp_path / "partial.pth", vq))
    data = published["vq"].read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(truncated)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(ArtifactError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(text)
    with pytest.raises(ArtifactError, match="no such file"):
        read_checkpoint(tmp_path / "absent.pth")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "x": _Payload()}, path)
    with pytest.raises(ArtifactError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(path)
    assert "this must never run" not in capsys.readouterr().out
