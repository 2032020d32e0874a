"""Training pairs: HR crops from an image folder (or generated images) and their degraded LR.

Determinism: sample `i` of epoch `e` is built from `numpy.random.default_rng([seed, e, i])` alone, and
the order of an epoch from `default_rng([seed, e, ORDER_KEY])`. So a pair does not depend on worker
threads, on which process loads it (DDP) or on where a run was resumed: `BatchStream` keeps only
(epoch, cursor), which a checkpoint stores.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.config import DataConfig
from training.degradation import bicubic_downsample, degrade

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
ORDER_KEY = 2**31 - 1  # a SeedSequence word no sample index reaches
VAL_EPOCH = 2**31 - 2  # the "epoch" of held-out synthetic validation samples


class DataError(ValueError):
    """The data folder is missing, empty or unreadable."""


def list_images(dirs: Sequence[Path]) -> list[Path]:
    """All jpg/jpeg/png/webp files under `dirs` (recursive, sorted); errors name an empty/missing folder."""
    paths: list[Path] = []
    for d in dirs:
        if not Path(d).is_dir():
            raise DataError(f"data folder {d} does not exist or is not a directory")
        found = sorted(p for p in Path(d).rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
        if not found:
            raise DataError(f"data folder {d} holds no {'/'.join(e[1:] for e in EXTENSIONS)} images")
        paths.extend(found)
    return paths


def synthetic_image(seed: int, size: int) -> np.ndarray:
    """A procedural RGB test image (size, size, 3) uint8: gratings, discs, boxes and a smooth field.

    Natural-ish content at several scales so the degradations and the SR models have edges and texture.
    """
    rng = np.random.default_rng([seed, 7])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.zeros((size, size, 3), np.float32) + rng.uniform(0.2, 0.8, 3).astype(np.float32)
    for _ in range(3):  # oriented gratings of random frequency
        theta, freq = rng.uniform(0, np.pi), rng.uniform(2, 12)
        wave = np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + rng.uniform(0, 6.3))
        img += 0.15 * wave[..., None] * rng.uniform(-1, 1, 3).astype(np.float32)
    for _ in range(int(rng.integers(2, 6))):  # discs and boxes with hard edges
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
        if rng.uniform() < 0.5:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
        else:
            mask = (np.abs(xx - cx) < r) & (np.abs(yy - cy) < r * rng.uniform(0.3, 1.0))
        img[mask] = rng.uniform(0, 1, 3).astype(np.float32)
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)  # fine texture
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _area_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BOX))


def random_hr_crop(rgb: np.ndarray, size: int, mode: str, hflip: bool, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) uint8 -> (size, size, 3) uint8 (method.md 4.12: square crop, area resize, h-flip)."""
    side = max(min(rgb.shape[:2]), size) if mode == "rescale" else size
    while rgb.shape[0] < side or rgb.shape[1] < side:  # reflect-pad, possibly several times if tiny
        ph, pw = min(max(0, side - rgb.shape[0]), rgb.shape[0] - 1), min(max(0, side - rgb.shape[1]), rgb.shape[1] - 1)
        if ph == 0 and pw == 0:
            rgb = np.pad(rgb, ((0, side - rgb.shape[0]), (0, side - rgb.shape[1]), (0, 0)), mode="edge")
            break
        rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="reflect")
    top = int(rng.integers(0, rgb.shape[0] - side + 1))
    left = int(rng.integers(0, rgb.shape[1] - side + 1))
    rgb = _area_resize(np.ascontiguousarray(rgb[top : top + side, left : left + side]), size)
    if hflip and rng.uniform() < 0.5:
        rgb = rgb[:, ::-1]
    return np.ascontiguousarray(rgb)


def to_tensor01(rgb: np.ndarray) -> torch.Tensor:
    """(h, w, 3) uint8 -> (3, h, w) float32 in [0, 1]."""
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0


class PairDataset:
    """HR/LR pairs; `pair(epoch, index)` -> (hr (3, S, S), lr (3, S/4, S/4)), float32 in [-1, 1]."""

    def __init__(self, cfg: DataConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.paths = list_images(cfg.dirs) if cfg.source == "folder" else []
        self.skipped: set[Path] = set()

    def __len__(self) -> int:
        return len(self.paths) if self.cfg.source == "folder" else self.cfg.synthetic_count

    def read(self, index: int) -> np.ndarray:
        """The (h, w, 3) uint8 image at `index`; unreadable files are skipped (warned once, counted) in
        favour of the next readable one, deterministically."""
        if self.cfg.source == "synthetic":
            return synthetic_image(self.seed * 1_000_003 + index, self.cfg.synthetic_size)
        for step in range(len(self.paths)):
            path = self.paths[(index + step) % len(self.paths)]
            if path in self.skipped:
                continue
            try:
                with Image.open(path) as im:
                    return np.asarray(im.convert("RGB"))
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                self.skipped.add(path)
                warnings.warn(f"skipping unreadable image {path}: {exc}", stacklevel=2)
        raise DataError(f"none of the {len(self.paths)} images under {self.cfg.dirs} is readable")

    def pair(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, epoch, index])
        hr_u8 = random_hr_crop(self.read(index), self.cfg.hr_size, self.cfg.crop, self.cfg.hflip, rng)
        if self.cfg.channel_shuffle:  # colour augmentation: a random RGB order per crop (autoencoder)
            hr_u8 = np.ascontiguousarray(hr_u8[..., rng.permutation(3)])
        hr = to_tensor01(hr_u8)
        if rng.uniform() < self.cfg.bicubic_fraction:
            lr = bicubic_downsample(hr, self.cfg.degradation.scale)
        else:
            lr = degrade(hr, self.cfg.degradation, rng)
        return hr * 2 - 1, lr * 2 - 1


def load_pairs(
    dataset: PairDataset, keys: Sequence[tuple[int, int]], workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the pairs of (epoch, index) `keys`: hr (N, 3, S, S), lr (N, 3, S/4, S/4) in [-1, 1]."""
    if workers > 0 and len(keys) > 1:
        with ThreadPoolExecutor(workers) as pool:
            pairs = list(pool.map(lambda k: dataset.pair(*k), keys))
    else:
        pairs = [dataset.pair(e, i) for e, i in keys]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


class BatchStream:
    """Endless shuffled sample keys (epoch, index); the position is (epoch, cursor) for exact resume."""

    def __init__(self, size: int, seed: int) -> None:
        if size <= 0:
            raise DataError("the training set is empty")
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.cursor = 0

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, ORDER_KEY]).permutation(self.size)

    def next_keys(self, n: int) -> list[tuple[int, int]]:
        """The next n sample keys of the global stream (every process draws the same keys)."""
        keys: list[tuple[int, int]] = []
        while len(keys) < n:
            order = self._order(self.epoch)
            take = order[self.cursor : self.cursor + n - len(keys)]
            keys += [(self.epoch, int(i)) for i in take]
            self.cursor += len(take)
            if self.cursor >= self.size:
                self.epoch, self.cursor = self.epoch + 1, 0
        return keys

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def validation_pairs(cfg: DataConfig, seed: int, multiple: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed validation pairs [(hr (3, H, W), lr (3, H/4, W/4))] in [-1, 1], sides multiples of 4*multiple.

    From `cfg.val_dir` (gt/ + lq/ subfolders paired by stem, or HR images with bicubic LR), else
    `cfg.val_count` held-out generated/degraded pairs.
    """
    if cfg.val_dir is None:
        dataset = PairDataset(cfg, seed)
        if cfg.source == "synthetic":  # generated images beyond the training ones
            return [dataset.pair(VAL_EPOCH, cfg.synthetic_count + i) for i in range(cfg.val_count)]
        return [dataset.pair(VAL_EPOCH, i % len(dataset)) for i in range(cfg.val_count)]
    return [(hr * 2 - 1, lr * 2 - 1) for hr, lr in read_eval_folder(cfg.val_dir, multiple)]


def read_eval_folder(folder: Path, multiple: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pairs in [0, 1] from `folder/gt` + `folder/lq` (same stems) or from HR images (bicubic LR).

    HR sides are centre-cropped to multiples of 4*multiple so every model sees whole tiles."""
    gt_dir, lq_dir = folder / "gt", folder / "lq"
    pairs = []
    if gt_dir.is_dir() and lq_dir.is_dir():
        lq_by_stem = {p.stem: p for p in list_images([lq_dir])}
        for gt in list_images([gt_dir]):
            if gt.stem not in lq_by_stem:
                raise DataError(f"{gt}: no LR image with stem {gt.stem!r} in {lq_dir}")
            hr, lr = to_tensor01(read_rgb(gt)), to_tensor01(read_rgb(lq_by_stem[gt.stem]))
            if hr.shape[-2:] != (lr.shape[-2] * 4, lr.shape[-1] * 4):
                raise DataError(f"{gt}: HR {tuple(hr.shape[-2:])} is not 4x the LR {tuple(lr.shape[-2:])}")
            pairs.append(_centre_crop_pair(hr, lr, multiple))
    else:
        for path in list_images([folder]):
            hr = to_tensor01(read_rgb(path))
            hr = hr[:, : hr.shape[1] // 4 * 4, : hr.shape[2] // 4 * 4]
            pairs.append(_centre_crop_pair(hr, bicubic_downsample(hr), multiple))
    return pairs


def _centre_crop_pair(hr: torch.Tensor, lr: torch.Tensor, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    h = lr.shape[1] // multiple * multiple
    w = lr.shape[2] // multiple * multiple
    if h == 0 or w == 0:
        raise DataError(f"LR image {tuple(lr.shape[1:])} is smaller than the model multiple {multiple}")
    top, left = (lr.shape[1] - h) // 2, (lr.shape[2] - w) // 2
    lr = lr[:, top : top + h, left : left + w]
    hr = hr[:, 4 * top : 4 * (top + h), 4 * left : 4 * (left + w)]
    return hr.contiguous(), lr.contiguous()
