"""`rsd upscale` / `rsd convert-official` from the command line: outputs and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsd_cli.main import main
from tests.factories import make_tiny_artifact

RSD = [sys.executable, "-m", "rsd_cli.main"]


def _rgba_png(path: Path, width: int, height: int) -> Path:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    rgba[..., 3] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]  # a horizontal alpha ramp
    Image.fromarray(rgba, "RGBA").save(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_artifact(tmp_path_factory.mktemp("tiny"))


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_upscale_rgba_png_end_to_end(tmp_path, tiny):
    src = _rgba_png(tmp_path / "in.png", 70, 45)
    out = tmp_path / "out.png"
    proc = subprocess.run(
        [*RSD, "upscale", str(src), "-o", str(out), "--model", str(tiny), "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as im:
        assert im.size == (280, 180) and im.mode == "RGBA"
        alpha = np.asarray(im)[..., 3]
    # the alpha ramp survives resampling: monotone along x, close to the source at the ends
    assert alpha[:, 4].mean() < 20 and alpha[:, -4].mean() > 235
    assert np.all(np.diff(alpha[90].astype(int)) >= -2)


def test_same_seed_same_bytes_different_seed_differs(tmp_path, tiny, capsys):
    src = _rgba_png(tmp_path / "in.png", 40, 30)
    outs = []
    for seed, name in [(1, "a.png"), (1, "b.png"), (2, "c.png")]:
        code, _, err = _run(
            capsys, "upscale", str(src), "-o", str(tmp_path / name), "--model", str(tiny), "--seed", str(seed)
        )
        assert code == 0, err
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_several_inputs_into_a_folder(tmp_path, tiny, capsys):
    a = _rgba_png(tmp_path / "a.png", 20, 20)
    b = tmp_path / "b.jpg"
    Image.new("L", (24, 16), 128).save(b)
    code, _out, err = _run(capsys, "upscale", str(a), str(b), "-o", str(tmp_path / "out"), "--model", str(tiny))
    assert code == 0, err
    with Image.open(tmp_path / "out" / "a_x4.png") as im:
        assert im.size == (80, 80) and im.mode == "RGBA"
    with Image.open(tmp_path / "out" / "b_x4.png") as im:
        assert im.size == (96, 64) and im.mode == "L"  # grayscale in, grayscale out


@pytest.mark.parametrize("case", ["text", "zero_bytes", "truncated_png"])
def test_bad_images_one_line_error_nothing_written(tmp_path, tiny, capsys, case):
    bad = tmp_path / f"{case}.png"
    if case == "text":
        bad.write_text("this is not an image\n")
    elif case == "zero_bytes":
        bad.write_bytes(b"")
    else:
        _rgba_png(bad, 30, 30)
        bad.write_bytes(bad.read_bytes()[:-40])
    out = tmp_path / "out.png"
    code, _, err = _run(capsys, "upscale", str(bad), "-o", str(out), "--model", str(tiny))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("rsd upscale: error:") and "Traceback" not in err
    assert not out.exists()


def test_bad_model_dirs_one_line_error_nothing_written(tmp_path, tiny, capsys):
    src = _rgba_png(tmp_path / "in.png", 20, 20)
    out = tmp_path / "out.png"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "spec.json").write_text((tiny / "spec.json").read_text())
    data = (tiny / "weights.safetensors").read_bytes()
    (broken / "weights.safetensors").write_bytes(data[: len(data) // 3])
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    spec = json.loads((tiny / "spec.json").read_text())
    spec["student"]["model_channels"] = 64  # weights no longer fit the declared net
    (wrong / "spec.json").write_text(json.dumps(spec))
    (wrong / "weights.safetensors").write_bytes(data)
    for model, message in [
        (broken, "unreadable weights"),
        (wrong, "do not match the spec"),
        (tmp_path / "absent", "not a model artifact"),
    ]:
        code, _, err = _run(capsys, "upscale", str(src), "-o", str(out), "--model", str(model))
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not out.exists()


def test_convert_official_refuses_teacher_as_student(tmp_path, capsys):
    teacher_like = {"input_blocks.0.0.weight": torch.zeros(160, 6, 3, 3)}
    torch.save(teacher_like, tmp_path / "t.pth")
    torch.save({"quantize.embedding.weight": torch.zeros(8192, 3)}, tmp_path / "vq.pth")
    code, _, err = _run(
        capsys,
        "convert-official",
        "--student",
        str(tmp_path / "t.pth"),
        "--autoencoder",
        str(tmp_path / "vq.pth"),
        "--out",
        str(tmp_path / "art"),
    )
    assert code == 2 and "teacher" in err and err.count("\n") == 1
    assert not (tmp_path / "art").exists()


@pytest.mark.slow
def test_full_size_published_layout_converts_and_upscales(ref_dir, tmp_path):
    """Synthetic files shaped like the published ones (from the manifests), full size."""
    manifest = json.loads((ref_dir / "unet_swin_x4_manifest.json").read_text())
    vq_manifest = json.loads((ref_dir / "vq_f4_manifest.json").read_text())
    gen = torch.Generator().manual_seed(0)

    def synth(entries: list[dict], prefix: str = "") -> dict[str, torch.Tensor]:
        out = {}
        for e in entries:
            if e["kind"] == "buffer":
                continue  # regenerated by the converter (deterministic)
            out[prefix + e["key"]] = torch.randn(e["shape"], generator=gen) * 0.02
        return out

    torch.save(synth(manifest["rsd_student"]["state_dict"], "module."), tmp_path / "ema_model_2800.pth")
    torch.save(synth(vq_manifest["state_dict"]), tmp_path / "autoencoder_vq_f4.pth")
    art = tmp_path / "official"
    proc = subprocess.run(
        [
            *RSD,
            "convert-official",
            "--student",
            str(tmp_path / "ema_model_2800.pth"),
            "--autoencoder",
            str(tmp_path / "autoencoder_vq_f4.pth"),
            "--out",
            str(art),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    src = _rgba_png(tmp_path / "in.png", 70, 45)
    proc = subprocess.run(
        [*RSD, "upscale", str(src), "-o", str(tmp_path / "out.png"), "--model", str(art)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    with Image.open(tmp_path / "out.png") as im:
        assert im.size == (280, 180) and im.mode == "RGBA"
