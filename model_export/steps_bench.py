"""`rsd bench`'s steps table: one step vs 4 vs 15 ancestral steps, time and FLOPs per tile, side by side.

The family's samplers (rsd.family) share one UNet and one autoencoder, so their cost differs only in the
number of net calls; the autoencoder's encode and decode are paid once (issue 15: per 64 px LR tile the
official config spends 345 + 671 GFLOP in the VQ against 101 per UNet call, so 4 steps cost about
1.27x one step, not 4x). Every row runs the artifact's own autoencoder and net weights: its net with
the noise input dropped for the ancestral rows when it is RSD's student (the cost is the same).
torch fp32 eager, batch 1; rounds are interleaved (every row, then again) and each time is the best of
the rounds, as in model_export.bench. FLOPs are counted by torch.utils.flop_counter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model_export.verify import parity_tiles
from rsd.family import FAMILIES, Family, get_family

if TYPE_CHECKING:
    from rsd.onestep import SRGraph

#: the rows: the artifact's one-step family (SinSR's for an ancestral artifact), then 4 and 15 steps
ANCESTRAL_ROWS = ("resshift-s4", "resshift-s15")


@dataclass(frozen=True)
class StepsRow:
    family: str
    steps: int
    ms_per_tile: float
    gflops_per_tile: float
    #: time and FLOPs relative to the one-step row (measured in the same run)
    time_ratio: float
    flop_ratio: float


def _graphs(model_dir: Path, device: str) -> dict[Family, SRGraph]:
    """One graph per row over the artifact's nets (torch imported here: the table is optional)."""
    import torch

    from rsd.official import FIRST_CONV
    from rsd.onestep import OneStepSR, load_nets
    from rsd.sampler import AncestralSR
    from rsd.spec import SamplerConfig

    spec, net, autoencoder = load_nets(model_dir, "student", device)
    one_step = FAMILIES[spec.family] if spec.sampler.kind == "one-step" else FAMILIES["sinsr"]
    plain, plain_config = net, spec.student
    if spec.net_noise_channels:  # RSD's student: the same net without its noise input for the ancestral rows
        plain_config = config = spec.student.with_noise_channels(0)
        with torch.device("meta"):
            plain = type(net)(config)
        plain = plain.to_empty(device=device)
        state = net.state_dict()
        state[FIRST_CONV] = state[FIRST_CONV][:, : config.first_conv_in_channels].clone()
        plain.load_state_dict(state)
    graphs: dict[Family, SRGraph] = {}
    for row in (one_step, *(get_family(name) for name in ANCESTRAL_ROWS)):
        student = spec.student if row.steps == 1 else plain_config
        row_spec = spec.model_copy(
            update={
                "family": row.name,
                "schedule": row.schedule if row.steps > 1 else spec.schedule,
                "sampler": SamplerConfig(kind=row.sampler_kind, steps=row.steps),
                "student": student,
            }
        )
        if row.steps == 1:
            graphs[row] = OneStepSR(row_spec, net, autoencoder).eval()
        else:
            graphs[row] = AncestralSR(row_spec, plain, autoencoder).eval()
    return graphs


def steps_table(model_dir: Path, tile: int, device: str = "cpu", repeats: int = 3) -> list[StepsRow]:
    """Measure the rows side by side on one tile (batch 1)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from rsd.noise import draw_noise_batch

    graphs = _graphs(model_dir, device)
    lq_np, seeds = parity_tiles(tile, 1, 1)
    lq = torch.from_numpy(lq_np).to(device)
    noises = {
        row: torch.from_numpy(draw_noise_batch(seeds, graph.noise_channels, tile, tile)).to(device)
        for row, graph in graphs.items()
    }
    flops: dict[Family, int] = {}
    seconds: dict[Family, list[float]] = {row: [] for row in graphs}
    with torch.inference_mode():
        for row, graph in graphs.items():
            with FlopCounterMode(display=False) as counter:  # doubles as the warm-up
                graph(lq, noises[row])
            flops[row] = counter.get_total_flops()
        for _ in range(repeats):
            for row, graph in graphs.items():
                start = time.perf_counter()
                graph(lq, noises[row])
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                seconds[row].append(time.perf_counter() - start)
    best = {row: min(s) for row, s in seconds.items()}
    base = next(iter(graphs))
    return [
        StepsRow(
            family=row.name,
            steps=row.steps,
            ms_per_tile=1000 * best[row],
            gflops_per_tile=flops[row] / 1e9,
            time_ratio=best[row] / best[base],
            flop_ratio=flops[row] / flops[base],
        )
        for row in graphs
    ]


def format_steps_table(rows: list[StepsRow], tile: int) -> str:
    lines = [
        f"steps table (LR tile {tile}, torch fp32, batch 1)",
        f"{'family':14s} {'steps':>5s} {'ms/tile':>9s} {'GFLOP/tile':>11s} {'time vs 1':>10s} {'FLOPs vs 1':>11s}",
    ]
    for r in rows:
        lines.append(
            f"{r.family:14s} {r.steps:5d} {r.ms_per_tile:9.1f} {r.gflops_per_tile:11.2f} "
            f"{r.time_ratio:9.2f}x {r.flop_ratio:10.2f}x"
        )
    return "\n".join(lines)


def plot_steps(rows: list[StepsRow], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r.time_ratio for r in rows], 0.4, label="time")
    ax.bar(x + 0.2, [r.flop_ratio for r in rows], 0.4, label="FLOPs")
    ax.set_xticks(x, [f"{r.family}\n{r.steps} step{'s' * (r.steps > 1)}" for r in rows])
    ax.set_ylabel("relative to one step")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
