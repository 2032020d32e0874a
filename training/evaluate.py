"""Quality metrics and `rsd eval`: PSNR/SSIM on the Y channel (+ LPIPS) and a detail ratio of the
one-step model, optionally the artifact's 15-step teacher, against bicubic and Lanczos + unsharp mask.

Metric conventions follow the RSD evaluation (method.md 7.1: pyiqa `psnr`/`ssim` with
`test_y_channel=True`): images in [0, 1], Y = (65.481 R + 128.553 G + 24.966 B + 16) / 255, SSIM with an
11x11 Gaussian window (sigma 1.5) over the valid region, C1 = 0.01^2, C2 = 0.03^2. No border is cropped.
Detail ratio: mean |Laplacian(Y)| of the output / that of the HR image (1.0 = as much fine detail as HR;
below = blurrier, above = sharper or noisier than HR).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

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


def laplacian_energy(img: torch.Tensor) -> torch.Tensor:
    """(N,) mean |4-neighbour Laplacian| of Y (valid region); img (N, 3, H, W) in [0, 1], H, W >= 3."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    lap = F.conv2d(rgb_to_y(img.double()), kernel.view(1, 1, 3, 3).to(img.device))
    return lap.abs().flatten(1).mean(1).float()


def detail_ratio(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """(N,) laplacian_energy(sr) / laplacian_energy(hr); inputs (N, 3, H, W) in [0, 1]."""
    return laplacian_energy(sr) / laplacian_energy(hr).clamp_min(1e-12)


def image_metrics(
    sr: torch.Tensor, hr: torch.Tensor, lpips: LPIPS | None = None, detail: bool = False
) -> dict[str, list[float]]:
    """Per-image psnr/ssim (+ lpips, + detail ratio) lists for sr, hr (N, 3, H, W) in [-1, 1], one device."""
    sr01, hr01 = (sr.clamp(-1, 1) + 1) / 2, (hr.clamp(-1, 1) + 1) / 2
    out = {"psnr": psnr_y(sr01, hr01).tolist(), "ssim": ssim_y(sr01, hr01).tolist()}
    if detail:
        out["detail"] = detail_ratio(sr01, hr01).tolist()
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


def lanczos_unsharp(lr_u8: np.ndarray) -> np.ndarray:
    """Classical baseline: (h, w, 3) uint8 -> (4h, 4w, 3) uint8, Lanczos x4 then Pillow's
    UnsharpMask(radius 2, percent 80, threshold 2)."""
    im = Image.fromarray(lr_u8).resize((lr_u8.shape[1] * 4, lr_u8.shape[0] * 4), Image.Resampling.LANCZOS)
    return np.asarray(im.filter(ImageFilter.UnsharpMask(radius=2, percent=80, threshold=2)))


class TeacherTiles:
    """The artifact's 15-step teacher as a pipeline tile runner (rsd.pipeline.TileRunner): each tile's
    noise (3T channels) is drawn from a generator seeded with the tile's seed, as the one-step backend does."""

    def __init__(self, model_dir: Path, device: str = "cpu") -> None:
        from rsd.sampler import TeacherSampler

        self.sampler = TeacherSampler.from_artifact(model_dir, device=device)
        self.spec = self.sampler.spec
        self.device = device

    @torch.no_grad()
    def run(self, lq_tiles: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        """lq_tiles (N, 3, t, t) float32 in [-1, 1] -> (N, 3, 4t, 4t) float32 in [-1, 1]."""
        _, _, h, w = lq_tiles.shape
        noise = torch.stack(
            [
                torch.randn((self.sampler.noise_channels, h, w), generator=torch.Generator().manual_seed(int(s)))
                for s in seeds
            ]
        )
        lq = torch.from_numpy(lq_tiles).to(self.device)
        return self.sampler(lq, noise.to(self.device)).cpu().numpy()


def _u8_to_model(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(rgb.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


def evaluate_model(
    model_dir: Path,
    data_dir: Path,
    lpips_cfg: LPIPSConfig | None = None,
    seed: int = 0,
    device: str = "cpu",
    teacher: bool = False,
    detail: bool = False,
) -> dict[str, dict[str, float] | int]:
    """Run the artifact's one-step model (tiled, as `rsd upscale` does), optionally its 15-step teacher
    (same tiling and seeds), bicubic x4 and Lanczos x4 + unsharp mask on every pair of `data_dir` (gt/ +
    lq/, or HR images with bicubic LR). Returns mean metrics per method (psnr, ssim [, detail] [, lpips])
    and the summed wall time of the model runs ("seconds": {"model": s, "teacher": s})."""
    from rsd.backends import load_upscaler
    from rsd.pipeline import upscale_array

    pairs = read_eval_folder(Path(data_dir), multiple=1)
    lpips = None
    if lpips_cfg is not None and lpips_cfg.alexnet_weights is not None:
        lpips = LPIPS.from_files(lpips_cfg.alexnet_weights, lpips_cfg.linear_weights)  # metrics on CPU
    names = ["model", "bicubic", "lanczos_unsharp"] + (["teacher"] if teacher else [])
    stores: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    seconds = dict.fromkeys(["model"] + (["teacher"] if teacher else []), 0.0)
    # fp32, not RSD_DTYPE's "auto": the card's metrics must not depend on the CPU that computed them
    runners = {"model": load_upscaler(model_dir, "torch", device=device, dtype="fp32")}
    if teacher:
        runners["teacher"] = TeacherTiles(Path(model_dir), device)  # type: ignore[assignment]
    with runners["model"]:
        for hr, lr in pairs:
            lr_u8 = (lr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            preds = {
                "bicubic": F.interpolate(lr[None] * 2 - 1, scale_factor=4, mode="bicubic", align_corners=False),
                "lanczos_unsharp": _u8_to_model(lanczos_unsharp(lr_u8)),
            }
            for name, runner in runners.items():
                start = time.perf_counter()
                preds[name] = _u8_to_model(upscale_array(runner, lr_u8, seed))
                seconds[name] += time.perf_counter() - start
            for name, pred in preds.items():
                for k, v in image_metrics(pred, hr[None] * 2 - 1, lpips, detail).items():
                    stores[name].setdefault(k, []).extend(v)
    return {"images": len(pairs), **{name: _mean(stores[name]) for name in names}, "seconds": seconds}


def format_report(result: dict) -> str:
    names = [n for n in ("model", "teacher", "lanczos_unsharp", "bicubic") if n in result]
    keys = list(result["model"])
    lines = [f"{'':16s}" + "".join(f"{k:>10s}" for k in keys)]
    for name in names:
        lines.append(f"{name:16s}" + "".join(f"{result[name][k]:10.4f}" for k in keys))
    timing = ", ".join(f"{k} {v:.2f} s" for k, v in result.get("seconds", {}).items())
    return "\n".join(lines) + f"\n({result['images']} images; wall time: {timing})"


def write_report(result: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
