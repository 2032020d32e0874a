"""LPIPS (AlexNet, v0.1) as the `lpips` package defines it, without importing that package.

The `lpips` package imports torchvision, which we do not install; so this module rebuilds the metric:
scaling layer -> AlexNet relu1..relu5 -> unit-normalise channels -> squared difference -> learned 1x1
linear heads -> spatial mean -> sum over the five layers. Weights come from two local files:
- the AlexNet backbone: a torchvision-layout state dict (`features.{0,3,6,8,10}.{weight,bias}`),
  given by the user (nothing is downloaded);
- the linear heads: `lin{0..4}.model.1.weight`, by default the `weights/v0.1/alex.pth` file shipped
  inside the installed `lpips` package (located with importlib, never imported).
Both are read with torch.load(weights_only=True).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CHANNELS = (64, 192, 384, 256, 256)
# torchvision AlexNet `features` indices of the five convolutions (each followed by a ReLU tap).
CONV_INDICES = (0, 3, 6, 8, 10)


class LPIPSWeightsError(FileNotFoundError):
    """An LPIPS weight file is missing or does not hold the expected tensors."""


def default_linear_weights() -> Path:
    """weights/v0.1/alex.pth inside the installed `lpips` package (not imported)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        raise LPIPSWeightsError(
            "LPIPS linear-head weights: the `lpips` package is not installed; run "
            "`pip install lpips --no-deps` (only its weight files are used) or set lpips.linear_weights"
        )
    return Path(spec.origin).parent / "weights" / "v0.1" / "alex.pth"


class AlexFeatures(nn.Module):
    """torchvision AlexNet `features` up to relu5, returning the five ReLU outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.ModuleDict(
            {
                "0": nn.Conv2d(3, 64, 11, stride=4, padding=2),
                "3": nn.Conv2d(64, 192, 5, padding=2),
                "6": nn.Conv2d(192, 384, 3, padding=1),
                "8": nn.Conv2d(384, 256, 3, padding=1),
                "10": nn.Conv2d(256, 256, 3, padding=1),
            }
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.features
        h1 = F.relu(f["0"](x))
        h2 = F.relu(f["3"](F.max_pool2d(h1, 3, 2)))
        h3 = F.relu(f["6"](F.max_pool2d(h2, 3, 2)))
        h4 = F.relu(f["8"](h3))
        h5 = F.relu(f["10"](h4))
        return [h1, h2, h3, h4, h5]


class LPIPS(nn.Module):
    """LPIPS distance. forward(x, y): (N, 3, H, W) in [-1, 1] each -> (N,) float distances.

    Frozen: parameters do not require grad, but gradients flow to the inputs (for use as a loss).
    """

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.net = AlexFeatures()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, alexnet_weights: Path | None, linear_weights: Path | None = None) -> LPIPS:
        """Load the backbone (required) and the linear heads (default: the lpips package's file)."""
        if alexnet_weights is None:
            raise LPIPSWeightsError("LPIPS needs AlexNet backbone weights: set lpips.alexnet_weights")
        model = cls()
        model.load_backbone(_read(Path(alexnet_weights), "AlexNet backbone"))
        model.load_linear(_read(Path(linear_weights or default_linear_weights()), "LPIPS linear heads"))
        return model

    def load_backbone(self, state: dict[str, torch.Tensor]) -> None:
        """state: torchvision AlexNet keys (`features.N.weight/bias`; classifier keys are ignored)."""
        wanted = {f"features.{i}.{p}" for i in CONV_INDICES for p in ("weight", "bias")}
        missing = sorted(wanted - state.keys())
        if missing:
            raise LPIPSWeightsError(f"AlexNet weights lack {', '.join(missing[:3])} (torchvision layout expected)")
        self.net.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True)

    def load_linear(self, state: dict[str, torch.Tensor]) -> None:
        """state: `lin{k}.model.1.weight` (1, C_k, 1, 1), the lpips package's v0.1 file layout."""
        try:
            mapped = {f"{k}.weight": state[f"lin{k}.model.1.weight"] for k in range(len(CHANNELS))}
        except KeyError as exc:
            raise LPIPSWeightsError(f"LPIPS linear weights lack {exc.args[0]}") from exc
        self.lins.load_state_dict(mapped, strict=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS inputs must be two (N, 3, H, W) tensors, got {tuple(x.shape)}, {tuple(y.shape)}")
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        total = x.new_zeros(x.shape[0])
        for lin, a, b in zip(self.lins, fx, fy, strict=True):
            diff = (_unit(a) - _unit(b)) ** 2
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total


def _unit(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Divide by the channel L2 norm (lpips.normalize_tensor)."""
    return feat / (torch.sqrt(torch.sum(feat**2, dim=1, keepdim=True)) + eps)


def _read(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise LPIPSWeightsError(f"{what} weights file {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise LPIPSWeightsError(f"{what} weights file {path} does not hold a state dict")
    return {str(k).removeprefix("module."): v for k, v in state.items()}
