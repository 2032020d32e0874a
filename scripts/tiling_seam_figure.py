"""Before/after crop across a tile boundary: untiled vs tiled (smooth, uniform, pasted).

    python scripts/tiling_seam_figure.py --model models/rsd-tiny --image photo.png --out docs/tiling_seam.png

Without --image a held-out scikit-image photo (`coffee`) is used when scikit-image is installed.
Prints a seam index per variant: the jump across each tile edge divided by the typical jump between
neighbouring pixels nearby (1.0 = no seam).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rsd.backends import load_upscaler
from rsd.imagefile import read_image_file
from rsd.imageops import plan_tiles
from rsd.pipeline import upscale_array


def load_photo(path: Path | None, size: int) -> np.ndarray:
    if path is not None:
        rgb = read_image_file(path).rgb
    else:
        from skimage import data

        rgb = data.coffee()
    h, w = rgb.shape[:2]
    # x4-downscaled centre crop: the LR input a user would send
    crop = rgb[(h - 4 * size) // 2 : (h + 4 * size) // 2, (w - 4 * size) // 2 : (w + 4 * size) // 2]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BICUBIC))


def seam_index(img: np.ndarray, edges: list[int]) -> float:
    """Largest jump across a tile edge relative to the typical neighbouring-pixel jump nearby.

    1.0 means an edge column is no different from its surroundings; a visible seam is well above it.
    Computed on both axes (rows and columns share the same tile edges in a square grid)."""
    worst = 0.0
    for axis in (0, 1):
        a = img.astype(np.float32).mean(axis=2)
        step = np.abs(np.diff(a, axis=axis)).mean(axis=1 - axis)  # mean jump between line k and k+1
        for e in edges:
            if 8 <= e < len(step) - 8:
                around = np.r_[step[e - 8 : e - 1], step[e + 1 : e + 8]].mean()
                worst = max(worst, float(step[e - 1] / max(around, 1e-6)))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--image", type=Path, default=None)
    parser.add_argument("--tile", type=int, default=None)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/tiling_seam.png"))
    args = parser.parse_args()
    up = load_upscaler(args.model)
    tile = args.tile or up.spec.default_tile
    size = tile + tile // 2  # two tiles across, one boundary region in the middle
    lr = load_photo(args.image, size)
    big_tile = -(-size // up.spec.lr_multiple) * up.spec.lr_multiple
    untiled = upscale_array(up, lr, args.seed, tile=big_tile, overlap=0).astype(np.int16)
    variants = {
        "smooth blend": upscale_array(up, lr, args.seed, tile, args.overlap, blend="smooth"),
        "uniform average": upscale_array(up, lr, args.seed, tile, args.overlap, blend="uniform"),
        "pasted (no overlap)": upscale_array(up, lr, args.seed, tile, 0, blend="uniform"),
    }
    grid = plan_tiles(size, size, tile, args.overlap, up.spec.lr_multiple)
    edges = sorted({4 * x for x in grid.col_starts if x} | {4 * (x + tile) for x in grid.col_starts})
    panels = [
        ("bicubic", np.asarray(Image.fromarray(lr).resize((4 * size, 4 * size), Image.Resampling.BICUBIC))),
        ("untiled", untiled.astype(np.uint8)),
    ]
    print(f"{'untiled':22s} seam index at the tile edges: {seam_index(panels[1][1], edges):.2f}")
    for name, img in variants.items():
        pasted_edges = sorted({4 * x for x in plan_tiles(size, size, tile, 0, up.spec.lr_multiple).col_starts if x})
        index = seam_index(img, pasted_edges if name.startswith("pasted") else edges)
        print(f"{name:22s} seam index at the tile edges: {index:.2f}")
        panels.append((name, img))
    cw = 4 * size
    crop = slice(cw // 2 - 96, cw // 2 + 96)
    tiles_img = [np.ascontiguousarray(p[crop, crop]) for _, p in panels]
    h = tiles_img[0].shape[0]
    canvas = Image.new("RGB", (len(panels) * (h + 6), h + 22), "white")
    draw = ImageDraw.Draw(canvas)
    for i, ((name, _), img) in enumerate(zip(panels, tiles_img, strict=True)):
        canvas.paste(Image.fromarray(img), (i * (h + 6), 20))
        draw.text((i * (h + 6) + 2, 4), name, fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(f"wrote {args.out} (crop of the centre, tile {tile}, overlap {args.overlap})")


if __name__ == "__main__":
    main()
