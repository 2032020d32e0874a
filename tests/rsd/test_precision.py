"""`RSD_DTYPE=auto` / `--dtype auto`: the one resolution rule (rsd.precision), with faked CPUs and GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsd import precision
from rsd.precision import Precision, cpu_flags, dtype_in_name, resolve_dtype

EPYC = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n\nprocessor\t: 1\n"
SAPPHIRE_RAPIDS = "flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
PLAIN_AVX512 = "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512dq avx512vl\n"


def test_cpuinfo_flags_are_the_union_of_the_flags_lines() -> None:
    two = "flags : a b\nmodel name : x\nflags : c\n"
    assert cpu_flags(two) == {"a", "b", "c"}
    assert cpu_flags("") == frozenset()


@pytest.mark.parametrize(
    ("cpuinfo", "dtype", "reason"),
    [
        (EPYC, "bf16", "avx512_bf16"),
        (SAPPHIRE_RAPIDS, "bf16", "amx_bf16"),
        ("flags : amx_tile\n", "bf16", "amx_tile"),
        (PLAIN_AVX512, "fp32", "no native bf16"),  # oneDNN would emulate bf16: slower than fp32
        ("", "fp32", "no native bf16"),
    ],
)
def test_auto_on_an_x86_cpu_follows_the_cpuinfo_flags(cpuinfo: str, dtype: str, reason: str) -> None:
    resolved = resolve_dtype("auto", "torch", "cpu", cpuinfo=cpuinfo, machine="x86_64")
    assert resolved.dtype == dtype and reason in resolved.reason


def test_x86_ignores_torchs_query_which_counts_emulated_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "_torch_cpu_bf16", lambda: True)
    assert resolve_dtype("auto", cpuinfo=PLAIN_AVX512, machine="x86_64").dtype == "fp32"


@pytest.mark.parametrize("native", [True, False])
def test_other_platforms_ask_torch(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(precision, "_torch_cpu_bf16", lambda: native)
    resolved = resolve_dtype("auto", "torch", "cpu", cpuinfo="Features : fp asimd bf16\n", machine="aarch64")
    assert resolved.dtype == ("bf16" if native else "fp32")


def test_the_log_line_names_the_dtype_and_why() -> None:
    resolved = resolve_dtype("auto", cpuinfo=EPYC, machine="x86_64")
    assert resolved == Precision("bf16", "auto", "avx512_bf16")
    assert resolved.describe() == "dtype auto -> bf16 (avx512_bf16)"
    assert resolve_dtype("fp32").describe() == "dtype fp32 (requested)"


@pytest.mark.parametrize(
    ("capability", "dtype"), [((9, 0), "bf16"), ((8, 0), "bf16"), ((8, 9), "bf16"), ((7, 5), "fp16"), ((7, 0), "fp16")]
)
def test_auto_on_cuda_follows_the_compute_capability(capability: tuple[int, int], dtype: str) -> None:
    assert resolve_dtype("auto", "torch", "cuda:0", cuda_capability=capability).dtype == dtype


def test_backends_without_bf16_get_what_they_run() -> None:
    # onnxruntime has no bf16 kernels: auto never picks it, even on a bf16 CPU
    assert resolve_dtype("auto", "onnxruntime", "cpu", cpuinfo=SAPPHIRE_RAPIDS, machine="x86_64").dtype == "fp32"
    assert resolve_dtype("auto", "onnxruntime", "cuda", cuda_capability=(9, 0)).dtype == "fp32"
    assert resolve_dtype("auto", "tensorrt", "cuda", cuda_capability=(9, 0)).dtype == "fp16"


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_explicit_dtypes_pass_through(dtype: str) -> None:
    assert resolve_dtype(dtype, "torch", "cpu", cpuinfo=PLAIN_AVX512, machine="x86_64").dtype == dtype


def test_an_unknown_dtype_is_an_error_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="dtype 'int8' is not one of auto, fp32, fp16, bf16"):
        resolve_dtype("int8")


def test_the_dtype_is_read_from_backend_names() -> None:
    assert dtype_in_name("torch-cpu-bf16") == "bf16"
    assert dtype_in_name("torch-cuda-fp16-cast-graphs") == "fp16"
    assert dtype_in_name("onnxruntime-cpu-fp32-opt-basic") == "fp32"
    assert dtype_in_name("tensorrt-fp16") == "fp16"
    assert dtype_in_name("fake") is None


def test_load_upscaler_and_the_cli_resolve_auto_alike(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    from PIL import Image

    from rsd.backends import load_upscaler
    from rsd_cli.main import main
    from tests.factories import make_tiny_artifact

    tiny = make_tiny_artifact(tmp_path / "tiny")
    here = resolve_dtype("auto")
    with load_upscaler(tiny) as upscaler:
        assert dtype_in_name(upscaler.name) == here.dtype
    Image.new("RGB", (16, 16), (90, 30, 200)).save(tmp_path / "in.png")
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--model", str(tiny)]) == 0
    assert here.describe() in capsys.readouterr().err
