"""Optimizers, learning-rate warm-up and the EMA of a model's state (method.md 1.7, 4.11).

The EMA covers the full state dict, float buffers included, except `relative_position_index` keys (integer
Swin lookup tables that must stay exact). Initialised from the model, so at step 0 the EMA student is
the teacher plus the zero noise column.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from training.config import OptimConfig

SKIP = ("relative_position_index",)


class EMA:
    def __init__(self, model: nn.Module, rate: float) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"EMA rate {rate} must be in [0, 1)")
        self.rate = rate
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if self._tracked(k, v)}

    @staticmethod
    def _tracked(key: str, value: torch.Tensor) -> bool:
        return value.is_floating_point() and not key.endswith(SKIP)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow <- rate * shadow + (1 - rate) * current (after every optimizer step)."""
        for key, value in model.state_dict().items():
            if key in self.shadow:
                self.shadow[key].lerp_(value.detach(), 1.0 - self.rate)

    def state_for(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with the averaged tensors in place of the live ones."""
        return {k: self.shadow.get(k, v).detach().clone() for k, v in model.state_dict().items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state.keys() != self.shadow.keys():
            raise ValueError("EMA state does not match the model (different keys)")
        for key, value in state.items():
            self.shadow[key].copy_(value)


def adamw(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with the recipe's lr, betas, weight decay and eps (method.md 4.11)."""
    return torch.optim.AdamW(list(params), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.eps)


def set_lr(optimizer: torch.optim.Optimizer, cfg: OptimConfig, step: int) -> float:
    """Linear warm-up over cfg.warmup_steps, then constant (method.md 1.7, 4.11) or, with cfg.cosine_steps,
    a cosine decay to lr * final_lr_ratio at that step. Stateless, so a resumed run continues the same
    schedule. `step` is 0-based."""
    lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
    if cfg.cosine_steps:
        cos = 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / cfg.cosine_steps)))
        lr *= cfg.final_lr_ratio + (1.0 - cfg.final_lr_ratio) * cos
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def step_optimizer(optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter], cfg: OptimConfig) -> float:
    """Optional gradient-norm clipping, then one step; returns the gradient norm (0 if not computed)."""
    norm = 0.0
    if cfg.grad_clip > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(list(params), cfg.grad_clip))
    optimizer.step()
    return norm
