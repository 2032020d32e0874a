"""Core subcommands: `upscale`, `convert-official`, `info`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rsd.family import FAMILY_NAMES
from rsd.imagefile import ImageError
from rsd.kinds import BACKENDS, BUNDLED_MODEL, DTYPE_CHOICES, FORMAT_SUFFIXES, OUTPUT_FORMATS, OutputFormat
from rsd.spec import ArtifactError

#: errors that are the user's input, reported as one line with exit code 2 (never a traceback)
EXPECTED_ERRORS = (ArtifactError, ImageError, ValueError, FileNotFoundError, NotADirectoryError, RuntimeError)


def default_model() -> Path:
    """$RSD_MODEL, else the bundled models/rsd-tiny."""
    return Path(os.environ.get("RSD_MODEL") or BUNDLED_MODEL)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("upscale", help="upscale image files x4")
    up.add_argument("inputs", nargs="+", type=Path, metavar="INPUT")
    up.add_argument("-o", "--out", type=Path, required=True, help="output file (one input) or directory")
    up.add_argument("--model", type=Path, default=None, help="artifact directory (default: $RSD_MODEL or bundled)")
    up.add_argument("--tile", type=int, default=None, help="LR tile size (default: the model's)")
    up.add_argument("--overlap", type=int, default=None, help="LR overlap between tiles")
    up.add_argument("--seed", type=int, default=0)
    up.add_argument(
        "--outscale", type=float, default=None, help="final scale in (1, 4]: the x4 result resized with Lanczos"
    )
    up.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    up.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default="auto", help="auto: bf16 on CPUs with native bf16, else fp32"
    )
    up.add_argument("--backend", choices=BACKENDS, default="torch")
    up.add_argument("--blend", choices=["smooth", "uniform"], default="smooth")
    up.add_argument("--format", choices=OUTPUT_FORMATS, default=None, help="default: from suffix")
    up.add_argument("--quality", type=int, default=95)
    up.set_defaults(handler=run_upscale)

    conv = sub.add_parser(
        "convert-official",
        help="convert published RSD / SinSR / ResShift .pth files into an artifact",
        description="--family F --weights FILE, or the RSD form --student FILE [--teacher FILE] (= --family rsd)",
    )
    conv.add_argument("--family", choices=FAMILY_NAMES, default=None, help="the model family (default: rsd)")
    conv.add_argument("--weights", type=Path, default=None, help="the family's net, e.g. SinSR_v1.pth")
    conv.add_argument("--student", type=Path, default=None, help="RSD student, e.g. ema_model_2800.pth")
    conv.add_argument("--autoencoder", type=Path, required=True, help="VQ-f4, autoencoder_vq_f4.pth")
    conv.add_argument("--teacher", type=Path, default=None, help="rsd only: resshift_realsrx4_s15_v1.pth")
    conv.add_argument(
        "--unet-config",
        type=Path,
        default=None,
        help="JSON UNet config of a re-training (default: official)",
    )
    conv.add_argument("--vq-config", type=Path, default=None, help="JSON VQ config (default: the official VQ-f4)")
    conv.add_argument("--out", type=Path, required=True)
    conv.set_defaults(handler=run_convert)

    info = sub.add_parser("info", help="print an artifact's spec summary")
    info.add_argument("--model", type=Path, default=None)
    info.set_defaults(handler=run_info)


def _outputs(inputs: list[Path], out: Path, fmt: OutputFormat | None) -> list[Path]:
    """One input + a file-like OUT -> that file; otherwise OUT is a directory of <stem>_x4.<ext>."""
    from rsd.imagefile import format_from_suffix

    if len(inputs) == 1 and out.suffix and not out.is_dir():
        format_from_suffix(out)  # validate before any work
        return [out]
    ext = FORMAT_SUFFIXES[fmt or "png"]
    names = [p.stem + "_x4" + ext for p in inputs]
    if len(set(names)) != len(names):
        raise ValueError("several inputs share a file name; upscale them into separate folders")
    return [out / n for n in names]


def run_upscale(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rsd.atomicfile import write_atomic
    from rsd.backends import load_upscaler
    from rsd.imagefile import ImageLimits, encode_image, format_from_suffix, read_image_file
    from rsd.outscale import output_size
    from rsd.pipeline import choose_tile, upscale_array
    from rsd.precision import resolve_dtype
    from rsd.spec import read_spec

    model_dir = args.model or default_model()
    read_spec(model_dir)  # fail fast, before decoding anything
    targets = _outputs(args.inputs, args.out, args.format)
    limits = ImageLimits(outscale=args.outscale)  # validates it; the pixel cap applies to the final size
    images = []  # all inputs are read and checked before any work, so a bad one writes nothing
    for path in args.inputs:
        try:
            images.append(read_image_file(path, limits))
        except ImageError as exc:
            raise ImageError(exc.code, f"{path}: {exc}") from exc
    if not 1 <= args.quality <= 100:
        raise ValueError(f"--quality {args.quality} must be in 1..100")
    precision = resolve_dtype(args.dtype, args.backend, args.device)
    upscaler = load_upscaler(model_dir, args.backend, device=args.device, dtype=precision.dtype, tile=args.tile)
    # after loading, so that an error stays one line; one seed gives one image per (backend, dtype)
    print(precision.describe(), file=sys.stderr)
    with upscaler:
        for src, image, target in zip(args.inputs, images, targets, strict=True):
            tile = choose_tile(upscaler.spec, image.rgb.shape[0], image.rgb.shape[1], args.tile)
            with tqdm(desc=src.name, unit="tile", leave=False) as bar:
                sr = upscale_array(
                    upscaler, image.rgb, args.seed, tile, args.overlap, blend=args.blend, progress=bar.update
                )
            fmt = args.format or format_from_suffix(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, encode_image(sr, image, fmt, args.quality, outscale=args.outscale))
            height, width = output_size(image.height, image.width, args.outscale, upscaler.spec.scale)
            print(f"{src} -> {target} ({width}x{height})")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from rsd.config import UNetConfig, VQConfig
    from rsd.official import convert_family

    if (args.weights is None) == (args.student is None):
        raise ValueError("give the net as --weights FILE (any --family) or as --student FILE (rsd), exactly once")
    if args.student is not None and args.family not in (None, "rsd"):
        raise ValueError(f"--student is the RSD form; for --family {args.family} pass --weights")
    family = args.family or "rsd"
    unet_config = None if args.unet_config is None else UNetConfig.model_validate_json(args.unet_config.read_text())
    vq_config = None if args.vq_config is None else VQConfig.model_validate_json(args.vq_config.read_text())
    out = convert_family(
        family,
        args.weights or args.student,
        args.autoencoder,
        args.out,
        teacher=args.teacher,
        unet_config=unet_config,
        vq_config=vq_config,
    )
    print(f"wrote artifact {out}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from rsd.artifact import describe

    print(describe(args.model or default_model()))
    return 0
