"""This process's share of each global batch, as images and (frozen-VQ) latents.

Every process walks the same global key stream and keeps its contiguous block of rows (DistContext.
shard), so a K-process run sees exactly the samples of a one-process run with the same global batch.
Random tensors of the training step are drawn for the whole global batch from one seeded generator
and sharded the same way (`GlobalNoise`), for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rsd.nets.vqgan import VQModelTorch
from rsd.onestep import bicubic_x4
from training.config import DataConfig
from training.data import BatchStream, PairDataset, load_pairs
from training.distributed import DistContext


@dataclass
class Batch:
    """hr: (n, 3, S, S), lr: (n, 3, S/4, S/4) in [-1, 1]; z_gt = E(hr), z_y = E(bicubic_x4(lr)):
    (n, C, S/4, S/4) latents, or None when no autoencoder is used."""

    hr: torch.Tensor
    lr: torch.Tensor
    z_gt: torch.Tensor | None = None
    z_y: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.hr.shape[0]

    def rows(self, start: int, stop: int) -> Batch:
        def cut(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[start:stop]

        return Batch(self.hr[start:stop], self.lr[start:stop], cut(self.z_gt), cut(self.z_y))

    def micro(self, size: int) -> list[Batch]:
        return [self.rows(i, i + size) for i in range(0, len(self), size)]


@torch.no_grad()
def encode_pairs(
    vq: VQModelTorch, hr: torch.Tensor, lr: torch.Tensor, chunk: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """z_gt = E(hr), z_y = E(bicubic_x4(lr)), no quantisation (method.md 1.1, 1.5)."""
    z_gt = torch.cat([vq.encode(hr[i : i + chunk]) for i in range(0, len(hr), chunk)])
    z_y = torch.cat([vq.encode(bicubic_x4(lr[i : i + chunk])) for i in range(0, len(lr), chunk)])
    return z_gt, z_y


class LatentBatches:
    """Endless local batches. With `cache > 0`, the first `cache` pairs are built and encoded once and
    every batch is drawn from them (method.md-faithful pairs are fresh each batch; the cache makes tiny
    CPU runs feasible)."""

    def __init__(
        self,
        data: DataConfig,
        seed: int,
        ctx: DistContext,
        global_batch: int,
        vq: VQModelTorch | None,
        cache: int = 0,
    ) -> None:
        self.dataset = PairDataset(data, seed)
        self.ctx = ctx
        self.global_batch = global_batch
        self.vq = vq
        self.workers = data.workers
        self.cached: Batch | None = None
        if cache:
            keys = [(0, i % len(self.dataset)) for i in range(cache)]
            hr, lr = load_pairs(self.dataset, keys, self.workers)
            self.cached = self._encode(hr.to(ctx.device), lr.to(ctx.device))
        self.stream = BatchStream(cache or len(self.dataset), seed)

    def _encode(self, hr: torch.Tensor, lr: torch.Tensor) -> Batch:
        if self.vq is None:
            return Batch(hr, lr)
        z_gt, z_y = encode_pairs(self.vq, hr, lr)
        return Batch(hr, lr, z_gt, z_y)

    def next(self) -> Batch:
        keys = self.ctx.shard_list(self.stream.next_keys(self.global_batch))
        if self.cached is not None:
            index = torch.tensor([i for _, i in keys], device=self.cached.hr.device)
            c = self.cached
            return Batch(
                c.hr[index],
                c.lr[index],
                None if c.z_gt is None else c.z_gt[index],
                None if c.z_y is None else c.z_y[index],
            )
        hr, lr = load_pairs(self.dataset, keys, self.workers)
        return self._encode(hr.to(self.ctx.device), lr.to(self.ctx.device))

    def state_dict(self) -> dict[str, int]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.stream.load_state_dict(state)


class GlobalNoise:
    """Seeded random tensors drawn for the global batch (on CPU, identical on every process and device)
    and cut to this process's rows."""

    def __init__(self, seed: int, ctx: DistContext) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.ctx = ctx

    def randn(self, *shape: int) -> torch.Tensor:
        return self.ctx.shard(torch.randn(shape, generator=self.gen)).to(self.ctx.device)

    def randint(self, high: int, n: int) -> torch.Tensor:
        return self.ctx.shard(torch.randint(high, (n,), generator=self.gen)).to(self.ctx.device)

    def choice(self, values: list[int], n: int) -> torch.Tensor:
        idx = torch.randint(len(values), (n,), generator=self.gen)
        return self.ctx.shard(torch.tensor(values)[idx]).to(self.ctx.device)

    def state_dict(self) -> torch.Tensor:
        return self.gen.get_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.gen.set_state(state)
