"""The backend interface and the device parser (rsd.backends.base, rsd.backends.device)."""

from __future__ import annotations

import numpy as np
import pytest

from rsd.backends.base import Upscaler, check_tiles
from rsd.backends.device import Device


@pytest.mark.parametrize(
    ("text", "parsed"), [("cpu", Device("cpu")), ("cuda", Device("cuda")), ("cuda:2", Device("cuda", 2))]
)
def test_device_strings_parse(text: str, parsed: Device) -> None:
    assert Device.parse(text) == parsed


@pytest.mark.parametrize("text", ["gpu", "cuda:x", "cuda:-1", "CPU", "mps"])
def test_other_device_strings_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not 'cpu', 'cuda' or 'cuda:N'"):
        Device.parse(text)


def test_a_backend_must_implement_run_with_codes_and_gets_run_from_it() -> None:
    class Missing(Upscaler):
        pass

    with pytest.raises(TypeError, match="run_with_codes"):
        Missing()  # type: ignore[abstract]

    class Doubles(Upscaler):
        def run_with_codes(self, lq_tiles, seeds, with_codes=True):  # type: ignore[no-untyped-def]
            return lq_tiles * 2, (np.zeros(len(seeds)) if with_codes else None)

    assert np.array_equal(Doubles().run(np.ones((1, 3, 2, 2)), [0]), np.full((1, 3, 2, 2), 2.0))


def test_check_tiles_names_the_expected_shape() -> None:
    with pytest.raises(ValueError, match="2 tiles but 1 seeds"):
        check_tiles(np.zeros((2, 3, 8, 8)), [0])
    with pytest.raises(ValueError, match=r"this engine takes \(N, 3, 16, 16\) tiles"):
        check_tiles(np.zeros((1, 3, 8, 8)), [0], 16, "engine")
