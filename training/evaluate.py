"""Quality metrics and `rsd eval`: PSNR/SSIM on the Y channel (+ LPIPS) of a model against bicubic.

Metric conventions follow the RSD evaluation (method.md 7.1: pyiqa `psnr`/`ssim` with
`test_y_channel=True`): images in [0, 1], Y = (65.481 R + 128.553 G + 24.966 B + 16) / 255, SSIM with an
11x11 Gaussian window (sigma 1.5) over the valid region, C1 = 0.01^2, C2 = 0.03^2. No border is cropped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.config import LPIPSConfig
from training.data import read_eval_folder
from training.lpips import LPIPS


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 1, H, W) BT.601 luma in [16/255, 235/255]."""
    w = torch.tensor([65.481, 128.553, 24.966], dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    return ((img * w).sum(dim=1, keepdim=True) + 16.0) / 255.0


def psnr_y(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """(N,) PSNR in dB on Y; inputs (N, 3, H, W) in [0, 1]."""
    mse = ((rgb_to_y(sr.double()) - rgb_to_y(hr.double())) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-12))).float()


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim_y(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """(N,) SSIM on Y over the valid region; inputs (N, 3, H, W) in [0, 1], H, W >= 11."""
    x, y = rgb_to_y(sr.double()), rgb_to_y(hr.double())
    win = _gaussian_window().to(x.device)
    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)
    var_x = F.conv2d(x * x, win) - mu_x**2
    var_y = F.conv2d(y * y, win) - mu_y**2
    cov = F.conv2d(x * y, win) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1).float()


def image_metrics(sr: torch.Tensor, hr: torch.Tensor, lpips: LPIPS | None = None) -> dict[str, list[float]]:
    """Per-image psnr/ssim (+ lpips) lists for sr, hr (N, 3, H, W) in [-1, 1] on one device."""
    sr01, hr01 = (sr.clamp(-1, 1) + 1) / 2, (hr.clamp(-1, 1) + 1) / 2
    out = {"psnr": psnr_y(sr01, hr01).tolist(), "ssim": ssim_y(sr01, hr01).tolist()}
    if lpips is not None:
        with torch.no_grad():
            out["lpips"] = lpips(sr.clamp(-1, 1), hr.clamp(-1, 1)).tolist()
    return out


def pair_grid(hr: torch.Tensor, sr: torch.Tensor, count: int = 4) -> torch.Tensor:
    """(3, 2H, k W) in [0, 1]: up to `count` HR images on top, their SR below (TensorBoard)."""
    top = torch.cat(list(hr[:count].clamp(-1, 1)), dim=-1)
    bottom = torch.cat(list(sr[:count].clamp(-1, 1)), dim=-1)
    return (torch.cat([top, bottom], dim=-2) + 1) / 2


def _mean(values: dict[str, list[float]]) -> dict[str, float]:
    return {k: float(np.mean(v)) for k, v in values.items()}


def evaluate_model(
    model_dir: Path, data_dir: Path, lpips_cfg: LPIPSConfig | None = None, seed: int = 0, device: str = "cpu"
) -> dict[str, dict[str, float] | int]:
    """Run the artifact's one-step model (tiled, as `rsd upscale` does) and bicubic x4 on every pair
    of `data_dir` (gt/ + lq/, or HR images with bicubic LR); mean metrics of both."""
    from rsd.backends import load_upscaler
    from rsd.pipeline import upscale_array

    pairs = read_eval_folder(Path(data_dir), multiple=1)
    lpips = None
    if lpips_cfg is not None and lpips_cfg.alexnet_weights is not None:
        lpips = LPIPS.from_files(lpips_cfg.alexnet_weights, lpips_cfg.linear_weights)  # metrics on CPU
    model: dict[str, list[float]] = {}
    bicubic: dict[str, list[float]] = {}
    upscaler = load_upscaler(model_dir, "torch", device=device)
    with upscaler:
        for hr, lr in pairs:
            lr_u8 = (lr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            sr_u8 = upscale_array(upscaler, lr_u8, seed)
            sr = torch.from_numpy(sr_u8.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
            up = F.interpolate(lr[None] * 2 - 1, scale_factor=4, mode="bicubic", align_corners=False)
            for store, pred in ((model, sr), (bicubic, up)):
                for k, v in image_metrics(pred, hr[None] * 2 - 1, lpips).items():
                    store.setdefault(k, []).extend(v)
    return {"images": len(pairs), "model": _mean(model), "bicubic": _mean(bicubic)}


def format_report(result: dict) -> str:
    keys = list(result["model"])
    lines = [f"{'':10s}" + "".join(f"{k:>10s}" for k in keys)]
    for name in ("model", "bicubic"):
        lines.append(f"{name:10s}" + "".join(f"{result[name][k]:10.4f}" for k in keys))
    return "\n".join(lines) + f"\n({result['images']} images)"


def write_report(result: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
