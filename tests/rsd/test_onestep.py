"""OneStepSR equals the pipeline assembled by hand from the golden pieces (issue bar 4)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsd.nets.unet import UNetModelSwin
from rsd.nets.vqgan import VQModelTorch
from rsd.noise import draw_noise_batch
from rsd.onestep import OneStepSR
from rsd.sampler import TeacherSampler
from tests.factories import golden_artifact, make_tiny_artifact
from tests.golden import golden_configs, load_npz


@pytest.fixture(scope="module")
def artifact(ref_dir, tmp_path_factory):
    return golden_artifact(ref_dir, tmp_path_factory.mktemp("golden"), with_teacher=True)


def _inputs(n: int, size: int, channels: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lq = torch.rand(n, 3, size, size, generator=gen) * 2 - 1
    return lq, torch.from_numpy(draw_noise_batch(list(range(seed, seed + n)), channels, size, size))


def test_onestep_equals_hand_assembled_pipeline(ref_dir, artifact):
    model = OneStepSR.from_artifact(artifact)
    lq, noise = _inputs(2, 64, model.noise_channels)
    with torch.no_grad():
        sr = model(lq, noise)

    # Hand assembly from independent pieces: the reference schedule json and the golden nets.
    sched = json.loads((ref_dir / "resshift_schedule_x4.json").read_text())
    sqrt_eta_T = sched["arrays"]["sqrt_etas"][-1]
    kappa = 2.0
    _, student_cfg, vq_cfg = golden_configs(ref_dir)
    unet = UNetModelSwin(student_cfg).eval()
    unet.load_state_dict(load_npz(ref_dir / "unet_swin_small_student.npz")[0])
    vq = VQModelTorch(vq_cfg).eval()
    vq.load_state_dict(load_npz(ref_dir / "vq_f4_small.npz")[0])
    with torch.no_grad():
        z_y = vq.encode(F.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False))
        x_T = z_y + kappa * sqrt_eta_T * noise[:, :3]
        x_in = x_T / math.sqrt(kappa**2 * sqrt_eta_T**2 + 1)  # method.md 1.4 input scaling at t = 14
        x0 = unet(x_in, torch.full((2,), 14), lq, noise[:, 3:])
        expected = vq.decode(x0).clamp(-1, 1)
    assert sr.shape == (2, 3, 256, 256)
    assert (sr - expected).abs().max().item() < 1e-5


def test_onestep_same_seed_same_output_and_noise_matters(artifact):
    model = OneStepSR.from_artifact(artifact)
    lq, noise = _inputs(1, 64, model.noise_channels, seed=3)
    _, other = _inputs(1, 64, model.noise_channels, seed=4)
    with torch.no_grad():
        a, b, c = model(lq, noise), model(lq, noise), model(lq, other)
    assert torch.equal(a, b)
    assert (a - c).abs().max().item() > 1e-3


def test_onestep_rejects_bad_shapes(artifact):
    model = OneStepSR.from_artifact(artifact)
    with pytest.raises(ValueError, match="multiples of 64"):
        model(torch.zeros(1, 3, 48, 64), torch.zeros(1, 4, 48, 64))
    with pytest.raises(ValueError, match="noise must be"):
        model(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64))


def test_teacher_sampler_runs_all_steps_deterministically(tmp_path):
    sampler = TeacherSampler.from_artifact(make_tiny_artifact(tmp_path, teacher=True))
    lq, noise = _inputs(1, 16, sampler.noise_channels, seed=5)
    calls = []
    handle = sampler.denoiser.net.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        a = sampler(lq, noise)
        b = sampler(lq, noise)
    handle.remove()
    assert len(calls) == 2 * 15  # one teacher call per step (method.md 1.2)
    assert torch.equal(a, b) and a.shape == (1, 3, 64, 64)
    assert float(a.abs().max()) <= 1.0
    assert np.isfinite(a.numpy()).all()


@torch.no_grad()
def test_lr_consistency_takes_the_low_frequencies_from_the_lr(tmp_path):
    """spec.lr_consistency: out = clamp(sr + bicubic_x4(lq - avgpool4(sr))), in both samplers."""
    from rsd.onestep import lr_consistent

    directory = make_tiny_artifact(tmp_path, teacher=True)
    for sampler in (OneStepSR.from_artifact(directory), TeacherSampler.from_artifact(directory)):
        decoded: list[torch.Tensor] = []
        decode = sampler.autoencoder.decode
        sampler.autoencoder.decode = lambda z, decode=decode, decoded=decoded: decoded.append(decode(z)) or decoded[-1]
        lq, noise = _inputs(2, 16, sampler.noise_channels, seed=3)
        plain = sampler(lq, noise)
        sampler.spec = sampler.spec.model_copy(update={"lr_consistency": True})
        fixed = sampler(lq, noise)
        assert torch.equal(decoded[0], decoded[1])  # same decode; the step comes after it
        assert torch.equal(plain, decoded[0].clamp(-1, 1))
        sr = decoded[1]
        assert torch.equal(fixed, (sr + F.interpolate(lq - F.avg_pool2d(sr, 4), scale_factor=4, mode="bicubic"))
                           .clamp(-1, 1))  # fmt: skip
        assert torch.equal(fixed, lr_consistent(sr, lq).clamp(-1, 1))
        before = (F.avg_pool2d(sr, 4) - lq).abs().mean()
        after = (F.avg_pool2d(lr_consistent(sr, lq), 4) - lq).abs().mean()
        assert after < 0.35 * before, (float(before), float(after))  # box(bicubic up) is not quite identity


@torch.no_grad()
def test_an_eight_channel_continuous_latent_runs_one_step_and_the_teacher() -> None:
    """The bundled model's layout: latent channels C = 8 (not the published 3), no quantisation."""
    from rsd.config import DDConfig, ScheduleConfig, VQConfig
    from rsd.spec import ModelSpec
    from tests.factories import TINY_UNET

    dd = DDConfig(z_channels=8, ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, resolution=64, norm_groups=8)
    vq_cfg = VQConfig(
        embed_dim=8, n_embed=16, decode_quantized=False, ddconfig=dd.model_copy(update={"mid_attention": False})
    )
    student_cfg = TINY_UNET.model_copy(update={"in_channels": 8, "out_channels": 8})
    teacher_cfg = student_cfg.with_noise_channels(0)
    spec = ModelSpec(name="c8", student=student_cfg, autoencoder=vq_cfg, schedule=ScheduleConfig(),
                     teacher=teacher_cfg, tiles=[16], default_tile=16, default_overlap=0)  # fmt: skip
    torch.manual_seed(0)
    vq = VQModelTorch(vq_cfg).eval()
    onestep = OneStepSR(spec, UNetModelSwin(student_cfg), vq).eval()
    teacher = TeacherSampler(spec, UNetModelSwin(teacher_cfg), vq).eval()
    assert (onestep.noise_channels, teacher.noise_channels) == (8 + 1, 8 * 15)
    lq = torch.rand(1, 3, 16, 16) * 2 - 1
    noise = torch.randn(1, 8 * 15, 16, 16)
    out = teacher(lq, noise)
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    later = noise.clone()
    later[:, -8:] += 1.0  # the last noisy step's channels (t = 1) are read
    assert not torch.equal(teacher(lq, later), out)
    with pytest.raises(ValueError, match="noise must be"):
        teacher(lq, noise[:, : 3 * 15])
    sr = onestep(lq, torch.randn(1, 9, 16, 16))
    assert sr.shape == (1, 3, 64, 64) and torch.isfinite(sr).all()
