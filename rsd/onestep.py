"""OneStepSR: THE graph every backend runs (architecture.md invariant 2; method.md 5.1).

    lq (N,3,h,w) -> bicubic x4 -> VQ encode -> z_y -> prior x_T = z_y + kappa*sqrt(eta_T)*eps
    -> student x0 = G(x_T / s_T, t=T-1, lq, xi) -> VQ decode (quantizes) -> clamp -> sr (N,3,4h,4w)
    (-> optional LR-consistency step before the clamp when the spec asks for it; `lr_consistent`)

Randomness is an explicit input (`noise`), drawn on the host from a seed, so the same seed gives the
same image on torch, onnxruntime and TensorRT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol, Self

import torch
import torch.nn.functional as F
from torch import nn

from rsd.artifact import load_artifact, load_state_strict
from rsd.denoiser import Denoiser
from rsd.nets.unet import UNetModelSwin
from rsd.nets.vqgan import VQModelTorch
from rsd.schedule import Schedule
from rsd.spec import ArtifactError, ModelSpec


def bicubic_x4(lq: torch.Tensor) -> torch.Tensor:
    """Reference LR upsampling (method.md 1.5): torch bicubic, a=-0.75, align_corners=False,
    no antialias, no clamping of overshoot."""
    return F.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False)


def lr_consistent(sr: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """One back-projection step: sr + bicubic_x4(lq - box_downsample_x4(sr)). [ours, not in RSD]

    The output keeps its own high frequencies and takes its low frequencies (mean colour, brightness,
    smooth gradients) from the LR input, which it then agrees with up to the box/bicubic mismatch. A
    small autoencoder shifts colours (the bundled model's, part-way through training: held-out mean red
    0.36 -> 0.08 in [-1, 1]); this step removes such drift at the cost of two resamplings (spec
    `lr_consistency`).
    Plain average pooling and the bicubic upsample export to ONNX/TensorRT like the rest of the graph.
    """
    return sr + bicubic_x4(lq - F.avg_pool2d(sr, 4))


def finish_output(spec: ModelSpec, sr: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """Decoded image -> the samplers' output: the LR-consistency step if the spec asks for it, then the clamp."""
    return (lr_consistent(sr, lq) if spec.lr_consistency else sr).clamp(-1.0, 1.0)


class SRGraph(Protocol):
    """What every sampler graph offers (OneStepSR, rsd.sampler.AncestralSR): `graph(lq, noise) -> sr`,
    with all randomness in `noise` (N, noise_channels, h, w), so sr is a function of (lq, noise)."""

    spec: ModelSpec
    autoencoder: VQModelTorch

    @property
    def noise_channels(self) -> int: ...

    def check_input(self, lq: torch.Tensor, noise: torch.Tensor) -> None: ...

    #: nn.Module's own signature; the graphs take (lq, noise) and return sr
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...


def check_graph_input(spec: ModelSpec, noise_channels: int, lq: torch.Tensor, noise: torch.Tensor) -> None:
    """lq (N, 3, h, w) with h, w multiples of the net's multiple; noise (N, noise_channels, h, w)."""
    n, c, h, w = lq.shape
    m = spec.lr_multiple
    if c != 3 or h % m or w % m:
        raise ValueError(f"lq must be (N, 3, h, w) with h, w multiples of {m}; got {tuple(lq.shape)}")
    if tuple(noise.shape) != (n, noise_channels, h, w):
        raise ValueError(
            f"noise must be {(n, noise_channels, h, w)} for lq {tuple(lq.shape)}; got {tuple(noise.shape)}"
        )


def should_check() -> bool:
    """Shape checks are Python branches: skipped while tracing or compiling (shapes are fixed there)."""
    return not torch.jit.is_tracing() and not torch.compiler.is_compiling()


class DenoisingGraph(nn.Module):
    """What every sampling graph is made of: the spec, its schedule, the artifact's `student.*` net
    inside a Denoiser, and the autoencoder. OneStepSR and rsd.sampler.AncestralSR build on it."""

    def __init__(self, spec: ModelSpec, net: UNetModelSwin, autoencoder: VQModelTorch) -> None:
        super().__init__()
        self.spec = spec
        self.schedule = Schedule(spec.schedule)
        self.denoiser = Denoiser(net, self.schedule)
        self.autoencoder = autoencoder

    @classmethod
    def from_artifact(cls, model_dir: str | Path, device: str | torch.device = "cpu") -> Self:
        """Strictly load an artifact directory (spec.json + weights.safetensors; its `student.*` net), eval mode."""
        return cls(*load_nets(model_dir, "student", device)).eval()


class OneStepSR(DenoisingGraph):
    """One-step x4 super-resolution. Build it with `OneStepSR.from_artifact(dir)` only."""

    @property
    def noise_channels(self) -> int:
        """Channels of the `noise` input: the latent's prior-noise channels + the student's noise channels."""
        return self.spec.graph_noise_channels

    def check_input(self, lq: torch.Tensor, noise: torch.Tensor) -> None:
        check_graph_input(self.spec, self.noise_channels, lq, noise)

    def encode_lq(self, lq: torch.Tensor) -> torch.Tensor:
        """z_y = E(bicubic_x4(lq)), no quantisation (method.md 1.5). (N,3,h,w) -> (N,3,h,w) latent."""
        return self.autoencoder.encode(bicubic_x4(lq))

    def forward(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """lq: (N, 3, h, w) float in [-1, 1]; noise: (N, 3 + noise_channels, h, w) standard normal,
        channels 0-2 the prior noise eps, the rest the student noise xi.
        Returns sr: (N, 3, 4h, 4w) in [-1, 1]."""
        if should_check():
            self.check_input(lq, noise)
        # Decode quantizes (method.md 3, fixtures README 5); no clamp before decode, clamp after.
        return finish_output(self.spec, self.autoencoder.decode(self.predict_x0(lq, noise)), lq)

    def predict_x0(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The latent the graph decodes: one net call at t = T-1 from the prior sample (no shape check)."""
        c = self.spec.student.out_channels
        eps, xi = noise[:, :c], noise[:, c:]
        z_y = self.encode_lq(lq)
        x_T = self.schedule.prior_sample(z_y, eps)  # method.md 1.2 prior, 5.1 step 5
        t = torch.full_like(lq[:, 0, 0, 0], self.schedule.T - 1, dtype=torch.long)
        return self.denoiser(x_T, t, lq, xi if self.spec.net_noise_channels else None)  # one call, t = T-1


def forward_with_codes(model: SRGraph, lq: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`model(lq, noise)` and the VQ codes it used, (N, h, w) int32, read by a hook on the quantiser (so the
    computation is exactly `OneStepSR.forward`). A continuous-latent autoencoder never quantises: all zeros."""
    captured: list[torch.Tensor] = []
    hook = model.autoencoder.quantize.register_forward_hook(lambda _m, _i, out: captured.append(out[1]))
    try:
        sr = model(lq, noise)
    finally:
        hook.remove()
    codes = captured[0] if captured else torch.zeros_like(lq[:, 0], dtype=torch.int32)
    return sr, codes.to(torch.int32)


def load_nets(
    model_dir: str | Path, unet: Literal["student", "teacher"], device: str | torch.device
) -> tuple[ModelSpec, UNetModelSwin, VQModelTorch]:
    """Strictly load an artifact's `unet` and its autoencoder (built on the meta device, then filled)."""
    spec, states = load_artifact(model_dir)
    config = spec.student if unet == "student" else spec.teacher
    if config is None:
        raise ArtifactError(f"artifact {spec.name!r} has no teacher weights (needed for 15-step sampling)")
    with torch.device("meta"):
        net = UNetModelSwin(config)
        autoencoder = VQModelTorch(spec.autoencoder)
    net = net.to_empty(device=device)
    autoencoder = autoencoder.to_empty(device=device)
    load_state_strict(net, states[unet], unet)
    load_state_strict(autoencoder, states["autoencoder"], "autoencoder")
    return spec, net, autoencoder
