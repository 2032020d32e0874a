"""UNetModelSwin: the ResShift x0-prediction network, teacher and RSD student (method.md 2, 4.2).

Parameter names, shapes and registration order follow the reference checkpoints (method.md 2.5), so
published weights load with `load_state_dict(strict=True)`. The net does not scale its input: the
Denoiser divides x_t by sqrt(kappa²·eta_t + 1) before calling it (method.md 1.4).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rsd.config import UNetConfig
from rsd.nets.layers import Downsample, GroupNorm32, ResBlock, Upsample, timestep_embedding
from rsd.nets.swin import SwinBlock, SwinLayer

FIRST_CONV_WEIGHT = "input_blocks.0.0.weight"


class EmbedSequential(nn.Sequential):
    """Sequential whose ResBlocks also receive the timestep embedding (reference block layout)."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNetModelSwin(nn.Module):
    """Swin-UNet predicting x0 from (scaled x_t, t, lq[, noise]) (method.md 2.3, 2.4, 4.2).

    `config.noise_channels > 0` builds the RSD student: the first conv takes the noise channels
    appended last. Latent sides must be multiples of `self.size_multiple`: the lcm of the total
    downsampling and, for every Swin layer, its (possibly shrunk) window times its downscale. It can
    be smaller than `config.size_multiple` (e.g. 32 vs 64 when the bottleneck window shrank to 4).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if not config.conv_resample:
            raise ValueError("conv_resample=False is not supported (the reference x4 model uses True)")
        self.config = config
        mc = config.model_channels
        self.time_embed = nn.Sequential(nn.Linear(mc, 4 * mc), nn.SiLU(), nn.Linear(4 * mc, 4 * mc))
        self._multiples: list[int] = [2 ** (len(config.channel_mult) - 1)]
        self.input_blocks = nn.ModuleList()
        skip_channels, ch, ds, scale = self._build_encoder()
        # The middle block always carries a Swin layer, whatever attention_resolutions says.
        self.middle_block = EmbedSequential(
            ResBlock(ch, 4 * mc, ch, config.dropout, config.norm_groups),
            self._swin(ch, ds, scale),
            ResBlock(ch, 4 * mc, ch, config.dropout, config.norm_groups),
        )
        self.output_blocks = nn.ModuleList()
        ch = self._build_decoder(skip_channels, ch, ds, scale)
        self.out = nn.Sequential(
            GroupNorm32(ch, config.norm_groups), nn.SiLU(), nn.Conv2d(ch, config.out_channels, 3, padding=1)
        )
        self.size_multiple = math.lcm(*self._multiples)

    def _build_encoder(self) -> tuple[list[int], int, int, int]:
        """Fills `input_blocks`; returns (skip channels, channels, resolution, downscale) at the bottom."""
        cfg = self.config
        mc, emb_dim = cfg.model_channels, 4 * cfg.model_channels
        self.input_blocks.append(EmbedSequential(nn.Conv2d(cfg.first_conv_in_channels, mc, 3, padding=1)))
        skip_channels = [mc]
        ch, ds, scale = mc, cfg.image_size, 1  # ds: construction resolution (method.md 2.3)
        for level, mult in enumerate(cfg.channel_mult):
            for j in range(cfg.res_blocks_per_level[level]):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * mc, cfg.dropout, cfg.norm_groups)]
                ch = mult * mc
                if ds in cfg.attention_resolutions and j == 0:  # Swin after the first ResBlock only
                    layers.append(self._swin(ch, ds, scale))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds, scale = ds // 2, scale * 2
        return skip_channels, ch, ds, scale

    def _build_decoder(self, skip_channels: list[int], ch: int, ds: int, scale: int) -> int:
        """Fills `output_blocks` (skips consumed LIFO); returns the final channel count."""
        cfg = self.config
        mc, emb_dim = cfg.model_channels, 4 * cfg.model_channels
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            n_blocks = cfg.res_blocks_per_level[level]
            for i in range(n_blocks + 1):
                skip = skip_channels.pop()
                layers: list[nn.Module] = [ResBlock(ch + skip, emb_dim, mult * mc, cfg.dropout, cfg.norm_groups)]
                ch = mult * mc
                if ds in cfg.attention_resolutions and i == 0:
                    layers.append(self._swin(ch, ds, scale))
                if level and i == n_blocks:
                    layers.append(Upsample(ch))
                    ds, scale = ds * 2, scale // 2
                self.output_blocks.append(EmbedSequential(*layers))
        return ch

    def _swin(self, channels: int, resolution: int, scale: int) -> SwinLayer:
        """Swin layer for a `resolution`² map `scale`× below the latent; records its size constraint."""
        cfg = self.config
        layer = SwinLayer(
            channels,
            cfg.swin_embed_dim,
            resolution,
            cfg.swin_depth,
            cfg.swin_embed_dim // cfg.num_head_channels,
            cfg.window_size,
            cfg.mlp_ratio,
            cfg.norm_groups,
        )
        for block in layer.blocks:
            assert isinstance(block, SwinBlock)
            self._multiples.append(scale * block.window)
        return layer

    def _check_inputs(self, x: Tensor, timesteps: Tensor, lq: Tensor, noise: Tensor | None) -> None:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.latent_channels:
            raise ValueError(f"x must be (N, {cfg.latent_channels}, h, w), got {tuple(x.shape)}")
        n, _, h, w = x.shape
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(
                f"latent size {h}x{w} is not a multiple of {self.size_multiple} (pad the LR image; method.md 2.4)"
            )
        if tuple(lq.shape) != (n, cfg.lq_channels, h, w):
            raise ValueError(f"lq must be {(n, cfg.lq_channels, h, w)} like x, got {tuple(lq.shape)}")
        if tuple(timesteps.shape) != (n,):
            raise ValueError(f"timesteps must be ({n},), got {tuple(timesteps.shape)}")
        if cfg.noise_channels == 0:
            if noise is not None:
                raise ValueError(f"this net has noise_channels=0 (teacher) but got noise {tuple(noise.shape)}")
        elif noise is None or tuple(noise.shape) != (n, cfg.noise_channels, h, w):
            got = None if noise is None else tuple(noise.shape)
            raise ValueError(
                f"student net needs noise of shape {(n, cfg.noise_channels, h, w)} (method.md 4.2), got {got}"
            )

    def _encode(
        self, x: Tensor, timesteps: Tensor, lq: Tensor, noise: Tensor | None
    ) -> tuple[Tensor, list[Tensor], Tensor]:
        """Input blocks + middle block: (middle output, skip list, emb)."""
        self._check_inputs(x, timesteps, lq, noise)
        t_emb = timestep_embedding(timesteps, self.config.model_channels)
        emb = self.time_embed(t_emb.to(next(self.time_embed.parameters()).dtype))
        parts = [x, lq.to(x.dtype)] + ([] if noise is None else [noise.to(x.dtype)])
        h = torch.cat(parts, dim=1)  # cat([x̃_t, lq, noise]): noise last (method.md 1.5, 4.2)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        return self.middle_block(h, emb), skips, emb

    def forward(self, x: Tensor, timesteps: Tensor, lq: Tensor, noise: Tensor | None = None) -> Tensor:
        """x0 prediction.

        x: (N, latent_channels, h, w) float, the already input-scaled x_t (method.md 1.4);
        timesteps: (N,) int64 in 0..T-1; lq: (N, 3, h, w) in [-1, 1] at latent resolution;
        noise: (N, noise_channels, h, w) ~ N(0, 1), required iff config.noise_channels > 0.
        Returns (N, out_channels, h, w) in the dtype of the weights.
        """
        h, skips, emb = self._encode(x, timesteps, lq, noise)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    def middle_features(self, x: Tensor, timesteps: Tensor, lq: Tensor, noise: Tensor | None = None) -> Tensor:
        """Output of `middle_block`: (N, ch_bottleneck, h/2^(L-1), w/2^(L-1)), for the GAN head
        (method.md 4.3). Same arguments as `forward`; the decoder is not run."""
        return self._encode(x, timesteps, lq, noise)[0]


def widen_first_conv(state_dict: dict[str, Tensor], noise_channels: int) -> dict[str, Tensor]:
    """Teacher state dict -> student state dict (method.md 4.2).

    Returns a shallow copy whose `input_blocks.0.0.weight` (C, c_in, 3, 3) gets `noise_channels` zero
    input columns appended last; the bias is kept. With those zeros the student equals the teacher for
    any noise. `c_in` must be the teacher's latent + 3 lq channels (latent channels read from
    `out.2.weight` when present, else 3).
    """
    if noise_channels < 1:
        raise ValueError(f"noise_channels must be >= 1, got {noise_channels}")
    if FIRST_CONV_WEIGHT not in state_dict:
        raise KeyError(f"state dict has no {FIRST_CONV_WEIGHT!r}: not a UNetModelSwin state dict")
    weight = state_dict[FIRST_CONV_WEIGHT]
    out_weight = state_dict.get("out.2.weight")
    teacher_in = (3 if out_weight is None else out_weight.shape[0]) + 3
    if weight.ndim != 4 or weight.shape[1] != teacher_in:
        raise ValueError(
            f"{FIRST_CONV_WEIGHT} has shape {tuple(weight.shape)}; expected {teacher_in} input channels "
            "(a teacher first conv). Already widened?"
        )
    zeros = weight.new_zeros(weight.shape[0], noise_channels, *weight.shape[2:])
    widened = dict(state_dict)
    widened[FIRST_CONV_WEIGHT] = torch.cat([weight, zeros], dim=1)
    return widened
