"""VQ-f4 autoencoder with the reference `VQModelTorch` parameter names (method.md 3).

Images are (N, 3, H, W) in [-1, 1] with H, W multiples of 4 (the downsample factor); latents are
(N, embed_dim, H/4, W/4). Activations run channels-last: on 2 CPU threads it measured 5-10% faster
than NCHW for both encode and decode, and it is the tensor-core layout on GPU. oneDNN then sums in a
different order (about 1e-5 relative in fp32, far inside the 1e-4 golden tolerance). Parameters
keep the default layout so state dicts stay contiguous (safetensors refuses strided tensors).
"""

from __future__ import annotations

import itertools
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsd.config import DDConfig, VQConfig

CHANNELS_LAST = torch.channels_last
# Default bound on one chunk of the (positions x n_embed) distance matrix (task: <= 64 MB).
DISTANCE_BUDGET_BYTES = 64 * 2**20


def _swish(x: Tensor) -> Tensor:
    # In place when no graph is recorded: the freshly normalised tensor is not needed again.
    return F.silu(x, inplace=not torch.is_grad_enabled())


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GN -> swish -> conv3x3 -> GN -> swish -> (dropout) -> conv3x3, plus a 1x1 shortcut if Cin != Cout."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, groups: int = 32) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = dropout
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = _swish(self.norm2(h))
        if self.dropout > 0:
            h = F.dropout(h, self.dropout, self.training)
        h = self.conv2(h)
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        # conv2's output is not needed by its backward, so the in-place add is autograd-safe.
        return h.add_(shortcut)


class AttnBlock(nn.Module):
    """Single-head self-attention over all h*w positions, residual (method.md 3).

    softmax(q k^T / sqrt(C)) v through scaled_dot_product_attention (fused kernel, no (hw x hw)
    matrix on backends that have one). The 1x1 convs are applied as one matmul on the channels-last
    token view, which equals the three convolutions exactly.
    """

    def __init__(self, channels: int, groups: int = 32) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(n, 1, h * w, c)  # (N, 1, hw, C)
        qkv = (self.q, self.k, self.v)
        weight = torch.cat([conv.weight for conv in qkv]).flatten(1)  # (3C, C)
        bias = torch.cat([cast(Tensor, conv.bias) for conv in qkv])  # built with bias=True
        q, k, v = F.linear(tokens, weight, bias).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(C), as the reference
        out = F.linear(out, self.proj_out.weight.flatten(1), self.proj_out.bias)
        out = out.reshape(n, h, w, c).permute(0, 3, 1, 2)  # NCHW view of channels-last memory
        if x.is_contiguous():  # keep the caller's layout for the layers that follow
            out = out.contiguous()
        return out.add_(x)


class Downsample(nn.Module):
    """Pad right/bottom by one, then 3x3 stride-2 conv without padding (halves H and W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


# Taps of a 3x3 conv after nearest x2, regrouped per input pixel of a stride-2 transposed conv.
# Output row 2m sees upsampled rows (2m-1, 2m, 2m+1) = input rows (m-1, m, m): taps (w0, w1+w2);
# output row 2m+1 sees input rows (m, m, m+1): taps (w0+w1, w2). conv_transpose2d (stride 2,
# padding 1) adds x[i] * K[o - 2i + 1] to out[o], hence K = (w2, w1+w2, w0+w1, w0) per axis.
_NEAREST_X2_TAPS = ((0, 0, 1), (0, 1, 1), (1, 1, 0), (1, 0, 0))


def _nearest_x2_taps(dtype: torch.dtype, device: torch.device) -> Tensor:
    """`_NEAREST_X2_TAPS` computed on the device: row p holds ones at columns max(0, 2-p) .. min(2, 3-p).

    No host data is copied, so the fold can be captured in a CUDA graph (a host-to-device copy of a
    pageable buffer is not allowed while a stream is capturing)."""
    p = torch.arange(4, device=device)[:, None]
    r = torch.arange(3, device=device)[None, :]
    return ((r >= (2 - p).clamp(min=0)) & (r <= (3 - p).clamp(max=2))).to(dtype)


def _fold_nearest_x2(weight: Tensor) -> Tensor:
    """(Cout, Cin, 3, 3) conv-after-nearest-x2 kernel -> (Cout, Cin, 4, 4) transposed-conv kernel.

    One GEMM with the 0/1 matrix kron(taps, taps): a single pass over the weight.
    """
    taps = _nearest_x2_taps(weight.dtype, weight.device)  # (4, 3)
    fold = torch.kron(taps, taps)  # (16, 9): [(p, q), (r, s)] = taps[p, r] * taps[q, s]
    c_out, c_in = weight.shape[:2]
    return (weight.reshape(c_out * c_in, 9) @ fold.t()).reshape(c_out, c_in, 4, 4)


class Upsample(nn.Module):
    """Nearest x2, then 3x3 conv (reference parameters), evaluated as one transposed convolution.

    The identity is exact in real arithmetic (only summation order changes, ~1e-6 relative) and does
    4/9 of the multiply-adds without materialising the upsampled map; the decoder's two upsampling
    convs are its most expensive layers.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        kernel = _fold_nearest_x2(self.conv.weight)  # (Cout, Cin, 4, 4)
        return F.conv_transpose2d(x, kernel.transpose(0, 1), self.conv.bias, stride=2, padding=1)


class MidBlock(nn.Module):
    """ResnetBlock -> AttnBlock -> ResnetBlock at the lowest resolution (the attention unless the config's
    `mid_attention` is off)."""

    def __init__(self, channels: int, dropout: float, groups: int = 32, attention: bool = True) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, groups)
        self.attn_1 = AttnBlock(channels, groups) if attention else None
        self.block_2 = ResnetBlock(channels, channels, dropout, groups)

    def forward(self, x: Tensor) -> Tensor:
        h = self.block_1(x)
        return self.block_2(h if self.attn_1 is None else self.attn_1(h))


class Level(nn.Module):
    """One resolution level: ResnetBlocks (each followed by attention if asked), then a resampler.

    `channels` lists the block widths: block i maps channels[i] -> channels[i+1]. `resample` is
    "down", "up" or None; it is registered as `downsample` / `upsample` (reference names).
    """

    def __init__(
        self, channels: list[int], with_attn: bool, dropout: float, resample: str | None, groups: int = 32
    ) -> None:
        super().__init__()
        pairs = itertools.pairwise(channels)
        self.block = nn.ModuleList(ResnetBlock(c_in, c_out, dropout, groups) for c_in, c_out in pairs)
        self.attn = nn.ModuleList(AttnBlock(c, groups) for c in channels[1:]) if with_attn else nn.ModuleList()
        if resample not in ("down", "up", None):
            raise ValueError(f"resample must be 'down', 'up' or None, got {resample!r}")
        self.downsample = Downsample(channels[-1]) if resample == "down" else None
        self.upsample = Upsample(channels[-1]) if resample == "up" else None

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class Encoder(nn.Module):
    """(N, in_channels, H, W) -> (N, z_channels, H/f, W/f), f = 2**(len(ch_mult)-1)."""

    def __init__(self, cfg: DDConfig) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in, res = cfg.ch, cfg.resolution
        for i_level, mult in enumerate(cfg.ch_mult):
            block_out = cfg.ch * mult
            last = i_level == len(cfg.ch_mult) - 1
            widths = [block_in] + [block_out] * cfg.num_res_blocks
            resample = None if last else "down"
            self.down.append(Level(widths, res in cfg.attn_resolutions, cfg.dropout, resample, cfg.norm_groups))
            res = res if last else res // 2
            block_in = block_out
        self.mid = MidBlock(block_in, cfg.dropout, cfg.norm_groups, cfg.mid_attention)
        self.norm_out = _norm(block_in, cfg.norm_groups)
        self.conv_out = nn.Conv2d(block_in, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(_swish(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """(N, z_channels, h, w) -> (N, out_ch, h*f, w*f); output not clamped (method.md 3)."""

    def __init__(self, cfg: DDConfig) -> None:
        super().__init__()
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // cfg.downsample_factor
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = MidBlock(block_in, cfg.dropout, cfg.norm_groups, cfg.mid_attention)
        levels: list[Level] = []
        # Built from the lowest resolution up; `up.0` is the full-resolution level (reference naming).
        for i_level in reversed(range(len(cfg.ch_mult))):
            block_out = cfg.ch * cfg.ch_mult[i_level]
            widths = [block_in] + [block_out] * (cfg.num_res_blocks + 1)
            resample = "up" if i_level != 0 else None
            levels.insert(0, Level(widths, res in cfg.attn_resolutions, cfg.dropout, resample, cfg.norm_groups))
            res = res * 2 if resample else res
            block_in = block_out
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in, cfg.norm_groups)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(_swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantiser (reference VectorQuantizer2, legacy; method.md 3).

    Distances are |z|^2 + |e|^2 - 2 z.e, the reference formula, so float32 argmins agree with it
    (ties: first index). Positions are processed in chunks so that one chunk of the
    (positions x n_embed) distance matrix stays within `distance_budget_bytes`. The chunk loop runs
    over static sizes (h*w), so it traces into a fixed ONNX graph with a dynamic batch.
    """

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)
        self.distance_budget_bytes = DISTANCE_BUDGET_BYTES

    def chunk_positions(self, batch: int | torch.SymInt, element_bytes: int) -> int:
        """Positions per sample and chunk. A symbolic batch (export) is budgeted per sample."""
        per_position = self.embedding.num_embeddings * element_bytes * (batch if isinstance(batch, int) else 1)
        return max(1, self.distance_budget_bytes // per_position)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z: (N, C, h, w) float -> (z_q (N, C, h, w) codebook vectors, indices (N, h, w) int64).

        Under autocast, and for a bf16/fp16 latent (weights cast to half precision), the distances are
        still computed in fp32 against an fp32 codebook: a bf16/fp16 distance matmul picks a different
        code for many more positions than the reduced-precision latent alone would."""
        # (the meta device, which tests use to trace host-to-device copies, has no autocast state)
        autocast = z.device.type != "meta" and torch.is_autocast_enabled(z.device.type)
        if autocast or z.dtype != torch.float32:
            with torch.autocast(z.device.type, enabled=False):
                z_q, idx = self._nearest(z.float())
            return z_q.to(z.dtype), idx
        return self._nearest(z)

    def _nearest(self, z: Tensor) -> tuple[Tensor, Tensor]:
        n, c, h, w = z.shape
        codebook = self.embedding.weight.float()  # (n_embed, C); a no-op for the fp32 codebook
        if c != codebook.shape[1]:
            raise ValueError(f"latent has {c} channels, the codebook {codebook.shape[1]}")
        z_flat = z.permute(0, 2, 3, 1).reshape(n, h * w, c)
        code_sq = codebook.pow(2).sum(dim=1)  # (n_embed,)
        codebook_t = codebook.t().expand(n, c, codebook.shape[0])
        step = self.chunk_positions(n, z.element_size())
        indices = []
        for start in range(0, h * w, step):
            chunk = z_flat[:, start : start + step]  # (N, s, C)
            # (|z|^2 + |e|^2) + (-2) z.e: scaling by -2 is exact, so this rounds like the reference's
            # (|z|^2 + |e|^2) - 2 (z.e) while making two passes over the (s x n_embed) block, not four.
            dist = torch.baddbmm(chunk.pow(2).sum(dim=2, keepdim=True) + code_sq, chunk, codebook_t, alpha=-2)
            indices.append(dist.argmin(dim=2))
        idx = indices[0] if len(indices) == 1 else torch.cat(indices, dim=1)  # (N, hw)
        z_q = F.embedding(idx, codebook).reshape(n, h, w, c).permute(0, 3, 1, 2)
        return z_q.contiguous(), idx.reshape(n, h, w)


class VQModelTorch(nn.Module):
    """VQ-f4 autoencoder: `encode` (no quantisation), `quantize`, `decode` (quantises by default)."""

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        dd = config.ddconfig
        self.config = config
        self.encoder = Encoder(dd)
        self.decoder = Decoder(dd)
        self.quantize = VectorQuantizer(config.n_embed, config.embed_dim)
        self.quant_conv = nn.Conv2d(dd.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, dd.z_channels, 1)

    def _check_image(self, x: Tensor) -> None:
        f = self.config.downsample_factor
        if x.dim() != 4 or x.shape[1] != self.config.ddconfig.in_channels:
            raise ValueError(f"image must be (N, {self.config.ddconfig.in_channels}, H, W), got {tuple(x.shape)}")
        if isinstance(x.shape[2], int) and (x.shape[2] % f or x.shape[3] % f):
            raise ValueError(f"image size {tuple(x.shape[2:])} is not a multiple of {f}")

    def encode(self, x: Tensor) -> Tensor:
        """x: (N, 3, H, W) in [-1, 1] -> latent (N, embed_dim, H/4, W/4), not quantised (method.md 1.5)."""
        self._check_image(x)
        h = self.encoder(x.contiguous(memory_format=CHANNELS_LAST))
        return self.quant_conv(h).contiguous()

    def decode(self, z: Tensor, force_not_quantize: bool = False) -> Tensor:
        """z: (N, embed_dim, h, w) -> image (N, 3, 4h, 4w), roughly [-1, 1], not clamped.

        Snaps z to the codebook first (method.md 3: sampling quantises) unless `force_not_quantize` or the
        config's `decode_quantized` is off (a continuous-latent autoencoder).
        """
        if self.config.decode_quantized and not force_not_quantize:
            z, _ = self.quantize(z)
        return self._decode_latent(z)

    def decode_straight_through(self, z: Tensor) -> Tensor:
        """decode(z) with an identity gradient through the quantiser (method.md 3, 4.9: LPIPS).

        z: (N, embed_dim, h, w) -> (N, 3, 4h, 4w); d out / d z is the decoder's gradient at z_q.
        """
        if not self.config.decode_quantized:
            return self._decode_latent(z)
        with torch.no_grad():
            z_q, _ = self.quantize(z)
        return self._decode_latent(z + (z_q - z).detach())

    def _decode_latent(self, z: Tensor) -> Tensor:
        h = self.post_quant_conv(z.contiguous(memory_format=CHANNELS_LAST))
        return self.decoder(h).contiguous()
