"""Schedule tables and tensor ops against the reference golden (resshift_schedule_x4.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rsd.config import ScheduleConfig
from rsd.schedule import Schedule

# Golden arrays of the input scaling, checked through `scale_input` itself (the rest are Schedule
# attributes of the reference name).
SCALING = {"scale_input_std_float64", "scale_input_factor_float64", "scale_input_std_float32_as_reference_computes"}


@pytest.fixture(scope="module")
def golden(ref_dir: Path) -> dict[str, Any]:
    return json.loads((ref_dir / "resshift_schedule_x4.json").read_text())


@pytest.fixture(scope="module")
def schedule() -> Schedule:
    return Schedule(ScheduleConfig())


def _t(values: list[float]) -> torch.Tensor:
    return torch.tensor(np.asarray(values), dtype=torch.float32)


def _steps(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def _input_std(schedule: Schedule) -> np.ndarray:
    """The std `scale_input` divides x_t by at each t, in float64: 1 / scale_input(1, t)."""
    ones = torch.ones(schedule.T, 1, dtype=torch.float64)
    return 1.0 / schedule.scale_input(ones, torch.arange(schedule.T)).numpy()[:, 0]


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def test_golden_config_is_the_default(golden: dict[str, Any]) -> None:
    ref = golden["config"]
    cfg = ScheduleConfig()
    assert (cfg.steps, cfg.kappa, cfg.etas_end, cfg.min_noise_level) == (
        ref["steps"],
        ref["kappa"],
        ref["etas_end"],
        ref["min_noise_level"],
    )
    assert cfg.power == ref["schedule_kwargs"]["power"]
    assert (cfg.normalize_input, cfg.latent_flag) == (ref["normalize_input"], ref["latent_flag"])


def test_arrays_match_reference(golden: dict[str, Any], schedule: Schedule) -> None:
    checked = 0
    for name, values in golden["arrays"].items():
        if name in SCALING:
            continue
        ours = getattr(schedule, name)
        ref = np.asarray(values, dtype=np.float64)
        assert ours.dtype == np.float64, name
        assert ours.shape == ref.shape == (schedule.T,), name
        rel = np.abs(ours - ref) / np.maximum(np.abs(ref), 1e-300)
        assert rel.max() < 1e-12, (name, rel.max())
        checked += 1
    assert checked == 10
    std = np.asarray(golden["arrays"]["scale_input_std_float64"])
    np.testing.assert_allclose(_input_std(schedule), std, rtol=1e-12, atol=0)
    factor = np.asarray(golden["arrays"]["scale_input_factor_float64"])
    np.testing.assert_allclose(1.0 / _input_std(schedule), factor, rtol=1e-12, atol=0)


def test_appendix_a_quick_checks(schedule: Schedule) -> None:
    assert schedule.T == 15
    assert _input_std(schedule)[14] == pytest.approx(2.218197, abs=5e-7)
    assert schedule.kappa_times_sqrt_etas[-1] == pytest.approx(1.98, abs=1e-12)
    assert schedule.posterior_mean_coef2[0] == 1.0
    assert schedule.posterior_mean_coef1[0] == 0.0
    assert schedule.posterior_variance[0] == 0.0
    expected_sqrt_eta = [0.020000, 0.117165, 0.176305, 0.233629, 0.291574, 0.351009, 0.412356, 0.475858]
    expected_sqrt_eta += [0.541672, 0.609910, 0.680658, 0.753985, 0.829951, 0.908606, 0.990000]
    np.testing.assert_allclose(schedule.sqrt_etas, expected_sqrt_eta, atol=5e-7)
    assert schedule.posterior_log_variance_clipped[0] == pytest.approx(np.log(0.0015533788), abs=1e-8)


def test_q_sample(golden: dict[str, Any], schedule: Schedule) -> None:
    ex = golden["examples"]["q_sample"]
    x_t = schedule.q_sample(_t(ex["x0"]), _t(ex["y"]), _steps(ex["t"]), _t(ex["noise"]))
    assert x_t.dtype == torch.float32
    assert _max_abs(x_t, _t(ex["x_t"])) < 1e-6


def test_prior_sample(golden: dict[str, Any], schedule: Schedule) -> None:
    ex = golden["examples"]["prior_sample"]
    x_T = schedule.prior_sample(_t(ex["y"]), _t(ex["noise"]))
    assert _max_abs(x_T, _t(ex["x_T"])) < 1e-6


def test_p_mean_variance_with_stand_in_model(golden: dict[str, Any], schedule: Schedule) -> None:
    ex = golden["examples"]["p_mean_variance"]
    x_t, t = _t(ex["x_t"]), _steps(ex["t"])
    # The stand-in model returns a fixed x0; what it received is the scaled input (method.md 1.4).
    assert _max_abs(schedule.scale_input(x_t, t), _t(ex["model_received_input"])) < 1e-6
    assert ex["model_received_t"] == ex["t"]
    x0_pred = _t(ex["model_output_pred_xstart"])
    mean, variance, log_variance = schedule.posterior_mean_variance(x0_pred, x_t, t)
    assert _max_abs(mean, _t(ex["mean"])) < 1e-6
    assert _max_abs(variance, _t(ex["variance"])) < 1e-6
    assert _max_abs(log_variance, _t(ex["log_variance"])) < 1e-6


def test_p_sample(golden: dict[str, Any], schedule: Schedule) -> None:
    pmv, ex = golden["examples"]["p_mean_variance"], golden["examples"]["p_sample"]
    sample = schedule.p_sample(_t(pmv["model_output_pred_xstart"]), _t(pmv["x_t"]), _steps(pmv["t"]), _t(ex["noise"]))
    assert _max_abs(sample, _t(ex["sample"])) < 1e-6


def test_p_sample_adds_no_noise_at_t0(schedule: Schedule) -> None:
    gen = torch.Generator().manual_seed(0)
    x0, x_t, noise = (torch.randn(2, 3, 4, 4, generator=gen) for _ in range(3))
    t = _steps([0, 1])
    sample = schedule.p_sample(x0, x_t, t, noise)
    # At t = 0 the posterior mean is exactly x0 (coef1 = 0, coef2 = 1) and no noise is added.
    assert torch.equal(sample[0], x0[0])
    assert _max_abs(sample[1], schedule.p_sample(x0, x_t, t, torch.zeros_like(noise))[1]) > 1e-3


def test_one_step_model_input(golden: dict[str, Any], schedule: Schedule) -> None:
    ex = golden["examples"]["one_step_model_input"]
    x_T = schedule.prior_sample(_t(ex["z_y"]), _t(ex["noise"]))
    assert _max_abs(x_T, _t(ex["x_T"])) < 1e-6
    model_input = schedule.scale_input(x_T, _steps(ex["t"]))
    assert _max_abs(model_input, _t(ex["model_input"])) < 1e-6


def test_other_config_changes_tables_and_digest(schedule: Schedule) -> None:
    other = Schedule(ScheduleConfig(kappa=1.0))
    assert other.digest() != schedule.digest()
    assert schedule.digest() == ScheduleConfig().digest()
    assert other.kappa_times_sqrt_etas[-1] == pytest.approx(0.99)
    assert Schedule(ScheduleConfig(steps=4)).T == 4


def test_non_latent_input_scale() -> None:
    sched = Schedule(ScheduleConfig(latent_flag=False))
    expected = 3 * sched.kappa * sched.sqrt_etas + 1
    np.testing.assert_allclose(_input_std(sched), expected, rtol=1e-15)
    x = torch.ones(1, 3, 2, 2)
    out = sched.scale_input(x, _steps([14]))
    assert _max_abs(out, x / float(expected[14])) < 1e-6
    unscaled = Schedule(ScheduleConfig(normalize_input=False))
    assert torch.equal(unscaled.scale_input(x, _steps([3])), x)


def test_bad_timesteps_are_refused(schedule: Schedule) -> None:
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="int64"):
        schedule.scale_input(x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="batch size 2"):
        schedule.scale_input(x, _steps([1, 2, 3]))
