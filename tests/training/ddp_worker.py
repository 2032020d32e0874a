"""Run one training recipe (a JSON file) in this process; used under torchrun by test_ddp.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from training.config import recipe_from_dict
from training.run import train

if __name__ == "__main__":
    torch.set_num_threads(1)
    train(recipe_from_dict(json.loads(Path(sys.argv[1]).read_text())))
