"""Training subcommands: `rsd train {autoencoder,teacher,distill} --config F [--resume DIR]` and
`rsd eval --model DIR --data DIR`.

Data parallel: `torchrun --nproc_per_node K -m rsd_cli.main train distill --config F` (the global batch
of the recipe is split over the K processes; results match a one-process run).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a VQ autoencoder, a ResShift teacher or an RSD student")
    stages = train.add_subparsers(dest="stage", required=True, metavar="STAGE")
    helps = {
        "autoencoder": "VQ-f4 autoencoder (writes RUN/autoencoder)",
        "teacher": "ResShift teacher (writes the artifact RUN/artifact)",
        "distill": "RSD one-step student from a teacher artifact (writes RUN/artifact)",
    }
    for stage, text in helps.items():
        p = stages.add_parser(stage, help=text)
        p.add_argument("--config", type=Path, required=True, help="recipe TOML, e.g. configs/tiny_teacher.toml")
        p.add_argument("--resume", type=Path, default=None, help="checkpoint file or run directory to resume")
        p.set_defaults(handler=run_train)

    ev = sub.add_parser("eval", help="PSNR/SSIM (+LPIPS) of an artifact against bicubic on a folder")
    ev.add_argument("--model", type=Path, required=True, help="artifact directory")
    ev.add_argument("--data", type=Path, required=True, help="folder with gt/ + lq/, or HR images only")
    ev.add_argument("--out", type=Path, default=Path("eval.json"), help="JSON report (default eval.json)")
    ev.add_argument("--lpips-alexnet", type=Path, default=None, help="torchvision AlexNet state dict for LPIPS")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--teacher", action="store_true", help="also run the artifact's 15-step teacher")
    ev.add_argument("--detail", action="store_true", help="add the detail ratio (Laplacian energy vs HR)")
    ev.add_argument("--device", default="cpu")
    ev.set_defaults(handler=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from training.run import train_file

    run_dir = train_file(args.stage, args.config, args.resume)
    product = "autoencoder" if args.stage == "autoencoder" else "artifact"
    print(f"wrote {run_dir / product}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from training.config import LPIPSConfig
    from training.evaluate import evaluate_model, format_report, write_report

    lpips = LPIPSConfig(alexnet_weights=args.lpips_alexnet) if args.lpips_alexnet else None
    result = evaluate_model(
        args.model, args.data, lpips, seed=args.seed, device=args.device, teacher=args.teacher, detail=args.detail
    )
    print(format_report(result))
    print(f"wrote {write_report(result, args.out)}")
    return 0
