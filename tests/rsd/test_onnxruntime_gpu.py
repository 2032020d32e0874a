"""onnxruntime's GPU providers without a GPU: the provider options per variant, the refusal of a session
that onnxruntime silently put on a lower provider, and the IO-binding order, against a stand-in module.

The CPU provider runs for real in tests/model_export/test_onnx.py.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rsd.backends.exported import META_NOISE_CHANNELS, META_SCHEDULE_HASH, META_TILE
from rsd.backends.onnxruntime_backend import (
    OnnxRuntimeUpscaler,
    check_providers,
    open_session,
    provider_list,
    run_bound,
)
from rsd.spec import read_spec
from tests.factories import make_tiny_artifact

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
TILE = 32


class FakeBinding:
    def __init__(self, log: list[tuple[Any, ...]], outputs: dict[str, np.ndarray]) -> None:
        self.log, self.outputs = log, outputs
        self.names: list[str] = []

    def bind_ortvalue_input(self, name: str, value: Any) -> None:
        self.log.append(("bind_input", name, value.device))

    def bind_output(self, name: str, device: str, device_id: int) -> None:
        self.log.append(("bind_output", name, device, device_id))
        self.names.append(name)

    def synchronize_inputs(self) -> None:
        self.log.append(("synchronize_inputs",))

    def synchronize_outputs(self) -> None:
        self.log.append(("synchronize_outputs",))

    def copy_outputs_to_cpu(self) -> list[np.ndarray]:
        self.log.append(("copy_outputs_to_cpu",))
        return [self.outputs[name] for name in self.names]


def fake_ort(enabled: list[str] | None, available: list[str] = GPU_BUILD, props: dict[str, str] | None = None) -> Any:
    """A stand-in onnxruntime whose sessions report `enabled` (None: all the providers asked for)."""
    ort: Any = types.SimpleNamespace(log=[], sessions=[])

    class OrtValue:
        def __init__(self, array: np.ndarray, device: str) -> None:
            self.array, self.device = array, device

        @staticmethod
        def ortvalue_from_numpy(array: np.ndarray, device: str, device_id: int) -> OrtValue:
            ort.log.append(("to_device", device, device_id))
            return OrtValue(array, f"{device}:{device_id}")

    class InferenceSession:
        def __init__(self, path: str, options: Any, providers: list[Any]) -> None:
            self.path, self.providers = path, providers
            ort.sessions.append(self)

        def get_providers(self) -> list[str]:
            asked = [p if isinstance(p, str) else p[0] for p in self.providers]
            return asked if enabled is None else enabled

        def get_modelmeta(self) -> Any:
            return types.SimpleNamespace(custom_metadata_map=props or {})

        def io_binding(self) -> FakeBinding:
            n = 2
            return FakeBinding(
                ort.log, {"sr": np.zeros((n, 3, 4 * TILE, 4 * TILE)), "codes": np.zeros((n, TILE, TILE))}
            )

        def run_with_iobinding(self, binding: FakeBinding) -> None:
            ort.log.append(("run_with_iobinding",))

    ort.OrtValue, ort.InferenceSession = OrtValue, InferenceSession
    ort.get_available_providers = lambda: available
    return ort


# -- provider options -------------------------------------------------------------------------------


def test_cuda_provider_options() -> None:
    assert provider_list(fake_ort(None), "cuda", 1) == [
        ("CUDAExecutionProvider", {"device_id": 1, "do_copy_in_default_stream": True}),
        "CPUExecutionProvider",
    ]


@pytest.mark.parametrize(("dtype", "fp16"), [("fp32", False), ("fp16", True)])
def test_tensorrt_provider_enables_fp16_for_the_fp16_export_only(dtype: Any, fp16: bool, tmp_path: Path) -> None:
    providers = provider_list(fake_ort(None), "tensorrt", 0, dtype, tmp_path / "cache")
    assert [p if isinstance(p, str) else p[0] for p in providers] == GPU_BUILD
    options = providers[0][1]
    assert options["trt_fp16_enable"] is fp16 and options["device_id"] == 0
    assert options["trt_engine_cache_enable"] is True and options["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert providers[1] == ("CUDAExecutionProvider", {"device_id": 0, "do_copy_in_default_stream": True})


def test_cpu_provider_has_no_gpu_options() -> None:
    assert provider_list(fake_ort(None), "cpu", 0) == ["CPUExecutionProvider"]


def test_a_provider_missing_from_the_build_names_onnxruntime_gpu() -> None:
    with pytest.raises(RuntimeError, match=r"no CUDAExecutionProvider here .*install onnxruntime-gpu"):
        provider_list(fake_ort(None, available=["CPUExecutionProvider"]), "cuda", 0)


# -- sessions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "enabled", "missing"),
    [
        ("cuda", ["CPUExecutionProvider"], "CUDAExecutionProvider"),
        ("tensorrt", ["CUDAExecutionProvider", "CPUExecutionProvider"], "TensorrtExecutionProvider"),
        ("tensorrt", ["CPUExecutionProvider"], "TensorrtExecutionProvider"),
    ],
)
def test_a_silent_fallback_is_refused_naming_the_provider(
    provider: Any, enabled: list[str], missing: str, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match=f"could not enable {missing} .*it would run on {enabled[0]}"):
        open_session(fake_ort(enabled), tmp_path / "tile32.onnx", object(), provider, "fp32", 0)


def test_sessions_on_the_provider_asked_for_are_kept(tmp_path: Path) -> None:
    ort = fake_ort(None)
    session = open_session(ort, tmp_path / "tile32.fp16.onnx", object(), "tensorrt", "fp16", 2)
    assert session is ort.sessions[0] and session.path == str(tmp_path / "tile32.fp16.onnx")
    cache = tmp_path / "ort_trt_cache" / "fp16"  # per dtype: an engine cache is valid for its settings only
    assert cache.is_dir() and session.providers[0][1]["trt_engine_cache_path"] == str(cache)
    check_providers(types.SimpleNamespace(get_providers=lambda: GPU_BUILD), "cuda")  # no error


# -- IO binding -------------------------------------------------------------------------------------


def test_io_binding_copies_in_runs_and_copies_out_in_order() -> None:
    ort = fake_ort(None)
    session = ort.InferenceSession("m.onnx", None, ["CUDAExecutionProvider"])
    feeds = {"lq": np.zeros((2, 3, TILE, TILE), np.float32), "noise": np.zeros((2, 4, TILE, TILE), np.float32)}
    sr, codes = run_bound(ort, session, feeds, ["sr", "codes"], 1)
    assert sr.shape == (2, 3, 4 * TILE, 4 * TILE) and codes.shape == (2, TILE, TILE)
    assert ort.log == [
        ("to_device", "cuda", 1),
        ("bind_input", "lq", "cuda:1"),
        ("to_device", "cuda", 1),
        ("bind_input", "noise", "cuda:1"),
        ("bind_output", "sr", "cuda", 1),
        ("bind_output", "codes", "cuda", 1),
        ("synchronize_inputs",),
        ("run_with_iobinding",),
        ("synchronize_outputs",),
        ("copy_outputs_to_cpu",),
    ]


def test_upscaler_on_cuda_runs_through_the_binding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    artifact = make_tiny_artifact(tmp_path / "model")
    spec = read_spec(artifact)
    props = {
        META_SCHEDULE_HASH: spec.schedule_hash,
        META_TILE: str(TILE),
        META_NOISE_CHANNELS: str(spec.graph_noise_channels),
    }
    ort = fake_ort(None, props=props)
    ort.SessionOptions = lambda: types.SimpleNamespace()
    ort.GraphOptimizationLevel = types.SimpleNamespace(ORT_ENABLE_ALL="all")
    ort.ExecutionMode = types.SimpleNamespace(ORT_SEQUENTIAL="sequential")
    monkeypatch.setattr("rsd.backends.onnxruntime_backend._import_onnxruntime", lambda: ort)
    onnx = tmp_path / "tile32.onnx"
    upscaler = OnnxRuntimeUpscaler(artifact, TILE, provider="cuda", device_id=1, onnx_path=onnx)
    sr, codes = upscaler.run_with_codes(np.zeros((2, 3, TILE, TILE), np.float32), [1, 2])
    assert sr.shape == (2, 3, 4 * TILE, 4 * TILE) and codes is not None
    assert ("run_with_iobinding",) in ort.log and ("to_device", "cuda", 1) in ort.log
    assert ort.sessions[0].providers[0] == (
        "CUDAExecutionProvider",
        {"device_id": 1, "do_copy_in_default_stream": True},
    )
