"""Real-ESRGAN two-stage degradation (method.md 4.12), written with numpy/scipy/torch.

One HR image in, one x4-smaller LR image out, every random choice drawn from the `numpy.random.Generator`
passed in, so the same generator state gives the same LR bit for bit. Images are torch tensors
(3, H, W) float32 in [0, 1]; the LR is quantised to 8 bit (values k/255).

Order (Real-ESRGAN, RSD.yaml `degradation` block):
  blur(k1) -> random resize -> Gaussian|Poisson noise -> JPEG
  [with prob second_order_prob: blur(k2) (prob second_blur_prob) -> resize -> noise]
  then in random order {resize to H/4 + final sinc, JPEG} -> clamp -> round to 8 bit.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import special

from training.config import DegradationConfig

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")


# -- kernels (numpy, float64, normalised to sum 1) ----------------------------------------------------


def _mahalanobis(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """d^T Sigma^-1 d on a size x size grid centred on the middle pixel; Sigma = R diag(sx^2, sy^2) R^T."""
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    sigma = rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T
    inv = np.linalg.inv(sigma)
    ax = np.arange(size, dtype=np.float64) - (size - 1) / 2
    xx, yy = np.meshgrid(ax, ax)
    d = np.stack([xx, yy], axis=-1)  # (size, size, 2)
    return np.einsum("...i,ij,...j->...", d, inv, d)


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Bivariate (an)isotropic Gaussian, (size, size), sums to 1."""
    k = np.exp(-0.5 * _mahalanobis(size, sigma_x, sigma_y, theta))
    return k / k.sum()


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    """exp(-0.5 (d^T Sigma^-1 d)^beta): beta < 1 sharper peak, beta > 1 flatter top."""
    k = np.exp(-0.5 * np.power(_mahalanobis(size, sigma_x, sigma_y, theta), beta))
    return k / k.sum()


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    """1 / (1 + (d^T Sigma^-1 d)^beta): a flat top with heavy tails."""
    k = 1.0 / (np.power(_mahalanobis(size, sigma_x, sigma_y, theta), beta) + 1.0)
    return k / k.sum()


def sinc_kernel(size: int, omega_c: float, pad_to: int = 0) -> np.ndarray:
    """2-D circular low-pass (jinc) kernel with cut-off `omega_c` (rad/pixel), optionally zero-padded."""
    if size % 2 == 0:
        raise ValueError(f"sinc kernel size {size} must be odd")
    ax = np.arange(size, dtype=np.float64) - (size - 1) / 2
    r = np.hypot(*np.meshgrid(ax, ax))
    with np.errstate(divide="ignore", invalid="ignore"):
        k = omega_c * special.j1(omega_c * r) / (2 * np.pi * r)
    k[r == 0] = omega_c**2 / (4 * np.pi)  # the limit of the expression at r -> 0
    k = k / k.sum()
    return pad_kernel(k, pad_to) if pad_to else k


def pad_kernel(kernel: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad an odd square kernel to size x size (centred)."""
    pad = (size - kernel.shape[0]) // 2
    if pad < 0 or (size - kernel.shape[0]) % 2:
        raise ValueError(f"cannot pad a {kernel.shape[0]}x{kernel.shape[0]} kernel to {size}")
    return np.pad(kernel, pad)


def _shape_beta(rng: np.random.Generator, beta_range: tuple[float, float]) -> float:
    # Half of the draws below 1 (peaky), half above (flat), as Real-ESRGAN does.
    lo, hi = beta_range
    return float(rng.uniform(lo, 1.0) if rng.uniform() < 0.5 else rng.uniform(1.0, hi))


class BlurStage(NamedTuple):
    """The blur settings of one degradation stage (DegradationConfig's fields, first or second stage)."""

    max_size: int  # blur_kernel_size
    sinc_prob: float
    probs: tuple[float, ...]  # kernel_prob: one per KERNEL_TYPES
    sigma_range: tuple[float, float]  # blur_sigma
    betag_range: tuple[float, float]
    betap_range: tuple[float, float]

    @classmethod
    def of(cls, cfg: DegradationConfig, stage: Literal[1, 2]) -> BlurStage:
        """Stage 1 reads the plain field names, stage 2 the same names suffixed with 2 (the RSD.yaml keys)."""
        suffix = "" if stage == 1 else "2"
        names = ("blur_kernel_size", "sinc_prob", "kernel_prob", "blur_sigma", "betag_range", "betap_range")
        return cls(*(getattr(cfg, name + suffix) for name in names))


def random_mixed_kernel(rng: np.random.Generator, size: int, stage: BlurStage) -> tuple[str, np.ndarray]:
    """One of KERNEL_TYPES (drawn with the stage's `probs`) with random sigma, rotation and shape."""
    probs, sigma_range = stage.probs, stage.sigma_range
    kind = KERNEL_TYPES[int(rng.choice(len(KERNEL_TYPES), p=np.asarray(probs) / np.sum(probs)))]
    sigma_x = float(rng.uniform(*sigma_range))
    if kind.endswith("aniso"):
        sigma_y = float(rng.uniform(*sigma_range))
        theta = float(rng.uniform(-math.pi, math.pi))
    else:
        sigma_y, theta = sigma_x, 0.0
    if kind.startswith("generalized"):
        return kind, generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, _shape_beta(rng, stage.betag_range))
    if kind.startswith("plateau"):
        return kind, plateau_kernel(size, sigma_x, sigma_y, theta, _shape_beta(rng, stage.betap_range))
    return kind, gaussian_kernel(size, sigma_x, sigma_y, theta)


def sample_blur_kernel(rng: np.random.Generator, stage: BlurStage) -> tuple[str, np.ndarray]:
    """A stage's blur kernel: size odd in [3, max_size - 2], sinc with `sinc_prob`, padded to max_size."""
    max_size = stage.max_size
    size = int(rng.choice(np.arange(3, max_size, 2)))
    if rng.uniform() < stage.sinc_prob:
        # Real-ESRGAN: wider cut-off range only for the large kernels.
        omega_c = float(rng.uniform(math.pi / 3, math.pi) if size < 13 else rng.uniform(math.pi / 5, math.pi))
        return "sinc", sinc_kernel(size, omega_c, pad_to=max_size)
    kind, kernel = random_mixed_kernel(rng, size, stage)
    return kind, pad_kernel(kernel, max_size)


# -- image operations (torch, (1, 3, h, w) float32) ------------------------------------------------------


def filter2d(img: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Convolve each channel with `kernel` (k x k, k odd); reflect padding (replicate when too small)."""
    k = kernel.shape[0]
    pad = k // 2
    mode = "reflect" if pad < min(img.shape[-2:]) else "replicate"
    padded = F.pad(img, (pad, pad, pad, pad), mode=mode)
    weight = torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float32)).expand(img.shape[1], 1, k, k)
    return F.conv2d(padded, weight, groups=img.shape[1])


def resize(img: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize to (h, w) (each at least 1) with torch's area/bilinear/bicubic, no antialias."""
    size = (max(1, size[0]), max(1, size[1]))
    if mode == "area":
        return F.interpolate(img, size=size, mode="area")
    return F.interpolate(img, size=size, mode=mode, align_corners=False)


def jpeg_compress(img: torch.Tensor, quality: int) -> torch.Tensor:
    """Real JPEG round trip through Pillow at `quality` (1-100); input clamped and rounded to 8 bit."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality {quality} must be in 1..100")
    u8 = (img[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(u8, "RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    decoded = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(decoded).permute(2, 0, 1).unsqueeze(0).contiguous()


def _luma(img: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 grey (1, 1, h, w), as torchvision's rgb_to_grayscale."""
    return 0.299 * img[:, :1] + 0.587 * img[:, 1:2] + 0.114 * img[:, 2:3]


def gaussian_noise(rng: np.random.Generator, img: torch.Tensor, sigma: float, gray: bool) -> torch.Tensor:
    """img + N(0, (sigma/255)^2), one noise map shared by the channels when `gray`; clamped to [0, 1]."""
    channels = 1 if gray else img.shape[1]
    noise = rng.standard_normal((1, channels, *img.shape[-2:])).astype(np.float32) * (sigma / 255.0)
    return (img + torch.from_numpy(noise)).clamp(0, 1)


def poisson_noise(rng: np.random.Generator, img: torch.Tensor, scale: float, gray: bool) -> torch.Tensor:
    """Shot noise: Poisson(img * v) / v - img with v the image's 8-bit level count rounded up to a
    power of two (Real-ESRGAN), times `scale`; clamped to [0, 1]."""
    base = _luma(img) if gray else img
    base = (base.clamp(0, 1) * 255).round() / 255
    levels = len(torch.unique(base))
    vals = 2 ** math.ceil(math.log2(max(levels, 2)))
    counts = rng.poisson(base.numpy().astype(np.float64) * vals)
    noise = torch.from_numpy((counts / vals).astype(np.float32)) - base
    return (img + noise * scale).clamp(0, 1)


# -- the pipeline -----------------------------------------------------------------------------------


@dataclass
class DegradationTrace:
    """What was drawn for one image (for inspection, grids and tests)."""

    steps: list[str] = field(default_factory=list)


def _random_resize(
    rng: np.random.Generator,
    img: torch.Tensor,
    probs: tuple[float, ...],
    scale_range: tuple[float, float],
    base: tuple[int, int],
    trace: DegradationTrace,
) -> torch.Tensor:
    kind = ("up", "down", "keep")[int(rng.choice(3, p=np.asarray(probs) / np.sum(probs)))]
    if kind == "up":
        scale = float(rng.uniform(1.0, scale_range[1]))
    elif kind == "down":
        scale = float(rng.uniform(scale_range[0], 1.0))
    else:
        scale = 1.0
    mode = RESIZE_MODES[int(rng.integers(3))]
    trace.steps.append(f"resize {kind} x{scale:.3f} {mode}")
    return resize(img, (int(base[0] * scale), int(base[1] * scale)), mode)


def _random_noise(
    rng: np.random.Generator,
    img: torch.Tensor,
    gaussian_prob: float,
    sigma_range: tuple[float, float],
    poisson_range: tuple[float, float],
    gray_prob: float,
    trace: DegradationTrace,
) -> torch.Tensor:
    if rng.uniform() < gaussian_prob:
        sigma = float(rng.uniform(*sigma_range))
        gray = bool(rng.uniform() < gray_prob)
        trace.steps.append(f"gaussian sigma={sigma:.2f}{' gray' if gray else ''}")
        return gaussian_noise(rng, img, sigma, gray)
    scale = float(rng.uniform(*poisson_range))
    gray = bool(rng.uniform() < gray_prob)
    trace.steps.append(f"poisson scale={scale:.2f}{' gray' if gray else ''}")
    return poisson_noise(rng, img, scale, gray)


def _random_jpeg(
    rng: np.random.Generator, img: torch.Tensor, quality_range: tuple[float, float], trace: DegradationTrace
) -> torch.Tensor:
    quality = round(rng.uniform(*quality_range))
    trace.steps.append(f"jpeg q={quality}")
    return jpeg_compress(img, quality)


def degrade(
    hr: torch.Tensor, cfg: DegradationConfig, rng: np.random.Generator, trace: DegradationTrace | None = None
) -> torch.Tensor:
    """hr: (3, H, W) float32 in [0, 1], H and W multiples of cfg.scale -> LR (3, H/s, W/s) float32 in
    [0, 1], quantised to multiples of 1/255. Deterministic given `rng`'s state."""
    if hr.dim() != 3 or hr.shape[0] != 3:
        raise ValueError(f"hr must be (3, H, W), got {tuple(hr.shape)}")
    h, w = hr.shape[-2:]
    s = cfg.scale
    if h % s or w % s:
        raise ValueError(f"hr size {(h, w)} is not a multiple of the scale {s}")
    trace = trace if trace is not None else DegradationTrace()
    kind1, k1 = sample_blur_kernel(rng, BlurStage.of(cfg, 1))
    kind2, k2 = sample_blur_kernel(rng, BlurStage.of(cfg, 2))
    final_sinc = None
    if rng.uniform() < cfg.final_sinc_prob:
        size = int(rng.choice(np.arange(3, cfg.blur_kernel_size2, 2)))
        final_sinc = sinc_kernel(size, float(rng.uniform(math.pi / 3, math.pi)), pad_to=cfg.blur_kernel_size2)

    out = hr.unsqueeze(0).float()
    # first stage
    trace.steps.append(f"blur {kind1}")
    out = filter2d(out, k1)
    out = _random_resize(rng, out, cfg.resize_prob, cfg.resize_range, (h, w), trace)
    out = _random_noise(
        rng, out, cfg.gaussian_noise_prob, cfg.noise_range, cfg.poisson_scale_range, cfg.gray_noise_prob, trace
    )
    out = _random_jpeg(rng, out, cfg.jpeg_range, trace)
    # second stage, applied to half of the images (RSD.yaml second_order_prob)
    if rng.uniform() < cfg.second_order_prob:
        if rng.uniform() < cfg.second_blur_prob:
            trace.steps.append(f"blur2 {kind2}")
            out = filter2d(out, k2)
        out = _random_resize(rng, out, cfg.resize_prob2, cfg.resize_range2, (h // s, w // s), trace)
        out = _random_noise(
            rng, out, cfg.gaussian_noise_prob2, cfg.noise_range2, cfg.poisson_scale_range2, cfg.gray_noise_prob2, trace
        )

    def resize_back_and_sinc(x: torch.Tensor) -> torch.Tensor:
        mode = RESIZE_MODES[int(rng.integers(3))]
        trace.steps.append(f"resize to 1/{s} {mode}" + (" + sinc" if final_sinc is not None else ""))
        x = resize(x, (h // s, w // s), mode)
        return filter2d(x, final_sinc) if final_sinc is not None else x

    # Real-ESRGAN: the two orders of {resize back + sinc, JPEG}; others give twisted lines.
    if rng.uniform() < 0.5:
        out = _random_jpeg(rng, resize_back_and_sinc(out), cfg.jpeg_range2, trace)
    else:
        out = resize_back_and_sinc(_random_jpeg(rng, out, cfg.jpeg_range2, trace))
    return ((out.clamp(0, 1) * 255).round() / 255)[0]


def bicubic_downsample(hr: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """Plain x1/scale antialiased bicubic LR, (3, H, W) -> (3, H/s, W/s), quantised to 8 bit."""
    h, w = hr.shape[-2:]
    lr = F.interpolate(
        hr.unsqueeze(0), size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False
    )
    return ((lr.clamp(0, 1) * 255).round() / 255)[0]
