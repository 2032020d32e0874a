"""Teacher stage: the ResShift x0-prediction loss (method.md 1.2), warm-up, EMA, export."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

from rsd.artifact import load_artifact
from rsd.sampler import TeacherSampler
from tests.factories import make_teacher_artifact
from tests.training.tiny import tiny_recipe
from training.distributed import DistContext
from training.optim import EMA, set_lr
from training.teacher import TeacherStage

CPU = DistContext(0, 1, torch.device("cpu"))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return make_teacher_artifact(tmp_path_factory.mktemp("teacher") / "artifact")


def stage_for(teacher_dir, tmp_path, **sections):
    loop = {"batch": 4, "microbatch": 2, **sections.pop("loop", {})}
    return TeacherStage(tiny_recipe("teacher", tmp_path, autoencoder=str(teacher_dir), loop=loop, **sections), CPU)


def test_loss_is_the_resshift_x0_mse_at_uniform_t(teacher_dir, tmp_path):
    stage = stage_for(teacher_dir, tmp_path)
    net = copy.deepcopy(stage.net)
    batches, noise = copy.deepcopy(stage.batches.stream), stage.noise.gen.get_state()
    reported = stage.train_step(0)["loss"]
    # recompute by hand from the same draws: t ~ U{0..T-1}, x_t = q_sample, loss = mean (f(x_t/s_t) - z_gt)^2
    stage.batches.stream = batches
    stage.noise.gen.set_state(noise)
    batch = stage.batches.next()
    t = stage.noise.randint(15, 4)
    eps = stage.noise.randn(4, 3, 16, 16)
    sched = stage.schedule
    eta = torch.from_numpy(sched.etas).float()[t].view(-1, 1, 1, 1)
    x_t = (1 - eta) * batch.z_gt + eta * batch.z_y + sched.kappa * eta.sqrt() * eps
    with torch.no_grad():
        pred = net(x_t / torch.sqrt(sched.kappa**2 * eta + 1), t, batch.lr)
    assert reported == pytest.approx(((pred - batch.z_gt) ** 2).mean().item(), rel=1e-5)
    assert len(set(t.tolist())) > 1


def test_warmup_is_linear_then_constant(teacher_dir, tmp_path):
    stage = stage_for(teacher_dir, tmp_path, optim={"lr": 1e-3, "warmup_steps": 4})
    assert [round(set_lr(stage.opt, stage.recipe.optim, s), 8) for s in range(6)] == [
        2.5e-4,
        5e-4,
        7.5e-4,
        1e-3,
        1e-3,
        1e-3,
    ]


def test_cosine_decay_after_warmup_reaches_the_final_ratio_and_stays(teacher_dir, tmp_path):
    optim = {"lr": 1e-3, "warmup_steps": 2, "cosine_steps": 10, "final_lr_ratio": 0.1}
    stage = stage_for(teacher_dir, tmp_path, optim=optim)
    lrs = [set_lr(stage.opt, stage.recipe.optim, s) for s in range(14)]
    assert lrs[0] < lrs[1] and lrs[1] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 10))))
    assert lrs[5] == pytest.approx(1e-3 * 0.55)  # half way: the mean of lr and the final lr
    assert all(a >= b for a, b in itertools.pairwise(lrs[1:]))  # non-increasing after warm-up
    assert lrs[10:] == pytest.approx([1e-4] * 4)
    assert stage.opt.param_groups[0]["lr"] == lrs[-1]


def test_ema_skips_integer_swin_tables_and_averages_the_rest(teacher_dir, tmp_path):
    stage = stage_for(teacher_dir, tmp_path)
    ema = EMA(stage.net, 0.5)
    keys = stage.net.state_dict().keys()
    assert any("relative_position_index" in k for k in keys)
    assert not any("relative_position_index" in k for k in ema.shadow)
    assert any("attn_mask" in k for k in ema.shadow)  # float buffers are averaged too (method.md 4.11)
    before = copy.deepcopy(stage.net.state_dict())
    with torch.no_grad():
        for p in stage.net.parameters():
            p.add_(1.0)
    ema.update(stage.net)
    key = "input_blocks.0.0.weight"
    assert torch.allclose(ema.shadow[key], before[key] + 0.5)
    state = ema.state_for(stage.net)
    idx = next(k for k in keys if "relative_position_index" in k)
    assert torch.equal(state[idx], stage.net.state_dict()[idx])


def test_fine_tuned_teacher_exports_a_runnable_teacher_artifact(teacher_dir, tmp_path):
    stage = stage_for(teacher_dir, tmp_path, init_from=str(teacher_dir), ema_rate=0.0)
    stage.train_step(0)
    stage.export(tmp_path)
    spec, states = load_artifact(tmp_path / "artifact")
    assert spec.student.noise_channels == 0 and spec.teacher == spec.student
    for k, v in stage.net.state_dict().items():  # EMA rate 0: the EMA is the live net
        assert torch.equal(states["teacher"][k], v) and torch.equal(states["student"][k], v)
    sampler = TeacherSampler.from_artifact(tmp_path / "artifact")
    lq = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        sr = sampler(lq, torch.randn(1, sampler.noise_channels, 16, 16))
    assert sr.shape == (1, 3, 64, 64) and torch.isfinite(sr).all()
