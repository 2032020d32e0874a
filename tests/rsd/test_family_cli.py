"""Every family through `rsd convert-official --family` and `rsd upscale` (issue 15 bars 2 and 5, CLI half).

Synthetic published files: the small golden nets (their shapes are the manifests' at the small config)
saved in each published layout under the family's published file name.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsd.family import FAMILY_NAMES, get_family
from rsd.official import read_checkpoint
from rsd.spec import read_spec
from rsd_cli.main import main
from tests.golden import LAYOUTS, golden_configs, load_npz, save_published
from tests.rsd.test_cli import _rgba_png

#: one layout per family, so that every layout is read by a conversion
FAMILY_LAYOUT = dict(zip(FAMILY_NAMES, LAYOUTS, strict=True))


@pytest.fixture(scope="module")
def vq_file(ref_dir: Path, tmp_path_factory) -> Path:
    state, _ = load_npz(ref_dir / "vq_f4_small.npz")
    path = tmp_path_factory.mktemp("vq") / "autoencoder_vq_f4.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def config_args(ref_dir: Path, tmp_path_factory) -> list[str]:
    """The small golden configs as `--unet-config/--vq-config` files (the CLI defaults to the official ones)."""
    teacher_cfg, _, vq_cfg = golden_configs(ref_dir)
    base = tmp_path_factory.mktemp("configs")
    (base / "unet.json").write_text(teacher_cfg.model_dump_json())
    (base / "vq.json").write_text(vq_cfg.model_dump_json())
    return ["--unet-config", str(base / "unet.json"), "--vq-config", str(base / "vq.json")]


@pytest.fixture(scope="module")
def converted(ref_dir: Path, vq_file: Path, config_args: list[str], tmp_path_factory) -> dict[str, Path]:
    """Each family converted through the CLI from its published-layout file."""
    base = tmp_path_factory.mktemp("families")
    out = {}
    for family, layout in FAMILY_LAYOUT.items():
        weights = save_published(ref_dir, base / f"{family}-files", family, layout)
        target = base / family
        assert _cli("convert-official", "--family", family, "--weights", str(weights), "--autoencoder",
                    str(vq_file), "--out", str(target), *config_args) == 0  # fmt: skip
        out[family] = target
    return out


def _cli(*argv: str) -> int:
    return main(list(argv))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_each_family_converts_and_upscales_rgba(converted, family, tmp_path, capsys):
    spec = read_spec(converted[family])
    row = get_family(family)
    assert spec.family == family and spec.sampler.steps == row.steps and spec.schedule == row.schedule
    assert spec.provenance["weights"] == row.files[0] and "non-commercial" in spec.provenance["licence"]
    src = _rgba_png(tmp_path / "in.png", 70, 45)
    outs = []
    for name in ("a.png", "b.png"):
        assert _cli("upscale", str(src), "-o", str(tmp_path / name), "--model", str(converted[family]),
                    "--seed", "7") == 0  # fmt: skip
        with Image.open(tmp_path / name) as im:
            assert im.size == (280, 180) and im.mode == "RGBA"
            outs.append(np.asarray(im))
    assert np.array_equal(outs[0], outs[1])  # a function of (image, seed)
    assert outs[0][..., :3].std() > 5  # a picture, not a constant
    assert "(280x180)" in capsys.readouterr().out


def test_every_layout_reads_the_same_state(ref_dir, tmp_path):
    states = [read_checkpoint(save_published(ref_dir, tmp_path / layout, "sinsr", layout)) for layout in LAYOUTS]
    bare = states[LAYOUTS.index("bare")]
    for state in states:
        assert all(torch.equal(state[k], bare[k]) for k in state) and set(bare) >= set(state)


@pytest.mark.parametrize(
    ("file_family", "named", "hint"),
    [
        ("rsd", "sinsr", "7 input channels: this is an RSD student checkpoint, not SinSR.*fit --family rsd"),
        ("rsd", "resshift-s4", "fit --family rsd"),
        ("sinsr", "rsd", "6 input channels.*fit --family sinsr or resshift-s15 or resshift-s4.*--teacher"),
        ("sinsr", "resshift-s4", "the published sinsr checkpoint, not resshift-s4; use --family sinsr"),
        ("resshift-s4", "resshift-s15", "published resshift-s4 checkpoint.*use --family resshift-s4"),
    ],
)
def test_wrong_family_is_refused_with_the_fitting_one(
    ref_dir, vq_file, config_args, tmp_path, capsys, file_family, named, hint
):
    weights = save_published(ref_dir, tmp_path / "files", file_family, "module")
    code = _cli("convert-official", "--family", named, "--weights", str(weights), "--autoencoder", str(vq_file),
                "--out", str(tmp_path / "out"), *config_args)  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(hint, err), err
    assert not (tmp_path / "out").exists()


def test_student_form_still_means_rsd(converted, ref_dir, vq_file, config_args, tmp_path):
    student = save_published(ref_dir, tmp_path / "files", "rsd", "bare")
    assert _cli("convert-official", "--student", str(student), "--autoencoder", str(vq_file), "--out",
                str(tmp_path / "rsd"), *config_args) == 0  # fmt: skip
    ours, theirs = read_spec(tmp_path / "rsd"), read_spec(converted["rsd"])
    assert ours.model_copy(update={"provenance": {}}) == theirs.model_copy(update={"provenance": {}})
    assert _cli("convert-official", "--family", "sinsr", "--student", str(student), "--autoencoder",
                str(vq_file), "--out", str(tmp_path / "x")) == 2  # fmt: skip


@pytest.mark.parametrize(("outscale", "size"), [("2", (140, 90)), ("2.5", (175, 112)), ("4", (280, 180))])
def test_outscale_sizes(converted, tmp_path, outscale, size):
    src = _rgba_png(tmp_path / "in.png", 70, 45)
    out = tmp_path / "out.png"
    assert _cli("upscale", str(src), "-o", str(out), "--model", str(converted["sinsr"]), "--outscale", outscale) == 0
    with Image.open(out) as im:
        assert im.size == size and im.mode == "RGBA"
        alpha = np.asarray(im)[..., 3]
    assert alpha[:, 2].mean() < 30 and alpha[:, -2].mean() > 225  # the alpha ramp, resized alike


@pytest.mark.parametrize("outscale", ["1", "4.5", "nan", "-2"])
def test_outscale_out_of_range_is_refused(converted, tmp_path, capsys, outscale):
    src = _rgba_png(tmp_path / "in.png", 70, 45)
    assert _cli("upscale", str(src), "-o", str(tmp_path / "o.png"), "--model", str(converted["sinsr"]),
                "--outscale", outscale) == 2  # fmt: skip
    assert "outscale" in capsys.readouterr().err and not (tmp_path / "o.png").exists()
