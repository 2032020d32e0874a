"""ResShift teacher training (method.md 1.2 loss, 1.7 recipe), from scratch or fine-tuned.

Per step: t ~ U{0..T-1}, x_t = q_sample(z_gt, z_y, t, eps), loss = mean_chw (f(x_t / s_t, t, lq) - z_gt)^2
averaged over the batch; AdamW with linear warm-up, EMA 0.999. Validation runs the 15-step sampler
with the EMA weights. The artifact stores the EMA teacher both as `teacher.*` and as a noise-free
`student.*` (so both the 15-step sampler and the one-step graph can run it).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from rsd.artifact import joined_weights, save_artifact
from rsd.denoiser import denoise
from rsd.nets.unet import UNetModelSwin
from rsd.sampler import TeacherSampler
from rsd.schedule import Schedule
from training.batches import Batch, GlobalNoise, LatentBatches, encode_pairs
from training.config import TeacherRecipe
from training.data import validation_pairs
from training.distributed import DistContext
from training.evaluate import image_metrics, pair_grid
from training.losses import x0_mse
from training.lpips import LPIPS
from training.optim import EMA, adamw, set_lr, step_optimizer
from training.stage import CheckpointParts, Stateful, check_sizes, make_spec
from training.weights import build_autoencoder, teacher_state

#: fixed timesteps of the deterministic validation x0-loss (low, middle and high noise)
VAL_TIMESTEPS = (0, 7, 14)


class TeacherStage(CheckpointParts):
    def __init__(self, recipe: TeacherRecipe, ctx: DistContext) -> None:
        self.recipe, self.ctx = recipe, ctx
        loop = recipe.loop
        self.local_batch = ctx.local_batch(loop.batch, loop.microbatch)
        self.vq = build_autoencoder(recipe.autoencoder, ctx.device)
        check_sizes(recipe.unet, self.vq.config, recipe.data.hr_size)
        self.spec = make_spec(
            recipe.name,
            recipe.unet.with_noise_channels(0),
            self.vq.config,
            recipe.schedule,
            recipe.export,
            recipe.unet.with_noise_channels(0),
            {"stage": "teacher"},
        )
        self.schedule = Schedule(recipe.schedule)
        torch.manual_seed(loop.seed)  # identical initial weights on every process
        net = UNetModelSwin(recipe.unet.with_noise_channels(0))
        if recipe.init_from is not None:
            net.load_state_dict(teacher_state(recipe.init_from, recipe.unet))
        self.net = net.to(ctx.device)
        self.ddp = ctx.wrap(self.net)
        self.opt = adamw(self.net.parameters(), recipe.optim)
        self.ema = EMA(self.net, recipe.ema_rate)
        self.batches = LatentBatches(recipe.data, loop.seed, ctx, loop.batch, self.vq)
        self.noise = GlobalNoise(loop.seed + 1, ctx)
        self.lpips = None
        if recipe.lpips.alexnet_weights is not None:
            self.lpips = LPIPS.from_files(recipe.lpips.alexnet_weights, recipe.lpips.linear_weights).to(ctx.device)
        self._val: Batch | None = None

    def train_step(self, step: int) -> dict[str, float]:
        lr = set_lr(self.opt, self.recipe.optim, step)
        batch = self.batches.next()
        t = self.noise.randint(self.schedule.T, self.recipe.loop.batch)
        assert batch.z_gt is not None and batch.z_y is not None
        eps = self.noise.randn(self.recipe.loop.batch, *batch.z_gt.shape[1:])
        self.opt.zero_grad(set_to_none=True)
        micro = self.recipe.loop.microbatch
        n_accum = -(-len(batch) // micro)
        total = 0.0
        for i in range(0, len(batch), micro):
            z_gt, z_y = batch.z_gt[i : i + micro], batch.z_y[i : i + micro]
            with self.ctx.sync([self.ddp], last_microbatch=i + micro >= len(batch)):
                x_t = self.schedule.q_sample(z_gt, z_y, t[i : i + micro], eps[i : i + micro])
                pred = denoise(self.ddp, self.schedule, x_t, t[i : i + micro], batch.lr[i : i + micro])
                loss = x0_mse(pred, z_gt).mean()  # method.md 1.2 (weighted_mse False)
                (loss / n_accum).backward()
            total += loss.item() / n_accum
        step_optimizer(self.opt, self.net.parameters(), self.recipe.optim)
        self.ema.update(self.net)
        return {"loss": total, "lr": lr}

    # -- validation and export ---------------------------------------------------------------------

    def ema_net(self) -> UNetModelSwin:
        net = copy.deepcopy(self.net)
        net.load_state_dict(self.ema.state_for(self.net))
        return net.eval()

    def _val_batch(self) -> Batch:
        if self._val is None:
            pairs = validation_pairs(self.recipe.data, self.recipe.loop.seed, self.recipe.unet.size_multiple)
            hr = torch.stack([p[0] for p in pairs]).to(self.ctx.device)
            lr = torch.stack([p[1] for p in pairs]).to(self.ctx.device)
            self._val = Batch(hr, lr, *encode_pairs(self.vq, hr, lr))
        return self._val

    @torch.no_grad()
    def validate(self) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """EMA weights: x0-MSE at fixed t with fixed noise (deterministic), and 15-step SR PSNR/SSIM."""
        val = self._val_batch()
        if len(val) == 0:
            return {}, {}
        assert val.z_gt is not None and val.z_y is not None
        net = self.ema_net()
        gen = torch.Generator().manual_seed(0)
        losses = []
        for t_idx in VAL_TIMESTEPS:
            t = torch.full((len(val),), min(t_idx, self.schedule.T - 1), dtype=torch.long, device=self.ctx.device)
            eps = torch.randn(val.z_gt.shape, generator=gen).to(self.ctx.device)
            x_t = self.schedule.q_sample(val.z_gt, val.z_y, t, eps)
            losses.append(x0_mse(denoise(net, self.schedule, x_t, t, val.lr), val.z_gt).mean().item())
        sampler = TeacherSampler(self.spec, net, self.vq)
        noise = torch.randn((len(val), sampler.noise_channels, *val.lr.shape[-2:]), generator=gen)
        sr = sampler(val.lr, noise.to(self.ctx.device))
        metrics = {k: sum(v) / len(v) for k, v in image_metrics(sr, val.hr, self.lpips).items()}
        return {"x0_mse": sum(losses) / len(losses), **metrics}, {"hr_sr": pair_grid(val.hr, sr)}

    def export(self, run_dir: Path) -> Path:
        ema = self.ema.state_for(self.net)
        weights = joined_weights(ema, self.vq.state_dict(), teacher=ema)
        return save_artifact(run_dir / "artifact", self.spec, weights)

    # -- checkpoint state ------------------------------------------------------------------------------

    def checkpoint_parts(self) -> dict[str, Stateful]:
        return {"net": self.net, "opt": self.opt, "ema": self.ema, "data": self.batches, "noise": self.noise}
