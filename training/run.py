"""Entry point of `rsd train STAGE --config F [--resume DIR]`: recipe -> stage -> loop -> artifact.

All inputs (recipe keys, data folder, teacher/autoencoder weights and their shapes, LPIPS files) are
checked while the stage is built, i.e. before the first training step.
"""

from __future__ import annotations

from pathlib import Path

import torch

from training.config import AutoencoderRecipe, DistillRecipe, TeacherRecipe, load_recipe
from training.distributed import DistContext, init_distributed, shutdown
from training.loop import Stage, run_loop


def build_stage(recipe: AutoencoderRecipe | TeacherRecipe | DistillRecipe, ctx: DistContext) -> Stage:
    match recipe:
        case AutoencoderRecipe():
            from training.autoencoder import AutoencoderStage

            return AutoencoderStage(recipe, ctx)
        case TeacherRecipe():
            from training.teacher import TeacherStage

            return TeacherStage(recipe, ctx)
        case DistillRecipe():
            from training.distill import DistillStage

            return DistillStage(recipe, ctx)
    raise TypeError(f"unknown recipe type {type(recipe).__name__}")


def train(recipe: AutoencoderRecipe | TeacherRecipe | DistillRecipe, resume: Path | None = None) -> Path:
    """Train a recipe (in this process, or as one torchrun rank); returns the run directory, which
    holds `artifact/` (teacher, distill) or `autoencoder/` (autoencoder)."""
    if recipe.loop.cpu_threads:
        torch.set_num_threads(recipe.loop.cpu_threads)
    ctx = init_distributed(recipe.loop.device)
    try:
        stage = build_stage(recipe, ctx)
        return run_loop(stage, recipe.loop, ctx, recipe.model_dump(mode="json"), resume)
    finally:
        shutdown()


def train_file(stage: str, config: Path, resume: Path | None = None) -> Path:
    return train(load_recipe(config, stage), resume)
