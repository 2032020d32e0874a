"""Encoder effort: time and bytes of PNG zlib levels and WebP methods on x4 results (serving.md "Output encoding").

    .venv/bin/python bench/encode_bench.py [--photos 4] [--repeats 2] [--out bench/results]

Each of the first `--photos` sample photos of bench/device_sim.PHOTOS is upscaled x4 with Lanczos and
an unsharp mask (a stand-in for a model's result: full size, photo detail) and encoded at every PNG
level and WebP method of the table below, through `rsd.imagefile.encode_image` (what the service runs),
best of `--repeats`. Prints, per setting, the encode time and the bytes relative to the libraries'
own defaults (zlib 6, libwebp 4) measured in the same run, and the WebP PSNR against the unencoded
result; writes encode.json and encode.png. Not a test: the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from device_sim import PHOTOS, photo_folder  # noqa: E402

from rsd.imagefile import DEFAULT_PNG_COMPRESS_LEVEL, DEFAULT_WEBP_METHOD, encode_image, read_image  # noqa: E402

#: (format, setting) pairs timed; the libraries' defaults are the baselines of the ratios
SETTINGS = [("png", level) for level in (1, 3, 6, 9)] + [("webp", method) for method in (0, 1, 2, 4, 6)]
LIBRARY_DEFAULTS = {"png": 6, "webp": 4}
OURS = {"png": DEFAULT_PNG_COMPRESS_LEVEL, "webp": DEFAULT_WEBP_METHOD}


def stand_in_result(name: str) -> tuple[np.ndarray, bytes]:
    """(x4 RGB uint8, the source photo as PNG bytes) for one sample photo."""
    with Image.open(photo_folder() / name) as im:
        source = im.convert("RGB")
    big = source.resize((source.width * 4, source.height * 4), Image.Resampling.LANCZOS)
    big = big.filter(ImageFilter.UnsharpMask(radius=2, percent=150, threshold=2))
    buffer = io.BytesIO()
    source.save(buffer, "PNG")
    return np.asarray(big), buffer.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255**2 / max(mse, 1e-12))


def measure(photos: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name in PHOTOS[:photos]:
        sr, source_bytes = stand_in_result(name)
        source = read_image(source_bytes)
        for fmt, value in SETTINGS:
            option = {"png_compress_level": value} if fmt == "png" else {"webp_method": value}
            best, data = float("inf"), b""
            for _ in range(repeats):
                started = time.perf_counter()
                data = encode_image(sr, source, fmt, 90, **option)  # type: ignore[arg-type]
                best = min(best, time.perf_counter() - started)
            row: dict[str, Any] = {"photo": name, "pixels": sr.shape[0] * sr.shape[1], "format": fmt,
                                      "setting": value, "seconds": best, "bytes": len(data)}  # fmt: skip
            if fmt == "webp":
                with Image.open(io.BytesIO(data)) as decoded:
                    row["psnr_db"] = psnr(np.asarray(decoded.convert("RGB")), sr)
            rows.append(row)
            print(f"{name} {sr.shape[1]}x{sr.shape[0]} {fmt} {value}: {best * 1000:.0f} ms, {len(data) / 1e6:.2f} MB",
                  flush=True)  # fmt: skip
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting: the median over photos of time and bytes relative to the library default's."""
    by_key = {(r["photo"], r["format"], r["setting"]): r for r in rows}
    photos = sorted({r["photo"] for r in rows})
    table = []
    for fmt, value in SETTINGS:
        pairs = [(by_key[photo, fmt, value], by_key[photo, fmt, LIBRARY_DEFAULTS[fmt]]) for photo in photos]
        entry = {
            "format": fmt, "setting": value,
            "speedup": statistics.median(base["seconds"] / mine["seconds"] for mine, base in pairs),
            "bytes_ratio": statistics.median(mine["bytes"] / base["bytes"] for mine, base in pairs),
        }  # fmt: skip
        if fmt == "webp":
            entry["psnr_delta_db"] = statistics.median(mine["psnr_db"] - base["psnr_db"] for mine, base in pairs)
        table.append(entry)
    return table


def plot(table: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for fmt, marker in (("png", "o-"), ("webp", "s-")):
        entries = [e for e in table if e["format"] == fmt]
        xs = [e["bytes_ratio"] for e in entries]
        ys = [e["speedup"] for e in entries]
        name = "zlib level" if fmt == "png" else "libwebp method"
        ax.plot(xs, ys, marker, label=f"{fmt.upper()} ({name}; default here {OURS[fmt]})")
        for e, x, y in zip(entries, xs, ys, strict=True):
            ax.annotate(str(e["setting"]), (x, y), textcoords="offset points", xytext=(4, 4))
    ax.axhline(1.0, color="grey", linewidth=0.5)
    ax.set(xlabel="bytes / library default's", ylabel="encode speed-up vs library default",
           title="x4 photo results: encoder effort (median over photos)")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    options = parser.parse_args(argv)
    rows = measure(options.photos, options.repeats)
    table = summarise(rows)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "encode.json").write_text(json.dumps({"summary": table, "rows": rows}, indent=2))
    plot(table, options.out / "encode.png")
    print("format setting speed-up bytes PSNR-delta (vs the library default, median over photos)")
    for e in table:
        delta = f" {e['psnr_delta_db']:+.2f} dB" if "psnr_delta_db" in e else ""
        mark = " <- default here" if OURS[e["format"]] == e["setting"] else ""
        print(f"{e['format']} {e['setting']}: x{e['speedup']:.2f} {e['bytes_ratio']:.3f}{delta}{mark}")
    print(f"wrote {options.out / 'encode.json'} and {options.out / 'encode.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
