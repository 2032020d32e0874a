"""Typed configurations of the nets and the schedule (pydantic, torch-free).

Field names are the reference config names (method.md 2.1, 3, 1.3) so that a reference YAML/JSON
section validates as-is. Unknown keys are errors (`extra="forbid"`). This module imports no torch so
that the light API process can read an artifact's `spec.json`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    """Base of every typed config and recipe: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class UNetConfig(StrictModel):
    """UNetModelSwin hyper-parameters (method.md 2.1).

    Two reference spellings give the same network: ResShift HEAD (`in_channels: 3, lq_size: 64`,
    lq channels added by the net) and SinSR/RSD.yaml (`in_channels: 6`, no `lq_size`). `noise_channels`
    > 0 is the RSD student (method.md 4.2): extra first-conv input channels appended last.
    """

    image_size: int = 64
    in_channels: int = 6
    model_channels: int = 160
    out_channels: int = 3
    num_res_blocks: list[int] | int = Field(default_factory=lambda: [2, 2, 2, 2])
    attention_resolutions: list[int] = Field(default_factory=lambda: [64, 32, 16, 8])
    dropout: float = 0.0
    channel_mult: list[int] = Field(default_factory=lambda: [1, 2, 2, 4])
    conv_resample: bool = True
    dims: Literal[2] = 2
    use_fp16: bool = False
    num_head_channels: int = 32
    use_scale_shift_norm: Literal[True] = True
    resblock_updown: Literal[False] = False
    swin_depth: int = 2
    swin_embed_dim: int = 192
    window_size: int = 8
    mlp_ratio: float = 4.0
    patch_norm: Literal[False] = False
    cond_lq: Literal[True] = True
    lq_size: int | None = None
    noise_channels: int = Field(default=0, ge=0)
    #: GroupNorm groups (reference: 32, method.md 2.2). 32 groups over a 32-channel level normalise each
    #: channel alone (the problem the bundled autoencoder had, DDConfig.norm_groups); small nets use fewer.
    norm_groups: int = Field(default=32, ge=1)

    @property
    def lq_channels(self) -> int:
        """Channels of the raw LR image concatenated after the scaled latent (method.md 1.5)."""
        return 3

    @property
    def first_conv_in_channels(self) -> int:
        """Input channels of `input_blocks.0.0`: latent + lq (+ student noise)."""
        base = self.in_channels + (self.lq_channels if self.lq_size is not None else 0)
        return base + self.noise_channels

    @property
    def latent_channels(self) -> int:
        """Channels of the noisy latent x_t (the first part of the first-conv input)."""
        return self.first_conv_in_channels - self.lq_channels - self.noise_channels

    @property
    def size_multiple(self) -> int:
        """Latent H and W must be multiples of this (downsamples x bottleneck window; method.md 2.4)."""
        return 2 ** (len(self.channel_mult) - 1) * self.window_size

    @property
    def res_blocks_per_level(self) -> list[int]:
        if isinstance(self.num_res_blocks, int):
            return [self.num_res_blocks] * len(self.channel_mult)
        return list(self.num_res_blocks)

    @model_validator(mode="after")
    def _check(self) -> UNetConfig:
        if len(self.res_blocks_per_level) != len(self.channel_mult):
            raise ValueError(
                f"num_res_blocks {self.num_res_blocks} must have one entry per channel_mult level "
                f"({len(self.channel_mult)})"
            )
        widths = sorted({self.model_channels * m for m in self.channel_mult} | {self.swin_embed_dim})
        if any(w % self.norm_groups for w in widths):
            raise ValueError(f"norm_groups {self.norm_groups} must divide every width {widths}")
        if self.swin_embed_dim % self.num_head_channels:
            raise ValueError(
                f"swin_embed_dim {self.swin_embed_dim} is not a multiple of num_head_channels {self.num_head_channels}"
            )
        if self.latent_channels != self.out_channels:
            raise ValueError(
                f"latent channels {self.latent_channels} (from in_channels={self.in_channels}, "
                f"lq_size={self.lq_size}) differ from out_channels {self.out_channels}"
            )
        return self

    def with_noise_channels(self, noise_channels: int) -> UNetConfig:
        return self.model_copy(update={"noise_channels": noise_channels})


class DDConfig(StrictModel):
    """Encoder/decoder layout of the VQ autoencoder (method.md 3)."""

    double_z: Literal[False] = False
    z_channels: int = 3
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: list[int] = Field(default_factory=lambda: [1, 2, 4])
    num_res_blocks: int = 2
    attn_resolutions: list[int] = Field(default_factory=list)
    dropout: float = 0.0
    # Accepted for config compatibility; the reference swallows it too (method.md 3).
    padding_mode: str = "zeros"
    #: GroupNorm groups (reference: 32). With 32 groups over 32 channels every channel is normalised on its
    #: own, which erases each channel's mean over the image: a 32-channel net then cannot carry colour or
    #: brightness past its output norm (measured: colours drift to grey). Small nets use fewer groups so a
    #: group spans several channels, as the reference's 128 channels / 32 groups does (4 per group).
    norm_groups: int = Field(default=32, ge=1)
    #: self-attention over all latent positions in the encoder's and decoder's middle block (reference:
    #: always). Off = a fully convolutional autoencoder: a tile's latent no longer depends on the whole
    #: tile, and on CPU the two attentions cost about a quarter of the VQ time at tile 64 (bundled model).
    mid_attention: bool = True

    @model_validator(mode="after")
    def _check(self) -> DDConfig:
        widths = sorted({self.ch * m for m in self.ch_mult})
        if any(w % self.norm_groups for w in widths):
            raise ValueError(f"norm_groups {self.norm_groups} must divide every level width {widths} (ch x ch_mult)")
        return self

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


class VQConfig(StrictModel):
    """VQModelTorch: `embed_dim` latent channels, `n_embed` codebook entries (method.md 3)."""

    embed_dim: int = 3
    n_embed: int = 8192
    ddconfig: DDConfig = Field(default_factory=DDConfig)
    #: decode snaps the latent to the codebook first (method.md 3; the published weights and parity need
    #: it). False = a continuous-latent autoencoder: the codebook is unused and decode reads z as is (our
    #: bundled model's choice, where a small codebook capped the reconstruction; models/rsd-tiny/MODEL_CARD.md).
    decode_quantized: bool = True

    @property
    def downsample_factor(self) -> int:
        return self.ddconfig.downsample_factor


class ScheduleConfig(StrictModel):
    """ResShift exponential schedule (method.md 1.3). Official x4 values are the defaults."""

    schedule_name: Literal["exponential"] = "exponential"
    steps: int = Field(default=15, ge=2)
    kappa: float = Field(default=2.0, gt=0)
    power: float = Field(default=0.3, gt=0)
    min_noise_level: float = Field(default=0.04, gt=0)
    etas_end: float = Field(default=0.99, gt=0, lt=1)
    normalize_input: bool = True
    latent_flag: bool = True

    def digest(self) -> str:
        """Stable hash of the schedule: exported engines carry it and are refused on mismatch."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]
