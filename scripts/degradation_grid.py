"""Write a PNG grid of training pairs: HR crops on the top row, their degraded LR (nearest x4) below.

    python scripts/degradation_grid.py --out grid.png [--data DIR] [--config configs/official_x4.toml]
        [--count 8] [--hr-size 256] [--seed 0]

Without --data the images are generated (training.data.synthetic_image). The degradation settings come
from the recipe's [data.degradation] table when --config is given, else the RSD.yaml defaults. The
output is exactly (2 * hr_size) x (count * hr_size) pixels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import DataConfig, load_recipe
from training.data import PairDataset


def build_grid(data_cfg: DataConfig, count: int, seed: int) -> np.ndarray:
    """(2 S, count S, 3) uint8: row 0 HR, row 1 LR upscaled x4 by pixel repetition."""
    dataset = PairDataset(data_cfg, seed)
    s = data_cfg.hr_size
    grid = np.zeros((2 * s, count * s, 3), np.uint8)
    for i in range(count):
        hr, lr = dataset.pair(0, i % len(dataset))
        hr_u8 = ((hr.permute(1, 2, 0).numpy() * 0.5 + 0.5) * 255).round().astype(np.uint8)
        lr_u8 = ((lr.permute(1, 2, 0).numpy() * 0.5 + 0.5) * 255).round().astype(np.uint8)
        grid[:s, i * s : (i + 1) * s] = hr_u8
        grid[s:, i * s : (i + 1) * s] = lr_u8.repeat(4, axis=0).repeat(4, axis=1)
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output PNG file")
    parser.add_argument("--data", type=Path, default=None, help="image folder (default: generated images)")
    parser.add_argument("--config", type=Path, default=None, help="recipe whose data.degradation to use")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--hr-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count {args.count} must be >= 1")
    base = load_recipe(args.config).data if args.config else None
    fields = {"hr_size": args.hr_size, "bicubic_fraction": 0.0}
    if base is not None:
        fields["degradation"] = base.degradation
    if args.data is not None:
        fields |= {"source": "folder", "dirs": [args.data]}
    else:
        fields |= {"source": "synthetic", "synthetic_count": args.count, "synthetic_size": args.hr_size * 3 // 2}
    grid = build_grid(DataConfig(**fields), args.count, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(args.out, format="PNG")
    print(f"wrote {args.out} ({grid.shape[1]}x{grid.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
