"""Evaluate the bundled model and write its numbers next to the model card.

    python scripts/tiny_eval.py models/rsd-tiny runs/tiny_data

Writes MODEL/metrics.json (the eval tables of `training.evaluate.evaluate_model` on the held-out
coffee/rocket, x4 bicubic LR and the training degradation with a fixed seed; one-step vs 15-step wall
time; end-to-end `rsd upscale` time of a 256x256 photo), MODEL/before_after.png, and fills the table
between the `<!-- metrics:start -->` / `<!-- metrics:end -->` markers of MODEL/MODEL_CARD.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from training.evaluate import TeacherTiles, evaluate_model, lanczos_unsharp

METHODS = (
    ("bicubic", "bicubic x4"),
    ("lanczos_unsharp", "Lanczos x4 + unsharp mask"),
    ("teacher", "teacher, 15 steps"),
    ("model", "student, 1 step"),
)
SETS = (("bicubic", "eval_bicubic", "clean bicubic LR"), ("degraded", "eval_degraded", "training degradation"))
START, END = "<!-- metrics:start -->", "<!-- metrics:end -->"


def metrics_table(result: dict) -> str:
    """Markdown table of metrics.json (the test of the bundled model parses it back)."""
    lines = ["| LR | method | PSNR (Y) dB | SSIM (Y) | detail |", "|---|---|---|---|---|"]
    for key, _, label in SETS:
        for name, text in METHODS:
            m = result[key][name]
            lines.append(f"| {label} | {text} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['detail']:.3f} |")
    t = result["timing"]
    lines += [
        "",
        f"Wall time on the held-out LR images (clean set, this machine, same run): student {t['student_s']:.2f} s, "
        f"teacher {t['teacher_s']:.2f} s, ratio {t['ratio']:.1f}x. End-to-end `rsd upscale` of a 256x256 photo "
        f"(process start to PNG written): {t['upscale_256_s']:.2f} s. Served by `rsd serve` (as `make serve` runs "
        f"it; upload to last byte of the PNG, warm server): "
        + ", ".join(f"{x:.2f}" for x in t["served_256_s"])
        + " s.",
    ]
    return "\n".join(lines)


def _photo_256(data: Path) -> np.ndarray:
    return np.asarray(Image.open(data / "eval_bicubic" / "coffee.png").convert("RGB"))[:256, :256]


def time_served(model: Path, data: Path, repeats: int = 3) -> list[float]:
    """`rsd serve` (embedded, as `make serve` runs it): seconds per POST /upscale of a 256x256 photo, each
    from sending the upload to the last byte of the 1024x1024 PNG, after the server reported ready."""
    buffer = io.BytesIO()
    Image.fromarray(_photo_256(data)).save(buffer, "PNG")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "rsd_cli.main", "serve", "--port", str(port), "--model", str(model)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "rsd serve did not become ready"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        seconds = []
        for seed in range(repeats):
            start = time.perf_counter()
            files = {"image": ("photo.png", buffer.getvalue(), "image/png")}
            response = httpx.post(f"{base}/upscale", files=files, params={"seed": seed}, timeout=120)
            seconds.append(time.perf_counter() - start)
            assert response.status_code == 200 and Image.open(io.BytesIO(response.content)).size == (1024, 1024)
        return seconds
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def time_upscale(model: Path, data: Path) -> float:
    hr = _photo_256(data)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.png", Path(tmp) / "out.png"
        Image.fromarray(hr).save(src)
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "rsd_cli.main", "upscale", str(src), "-o", str(dst), "--model", str(model)]
        subprocess.run(cmd, check=True, capture_output=True)
        seconds = time.perf_counter() - start
        assert Image.open(dst).size == (1024, 1024)
    return seconds


def before_after(model: Path, data: Path, out: Path, crop: int = 48) -> None:
    """Rows: held-out LR crops; columns: bicubic, Lanczos+unsharp, student, teacher, HR (x4 = 192 px)."""
    from rsd.backends import load_upscaler
    from rsd.pipeline import upscale_array

    rows = []
    teacher = TeacherTiles(model)
    with load_upscaler(model, "torch", dtype="fp32") as student:
        for name, (top, left) in (("coffee", (40, 60)), ("rocket", (30, 70))):
            hr_full = np.asarray(Image.open(data / "eval_bicubic" / f"{name}.png").convert("RGB"))
            hr = hr_full[4 * top : 4 * (top + crop), 4 * left : 4 * (left + crop)]
            lr_t = torch.nn.functional.interpolate(
                torch.from_numpy(hr).permute(2, 0, 1)[None].float() / 255,
                scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False,
            )  # fmt: skip
            lr = (lr_t[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            bic = Image.fromarray(lr).resize((4 * crop, 4 * crop), Image.Resampling.BICUBIC)
            cols = [np.asarray(bic), lanczos_unsharp(lr), upscale_array(student, lr, 0), upscale_array(teacher, lr, 0)]
            rows.append(np.concatenate([*cols, hr], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)


def main(model: Path, data: Path) -> None:
    torch.set_num_threads(1)
    result: dict = {}
    for key, folder, _ in SETS:
        result[key] = evaluate_model(model, data / folder, seed=0, teacher=True, detail=True)
    sec = result["bicubic"]["seconds"]
    result["timing"] = {
        "student_s": sec["model"],
        "teacher_s": sec["teacher"],
        "ratio": sec["teacher"] / sec["model"],
        "upscale_256_s": time_upscale(model, data),
        "served_256_s": time_served(model, data),
    }
    (model / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    before_after(model, data, model / "before_after.png")
    table = metrics_table(result)
    print(table)
    card = model / "MODEL_CARD.md"
    if card.is_file():
        text = card.read_text()
        new = re.sub(re.escape(START) + ".*?" + re.escape(END), f"{START}\n{table}\n{END}", text, flags=re.S)
        card.write_text(new)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
