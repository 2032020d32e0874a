"""Data-parallel training via torchrun: the only module that knows about ranks.

Everything else sees a `DistContext`: it shards a global batch, wraps trainable modules in DDP, turns
off gradient sync on all but the last microbatch, averages logged metrics and runs side effects
(checkpoints, logs, artifacts) on one process. With one process every call is a no-op pass-through.
Backends: gloo on CPU, nccl on CUDA. Launch: `torchrun --nproc_per_node K -m rsd_cli.main train ...`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def local_batch(self, global_batch: int, microbatch: int) -> int:
        """Per-process batch; refuses a global batch that does not split evenly (DDP = one process)."""
        if global_batch % self.world_size:
            raise ValueError(f"batch {global_batch} is not divisible by the {self.world_size} processes")
        local = global_batch // self.world_size
        if local % microbatch and microbatch < local:
            raise ValueError(
                f"per-process batch {local} (batch {global_batch} / {self.world_size} processes) is not a "
                f"multiple of microbatch {microbatch}"
            )
        return local

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of this process from a global-batch tensor (contiguous blocks, rank order)."""
        n = x.shape[0] // self.world_size
        return x[self.rank * n : (self.rank + 1) * n]

    def shard_list(self, items: list[T]) -> list[T]:
        n = len(items) // self.world_size
        return items[self.rank * n : (self.rank + 1) * n]

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP-wrap a trainable module (identity with one process)."""
        if not self.active:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    @staticmethod
    def unwrap(module: nn.Module) -> nn.Module:
        return module.module if isinstance(module, DistributedDataParallel) else module

    @contextlib.contextmanager
    def sync(self, modules: list[nn.Module], last_microbatch: bool) -> Iterator[None]:
        """Skip the gradient all-reduce except on the last microbatch (gradient accumulation)."""
        with contextlib.ExitStack() as stack:
            if not last_microbatch:
                for m in modules:
                    if isinstance(m, DistributedDataParallel):
                        stack.enter_context(m.no_sync())
            yield

    def mean(self, metrics: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over processes (same keys on every process)."""
        if not self.active or not metrics:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(values)
        return {k: float(v) / self.world_size for k, v in zip(keys, values.tolist(), strict=True)}

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run `fn` on rank 0 only, then wait for it everywhere (checkpoints, artifacts)."""
        result = fn() if self.is_main else None
        self.barrier()
        return result

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def init_distributed(device: str) -> DistContext:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); single process without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(0, 1, torch.device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank, world, dev)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
