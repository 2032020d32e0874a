"""VQ-f4 autoencoder training (method.md 3), any size of `VQConfig`.

Loss per step: reconstruction (L1 or L2) of the straight-through-quantised decode + codebook/commitment
(||z_q - sg(z)||^2 + beta ||z - sg(z_q)||^2, beta 0.25) [+ LPIPS] [+ hinge patch-GAN after disc_start,
with its own optimizer]. The product is an autoencoder directory (`autoencoder.json` +
`autoencoder.safetensors`) that teacher recipes name in `autoencoder = ...`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsd.artifact import load_state_strict
from rsd.nets.vqgan import VQModelTorch
from training.batches import LatentBatches
from training.config import AutoencoderRecipe
from training.data import validation_pairs
from training.distributed import DistContext
from training.evaluate import image_metrics, pair_grid
from training.losses import vq_codebook_loss
from training.lpips import LPIPS
from training.optim import adamw, set_lr, step_optimizer
from training.stage import CheckpointParts, Stateful
from training.weights import read_autoencoder, save_autoencoder_dir


class ReconstructionNet(nn.Module):
    """forward(hr) -> (reconstruction, z, z_q): one call so DDP sees every parameter once."""

    def __init__(self, vq: VQModelTorch) -> None:
        super().__init__()
        self.vq = vq

    def forward(self, hr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z = self.vq.encode(hr)
        if not self.vq.config.decode_quantized:  # continuous latent: no codebook, z_q = z (loss 0)
            return self.vq.decode(z), z, z
        z_q, _ = self.vq.quantize(z)  # argmin has no gradient; z_q is differentiable in the codebook
        rec = self.vq.decode(z + (z_q - z).detach(), force_not_quantize=True)  # straight-through
        return rec, z, z_q


class PatchDiscriminator(nn.Module):
    """PatchGAN: Conv4 s2 + LeakyReLU, (layers - 1) x [Conv4 s2 + GN + LeakyReLU], Conv4 s1 -> 1 map.
    GroupNorm instead of BatchNorm so that DDP needs no synchronised statistics."""

    def __init__(self, channels: int, layers: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for _ in range(layers - 1):
            blocks += [nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.GroupNorm(min(32, ch * 2), ch * 2), nn.LeakyReLU(0.2)]
            ch *= 2
        blocks.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.layers = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, 3, H, W) in [-1, 1] -> (N, 1, h, w) patch logits."""
        return self.layers(x)


class AutoencoderStage(CheckpointParts):
    def __init__(self, recipe: AutoencoderRecipe, ctx: DistContext) -> None:
        self.recipe, self.ctx = recipe, ctx
        loop, loss = recipe.loop, recipe.loss
        self.local_batch = ctx.local_batch(loop.batch, loop.microbatch)
        if recipe.autoencoder.downsample_factor != 4:
            raise ValueError(f"autoencoder ch_mult {recipe.autoencoder.ddconfig.ch_mult} is not a x4 (f4) model")
        torch.manual_seed(loop.seed)
        self.vq = VQModelTorch(recipe.autoencoder)
        if recipe.init_from is not None:
            config, state = read_autoencoder(recipe.init_from)
            if config != recipe.autoencoder:
                raise ValueError(f"{recipe.init_from}: autoencoder config differs from the recipe's")
            load_state_strict(self.vq, state, f"autoencoder ({recipe.init_from})")
        self.vq.to(ctx.device)
        self.net = ctx.wrap(ReconstructionNet(self.vq))
        self.opt = adamw(self.vq.parameters(), recipe.optim)
        self.disc: PatchDiscriminator | None = None
        if loss.disc_weight > 0:
            self.disc = PatchDiscriminator(loss.disc_channels, loss.disc_layers).to(ctx.device)
            self.disc_ddp = ctx.wrap(self.disc)
            self.opt_disc = adamw(self.disc.parameters(), recipe.optim)
        self.lpips = None
        if loss.lpips_weight > 0:
            self.lpips = LPIPS.from_files(recipe.lpips.alexnet_weights, recipe.lpips.linear_weights).to(ctx.device)
        # HR crops only: plain bicubic LR (cheap) since the LR is not used
        data = recipe.data.model_copy(update={"bicubic_fraction": 1.0})
        self.batches = LatentBatches(data, loop.seed, ctx, loop.batch, None)
        if recipe.init_from is None and loss.codebook_init == "data" and recipe.autoencoder.decode_quantized:
            self._init_codebook_from_data(loop.seed)
        self._val_hr: Tensor | None = None

    @torch.no_grad()
    def _init_codebook_from_data(self, seed: int, images: int = 16) -> None:
        """Codebook rows = encoder outputs at random positions of the first training crops (+1% noise).
        Every process computes the same rows from the same deterministic samples."""
        dataset = self.batches.dataset
        hr = torch.stack([dataset.pair(0, i % len(dataset))[0] for i in range(images)]).to(self.ctx.device)
        z = self.vq.encode(hr)
        vectors = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        gen = torch.Generator().manual_seed(seed)
        pick = torch.randint(len(vectors), (self.vq.config.n_embed,), generator=gen)
        jitter = torch.randn(self.vq.config.n_embed, z.shape[1], generator=gen) * 0.01 * vectors.std()
        self.vq.quantize.embedding.weight.copy_(vectors[pick.to(vectors.device)] + jitter.to(vectors.device))

    def _reconstruction_loss(self, rec: Tensor, hr: Tensor) -> Tensor:
        cfg = self.recipe.loss
        loss = (rec - hr).abs().mean() if cfg.reconstruction == "l1" else F.mse_loss(rec, hr)
        if self.lpips is not None:
            loss = loss + cfg.lpips_weight * self.lpips(rec, hr).mean()
        return loss

    def train_step(self, step: int) -> dict[str, float]:
        cfg, micro = self.recipe.loss, self.recipe.loop.microbatch
        lr = set_lr(self.opt, self.recipe.optim, step)
        hr = self.batches.next().hr
        gan_on = self.disc is not None and step >= cfg.disc_start
        n_accum = -(-len(hr) // micro)
        sums = {"rec": 0.0, "codebook": 0.0, "g_adv": 0.0, "d_loss": 0.0}
        self.opt.zero_grad(set_to_none=True)
        if self.disc is not None:
            self.disc.requires_grad_(False)
        recs = []
        for i in range(0, len(hr), micro):
            x = hr[i : i + micro]
            with self.ctx.sync([self.net], last_microbatch=i + micro >= len(hr)):
                rec, z, z_q = self.net(x)
                rec_loss = self._reconstruction_loss(rec, x)
                cb_loss = vq_codebook_loss(z, z_q, cfg.beta)
                total = rec_loss + cfg.codebook_weight * cb_loss
                if gan_on:
                    assert self.disc is not None
                    g_adv = -self.disc(rec).mean()  # hinge generator loss
                    total = total + cfg.disc_weight * g_adv
                    sums["g_adv"] += g_adv.item() / n_accum
                (total / n_accum).backward()
            recs.append(rec.detach())
            sums["rec"] += rec_loss.item() / n_accum
            sums["codebook"] += cb_loss.item() / n_accum
        step_optimizer(self.opt, self.vq.parameters(), self.recipe.optim)
        if gan_on:
            sums["d_loss"] = self._disc_step(hr, torch.cat(recs), step)
        return {**sums, "lr": lr}

    def _disc_step(self, hr: Tensor, rec: Tensor, step: int) -> float:
        assert self.disc is not None
        micro = self.recipe.loop.microbatch
        self.disc.requires_grad_(True)
        set_lr(self.opt_disc, self.recipe.optim, step)
        self.opt_disc.zero_grad(set_to_none=True)
        n_accum = -(-len(hr) // micro)
        total = 0.0
        for i in range(0, len(hr), micro):
            with self.ctx.sync([self.disc_ddp], last_microbatch=i + micro >= len(hr)):
                logits = self.disc_ddp(torch.cat([hr[i : i + micro], rec[i : i + micro]]))
                n = len(hr[i : i + micro])
                loss = F.relu(1 - logits[:n]).mean() + F.relu(1 + logits[n:]).mean()
                (loss / n_accum).backward()
            total += loss.item() / n_accum
        step_optimizer(self.opt_disc, self.disc.parameters(), self.recipe.optim)
        return total

    @torch.no_grad()
    def validate(self) -> tuple[dict[str, float], dict[str, Tensor]]:
        if self._val_hr is None:
            pairs = validation_pairs(self.recipe.data, self.recipe.loop.seed, 1)
            self._val_hr = torch.stack([p[0] for p in pairs]).to(self.ctx.device) if pairs else None
        if self._val_hr is None:
            return {}, {}
        self.vq.eval()
        z = self.vq.encode(self._val_hr)
        rec = self.vq.decode(z)  # quantised decode (unless decode_quantized is off), as inference does
        self.vq.train()
        metrics = {k: sum(v) / len(v) for k, v in image_metrics(rec, self._val_hr).items()}
        if self.vq.config.decode_quantized:
            metrics["codes_used"] = float(self.vq.quantize(z)[1].unique().numel())
        return metrics, {"hr_reconstruction": pair_grid(self._val_hr, rec)}

    def export(self, run_dir: Path) -> Path:
        return save_autoencoder_dir(run_dir / "autoencoder", self.recipe.autoencoder, self.vq.state_dict())

    def checkpoint_parts(self) -> dict[str, Stateful]:
        parts: dict[str, Stateful] = {"vq": self.vq, "opt": self.opt, "data": self.batches}
        if self.disc is not None:
            parts |= {"disc": self.disc, "opt_disc": self.opt_disc}
        return parts
