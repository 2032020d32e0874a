"""Export subcommands: `export onnx`, `export tensorrt`, `export random-artifact`, `verify`, `bench`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rsd.kinds import ONNX_DTYPES


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="export an artifact to ONNX / TensorRT")
    export_sub = export.add_subparsers(dest="export_command", required=True, metavar="FORMAT")

    onnx = export_sub.add_parser("onnx", help="one ONNX file per tile size, dynamic batch")
    onnx.add_argument("--model", type=Path, required=True, help="artifact directory")
    onnx.add_argument("--tile", type=int, required=True, help="LR tile side (a multiple of the model's)")
    onnx.add_argument("--max-batch", type=int, default=8, help="batch the quantiser chunks are sized for")
    onnx.add_argument("--dtype", choices=ONNX_DTYPES, default="fp32")
    onnx.add_argument("--out", type=Path, default=None, help="default: MODEL/export/tile{N}[.fp16].onnx")
    onnx.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript")
    onnx.add_argument("--opset", type=int, default=None, help="default: 17 (torchscript), 18 (dynamo)")
    onnx.add_argument("--no-verify", action="store_true", help="skip the parity check against torch fp32")
    onnx.set_defaults(handler=run_export_onnx)

    trt = export_sub.add_parser("tensorrt", help="build a TensorRT engine from an exported ONNX file")
    trt.add_argument("--onnx", type=Path, required=True)
    trt.add_argument("--out", type=Path, default=None, help="default: beside the ONNX, tile{N}.{precision}.plan")
    trt.add_argument("--fp16", action="store_true")
    trt.add_argument("--bf16", action="store_true")
    trt.add_argument("--min-batch", type=int, default=1)
    trt.add_argument("--opt-batch", type=int, default=4)
    trt.add_argument("--max-batch", type=int, default=8)
    trt.add_argument("--workspace", type=float, default=4.0, help="builder workspace limit, GiB")
    trt.add_argument("--timing-cache", type=Path, default=None, help="read and update this timing cache file")
    trt.add_argument("--device", default="cuda")
    trt.set_defaults(handler=run_export_tensorrt)

    rand = export_sub.add_parser("random-artifact", help="official-config artifact with random weights")
    rand.add_argument("--out", type=Path, required=True)
    rand.add_argument("--seed", type=int, default=0)
    rand.add_argument("--no-teacher", action="store_true")
    rand.set_defaults(handler=run_random_artifact)

    verify = sub.add_parser("verify", help="parity of exported backends against torch fp32")
    _common(verify, backends="comma-separated variants (default: every exported file runnable here)")
    verify.add_argument("--tiles", type=int, default=3)
    verify.add_argument("--batch-sizes", type=_int_list, default=[1, 3])
    verify.add_argument("--tolerance", type=float, default=1e-3, help="max-abs on [-1, 1] for fp32 backends")
    verify.add_argument("--min-psnr", type=float, default=30.0, help="dB, for fp16 / bf16 backends")
    verify.set_defaults(handler=run_verify)

    bench = sub.add_parser("bench", help="latency and throughput per backend, one-step vs 15-step")
    _common(
        bench,
        backends="comma-separated variants; torch-fp32 is always measured as the baseline "
        "(default: torch-fp32,torch-bf16,onnxruntime-fp32 on CPU; on CUDA eager vs CUDA graphs x fp16/bf16)",
    )
    bench.add_argument("--batches", type=_int_list, default=[1, 2, 4, 8])
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--no-teacher", action="store_true", help="skip the 15-step teacher comparison")
    bench.add_argument("--no-steps", action="store_true", help="skip the 1 / 4 / 15-step table")
    bench.add_argument("--out", type=Path, default=Path("bench/results"))
    bench.set_defaults(handler=run_bench)


def _common(parser: argparse.ArgumentParser, backends: str) -> None:
    """The options `verify` and `bench` share; `backends` is the help of their --backends."""
    parser.add_argument("--model", type=Path, required=True, help="artifact directory")
    parser.add_argument("--tile", type=int, default=None, help="LR tile side (default: the model's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (torch variants)")
    parser.add_argument("--threads", type=int, default=None, help="torch / onnxruntime intra-op threads")
    parser.add_argument("--backends", type=_name_list, default=None, help=backends)


def _tile(args: argparse.Namespace) -> int:
    from rsd.spec import read_spec

    return int(args.tile) if args.tile is not None else read_spec(args.model).default_tile


def _print_parity(records: list) -> None:
    print(f"{'backend':28s} {'max-abs':>10s} {'PSNR dB':>8s} {'code flips':>10s}  result")
    for r in records:
        max_abs = "n/a" if r.max_abs is None else f"{r.max_abs:.2e}"
        psnr = "exact" if r.psnr_db is None else f"{r.psnr_db:.1f}"
        bound = f"max-abs <= {r.limit:g}" if r.criterion == "max_abs" else f"PSNR >= {r.limit:g} dB"
        verdict = f"ok ({bound})" if r.passed else f"FAIL ({bound})"
        print(f"{r.backend:28s} {max_abs:>10s} {psnr:>8s} {r.code_flip_fraction:10.2f}  {verdict}")


def run_export_onnx(args: argparse.Namespace) -> int:
    from model_export.to_onnx import export_onnx

    path, record = export_onnx(args.model, args.tile, args.out, args.dtype, args.max_batch, args.exporter, args.opset)
    print(
        f"wrote {path} ({record.exporter} exporter, opset {record.opset}, {record.export_seconds:.0f} s, "
        f"schedule {record.schedule_hash})"
    )
    if args.no_verify:
        print("parity not checked (--no-verify): run `rsd verify` before serving this file")
        return 0
    from model_export.verify import onnx_file_candidate, verify

    # the file just written, wherever --out put it; onnxruntime CPU provider, fp16 judged by PSNR
    records = verify(args.model, args.tile, [onnx_file_candidate(Path(args.model), args.tile, path, args.dtype)])
    _print_parity(records)
    return 0 if all(r.passed for r in records) else 1


def run_export_tensorrt(args: argparse.Namespace) -> int:
    from model_export.to_tensorrt import EngineBuild, build_engine
    from rsd.backends.exported import BatchProfile

    build = EngineBuild(
        onnx=args.onnx,
        out=args.out,
        fp16=args.fp16,
        bf16=args.bf16,
        batch=BatchProfile(min=args.min_batch, opt=args.opt_batch, max=args.max_batch),
        workspace_gib=args.workspace,
        timing_cache=args.timing_cache,
        device=args.device,
    )
    path, meta = build_engine(build)
    print(
        f"wrote {path} ({'+'.join(meta.precision)}, batch {meta.batch_profile.min}..{meta.batch_profile.max}, "
        f"{meta.runtime.gpu_name}, TensorRT {meta.runtime.tensorrt_version}, {meta.build_seconds:.0f} s)"
    )
    return 0


def run_random_artifact(args: argparse.Namespace) -> int:
    from model_export.random_artifact import write_random_artifact

    print(f"wrote {write_random_artifact(args.out, args.seed, teacher=not args.no_teacher)}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from model_export.verify import available_variants, candidate, verify

    tile = _tile(args)
    names = args.backends if args.backends is not None else available_variants(args.model, tile)
    if not names:
        raise ValueError(f"nothing to verify for tile {tile}: export it first (rsd export onnx --tile {tile})")
    candidates = [candidate(n, args.model, tile, args.device, args.threads) for n in names]
    records = verify(
        args.model,
        tile,
        candidates,
        args.tiles,
        args.batch_sizes,
        tolerance=args.tolerance,
        min_psnr=args.min_psnr,
    )
    _print_parity(records)
    return 0 if all(r.passed for r in records) else 1


def run_bench(args: argparse.Namespace) -> int:
    from model_export.bench import BenchConfig
    from model_export.bench import run_bench as bench
    from model_export.variants import CPU_VARIANTS, CUDA_VARIANTS

    config = BenchConfig(
        model_dir=args.model,
        tile=_tile(args),
        variants=tuple(args.backends or (CUDA_VARIANTS if args.device.startswith("cuda") else CPU_VARIANTS)),
        batches=tuple(args.batches),
        repeats=args.repeats,
        device=args.device,
        threads=args.threads,
        teacher=not args.no_teacher,
        steps=not args.no_steps,
        out_dir=args.out,
    )
    bench(config)
    return 0
