"""RSD distillation (method.md 4.1-4.13): one iteration = `fake_updates` fake/critic steps + 1 student step.

Networks (4.1): frozen teacher f* and VQ; student G (teacher + zero noise column, 4.2); fake model f_phi
(teacher copy) + GAN head (4.3); EMA of the student. Each fake step and the student step draw a new
batch (4.11). Student inputs at the multistep timesteps from the real HR latent (4.8, true_data) or by
backward simulation. Losses: fake (4.5) + discriminator (4.10); generator (4.6, SiD-normalised 4.7) +
LPIPS (4.9) + adversarial (4.10) [+ supervised MSE, 4.14].
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rsd.artifact import joined_weights, save_artifact
from rsd.config import ScheduleConfig, UNetConfig
from rsd.denoiser import denoise
from rsd.nets.unet import UNetModelSwin, widen_first_conv
from rsd.onestep import OneStepSR, lr_consistent
from rsd.schedule import Schedule
from rsd.spec import SPEC_FILE, ArtifactError, read_spec
from training.batches import Batch, GlobalNoise, LatentBatches, encode_pairs
from training.config import DistillRecipe
from training.critic import FakeModel
from training.data import validation_pairs
from training.distributed import DistContext
from training.evaluate import image_metrics, pair_grid
from training.losses import fake_loss, gan_discriminator_loss, gan_generator_loss, generator_loss, timestep_weights
from training.lpips import LPIPS
from training.optim import EMA, adamw, set_lr, step_optimizer
from training.stage import CheckpointParts, Stateful, check_sizes, make_spec
from training.weights import build_autoencoder, load_unet_strict, read_teacher, teacher_state


@dataclass
class Draws:
    """Per-sample randomness of one phase (local rows): student timestep t_n, its input noise eps1,
    student noise xi, evaluation timestep t and its noise eps; prior noise for backward simulation."""

    t_n: Tensor
    eps1: Tensor
    xi: Tensor
    t: Tensor
    eps: Tensor
    eps_prior: Tensor

    def rows(self, i: int, j: int) -> Draws:
        return Draws(*(getattr(self, f)[i:j] for f in ("t_n", "eps1", "xi", "t", "eps", "eps_prior")))


def _teacher_source(recipe: DistillRecipe) -> tuple[ScheduleConfig, UNetConfig, dict[str, Tensor], str]:
    """(schedule, teacher UNet config, teacher weights, name) from an artifact or a published .pth."""
    if (recipe.teacher / SPEC_FILE).is_file():
        spec = read_spec(recipe.teacher)
        config, weights = read_teacher(recipe.teacher)
        assert config is not None  # artifacts carry their configs
        return spec.schedule, config, weights, spec.name
    if recipe.autoencoder is None:
        raise ValueError(
            f"teacher {recipe.teacher} is not an artifact directory; a published .pth teacher also needs "
            "autoencoder = <VQ-f4 .pth, artifact or autoencoder directory>"
        )
    official = UNetConfig()  # the published ResShift x4 teacher (method.md 2.1), official schedule (1.3)
    return ScheduleConfig(), official, teacher_state(recipe.teacher, official), recipe.teacher.name


class DistillStage(CheckpointParts):
    def __init__(self, recipe: DistillRecipe, ctx: DistContext) -> None:
        self.recipe, self.ctx, self.cfg = recipe, ctx, recipe.distill
        loop, cfg = recipe.loop, recipe.distill
        self.local_batch = ctx.local_batch(loop.batch, loop.microbatch)
        schedule_cfg, teacher_cfg, teacher_weights, teacher_name = _teacher_source(recipe)
        self.schedule = Schedule(schedule_cfg)
        self.vq = build_autoencoder(recipe.autoencoder or recipe.teacher, ctx.device)
        self._check(teacher_cfg, self.vq.config)
        self._build_nets(teacher_cfg, teacher_weights)
        student_cfg = self.student.config
        self.spec = make_spec(
            recipe.name,
            student_cfg,
            self.vq.config,
            schedule_cfg,
            recipe.export,
            teacher_cfg if recipe.export.include_teacher else None,
            {"stage": "distill", "teacher": teacher_name},
        )
        self.student_ddp, self.fake_ddp = ctx.wrap(self.student), ctx.wrap(self.fake)
        self.opt_student = adamw(self.student.parameters(), recipe.optim)
        self.opt_fake = adamw(self.fake.parameters(), recipe.optim)
        self.ema = EMA(self.student, cfg.ema_rate)
        self.lpips = None  # the loss term (4.9) when weighted, the validation metric whenever weights are given
        if cfg.lpips_weight > 0 or recipe.lpips.alexnet_weights is not None:
            self.lpips = LPIPS.from_files(recipe.lpips.alexnet_weights, recipe.lpips.linear_weights).to(ctx.device)
        self.w_t = timestep_weights(self.schedule, cfg.timestep_weighting).float().to(ctx.device)
        self.batches = LatentBatches(recipe.data, loop.seed, ctx, loop.batch, self.vq, cache=cfg.cache_latents)
        self.noise = GlobalNoise(loop.seed + 1, ctx)
        self._val: Batch | None = None

    def _build_nets(self, teacher_cfg: UNetConfig, teacher_weights: dict[str, Tensor]) -> None:
        """Frozen teacher; student = teacher + zero noise columns (4.2); fake = teacher copy + head (4.3)."""
        device = self.ctx.device
        self.teacher = UNetModelSwin(teacher_cfg)
        try:
            load_unet_strict(self.teacher, teacher_weights, "teacher")
        except ArtifactError as exc:
            raise ArtifactError(f"{self.recipe.teacher}: {exc}") from exc
        self.teacher.to(device).eval().requires_grad_(False)
        self.student = UNetModelSwin(teacher_cfg.with_noise_channels(self.cfg.noise_channels))
        self.student.load_state_dict(widen_first_conv(self.teacher.state_dict(), self.cfg.noise_channels))
        self.student.to(device)
        torch.manual_seed(self.recipe.loop.seed)  # identical GAN-head initialisation on every process
        fake_unet = copy.deepcopy(self.teacher).requires_grad_(True)
        self.fake = FakeModel(fake_unet, self.schedule, self.cfg.gan_weight > 0).to(device)

    def _check(self, teacher_cfg: Any, vq_cfg: Any) -> None:
        """Refuse, before training, what cannot work: bad timesteps, crops that do not fit the nets."""
        cfg, T = self.cfg, self.schedule.T
        steps = cfg.student_timesteps
        if not steps or any(not 0 <= s < T for s in steps) or steps != sorted(set(steps)) or steps[-1] != T - 1:
            raise ValueError(
                f"distill.student_timesteps {steps} must be increasing 0-based timesteps in [0, {T - 1}] "
                f"ending at T-1 = {T - 1} (method.md 4.8)"
            )
        check_sizes(teacher_cfg, vq_cfg, self.recipe.data.hr_size)
        bottleneck = self.recipe.data.hr_size // 4 // 2 ** (len(teacher_cfg.channel_mult) - 1)
        if cfg.gan_weight > 0 and bottleneck < 8:
            raise ValueError(
                f"the GAN head needs an 8x8 bottleneck; data.hr_size {self.recipe.data.hr_size} gives "
                f"{bottleneck}x{bottleneck} (raise hr_size or set distill.gan_weight = 0)"
            )

    # -- one iteration -----------------------------------------------------------------------------

    def _draw(self, batch: Batch) -> Draws:
        assert batch.z_gt is not None
        n, (c, h, w) = self.recipe.loop.batch, batch.z_gt.shape[1:]
        return Draws(
            t_n=self.noise.choice(self.cfg.student_timesteps, n),
            eps1=self.noise.randn(n, c, h, w),
            xi=self.noise.randn(n, self.cfg.noise_channels, h, w),
            t=self.noise.randint(self.schedule.T, n),
            eps=self.noise.randn(n, c, h, w),
            eps_prior=self.noise.randn(n, c + self.cfg.noise_channels, h, w),
        )

    def _student_input(self, mb: Batch, d: Draws) -> Tensor:
        """x_{t_n} (method.md 4.8): from the real HR latent (true_data), else from the student's own
        one-step sample (backward simulation, no gradient)."""
        assert mb.z_gt is not None and mb.z_y is not None
        x0 = mb.z_gt
        if not self.cfg.true_data:
            c = mb.z_gt.shape[1]
            with torch.no_grad():
                prior = self.schedule.prior_sample(mb.z_y, d.eps_prior[:, :c])
                t_last = torch.full_like(d.t_n, self.schedule.T - 1)
                x0 = denoise(self.student, self.schedule, prior, t_last, mb.lr, d.eps_prior[:, c:])
        return self.schedule.q_sample(x0, mb.z_y, d.t_n, d.eps1)

    def _student(self, net: Any, mb: Batch, d: Draws) -> Tensor:
        x_tn = self._student_input(mb, d)
        return denoise(net, self.schedule, x_tn, d.t_n, mb.lr, d.xi)

    def _teacher_x0(self, x_t: Tensor, t: Tensor, lq: Tensor) -> Tensor:
        return denoise(self.teacher, self.schedule, x_t, t, lq)

    def _fake_step(self, step: int) -> dict[str, float]:
        """Method.md 4.13 A: fake loss + GAN discriminator loss, one optimizer step."""
        micro, gan_w = self.recipe.loop.microbatch, self.cfg.gan_weight
        set_lr(self.opt_fake, self.recipe.optim, step)
        batch = self.batches.next()
        draws = self._draw(batch)
        self.opt_fake.zero_grad(set_to_none=True)
        n_accum = -(-len(batch) // micro)
        sums = {"fake_loss": 0.0, "d_loss": 0.0}
        for i in range(0, len(batch), micro):
            mb, d = batch.rows(i, i + micro), draws.rows(i, i + micro)
            assert mb.z_y is not None and mb.z_gt is not None
            with torch.no_grad():
                x0_hat = self._student(self.student, mb, d)
            x_t = self.schedule.q_sample(x0_hat, mb.z_y, d.t, d.eps)
            with self.ctx.sync([self.fake_ddp], last_microbatch=i + micro >= len(batch)):
                if gan_w > 0:
                    pred, logits = self.fake_ddp(
                        x_t, d.t, mb.lr, torch.cat([x0_hat, mb.z_gt]), torch.cat([mb.lr, mb.lr])
                    )
                    d_loss = gan_discriminator_loss(logits[: len(mb)], logits[len(mb) :], self.cfg.gan_loss)
                else:
                    pred, _ = self.fake_ddp(x_t, d.t, mb.lr)
                    d_loss = torch.zeros((), device=x_t.device)
                l_fake = fake_loss(pred, x0_hat, self.w_t[d.t]).mean()
                ((l_fake + gan_w * d_loss) / n_accum).backward()
            sums["fake_loss"] += l_fake.item() / n_accum
            sums["d_loss"] += d_loss.item() / n_accum
        step_optimizer(self.opt_fake, self.fake.parameters(), self.recipe.optim)
        return sums

    def _student_losses(self, mb: Batch, d: Draws) -> tuple[Tensor, dict[str, float]]:
        """Method.md 4.13 B 2a-2h for one microbatch: the total student loss and its parts."""
        cfg = self.cfg
        assert mb.z_y is not None and mb.z_gt is not None
        x0_hat = self._student(self.student_ddp, mb, d)
        loss_g, aux = generator_loss(
            self._teacher_x0,
            self.fake.predict_x0,
            self.schedule,
            x0_hat,
            mb.z_y,
            mb.lr,
            d.t,
            d.eps,
            self.w_t[d.t],
            detach_xt=cfg.detach_xt,
            sid_normalization=cfg.sid_normalization,
            time_power_ten=cfg.time_power_ten,
        )
        total = loss_g.mean()
        parts = {
            "g_loss": total.item(),
            # 4.4 objective E||f* - f_phi||^2 with the current fake, and the tractable bracket of 4.6
            "objective": aux["teacher_fake_gap"].mean().item(),
            "bracket": aux["bracket"].mean().item(),
        }
        sr = None
        use_lpips = self.lpips is not None and cfg.lpips_weight > 0
        if use_lpips or (cfg.mse_weight > 0 and cfg.mse_space == "image"):
            sr = self.vq.decode_straight_through(x0_hat)  # 4.9: straight-through VQ decode
            if self.spec.lr_consistency:  # the losses judge what inference outputs
                sr = lr_consistent(sr, mb.lr)
        if use_lpips and self.lpips is not None and sr is not None:
            l_lp = self.lpips(sr, mb.hr).mean()
            total = total + cfg.lpips_weight * l_lp
            parts["lpips"] = l_lp.item()
        if cfg.gan_weight > 0:
            l_adv = gan_generator_loss(self.fake.logits(x0_hat, mb.lr), cfg.gan_loss)
            total = total + cfg.gan_weight * l_adv
            parts["g_adv"] = l_adv.item()
        if cfg.mse_weight > 0:
            l_mse = F.mse_loss(sr, mb.hr) if sr is not None else F.mse_loss(x0_hat, mb.z_gt)
            total = total + cfg.mse_weight * l_mse
            parts["mse"] = l_mse.item()
        return total, parts

    def _student_step(self, step: int) -> dict[str, float]:
        micro = self.recipe.loop.microbatch
        set_lr(self.opt_student, self.recipe.optim, step)
        batch = self.batches.next()
        draws = self._draw(batch)
        self.fake.requires_grad_(False)  # frozen: gradients flow through it to x_t only (4.6)
        self.opt_student.zero_grad(set_to_none=True)
        n_accum = -(-len(batch) // micro)
        sums: dict[str, float] = {}
        try:
            for i in range(0, len(batch), micro):
                with self.ctx.sync([self.student_ddp], last_microbatch=i + micro >= len(batch)):
                    total, parts = self._student_losses(batch.rows(i, i + micro), draws.rows(i, i + micro))
                    (total / n_accum).backward()
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v / n_accum
        finally:
            self.fake.requires_grad_(True)
        step_optimizer(self.opt_student, self.student.parameters(), self.recipe.optim)
        self.ema.update(self.student)
        return sums

    def train_step(self, step: int) -> dict[str, float]:
        fake_metrics = [self._fake_step(step) for _ in range(self.cfg.fake_updates)]
        out = {k: sum(m[k] for m in fake_metrics) / len(fake_metrics) for k in fake_metrics[0]}
        return out | self._student_step(step) | {"lr": self.opt_student.param_groups[0]["lr"]}

    # -- validation and export ---------------------------------------------------------------------

    def ema_student(self) -> UNetModelSwin:
        net = copy.deepcopy(self.student)
        net.load_state_dict(self.ema.state_for(self.student))
        return net.eval()

    @torch.no_grad()
    def validate(self) -> tuple[dict[str, float], dict[str, Tensor]]:
        """One-step SR with the EMA student through the inference graph (PSNR/SSIM [+ LPIPS])."""
        if self._val is None:
            pairs = validation_pairs(self.recipe.data, self.recipe.loop.seed, self.spec.lr_multiple)
            if not pairs:
                return {}, {}
            hr = torch.stack([p[0] for p in pairs]).to(self.ctx.device)
            lr = torch.stack([p[1] for p in pairs]).to(self.ctx.device)
            self._val = Batch(hr, lr, *encode_pairs(self.vq, hr, lr))
        val = self._val
        model = OneStepSR(self.spec, self.ema_student(), self.vq).eval()
        gen = torch.Generator().manual_seed(0)
        noise = torch.randn((len(val), model.noise_channels, *val.lr.shape[-2:]), generator=gen)
        sr = model(val.lr, noise.to(self.ctx.device))
        metrics = {k: sum(v) / len(v) for k, v in image_metrics(sr, val.hr, self.lpips).items()}
        return metrics, {"hr_sr": pair_grid(val.hr, sr)}

    def export(self, run_dir: Path) -> Path:
        teacher = self.teacher.state_dict() if self.spec.teacher is not None else None
        weights = joined_weights(self.ema.state_for(self.student), self.vq.state_dict(), teacher)
        return save_artifact(run_dir / "artifact", self.spec, weights)

    def checkpoint_parts(self) -> dict[str, Stateful]:
        return {
            "student": self.student,
            "fake": self.fake,
            "opt_student": self.opt_student,
            "opt_fake": self.opt_fake,
            "ema": self.ema,
            "data": self.batches,
            "noise": self.noise,
        }
