"""The GPU check's typed data (bench/gpu_check.py): its configs, result rows, the targets and their
verdicts, the JSON document and the printed table.

The targets are the ones the GPU check was asked to report against, for the official configuration at
LR tile 64 (one 256x256 output tile): each is judged on the best variant measured (fp16 or bf16, eager
or CUDA graphs), and the table names that variant. On the CPU dry run (a tiny config) the same verdicts
are computed, so the code path is exercised, but they say nothing about the targets.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rsd.config import DDConfig, UNetConfig, VQConfig


@dataclass(frozen=True)
class CheckConfig:
    device: str
    model: str  # "official" or "tiny"
    tiles: tuple[int, ...]
    batches: tuple[int, ...] = (1, 4, 8)
    dtypes: tuple[str, ...] = ("fp16", "bf16")
    modes: tuple[str, ...] = ("eager", "graphs")
    repeats: int = 10
    #: tiles run in fp32 on the CPU for the PSNR reference (the official net takes seconds per tile there)
    cpu_reference_tiles: int = 2
    service_dtype: str = "fp16"
    service_mode: str = "graphs"
    service_batch: int = 8
    photo_side: int = 512
    photo_count: int = 6
    service_window_s: float = 20.0
    service_warmup_s: float = 3.0
    direct_min_s: float = 3.0
    #: stages that would start past this many seconds are skipped (and the table says so)
    budget_s: float = 300.0


#: the dry run's nets: the official layout at its smallest (one UNet level, 8-channel VQ), so that every
#: CPU call takes milliseconds even in fp16 (which the CPU emulates)
TINY_UNET = UNetConfig(image_size=8, in_channels=3, lq_size=8, model_channels=16, channel_mult=[1], num_res_blocks=[1],
                       attention_resolutions=[8], num_head_channels=8, swin_embed_dim=16, window_size=8,
                       noise_channels=1, norm_groups=4)  # fmt: skip
TINY_VQ = VQConfig(embed_dim=3, n_embed=16, ddconfig=DDConfig(ch=8, ch_mult=[1, 1, 1], num_res_blocks=1, resolution=32,
                                                              norm_groups=4))  # fmt: skip
GPU_CHECK = CheckConfig(device="cuda", model="official", tiles=(64, 128))
CPU_DRY_RUN = CheckConfig(
    device="cpu", model="tiny", tiles=(8, 16), repeats=2, service_dtype="fp16", service_mode="eager",
    photo_side=32, photo_count=4, service_window_s=2.0, service_warmup_s=0.5, direct_min_s=0.3, budget_s=60.0,
)  # fmt: skip


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    threshold: float
    #: True: the value passes at or below the threshold; False: at or above
    at_most: bool

    @property
    def text(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.threshold:g}"


TARGETS = (
    Target("batch8_ms_per_tile", "batch-8 ms per tile", 3.0, at_most=True),
    Target("batch1_latency_ms", "batch-1 latency ms", 8.0, at_most=True),
    Target("batch1_peak_mb", "batch-1 peak MB", 539.0, at_most=True),
    Target("service_over_direct", "service/direct", 0.9, at_most=False),
)


def verdict(value: float | None, target: Target) -> str:
    """PASS / FAIL against the target's threshold; n/a when nothing was measured."""
    if value is None or not math.isfinite(value):
        return "n/a"
    passed = value <= target.threshold if target.at_most else value >= target.threshold
    return "PASS" if passed else "FAIL"


@dataclass
class VariantRow:
    """One (tile, dtype, mode, batch): the best of the timed calls of the backend's run() (host noise,
    copies in and out included, as the service calls it), peak memory, PSNR against fp32."""

    tile: int
    dtype: str
    mode: str  # "eager" (weights cast once, no graphs) or "graphs" (CUDA graphs over the same weights)
    batch: int
    ms_per_call: float | None = None
    ms_per_tile: float | None = None
    tiles_per_s: float | None = None
    #: CUDA: torch.cuda.max_memory_allocated from a reset before the shape's first call (weights included);
    #: CPU: resident growth during the calls
    peak_mb: float | None = None
    psnr_vs_device_fp32: float | None = None
    psnr_vs_cpu_fp32: float | None = None
    note: str = ""

    @property
    def variant(self) -> str:
        return f"{self.dtype} {self.mode}"


@dataclass
class StageRow:
    """Encode (bicubic + VQ encoder), UNet (one call), decode (quantise + VQ decoder): ms per call, eager."""

    tile: int
    dtype: str
    batch: int
    encode_ms: float
    unet_ms: float
    decode_ms: float


@dataclass
class ServiceResult:
    """The embedded service at saturation against the same upscaler called directly (bench/device_sim.py)."""

    variant: str
    tile: int
    batch: int
    photo_side: int
    photos: int
    photo_source: str
    direct_images_per_s: float
    service_images_per_s: float
    ratio: float
    busy: float
    images_in_window: int
    failed: int
    window_s: float


@dataclass
class CheckReport:
    config: dict[str, Any]
    environment: dict[str, Any]
    #: fp32 on the device against fp32 on the CPU, per tile (PSNR dB; None: identical)
    references: dict[str, float | None] = field(default_factory=dict)
    variants: list[VariantRow] = field(default_factory=list)
    stages: list[StageRow] = field(default_factory=list)
    service: ServiceResult | None = None
    service_note: str = "not run yet"
    notes: list[str] = field(default_factory=list)
    progress: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False

    def target_values(self) -> dict[str, tuple[float | None, str]]:
        """Each target's measured value and the variant it comes from (the best at the first tile)."""
        tile = self.config["tiles"][0]
        values: dict[str, tuple[float | None, str]] = {}
        for key, batch, attr in (("batch8_ms_per_tile", 8, "ms_per_tile"), ("batch1_latency_ms", 1, "ms_per_call"),
                                 ("batch1_peak_mb", 1, "peak_mb")):  # fmt: skip
            rows = [r for r in self.variants if r.tile == tile and r.batch == batch and getattr(r, attr) is not None]
            best = min(rows, key=lambda r: getattr(r, attr), default=None)
            values[key] = (None, "") if best is None else (getattr(best, attr), best.variant)
        service = self.service
        values["service_over_direct"] = (None, "") if service is None else (service.ratio, service.variant)
        return values

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["targets"] = [
            {**asdict(t), "measured": value, "variant": variant, "verdict": verdict(value, t)}
            for t in TARGETS
            for value, variant in [self.target_values()[t.key]]
        ]
        return document

    def write(self, paths: list[Path]) -> None:
        """The JSON and the table beside it (`.txt`), rewritten after every stage: a run cut short
        still leaves what it measured."""
        text = json.dumps(self.to_json(), indent=2) + "\n"
        table = format_table(self) + "\n"
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(text)
            os.replace(temporary, path)
            path.with_suffix(".txt").write_text(table)


def _num(value: float | None, digits: int = 2, width: int = 8) -> str:
    return f"{'-':>{width}s}" if value is None else f"{value:{width}.{digits}f}"


def _psnr(value: float | None, measured: bool) -> str:
    return f"{'exact' if measured else '-':>9s}" if value is None else f"{value:9.1f}"


def format_table(report: CheckReport) -> str:
    env, cfg = report.environment, report.config
    device = cfg["device"]
    lines = [
        f"GPU check: {env['device_name']} | torch {env['torch']} | CUDA {env['cuda']} | Python {env['python']}",
        f"config {cfg['model']} (random weights), LR tiles {cfg['tiles']}, {device}; ms: best of "
        f"{cfg['repeats']} calls of run(); PSNR dB on [-1, 1] against fp32 on {device} and on the CPU",
        "",
        f"{'tile':>4s} {'dtype':5s} {'mode':6s} {'batch':>5s} {'ms/call':>8s} {'ms/tile':>8s} {'tiles/s':>8s} "
        f"{'peak MB':>8s} {'PSNR ' + device[:4]:>9s} {'PSNR cpu':>9s}  note",
    ]
    for r in report.variants:
        measured = r.ms_per_call is not None
        lines.append(
            f"{r.tile:4d} {r.dtype:5s} {r.mode:6s} {r.batch:5d} {_num(r.ms_per_call)} {_num(r.ms_per_tile)} "
            f"{_num(r.tiles_per_s, 1)} {_num(r.peak_mb, 0)} {_psnr(r.psnr_vs_device_fp32, measured)} "
            f"{_psnr(r.psnr_vs_cpu_fp32, measured)}  {r.note}".rstrip()
        )
    for tile, psnr in report.references.items():
        lines.append(f"fp32 on {device} vs fp32 on the CPU, tile {tile}: {_psnr(psnr, True).strip()} dB")
    lines += ["", f"stages, eager, ms per call: {'tile':>4s} {'dtype':5s} {'batch':>5s} encode    UNet  decode"]
    for s in report.stages:
        lines.append(
            f"{'':28s}{s.tile:4d} {s.dtype:5s} {s.batch:5d} {s.encode_ms:6.2f} {s.unet_ms:7.2f} {s.decode_ms:7.2f}"
        )
    lines.append("")
    svc = report.service
    if svc is None:
        lines.append(f"service: {report.service_note}")
    else:
        lines.append(
            f"service ({svc.variant}, tile {svc.tile}, batch {svc.batch}, {svc.photos} photos "
            f"of {svc.photo_side} px -> PNG): direct {svc.direct_images_per_s:.3f} images/s, service "
            f"{svc.service_images_per_s:.3f} images/s, service/direct {svc.ratio:.3f}, device busy {svc.busy:.3f}, "
            f"{svc.images_in_window} images in {svc.window_s:.0f} s, {svc.failed} failed"
        )
    scope = "official config" if cfg["model"] == "official" else f"{cfg['model']} config: NOT the targets' config"
    lines += ["", f"targets ({scope}, tile {cfg['tiles'][0]}, best variant):"]
    lines.append(f"{'target':22s} {'threshold':>9s} {'measured':>9s} {'variant':12s} verdict")
    values = report.target_values()
    for t in TARGETS:
        value, variant = values[t.key]
        lines.append(f"{t.label:22s} {t.text:>9s} {_num(value, 3, 9)} {variant:12s} {verdict(value, t)}")
    lines += [f"note: {n}" for n in report.notes]
    if not report.complete:
        lines.append("(incomplete: the run stopped before its last stage)")
    return "\n".join(lines)
