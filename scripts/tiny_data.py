"""Write the bundled model's data from the installed scikit-image package (no download).

    python scripts/tiny_data.py OUT

writes OUT/train/*.png, OUT/train_tiles/*.png, OUT/eval_bicubic/*.png, OUT/eval_degraded/{gt,lq}/*.png
and OUT/val_crops/*.png (128^2 held-out crops for in-run validation).

Training: 7 colour + 6 grayscale (as RGB) photos of skimage/data. coffee and rocket are held out for
evaluation only: eval_bicubic holds their HR (LR = bicubic x1/4 at evaluation time), eval_degraded holds
HR + an LR made with the training degradation (configs/tiny_teacher.toml data.degradation, seed
fixed per image).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

TRAIN = [
    "astronaut.png", "chelsea.png", "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png",
    "motorcycle_right.png", "retina.jpg", "brick.png", "grass.png", "gravel.png", "camera.png",
    "moon.png", "coins.png",
]  # fmt: skip
HELD_OUT = ["coffee.png", "rocket.jpg"]
DEGRADE_SEED = 20260
TILE = 128


def skimage_data_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def main(out: Path) -> None:
    import torch

    from training.config import TeacherRecipe, load_recipe
    from training.data import to_tensor01
    from training.degradation import degrade

    src = skimage_data_dir()
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "configs" / "tiny_teacher.toml", "teacher")
    assert isinstance(recipe, TeacherRecipe)
    mild = recipe.data.degradation  # the training degradation of the bundled model
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "train_tiles").mkdir(parents=True, exist_ok=True)
    for name in TRAIN:
        rgb = _rgb(src / name)
        Image.fromarray(rgb).save(out / "train" / (Path(name).stem + ".png"))
        # the same photos cut into 128^2 tiles: a dataset of many files, so that a latent cache of N
        # pairs (one per file, epoch 0) holds N different crops
        for top in range(0, rgb.shape[0] - TILE + 1, TILE):
            for left in range(0, rgb.shape[1] - TILE + 1, TILE):
                tile = rgb[top : top + TILE, left : left + TILE]
                Image.fromarray(tile).save(out / "train_tiles" / f"{Path(name).stem}_{top:04d}_{left:04d}.png")
    for sub in ("eval_bicubic", "eval_degraded/gt", "eval_degraded/lq", "val_crops"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(HELD_OUT):
        rgb = _rgb(src / name)
        rgb = rgb[: rgb.shape[0] // 32 * 32, : rgb.shape[1] // 32 * 32]  # whole LR tiles of 8
        stem = Path(name).stem
        Image.fromarray(rgb).save(out / "eval_bicubic" / f"{stem}.png")
        Image.fromarray(rgb).save(out / "eval_degraded" / "gt" / f"{stem}.png")
        for j, (top, left) in enumerate(((64, 64), (rgb.shape[0] - 192, rgb.shape[1] - 192))):
            crop = rgb[top : top + 128, left : left + 128]  # validation crops of the training stages
            Image.fromarray(crop).save(out / "val_crops" / f"{stem}_{j}.png")
        lr = degrade(to_tensor01(rgb), mild, np.random.default_rng([DEGRADE_SEED, k]))
        lr_u8 = (lr.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(lr_u8).save(out / "eval_degraded" / "lq" / f"{stem}.png")
    print(f"wrote {len(TRAIN)} training and {len(HELD_OUT)} held-out images under {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/tiny_data"))
