"""The residual-shifting family against the reference trajectories (resshift_family_small; issue 15 bar 1).

s15 and s4 replay ResShift's `p_sample_loop_progressive` with its recorded per-step noises; SinSR is the
one-step graph at t = T-1 with the prior noise alone. Artifacts are converted from published-layout files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rsd.family import FAMILIES, S4, S15
from rsd.onestep import OneStepSR
from rsd.sampler import AncestralSR, load_graph
from rsd.schedule import Schedule
from rsd.spec import read_spec
from tests.golden import convert_golden_family


@pytest.fixture(scope="module")
def family_ref(ref_dir: Path) -> dict[str, np.ndarray]:
    with np.load(ref_dir / "resshift_family_small.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def artifacts(ref_dir: Path, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("families")
    return {
        name: convert_golden_family(ref_dir, name, base / name) for name in ("sinsr", "resshift-s15", "resshift-s4")
    }


def _max_abs(a: torch.Tensor, b: np.ndarray) -> float:
    return float((a - torch.from_numpy(b)).abs().max())


def _codes(graph: OneStepSR | AncestralSR, z: torch.Tensor) -> np.ndarray:
    return graph.autoencoder.quantize(z)[1].numpy()


@pytest.mark.parametrize(("family", "case"), [("resshift-s15", "s15"), ("resshift-s4", "s4")])
def test_ancestral_trajectory_matches_reference(artifacts, family_ref, family, case):
    graph = load_graph(artifacts[family])
    assert isinstance(graph, AncestralSR)
    spec = read_spec(artifacts[family])
    assert spec.family == family and spec.sampler.kind == "ancestral" and spec.sampler.steps == FAMILIES[family].steps
    np.testing.assert_allclose(Schedule(spec.schedule).etas, family_ref[f"{case}.etas"], rtol=1e-12)
    y = torch.from_numpy(family_ref["io.y"])
    recorded = family_ref[f"{case}.noises"]  # prior, then t = T-1 .. 0 (the t = 0 draw is multiplied by 0)
    noise = torch.from_numpy(np.concatenate(list(recorded[:-1]), axis=1))
    assert noise.shape[1] == graph.noise_channels
    with torch.no_grad():
        z, predictions = graph.trajectory(y, noise)
        sr = graph.autoencoder.decode(z)
        reference_codes = _codes(graph, torch.from_numpy(family_ref[f"{case}.z_final"]))
        ours_codes = _codes(graph, z)
    worst_x0 = max(_max_abs(p, family_ref[f"{case}.pred_xstart"][i]) for i, p in enumerate(predictions))
    assert len(predictions) == spec.sampler.steps
    assert worst_x0 < 1e-4, worst_x0
    assert _max_abs(z, family_ref[f"{case}.z_final"]) < 1e-4
    assert _max_abs(sr, family_ref[f"{case}.sr"]) < 1e-3
    np.testing.assert_array_equal(ours_codes, reference_codes)


def test_sinsr_one_step_matches_reference(artifacts, family_ref):
    graph = load_graph(artifacts["sinsr"])
    assert isinstance(graph, OneStepSR) and graph.noise_channels == 3
    y = torch.from_numpy(family_ref["io.y"])
    noise = torch.from_numpy(family_ref["s15.noises"][0])
    with torch.no_grad():
        x0 = graph.predict_x0(y, noise)
        sr = graph.autoencoder.decode(x0)
        codes_match = np.array_equal(_codes(graph, x0), _codes(graph, torch.from_numpy(family_ref["sinsr.x0"])))
    assert _max_abs(x0, family_ref["sinsr.x0"]) < 1e-4
    assert _max_abs(sr, family_ref["sinsr.sr"]) < 1e-3
    assert codes_match
    # SinSR's one step is the first step of the 15-step trajectory (same net, t = T-1, same prior noise)
    assert _max_abs(x0, family_ref["s15.pred_xstart"][0]) < 1e-4


def test_family_table_schedules():
    assert (S15.steps, S15.min_noise_level, S4.steps, S4.min_noise_level) == (15, 0.04, 4, 0.2)
    assert {f.name: (f.steps, f.noise_channels) for f in FAMILIES.values()} == {
        "rsd": (1, 1), "sinsr": (1, 0), "resshift-s15": (15, 0), "resshift-s4": (4, 0)
    }  # fmt: skip
