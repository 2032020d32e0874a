"""UNetModelSwin against the reference manifests and goldens (method.md 2, 4.2; fixtures README)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from rsd.config import UNetConfig
from rsd.nets import swin
from rsd.nets.swin import SwinBlock, WindowAttention, reference_shift_mask, textbook_shift_mask
from rsd.nets.unet import UNetModelSwin, widen_first_conv

GOLDEN_TOL = 1e-4  # fixtures README: fp32 max abs
SDPA_VS_EXPLICIT_TOL = 1e-5


def _keys_sha256(entries: list[tuple[str, list[int], str]]) -> str:
    text = "".join(f"{key}|{shape}|{dtype}\n" for key, shape, dtype in entries)
    return hashlib.sha256(text.encode()).hexdigest()


def _entries(model: torch.nn.Module) -> list[tuple[str, list[int], str]]:
    return [
        (key, list(value.shape), str(value.dtype).removeprefix("torch.")) for key, value in model.state_dict().items()
    ]


def _small_config(ref_dir: Path, name: str) -> UNetConfig:
    meta = json.loads((ref_dir / f"{name}.json").read_text())
    noise = meta.get("student_extra", {}).get("noise_channels", 0)
    return UNetConfig(**meta["config"], noise_channels=noise)


def _load_npz(ref_dir: Path, name: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    with np.load(ref_dir / f"{name}.npz") as data:
        arrays = {key: torch.from_numpy(data[key].copy()) for key in data.files}
    state = {k: v for k, v in arrays.items() if not k.startswith("io.")}
    io = {k: v for k, v in arrays.items() if k.startswith("io.")}
    return state, io


Golden = tuple[UNetModelSwin, dict[str, torch.Tensor], dict[str, torch.Tensor]]


def _golden(ref_dir: Path, name: str) -> Golden:
    """(model with the golden's weights, its state dict, its io.* arrays) of golden `name`."""
    state, io = _load_npz(ref_dir, name)
    torch.manual_seed(0)
    model = UNetModelSwin(_small_config(ref_dir, name)).eval()
    model.load_state_dict(state, strict=True)
    return model, state, io


@pytest.fixture(scope="module")
def teacher_golden(ref_dir: Path) -> Golden:
    return _golden(ref_dir, "unet_swin_small")


@pytest.fixture(scope="module")
def student_golden(ref_dir: Path) -> Golden:
    return _golden(ref_dir, "unet_swin_small_student")


@pytest.fixture(scope="module")
def teacher_outputs(teacher_golden) -> dict[str, torch.Tensor]:
    """Our fp32 (SDPA) outputs for the golden inputs at 32² ("") and 64² ("_64"), computed once."""
    model, _, io = teacher_golden
    with torch.no_grad():
        return {s: model(io[f"io.x{s}"], io["io.timesteps"], io[f"io.lq{s}"]) for s in ("", "_64")}


@pytest.fixture
def explicit_attention() -> Iterator[None]:
    WindowAttention.use_sdpa = False
    try:
        yield
    finally:
        WindowAttention.use_sdpa = True


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# 1. Manifests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("section", ["teacher", "rsd_student"])
def test_full_config_matches_manifest(ref_dir: Path, section: str) -> None:
    manifest = json.loads((ref_dir / "unet_swin_x4_manifest.json").read_text())[section]
    noise = 1 if section == "rsd_student" else 0
    config = UNetConfig(**manifest["config"], noise_channels=noise)
    with torch.device("meta"):
        model = UNetModelSwin(config)
    ours = _entries(model)
    expected = [(e["key"], e["shape"], e["dtype"]) for e in manifest["state_dict"]]
    assert ours == expected  # same keys, shapes, dtypes and registration order
    assert _keys_sha256(ours) == manifest["keys_sha256"]
    assert sum(p.numel() for p in model.parameters()) == manifest["total_parameters"]
    buffers = {e["key"] for e in manifest["state_dict"] if e["kind"] == "buffer"}
    assert {name for name, _ in model.named_buffers()} == buffers
    assert model.size_multiple == 64  # method.md 2.4


def test_official_defaults_equal_manifest_config(ref_dir: Path) -> None:
    """The SinSR/RSD spelling (in_channels 6) and the ResShift one (3 + lq_size) give one net."""
    manifest = json.loads((ref_dir / "unet_swin_x4_manifest.json").read_text())["teacher"]
    with torch.device("meta"):
        ours = _entries(UNetModelSwin(UNetConfig()))
    assert _keys_sha256(ours) == manifest["keys_sha256"]


# 2. Teacher golden ----------------------------------------------------------------------------


def test_small_teacher_keys_and_buffers(ref_dir: Path, teacher_golden) -> None:
    _, state, _ = teacher_golden
    meta = json.loads((ref_dir / "unet_swin_small.json").read_text())
    fresh = UNetModelSwin(_small_config(ref_dir, "unet_swin_small"))
    assert _keys_sha256(_entries(fresh)) == meta["keys_sha256"]
    assert sum(p.numel() for p in fresh.parameters()) == meta["total_parameters"]
    buffers = dict(fresh.named_buffers())
    assert sorted(buffers) == sorted(k for k in state if k.endswith(("attn_mask", "relative_position_index")))
    for name, value in buffers.items():
        assert value.dtype == state[name].dtype, name
        assert torch.equal(value, state[name]), name
    # the golden's Swin geometry: window shrink / shift 0 at or below the window (fixtures README 3)
    for entry in meta["swin_blocks"]:
        block = fresh.get_submodule(entry["module"])
        assert isinstance(block, SwinBlock)
        assert (block.window, block.shift) == (entry["window_size"], entry["shift_size"]), entry
        assert hasattr(block, "attn_mask") == entry["has_attn_mask_buffer"], entry


@pytest.mark.parametrize("suffix", ["", "_64"])
def test_small_teacher_golden_output(teacher_golden, teacher_outputs, suffix: str) -> None:
    _, _, io = teacher_golden
    out = teacher_outputs[suffix]
    assert out.shape == io[f"io.out{suffix}"].shape
    assert _max_abs(out, io[f"io.out{suffix}"]) < GOLDEN_TOL


def test_small_teacher_intermediates(teacher_golden) -> None:
    model, _, io = teacher_golden
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.time_embed.register_forward_hook(lambda m, a, out: seen.__setitem__("emb", out)),
        model.input_blocks[0][0].register_forward_pre_hook(lambda m, a: seen.__setitem__("first", a[0])),
        model.middle_block.register_forward_hook(lambda m, a, out: seen.__setitem__("middle", out)),
    ]
    try:
        with torch.no_grad():
            model(io["io.x"], io["io.timesteps"], io["io.lq"])
            middle = model.middle_features(io["io.x"], io["io.timesteps"], io["io.lq"])
    finally:
        for hook in hooks:
            hook.remove()
    assert _max_abs(seen["emb"], io["io.emb"]) < 1e-5
    assert torch.equal(seen["first"], io["io.first_conv_in"])  # cat([x, lq]): x first
    assert _max_abs(seen["middle"], io["io.middle_out"]) < GOLDEN_TOL
    assert torch.equal(middle, seen["middle"])


@pytest.mark.parametrize("suffix", ["", "_64"])
def test_sdpa_matches_explicit_softmax(teacher_golden, teacher_outputs, suffix: str, explicit_attention: None) -> None:
    model, _, io = teacher_golden
    with torch.no_grad():
        explicit = model(io[f"io.x{suffix}"], io["io.timesteps"], io[f"io.lq{suffix}"])
    assert _max_abs(explicit, io[f"io.out{suffix}"]) < GOLDEN_TOL
    assert _max_abs(teacher_outputs[suffix], explicit) < SDPA_VS_EXPLICIT_TOL


# 3. Student golden ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "_64"])
def test_small_student_golden_output(student_golden, suffix: str) -> None:
    model, _, io = student_golden
    with torch.no_grad():
        out = model(io[f"io.x{suffix}"], io["io.timesteps"], io[f"io.lq{suffix}"], io[f"io.noise_input{suffix}"])
    assert _max_abs(out, io[f"io.out{suffix}"]) < GOLDEN_TOL


def test_student_noise_channel_is_used(student_golden) -> None:
    model, _, io = student_golden
    with torch.no_grad():
        zero = model(io["io.x"], io["io.timesteps"], io["io.lq"], torch.zeros_like(io["io.noise_input"]))
        noisy = model(io["io.x"], io["io.timesteps"], io["io.lq"], io["io.noise_input"])
    assert _max_abs(zero, noisy) > 1e-2


def test_student_with_zero_noise_is_teacher(teacher_golden, teacher_outputs, student_golden) -> None:
    _, _, io = teacher_golden
    student, _, _ = student_golden
    zeros = torch.zeros_like(io["io.x"][:, :1])
    with torch.no_grad():
        from_student = student(io["io.x"], io["io.timesteps"], io["io.lq"], zeros)
    assert _max_abs(from_student, teacher_outputs[""]) < 1e-6
    assert _max_abs(from_student, io["io.out"]) < GOLDEN_TOL


def test_widened_teacher_reproduces_teacher(ref_dir: Path, teacher_golden, teacher_outputs) -> None:
    _, state, io = teacher_golden
    widened = widen_first_conv(state, noise_channels=1)
    assert widened["input_blocks.0.0.weight"].shape == (32, 7, 3, 3)
    assert torch.equal(widened["input_blocks.0.0.weight"][:, :6], state["input_blocks.0.0.weight"])
    assert not widened["input_blocks.0.0.weight"][:, 6:].any()
    assert state["input_blocks.0.0.weight"].shape == (32, 6, 3, 3)  # input not modified
    student = UNetModelSwin(_small_config(ref_dir, "unet_swin_small").with_noise_channels(1)).eval()
    student.load_state_dict(widened, strict=True)
    noise = torch.randn_like(io["io.x"][:, :1])
    with torch.no_grad():
        with_zeros = student(io["io.x"], io["io.timesteps"], io["io.lq"], torch.zeros_like(noise))
        with_noise = student(io["io.x"], io["io.timesteps"], io["io.lq"], noise)
    assert torch.equal(with_zeros, teacher_outputs[""])
    assert _max_abs(with_noise, teacher_outputs[""]) < 1e-6  # zero columns: any noise is ignored


def test_widen_first_conv_errors(teacher_golden) -> None:
    _, state, _ = teacher_golden
    with pytest.raises(KeyError, match=r"input_blocks\.0\.0\.weight"):
        widen_first_conv({k: v for k, v in state.items() if k != "input_blocks.0.0.weight"}, 1)
    with pytest.raises(ValueError, match=r"\(32, 7, 3, 3\).*Already widened"):
        widen_first_conv(widen_first_conv(state, 1), 1)
    with pytest.raises(ValueError, match="noise_channels must be >= 1, got 0"):
        widen_first_conv(state, 0)


# 4. Shift mask: reference quirk, cache -------------------------------------------------------


def test_reference_mask_differs_from_textbook_and_matches_buffer(teacher_golden) -> None:
    _, state, _ = teacher_golden
    args = (32, 32, 8, 4, torch.device("cpu"), torch.float32)
    reference, textbook = reference_shift_mask(*args), textbook_shift_mask(*args)
    assert torch.equal(reference, state["input_blocks.1.1.blocks.1.attn_mask"])
    assert not torch.equal(reference, textbook)
    # reference: only the last row of windows is masked; textbook also masks the last column
    masked = reference.flatten(1).ne(0).any(1).view(4, 4)
    assert masked[3].all() and not masked[:3].any()
    assert textbook.flatten(1).ne(0).any(1).view(4, 4)[:, 3].all()


def test_golden_rejects_the_textbook_mask(ref_dir: Path, teacher_golden, monkeypatch: pytest.MonkeyPatch) -> None:
    _, state, io = teacher_golden
    model = UNetModelSwin(_small_config(ref_dir, "unet_swin_small")).eval()  # fresh mask caches
    model.load_state_dict(state, strict=True)
    monkeypatch.setattr(swin, "reference_shift_mask", textbook_shift_mask)
    with torch.no_grad():
        out = model(io["io.x"], io["io.timesteps"], io["io.lq"])
    assert _max_abs(out, io["io.out"]) > 0.1  # fixtures README: a textbook mask costs 0.27


def test_mask_is_built_from_runtime_size_and_cached(ref_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = UNetModelSwin(_small_config(ref_dir, "unet_swin_small")).eval()
    calls: list[tuple[int, int]] = []

    def counting(height: int, width: int, *rest: object) -> torch.Tensor:
        calls.append((height, width))
        return reference_shift_mask(height, width, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(swin, "reference_shift_mask", counting)
    x, lq, t = torch.randn(1, 3, 32, 64), torch.randn(1, 3, 32, 64), torch.tensor([5])
    with torch.no_grad():
        first = model(x, t, lq)
        shifted = [m for m in model.modules() if isinstance(m, SwinBlock) and m.shift > 0]
        assert sorted(calls) == [(32, 64)] * len(shifted) and len(shifted) == 2
        second = model(x, t, lq)
    assert len(calls) == len(shifted)  # the second call reused the cached masks
    assert torch.equal(first, second)
    for block in shifted:
        ((key, mask),) = block._mask_cache.items()
        assert key == (32, 64, torch.device("cpu"), torch.float32)
        assert mask.shape == (4 * 8, 64, 64)
        assert "_mask_cache" not in "".join(model.state_dict())


def test_stored_attn_mask_buffers_are_not_read(teacher_golden) -> None:
    model, state, io = teacher_golden
    garbage = {k: torch.full_like(v, 7.0) if k.endswith("attn_mask") else v for k, v in state.items()}
    model.load_state_dict(garbage, strict=True)
    try:
        with torch.no_grad():
            out = model(io["io.x"], io["io.timesteps"], io["io.lq"])
    finally:
        model.load_state_dict(state, strict=True)
    assert _max_abs(out, io["io.out"]) < GOLDEN_TOL


# 5. Input errors ------------------------------------------------------------------------------


def test_wrong_size_and_missing_noise_errors(ref_dir: Path) -> None:
    teacher = UNetModelSwin(_small_config(ref_dir, "unet_swin_small"))
    student = UNetModelSwin(_small_config(ref_dir, "unet_swin_small_student"))
    assert teacher.size_multiple == 32  # windows 8 at 1/1 and 1/4, window 4 at 1/8
    t = torch.tensor([3])
    with pytest.raises(ValueError, match="latent size 48x32 is not a multiple of 32"):
        teacher(torch.randn(1, 3, 48, 32), t, torch.randn(1, 3, 48, 32))
    with pytest.raises(ValueError, match=r"noise of shape \(1, 1, 32, 32\).*got None"):
        student(torch.randn(1, 3, 32, 32), t, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"noise of shape \(1, 1, 32, 32\).*got \(1, 1, 16, 16\)"):
        student(torch.randn(1, 3, 32, 32), t, torch.randn(1, 3, 32, 32), torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="noise_channels=0"):
        teacher(torch.randn(1, 3, 32, 32), t, torch.randn(1, 3, 32, 32), torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"lq must be \(1, 3, 32, 32\)"):
        teacher(torch.randn(1, 3, 32, 32), t, torch.randn(1, 3, 64, 64))


# Precision ------------------------------------------------------------------------------------


def test_group_norm_computes_in_fp32_and_casts_back() -> None:
    from rsd.nets.layers import GroupNorm32

    norm = GroupNorm32(64)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 64, 4, 4) * 30 + 200  # large mean: bf16 statistics would be off
    expected = norm(x)
    for dtype in (torch.float16, torch.bfloat16):
        half = norm.to(dtype)(x.to(dtype))
        assert half.dtype == dtype
        assert torch.equal(
            half,
            torch.nn.functional.group_norm(x.to(dtype).float(), 32, norm.weight.float(), norm.bias.float(), 1e-5).to(
                dtype
            ),
        )
        assert _max_abs(half.float(), expected) < 0.1
        norm.float()


def test_bfloat16_forward_runs_and_stays_close(teacher_golden) -> None:
    model, state, io = teacher_golden
    bf16 = UNetModelSwin(model.config).eval()
    bf16.load_state_dict(state, strict=True)
    bf16.to(torch.bfloat16)
    with torch.no_grad():
        out = bf16(io["io.x"].bfloat16(), io["io.timesteps"], io["io.lq"].bfloat16())
    assert out.dtype == torch.bfloat16
    rel = (out.float() - io["io.out"]).norm() / io["io.out"].norm()
    assert rel < 0.05


# Export ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_student_exports_to_onnx_with_dynamic_batch(student_golden, tmp_path: Path) -> None:
    """The graph has no data-dependent control flow: torch.onnx (dynamo) exports it with a dynamic
    batch, and onnxruntime reproduces the eager output (shift masks become constants)."""
    ort = pytest.importorskip("onnxruntime")
    model, _, io = student_golden
    args = (io["io.x"], io["io.timesteps"], io["io.lq"], io["io.noise_input"])
    batch = torch.export.Dim("batch")
    path = tmp_path / "unet.onnx"
    torch.onnx.export(
        model,
        args,
        str(path),
        dynamo=True,
        input_names=["x", "t", "lq", "noise"],
        output_names=["x0"],
        dynamic_shapes=tuple({0: batch} for _ in args),
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = ("x", "t", "lq", "noise")
    for n in (2, 1):
        (out,) = session.run(None, {name: a[:n].numpy() for name, a in zip(names, args, strict=True)})
        assert np.abs(out - io["io.out"][:n].numpy()).max() < GOLDEN_TOL


def test_norm_groups_reach_every_group_norm_and_keep_the_state_dict_layout() -> None:
    from tests.factories import TINY_UNET

    default = UNetModelSwin(TINY_UNET)
    grouped = UNetModelSwin(TINY_UNET.model_copy(update={"norm_groups": 8}))
    norms = [m for m in grouped.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and {m.num_groups for m in norms} == {8}
    assert {m.num_groups for m in default.modules() if isinstance(m, torch.nn.GroupNorm)} == {32}
    assert {k: v.shape for k, v in grouped.state_dict().items()} == {
        k: v.shape for k, v in default.state_dict().items()
    }
    with pytest.raises(ValueError, match="norm_groups 12 must divide"):
        UNetConfig.model_validate(TINY_UNET.model_dump() | {"norm_groups": 12})
