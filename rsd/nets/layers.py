"""UNet building blocks with the ResShift parameter names (method.md 1.6, 2.2).

Every block works in NCHW. Module attribute names and `nn.Sequential` indices are part of the
checkpoint format (method.md 2.5): `in_layers.{0,2}`, `emb_layers.1`, `out_layers.{0,3}`,
`skip_connection`, `op`, `conv`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32, C), eps 1e-5, computed in fp32 and cast back to the input dtype (method.md 2.2).

    Half-precision inputs would lose the variance to rounding; the reference always normalises in fp32.
    """

    def __init__(self, num_channels: int, groups: int = 32) -> None:
        super().__init__(groups, num_channels, eps=1e-5, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of integer timesteps, cos first (method.md 1.6).

    t: (N,) integer (or float) step indices 0..T-1, not rescaled. Returns (N, dim) float32:
    `cat([cos(t·f), sin(t·f)])` with `f_i = exp(-ln(max_period)·i/half)`, zero-padded when dim is odd.
    """
    half = dim // 2
    # i / half (not i / (half - 1)): the ResShift variant, not the ldm one (method.md 1.6).
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class ResBlock(nn.Module):
    """Residual block with FiLM timestep conditioning `GN(h)·(1+scale)+shift` (method.md 2.2).

    x: (N, in_channels, h, w); emb: (N, emb_channels). Returns (N, out_channels, h, w).
    """

    def __init__(
        self, in_channels: int, emb_channels: int, out_channels: int, dropout: float, groups: int = 32
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.in_layers = nn.Sequential(
            GroupNorm32(in_channels, groups), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        out_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # Zero-initialised last conv: every residual branch starts as the identity (method.md 2.2).
        nn.init.zeros_(out_conv.weight)
        if out_conv.bias is not None:
            nn.init.zeros_(out_conv.bias)
        self.out_layers = nn.Sequential(GroupNorm32(out_channels, groups), nn.SiLU(), nn.Dropout(p=dropout), out_conv)
        self.skip_connection: nn.Module = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        scale, shift = emb_out.chunk(2, dim=1)
        norm, act, drop, conv = self.out_layers
        h = conv(drop(act(torch.addcmul(shift, norm(h), 1 + scale))))  # GN(h)·(1+scale)+shift
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """3×3 conv, stride 2, padding 1, same channels (method.md 2.2). (N,C,h,w) -> (N,C,h/2,w/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest ×2 then 3×3 conv, same channels (method.md 2.2). (N,C,h,w) -> (N,C,2h,2w)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
