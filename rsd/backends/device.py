"""The one parser of device strings for the backend factories (`load_upscaler`, `rsd bench`'s variants)
and the TensorRT runtime: "cpu", "cuda" or "cuda:N". torch-free, so it runs before any backend loads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Device:
    kind: Literal["cpu", "cuda"]
    #: the CUDA device ordinal (0 for "cuda" and for "cpu")
    index: int = 0

    @classmethod
    def parse(cls, device: str) -> Device:
        """ "cpu" -> cpu; "cuda" / "cuda:N" -> cuda N; anything else is an error naming the forms."""
        if device == "cpu":
            return cls("cpu")
        kind, _, index = device.partition(":")
        if kind != "cuda" or not (index == "" or index.isdigit()):
            raise ValueError(f"device {device!r} is not 'cpu', 'cuda' or 'cuda:N'")
        return cls("cuda", int(index or 0))

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"
