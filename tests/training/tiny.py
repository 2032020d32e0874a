"""Tiny recipes for the training tests (CPU, seconds); their artifacts come from tests/factories.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.config import load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[2]
# The training tests keep their own small recipes (synthetic data); configs/tiny_* are the bundled
# model's recipes and change with it.
CONFIGS = Path(__file__).resolve().parent / "configs"


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_recipe(stage: str, out_dir: Path, **sections: Any):
    """configs/tiny_<stage>.toml with the loop pointed at `out_dir`, quiet, and `sections` merged in."""
    base = load_recipe(CONFIGS / f"tiny_{stage}.toml", stage).model_dump(mode="json")
    quiet = {"loop": {"out_dir": str(out_dir), "progress": False, "tensorboard": False}}
    return recipe_from_dict(merge(merge(base, quiet), sections))
