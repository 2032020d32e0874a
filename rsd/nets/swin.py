"""Swin layer of the ResShift UNet, NCHW, with the reference's runtime shift mask (method.md 2.2).

The layer is `patch_embed` (1×1 conv C→E) → `swin_depth` blocks (shift 0, then window/2) →
`patch_unembed` (1×1 conv E→C), with no residual around it. Each block: GN32 → (cyclic shift) →
window attention with relative position bias → (shift back) → residual; GN32 → 1×1-conv MLP → residual.

Shift mask: the reference recomputes the mask from the *runtime* feature size on every call, and its
mask is not the textbook one (method.md 2.2, fixtures README behaviour 2; see `reference_shift_mask`).
We reproduce it, build it once per (H, W, device, dtype) and keep it in a per-block dict outside the
state_dict. The persistent `attn_mask` buffers exist only for checkpoint parity and are never read.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rsd.nets.layers import GroupNorm32

#: value added to masked attention logits (the reference uses -100, not -inf)
MASK_VALUE = -100.0


def relative_position_index(window: int) -> Tensor:
    """(window², window²) int64 index into the `(2·window−1)²`-row bias table (standard Swin).

    Tokens are flattened row-major (h, then w): index[i, j] = (dh + w−1)·(2w−1) + (dw + w−1) with
    (dh, dw) = pos(i) − pos(j).
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
    return rel[0] * (2 * window - 1) + rel[1]


def _window_labels(labels: Tensor, window: int, transposed: bool) -> Tensor:
    """(H, W) region labels -> (nW, window²): windows row-major; tokens row-major (h, w), or (w, h)
    when `transposed`."""
    height, width = labels.shape
    grid = labels.view(height // window, window, width // window, window)
    grid = grid.permute(0, 2, 3, 1) if transposed else grid.permute(0, 2, 1, 3)
    return grid.reshape(-1, window * window)


def _labels_to_mask(windows: Tensor, device: torch.device | None, dtype: torch.dtype) -> Tensor:
    different = windows[:, None, :] != windows[:, :, None]
    zeros = torch.zeros(different.shape, device=device, dtype=dtype)
    return zeros.masked_fill(different, MASK_VALUE)


def reference_shift_mask(
    height: int, width: int, window: int, shift: int, device: torch.device | None, dtype: torch.dtype
) -> Tensor:
    """The shifted-window mask the reference uses: (nW, window², window²), values 0 / −100.

    Two quirks of the reference `calculate_mask` (fixtures README 2, method.md 2.2), both kept:
    regions are labelled along H only (rows [0, H−window), [H−window, H−shift), [H−shift, H) of the
    shifted frame; no W regions), and each window's labels are flattened column-major (w, h) while
    the attention tokens are row-major (h, w). In token terms, only the last row of windows is masked,
    splitting each of its windows into left and right halves. Built with torch ops from Python ints
    so that it traces to constants. `device=None` means the current default device.
    """
    rows = torch.arange(height, device=device)
    row_label = (rows >= height - window).long() + (rows >= height - shift).long()
    labels = row_label[:, None].expand(height, width)
    return _labels_to_mask(_window_labels(labels, window, transposed=True), device, dtype)


def textbook_shift_mask(
    height: int, width: int, window: int, shift: int, device: torch.device | None, dtype: torch.dtype
) -> Tensor:
    """The original Swin mask (3×3 regions over H and W, row-major tokens). Not used by the net;
    tests use it to show the reference mask differs."""
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    row_label = (rows >= height - window).long() + (rows >= height - shift).long()
    col_label = (cols >= width - window).long() + (cols >= width - shift).long()
    labels = row_label[:, None] * 3 + col_label[None, :]
    return _labels_to_mask(_window_labels(labels, window, transposed=False), device, dtype)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows, with relative position bias.

    Works on the NCHW map directly: `qkv`/`proj` are `nn.Linear` (checkpoint layout) applied as 1×1
    convs, so the only layout copies are one window partition of q/k/v and one merge of the output.
    Tokens inside a window are row-major (h, w), windows row-major.
    `use_sdpa` picks `scaled_dot_product_attention` (default) or the explicit softmax arithmetic of
    the reference (kept to cross-check the fused kernel in tests).
    """

    use_sdpa: bool = True
    relative_position_index: Tensor

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=True)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def bias(self) -> Tensor:
        """(heads, window², window²) relative position bias."""
        n = self.window * self.window
        table = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        # contiguous: fused attention kernels (CUDA mem-efficient) reject a strided mask
        return table.view(n, n, self.num_heads).permute(2, 0, 1).contiguous()

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        """x: (B, C, H, W), H and W multiples of the window; attn_mask: None or (nW, L, L) additive
        (L = window²). Returns (B, C, H, W)."""
        b, c, height, width = x.shape
        ws, heads = self.window, self.num_heads
        nh, nw, d = height // ws, width // ws, c // heads
        qkv = F.conv2d(x, self.qkv.weight[:, :, None, None], self.qkv.bias)
        # (B, 3, heads, d, nh, ws, nw, ws) -> (3, B, nh, nw, heads, ws, ws, d): one copy. reshape, not view:
        # a channels-last map (the torch backend's cast path) has no NCHW view.
        qkv = qkv.reshape(b, 3, heads, d, nh, ws, nw, ws).permute(1, 0, 4, 6, 2, 5, 7, 3)
        q, k, v = qkv.reshape(3, b, nh * nw, heads, ws * ws, d).unbind(0)
        bias = self.bias().to(x.dtype)
        if attn_mask is None:
            # windows in the batch dim, one (heads, L, L) bias broadcast over them
            shape, mask = (b * nh * nw, heads, ws * ws, d), bias[None]
        else:
            # windows x heads in the head dim so that the (nW, heads, L, L) mask broadcasts over B
            shape = (b, nh * nw * heads, ws * ws, d)
            mask = (bias[None] + attn_mask[:, None].to(x.dtype)).reshape(1, -1, ws * ws, ws * ws)
        q, k, v = q.reshape(shape), k.reshape(shape), v.reshape(shape)
        if self.use_sdpa:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            logits = (q * d**-0.5) @ k.transpose(-2, -1) + mask
            out = logits.softmax(dim=-1) @ v
        # (B, nh, nw, heads, ws, ws, d) -> (B, heads, d, nh, ws, nw, ws) = (B, C, H, W): one copy
        out = out.view(b, nh, nw, heads, ws, ws, d).permute(0, 3, 6, 1, 4, 2, 5)
        return F.conv2d(out.reshape(b, c, height, width), self.proj.weight[:, :, None, None], self.proj.bias)


class ConvMlp(nn.Module):
    """1×1 conv → exact GELU → 1×1 conv on (B, C, H, W) (`mlp.fc1`, `mlp.fc2`)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """One Swin transformer block on (B, dim, H, W); H and W multiples of `window`.

    `resolution` is the construction resolution: when it is <= `window` the window shrinks to it and
    the shift becomes 0 for good, whatever the runtime size (method.md 2.2, fixtures README 3).
    """

    def __init__(
        self, dim: int, resolution: int, num_heads: int, window: int, shift: int, mlp_ratio: float, groups: int = 32
    ) -> None:
        super().__init__()
        if resolution <= window:
            window, shift = resolution, 0
        self.window = window
        self.shift = shift
        if shift > 0:
            # Checkpoint parity only: the reference never reads it (method.md 2.2, gap 9).
            mask = reference_shift_mask(resolution, resolution, window, shift, None, torch.float32)
            self.register_buffer("attn_mask", mask, persistent=True)
        self.norm1 = GroupNorm32(dim, groups)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = GroupNorm32(dim, groups)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self._mask_cache: dict[tuple[int, int, torch.device, torch.dtype], Tensor] = {}

    def shift_mask(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Runtime mask for a (height, width) map, built once per (H, W, device, dtype)."""
        if torch.compiler.is_compiling():
            # torch.export / dynamo trace with fake tensors: never store those in the cache.
            return reference_shift_mask(height, width, self.window, self.shift, device, dtype)
        key = (height, width, device, dtype)
        mask = self._mask_cache.get(key)
        if mask is None:
            mask = reference_shift_mask(height, width, self.window, self.shift, device, dtype)
            self._mask_cache[key] = mask
        return mask

    def forward(self, x: Tensor) -> Tensor:
        _, _, height, width = x.shape
        height, width = int(height), int(width)
        if height % self.window or width % self.window:
            raise ValueError(f"Swin block input {height}x{width} is not a multiple of its window {self.window}")
        h = self.norm1(x)
        mask = None
        if self.shift > 0:
            h = torch.roll(h, shifts=(-self.shift, -self.shift), dims=(2, 3))
            mask = self.shift_mask(height, width, x.device, x.dtype)
        h = self.attn(h, mask)
        if self.shift > 0:
            h = torch.roll(h, shifts=(self.shift, self.shift), dims=(2, 3))
        x = x + h
        return x + self.mlp(self.norm2(x))


class PatchProjection(nn.Module):
    """1×1 conv between the UNet width and the Swin width (`patch_embed.proj` / `patch_unembed.proj`)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class SwinLayer(nn.Module):
    """The reference `BasicLayer` as used in the UNet: (B, C, H, W) -> (B, C, H, W), no outer residual.

    Blocks alternate shift 0 and window // 2 (method.md 2.2).
    """

    def __init__(
        self,
        channels: int,
        embed_dim: int,
        resolution: int,
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: float,
        groups: int = 32,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchProjection(channels, embed_dim)
        self.patch_unembed = PatchProjection(embed_dim, channels)
        self.blocks = nn.ModuleList(
            SwinBlock(embed_dim, resolution, num_heads, window, (i % 2) * (window // 2), mlp_ratio, groups)
            for i in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.patch_embed(x)
        for block in self.blocks:
            h = block(h)
        return self.patch_unembed(h)
