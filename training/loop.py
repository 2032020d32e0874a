"""The training loop shared by every stage: steps, logging, validation, checkpoints, exact resume.

A stage (autoencoder, teacher, distill) provides `train_step(step) -> metrics`, `validate()`,
`export(dir)` and `state_dict()/load_state_dict()` covering everything a resumed run needs (models,
optimizers, EMA, data position, noise generator). The loop adds the step counter and torch's global
RNG state. Checkpoints are `torch.save` dicts of tensors and plain values, read back with
`torch.load(weights_only=True)`. Output layout under `loop.out_dir`:
    checkpoints/step_0000100.pt   metrics.jsonl   tb/   artifact/ (autoencoder/ for that stage)
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from training.config import LoopConfig
from training.distributed import DistContext

CHECKPOINT_DIR = "checkpoints"
#: recipe sections that may change between a run and its resumption (bookkeeping only)
RESUMABLE_CHANGES = {
    "iterations",
    "log_every",
    "checkpoint_every",
    "validate_every",
    "keep_checkpoints",
    "tensorboard",
    "progress",
    "out_dir",
    "cpu_threads",
}


class Stage(Protocol):
    def train_step(self, step: int) -> dict[str, float]: ...

    def validate(self) -> tuple[dict[str, float], dict[str, torch.Tensor]]: ...

    def export(self, run_dir: Path) -> Path:
        """Write the stage's product under `run_dir` (an artifact at run_dir/artifact)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ResumeError(ValueError):
    """The checkpoint to resume from is missing or belongs to a different recipe."""


def checkpoint_path(out_dir: Path, step: int) -> Path:
    return out_dir / CHECKPOINT_DIR / f"step_{step:07d}.pt"


def find_checkpoint(resume: Path) -> Path:
    """A checkpoint file, or the newest one under DIR/checkpoints or DIR."""
    if resume.is_file():
        return resume
    for folder in (resume / CHECKPOINT_DIR, resume):
        found = sorted(folder.glob("step_*.pt")) if folder.is_dir() else []
        if found:
            return found[-1]
    raise ResumeError(f"--resume {resume}: no checkpoint (step_*.pt) found there or in {resume / CHECKPOINT_DIR}")


def _comparable(recipe: dict[str, Any]) -> dict[str, Any]:
    loop = {k: v for k, v in recipe.get("loop", {}).items() if k not in RESUMABLE_CHANGES}
    return {**recipe, "loop": loop}


def save_checkpoint(
    path: Path, step: int, stage: Stage, recipe: dict[str, Any], keep: int, world_size: int = 1
) -> Path:
    state = {
        "step": step,
        "recipe": json.dumps(recipe, sort_keys=True),
        "stage": stage.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "world_size": world_size,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    if keep:
        for old in sorted(path.parent.glob("step_*.pt"))[:-keep]:
            old.unlink()
    return path


def load_checkpoint(path: Path, stage: Stage, recipe: dict[str, Any]) -> int:
    """Restore `stage` and the RNG from `path`; returns the step to continue from."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = json.loads(state["recipe"])
    if _comparable(saved) != _comparable(recipe):
        diff = sorted(k for k in set(saved) | set(recipe) if _comparable(saved).get(k) != _comparable(recipe).get(k))
        raise ResumeError(f"{path} was written by a different recipe (sections differ: {', '.join(diff)})")
    stage.load_state_dict(state["stage"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


class Logger:
    """metrics.jsonl (+ TensorBoard scalars and image grids); used on the main process only."""

    def __init__(self, out_dir: Path, tensorboard: bool) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.file = (out_dir / "metrics.jsonl").open("a")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tb"))

    def scalars(self, step: int, prefix: str, metrics: dict[str, float]) -> None:
        self.file.write(json.dumps({"step": step, "kind": prefix, **metrics}) + "\n")
        self.file.flush()
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def images(self, step: int, images: dict[str, torch.Tensor]) -> None:
        if self.writer is not None:
            for k, img in images.items():  # (3, H, W) in [0, 1]
                self.writer.add_image(f"val/{k}", img.clamp(0, 1).cpu().numpy(), step)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def _due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


def run_loop(stage: Stage, loop: LoopConfig, ctx: DistContext, recipe: dict[str, Any], resume: Path | None) -> Path:
    """Train until loop.iterations, then let the stage export into out_dir; returns out_dir."""
    out = Path(loop.out_dir)
    start = load_checkpoint(find_checkpoint(resume), stage, recipe) if resume is not None else 0
    logger = Logger(out, loop.tensorboard) if ctx.is_main else None
    bar = tqdm(total=loop.iterations, initial=start, disable=not (loop.progress and ctx.is_main), unit="it")
    window: list[dict[str, float]] = []
    for step in range(start + 1, loop.iterations + 1):
        metrics = stage.train_step(step - 1)
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"step {step}: non-finite {', '.join(bad)} (lower the lr or check the data)")
        window.append(metrics)
        bar.update(1)
        if _due(step, loop.log_every, loop.iterations):
            mean = ctx.mean({k: float(np.mean([m[k] for m in window])) for k in window[0]})
            window = []
            bar.set_postfix({k: f"{v:.4g}" for k, v in list(mean.items())[:3]})
            if logger:
                logger.scalars(step, "train", mean)
        if _due(step, loop.validate_every, loop.iterations):
            result = ctx.on_main(stage.validate)
            if logger and result:
                logger.scalars(step, "val", result[0])
                logger.images(step, result[1])
        if _due(step, loop.checkpoint_every, loop.iterations):
            path = checkpoint_path(out, step)
            ctx.on_main(partial(save_checkpoint, path, step, stage, recipe, loop.keep_checkpoints, ctx.world_size))
    bar.close()
    ctx.on_main(lambda: stage.export(out))
    if logger:
        logger.close()
    return out
