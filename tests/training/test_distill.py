"""The distillation stage on a tiny random teacher: step-0 identity, what one iteration changes."""

from __future__ import annotations

import pytest
import torch

from rsd.onestep import OneStepSR
from tests.factories import make_teacher_artifact
from tests.training.tiny import tiny_recipe
from training.distill import DistillStage
from training.distributed import DistContext

CPU = DistContext(0, 1, torch.device("cpu"))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return make_teacher_artifact(tmp_path_factory.mktemp("teacher") / "artifact")


def small_distill(teacher_dir, out_dir, **distill):
    return tiny_recipe(
        "distill",
        out_dir,
        teacher=str(teacher_dir),
        distill={"fake_updates": 1, "cache_latents": 4, **distill},
        loop={"batch": 2, "microbatch": 2, "iterations": 1},
    )


def test_student_at_step_zero_reproduces_the_teacher(teacher_dir, tmp_path):
    stage = DistillStage(small_distill(teacher_dir, tmp_path), CPU)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 16, 16, generator=gen)
    lq = torch.rand(3, 3, 16, 16, generator=gen) * 2 - 1
    t = torch.tensor([0, 7, 14])
    with torch.no_grad():
        want = stage.teacher(x, t, lq)
        for seed in (1, 2):  # any student noise
            xi = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 10
            assert torch.equal(stage.student(x, t, lq, xi), want)
            assert torch.equal(stage.ema_student()(x, t, lq, xi), want)
        assert torch.equal(stage.fake.unet(x, t, lq), want)  # the fake starts as a teacher copy
    # the exported step-0 artifact is the teacher run in one step through the inference graph
    stage.export(tmp_path)
    model = OneStepSR.from_artifact(tmp_path / "artifact")
    noise = torch.randn(3, 4, 16, 16, generator=gen)
    with torch.no_grad():
        sr = model(lq, noise)
        z_y = stage.vq.encode(torch.nn.functional.interpolate(lq, scale_factor=4, mode="bicubic"))
        x_T = stage.schedule.prior_sample(z_y, noise[:, :3])
        t14 = torch.full((3,), 14)
        by_hand = stage.vq.decode(stage.teacher(stage.schedule.scale_input(x_T, t14), t14, lq)).clamp(-1, 1)
    assert torch.equal(sr, by_hand)


def test_one_iteration_trains_student_and_fake_only(teacher_dir, tmp_path):
    stage = DistillStage(small_distill(teacher_dir, tmp_path, ema_rate=0.9), CPU)
    before = {
        name: {k: v.clone() for k, v in m.state_dict().items()}
        for name, m in (("student", stage.student), ("fake", stage.fake), ("teacher", stage.teacher))
    }
    metrics = stage.train_step(0)
    assert {"fake_loss", "d_loss", "g_loss", "objective", "g_adv"} <= metrics.keys()
    changed = {
        name: any(not torch.equal(v, getattr(stage, name).state_dict()[k]) for k, v in state.items())
        for name, state in before.items()
    }
    assert changed == {"student": True, "fake": True, "teacher": False}
    # frozen parameters stay frozen; the fake is trainable again after the student phase
    assert all(not p.requires_grad for p in stage.teacher.parameters())
    assert all(p.requires_grad for p in stage.fake.parameters())
    assert all(p.grad is None for p in stage.teacher.parameters())
    # EMA moved by (1 - rate) towards the new weights
    key = "input_blocks.0.0.weight"
    old, new = before["student"][key], stage.student.state_dict()[key]
    assert torch.allclose(stage.ema.shadow[key], 0.9 * old + 0.1 * new, atol=1e-7)
    # the noise column (zero at step 0) is being learned
    assert new[:, -1].abs().max() > 0


def test_student_phase_leaves_no_gradient_in_the_fake(teacher_dir, tmp_path):
    stage = DistillStage(small_distill(teacher_dir, tmp_path), CPU)
    stage._student_step(0)
    assert all(p.grad is None for p in stage.fake.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.student.parameters())


@pytest.mark.parametrize(
    ("distill", "data", "match"),
    [
        ({"student_timesteps": [3, 7, 11]}, {}, "ending at T-1"),
        ({"student_timesteps": [7, 3, 14]}, {}, "increasing"),
        ({"student_timesteps": [3, 15]}, {}, r"\[0, 14\]"),
        ({}, {"hr_size": 48}, "size multiple"),
    ],
)
def test_bad_distill_settings_fail_before_training(teacher_dir, tmp_path, distill, data, match):
    recipe = tiny_recipe("distill", tmp_path, teacher=str(teacher_dir), distill=distill, data=data)
    with pytest.raises(ValueError, match=match):
        DistillStage(recipe, CPU)


def test_gan_head_needs_an_8x8_bottleneck(tmp_path):
    from tests.factories import TEACHER

    small_window = TEACHER.model_copy(update={"window_size": 4, "image_size": 8, "attention_resolutions": [8]})
    teacher = make_teacher_artifact(tmp_path / "w4", unet=small_window)
    recipe = tiny_recipe(
        "distill",
        tmp_path,
        teacher=str(teacher),
        data={"hr_size": 32},
        export={"tiles": [8], "default_tile": 8, "default_overlap": 2},
    )
    with pytest.raises(ValueError, match="8x8 bottleneck"):
        DistillStage(recipe, CPU)
