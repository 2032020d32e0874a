"""Core benchmark: one-step vs 15-step teacher pipeline per tile, per stage, and FLOPs.

Not a test: prints a table measured side by side in one run (ratios, since shared machines are noisy),
and writes JSON + a PNG bar chart. Random weights of the chosen config (timing does not depend on them).

    python bench/core_bench.py --config official --tile 64 --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from rsd.config import UNetConfig, VQConfig
from rsd.nets.unet import UNetModelSwin
from rsd.nets.vqgan import VQModelTorch
from rsd.onestep import OneStepSR, bicubic_x4
from rsd.sampler import TeacherSampler
from rsd.spec import ModelSpec


def build(config: str) -> tuple[OneStepSR, TeacherSampler]:
    if config == "official":
        student_cfg, vq_cfg = UNetConfig(noise_channels=1), VQConfig()
    else:  # the tiny test config, for a quick look
        from tests.factories import TINY_UNET, TINY_VQ

        student_cfg, vq_cfg = TINY_UNET, TINY_VQ
    teacher_cfg = student_cfg.with_noise_channels(0)
    side = student_cfg.size_multiple
    nets = {"student": student_cfg, "autoencoder": vq_cfg, "teacher": teacher_cfg}
    spec = ModelSpec(**nets, tiles=[side], default_tile=side, default_overlap=0)  # the default schedule
    torch.manual_seed(0)
    autoencoder = VQModelTorch(vq_cfg).eval()
    student = UNetModelSwin(student_cfg).eval()
    teacher = UNetModelSwin(teacher_cfg).eval()
    return OneStepSR(spec, student, autoencoder).eval(), TeacherSampler(spec, teacher, autoencoder).eval()


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["official", "tiny"], default="official")
    parser.add_argument("--tile", type=int, default=64, help="LR tile side (output is 4x)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    onestep, teacher = build(args.config)
    gen = torch.Generator().manual_seed(0)
    lq = torch.rand(1, 3, args.tile, args.tile, generator=gen) * 2 - 1
    noise = torch.randn(1, onestep.noise_channels, args.tile, args.tile, generator=gen)
    teacher_noise = torch.randn(1, teacher.noise_channels, args.tile, args.tile, generator=gen)
    with torch.inference_mode():
        z_y = onestep.encode_lq(lq)
        t = torch.full((1,), onestep.schedule.T - 1, dtype=torch.long)
        xi = noise[:, 3:]
        stages: dict[str, Callable[[], object]] = {
            "encode (bicubic + VQ encoder)": lambda: onestep.autoencoder.encode(bicubic_x4(lq)),
            "UNet (one call)": lambda: onestep.denoiser(z_y, t, lq, xi),
            "decode (quantize + VQ decoder)": lambda: onestep.autoencoder.decode(z_y),
            "one-step pipeline": lambda: onestep(lq, noise),
            "15-step teacher pipeline": lambda: teacher(lq, teacher_noise),
        }
        rows = {}
        for name, fn in stages.items():
            reps = 1 if name.startswith("15-step") else args.repeats
            rows[name] = {"seconds": timed(fn, reps), "gflops": flops(fn) / 1e9}
    out_mp = (4 * args.tile) ** 2 / 1e6
    one, many = rows["one-step pipeline"], rows["15-step teacher pipeline"]
    print(f"config={args.config} tile={args.tile} LR -> {4 * args.tile}px, threads={args.threads}")
    print(f"{'stage':34s} {'seconds':>9s} {'GFLOPs':>9s} {'GFLOP/out-MP':>13s}")
    for name, row in rows.items():
        print(f"{name:34s} {row['seconds']:9.3f} {row['gflops']:9.1f} {row['gflops'] / out_mp:13.1f}")
    speed_ratio = many["seconds"] / one["seconds"]
    flop_ratio = many["gflops"] / one["gflops"]
    print(f"teacher/one-step time ratio: {speed_ratio:.2f}x (FLOP ratio {flop_ratio:.2f}x)")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "config": args.config,
        "tile": args.tile,
        "threads": args.threads,
        "stages": rows,
        "speed_ratio": speed_ratio,
        "flop_ratio": flop_ratio,
    }
    (args.out / f"core_{args.config}_{args.tile}.json").write_text(json.dumps(result, indent=2))
    plot(rows, args.out / f"core_{args.config}_{args.tile}.png", f"{args.config}, LR tile {args.tile}")


def plot(rows: dict[str, dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = list(rows)
    ax.barh(names, [rows[n]["seconds"] for n in names], color=["#8ab", "#8ab", "#8ab", "#2a6", "#c54"])
    ax.set_xlabel("seconds per tile (median)")
    ax.set_title(title)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
