"""bf16 vs fp32 for an artifact: how far apart the two dtypes' images are, and how each scores.

    python scripts/dtype_psnr.py [models/rsd-tiny]

The held-out coffee and rocket photos (scikit-image; cropped and x4 bicubic LR as the model card's
evaluation, training.data.read_eval_folder), upscaled as `rsd upscale` does (default tile and overlap,
seed 0) by the torch backend in fp32 and in bf16. Prints, per image, the PSNR of the bf16 result against
the fp32 result (8-bit RGB, peak 255) and the Y PSNR of both against HR; writes
bench/results/dtype_psnr.json. The numbers go in the model card ("Precision").
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rsd.backends import load_upscaler  # noqa: E402
from rsd.pipeline import upscale_array  # noqa: E402


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 Y in [16, 235], as training.evaluate scores."""
    return 16 + (rgb.astype(np.float64) @ np.array([65.481, 128.553, 24.966])) / 255


def held_out() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (LR uint8, HR uint8)} for coffee and rocket, as tests/training/test_bundled_model.py builds them."""
    import skimage.data

    from training.data import read_eval_folder

    out = {}
    src = Path(skimage.data.__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("coffee.png", "rocket.jpg"):
            rgb = np.asarray(Image.open(src / name).convert("RGB"))
            Image.fromarray(rgb[: rgb.shape[0] // 32 * 32, : rgb.shape[1] // 32 * 32]).save(
                Path(tmp) / f"{name[:-4]}.png"
            )
        for path, (hr, lr) in zip(sorted(Path(tmp).glob("*.png")), read_eval_folder(Path(tmp), 1), strict=True):
            to_u8 = lambda t: (t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # noqa: E731
            out[path.stem] = (to_u8(lr), to_u8(hr))
    return out


def main(model: Path) -> None:
    images = held_out()
    results: dict[str, dict[str, float]] = {name: {} for name in images}
    outputs: dict[str, dict[str, np.ndarray]] = {name: {} for name in images}
    for dtype in ("fp32", "bf16"):
        with load_upscaler(model, "torch", dtype=dtype) as upscaler:
            for name, (lr, hr) in images.items():
                sr = upscale_array(upscaler, lr, 0)
                outputs[name][dtype] = sr
                results[name][f"psnr_y_vs_hr_{dtype}"] = psnr_u8(luma(sr), luma(hr))
    for name in images:
        results[name]["psnr_bf16_vs_fp32"] = psnr_u8(outputs[name]["bf16"], outputs[name]["fp32"])
        same = outputs[name]["bf16"] == outputs[name]["fp32"]
        results[name]["identical_pixel_fraction"] = float(same.all(axis=-1).mean())
        print(name, {k: round(v, 3) for k, v in results[name].items()})
    out = REPO / "bench" / "results" / "dtype_psnr.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": str(model), "seed": 0, "images": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "models" / "rsd-tiny")
