"""VQ-f4 autoencoder against the reference manifest and the small numeric golden (vq_f4_small)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsd.config import VQConfig
from rsd.nets.vqgan import AttnBlock, Upsample, VectorQuantizer, VQModelTorch

TOL = 1e-4  # fixtures README: fp32 max abs for the VQ golden


def _keys_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    lines = "".join(
        f"{key}|{list(value.shape)}|{str(value.dtype).removeprefix('torch.')}\n" for key, value in state_dict.items()
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).detach().abs().max())


@pytest.fixture(scope="module")
def small_meta(ref_dir: Path) -> dict[str, Any]:
    return json.loads((ref_dir / "vq_f4_small.json").read_text())


@pytest.fixture(scope="module")
def golden(ref_dir: Path) -> dict[str, np.ndarray]:
    with np.load(ref_dir / "vq_f4_small.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def io(golden: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {key.removeprefix("io."): torch.from_numpy(v) for key, v in golden.items() if key.startswith("io.")}


@pytest.fixture(scope="module")
def small_model(small_meta: dict[str, Any], golden: dict[str, np.ndarray]) -> VQModelTorch:
    model = VQModelTorch(VQConfig.model_validate(small_meta["config"])).eval()
    weights = {k: torch.from_numpy(v) for k, v in golden.items() if not k.startswith("io.")}
    model.load_state_dict(weights, strict=True)
    return model


def test_full_config_matches_manifest(ref_dir: Path) -> None:
    manifest = json.loads((ref_dir / "vq_f4_manifest.json").read_text())
    config = VQConfig.model_validate(manifest["config"])
    assert config == VQConfig()  # the defaults are the official config
    with torch.device("meta"):
        model = VQModelTorch(config)
    state = model.state_dict()
    entries = manifest["state_dict"]
    assert len(state) == manifest["num_entries"] == 205
    assert set(state) == {e["key"] for e in entries}
    for entry in entries:
        value = state[entry["key"]]
        assert list(value.shape) == entry["shape"], entry["key"]
        assert str(value.dtype).removeprefix("torch.") == entry["dtype"], entry["key"]
        assert entry["kind"] == "parameter"
    assert not list(model.buffers())
    assert list(state) == [e["key"] for e in entries]  # same registration order as the reference
    assert _keys_sha256(state) == manifest["keys_sha256"]
    assert _count(model) == manifest["total_parameters"] == 55_322_782
    for name, count in manifest["parameters_by_submodule"].items():
        assert _count(getattr(model, name)) == count, name


def test_small_config_matches_golden_layout(small_model: VQModelTorch, small_meta: dict[str, Any]) -> None:
    assert _keys_sha256(small_model.state_dict()) == small_meta["keys_sha256"]
    assert _count(small_model) == small_meta["total_parameters"]
    for name, count in small_meta["parameters_by_submodule"].items():
        assert _count(getattr(small_model, name)) == count, name


@torch.no_grad()
def test_encode(small_model: VQModelTorch, io: dict[str, torch.Tensor]) -> None:
    latent = small_model.encode(io["image"])
    assert latent.shape == (2, 3, 16, 16)
    assert _max_abs(latent, io["latent"]) < TOL


@torch.no_grad()
def test_quantize_indices_exact(small_model: VQModelTorch, io: dict[str, torch.Tensor]) -> None:
    z_q, indices = small_model.quantize(io["latent"])
    assert indices.dtype == torch.int64
    assert torch.equal(indices, io["quant_indices"])
    assert _max_abs(z_q, io["latent_quantized"]) < TOL
    # z_q holds codebook vectors exactly.
    codebook = small_model.quantize.embedding.weight
    assert torch.equal(z_q, codebook[indices].permute(0, 3, 1, 2))


@torch.no_grad()
def test_decode_quantizes_by_default(small_model: VQModelTorch, io: dict[str, torch.Tensor]) -> None:
    decoded = small_model.decode(io["latent"])
    assert decoded.shape == (2, 3, 64, 64)
    assert _max_abs(decoded, io["decoded"]) < TOL
    unquantized = small_model.decode(io["latent"], force_not_quantize=True)
    assert _max_abs(unquantized, io["decoded_no_quantize"]) < TOL
    assert _max_abs(decoded, unquantized) > 10 * TOL  # the golden tells the two paths apart


@torch.no_grad()
def test_continuous_latent_config_decodes_without_the_codebook(
    small_model: VQModelTorch, small_meta: dict[str, Any], io: dict[str, torch.Tensor]
) -> None:
    config = VQConfig.model_validate({**small_meta["config"], "decode_quantized": False})
    continuous = VQModelTorch(config).eval()
    continuous.load_state_dict(small_model.state_dict(), strict=True)  # same weights, same keys
    assert _max_abs(continuous.decode(io["latent"]), io["decoded_no_quantize"]) < TOL
    assert _max_abs(continuous.decode_straight_through(io["latent"]), io["decoded_no_quantize"]) < TOL


def test_norm_groups_set_every_group_norm_and_must_divide_the_widths(small_meta: dict[str, Any]) -> None:
    dd = small_meta["config"]["ddconfig"]
    model = VQModelTorch(VQConfig.model_validate({**small_meta["config"], "ddconfig": {**dd, "norm_groups": 8}}))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and {m.num_groups for m in norms} == {8}
    assert {m.num_groups for m in VQModelTorch(VQConfig.model_validate(small_meta["config"])).modules()
            if isinstance(m, torch.nn.GroupNorm)} == {32}  # fmt: skip
    with pytest.raises(ValueError, match="norm_groups 48 must divide"):
        VQConfig.model_validate({**small_meta["config"], "ddconfig": {**dd, "norm_groups": 48}})


@torch.no_grad()
def test_without_mid_attention_equals_a_mid_attention_that_adds_nothing(small_meta: dict[str, Any]) -> None:
    dd = small_meta["config"]["ddconfig"]
    torch.manual_seed(0)
    plain = VQModelTorch(VQConfig.model_validate({**small_meta["config"], "ddconfig": {**dd, "mid_attention": False}}))
    full = VQModelTorch(VQConfig.model_validate(small_meta["config"]))
    assert {k for k in full.state_dict() if k not in plain.state_dict()} == {
        k for k in full.state_dict() if ".mid.attn_1." in k
    }
    assert full.load_state_dict(plain.state_dict(), strict=False).unexpected_keys == []
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    plain.eval(), full.eval()
    assert _max_abs(plain.decode(plain.encode(x)), full.decode(full.encode(x))) > 1e-3  # random attention counts
    for mid in (full.encoder.mid, full.decoder.mid):
        assert mid.attn_1 is not None
        mid.attn_1.proj_out.weight.zero_(), mid.attn_1.proj_out.bias.zero_()  # residual attention -> identity
    assert _max_abs(plain.decode(plain.encode(x)), full.decode(full.encode(x))) < 1e-5


@torch.no_grad()
def test_lq_path(small_model: VQModelTorch, io: dict[str, torch.Tensor]) -> None:
    upsampled = F.interpolate(io["lq_image"], scale_factor=4, mode="bicubic", align_corners=False)
    assert _max_abs(upsampled, io["lq_bicubic_x4"]) < TOL
    assert _max_abs(small_model.encode(upsampled), io["z_y"]) < TOL


def _explicit_attention(block: AttnBlock, x: torch.Tensor) -> torch.Tensor:
    """The textbook path: 1x1 convs, (hw x hw) softmax matrix, residual."""
    n, c, h, w = x.shape
    x_norm = block.norm(x)
    q = block.q(x_norm).reshape(n, c, h * w).transpose(1, 2)  # (N, hw, C)
    k = block.k(x_norm).reshape(n, c, h * w)  # (N, C, hw)
    v = block.v(x_norm).reshape(n, c, h * w)
    weights = torch.softmax(torch.bmm(q, k) * c**-0.5, dim=2)  # (N, hw_q, hw_k)
    out = torch.bmm(v, weights.transpose(1, 2)).reshape(n, c, h, w)
    return x + block.proj_out(out)


@torch.no_grad()
def test_sdpa_attention_equals_explicit_softmax(small_model: VQModelTorch, io: dict[str, torch.Tensor]) -> None:
    captured: dict[str, torch.Tensor] = {}
    blocks = {"encoder": small_model.encoder.mid.attn_1, "decoder": small_model.decoder.mid.attn_1}
    hooks = [
        block.register_forward_pre_hook(lambda _m, args, name=name: captured.__setitem__(name, args[0].clone()))
        for name, block in blocks.items()
    ]
    try:
        small_model.encode(io["image"])
        small_model.decode(io["latent"])
    finally:
        for hook in hooks:
            hook.remove()
    for name, block in blocks.items():
        x = captured[name]
        assert x.shape[2:] == (16, 16)
        assert _max_abs(block(x.clone()), _explicit_attention(block, x)) < 1e-5, name
        nchw = x.contiguous()  # the block also accepts plain NCHW memory
        assert _max_abs(block(nchw.clone()), _explicit_attention(block, nchw)) < 1e-5, name


def test_upsample_equals_nearest_then_conv() -> None:
    """The transposed-conv form of Upsample equals nearest x2 + 3x3 conv, values and weight gradients."""
    gen = torch.Generator().manual_seed(0)
    block = Upsample(8)
    x = torch.randn(2, 8, 5, 7, generator=gen)
    out = block(x)
    expected = block.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    assert out.shape == (2, 8, 10, 14)
    assert _max_abs(out, expected) < 1e-5 * float(expected.detach().abs().max())
    weight = torch.randn(out.shape, generator=gen)
    (grad,) = torch.autograd.grad((out * weight).sum(), block.conv.weight)
    (grad_expected,) = torch.autograd.grad((expected * weight).sum(), block.conv.weight)
    assert _max_abs(grad, grad_expected) < 1e-5 * float(grad_expected.abs().max())


@torch.no_grad()
def test_chunked_quantize_equals_unchunked(small_model: VQModelTorch) -> None:
    quantizer = small_model.quantize
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 3, 10, 13, generator=gen) * 0.5
    default = quantizer.distance_budget_bytes
    try:
        assert quantizer.chunk_positions(3, 4) >= 130  # one chunk at the default budget
        whole = quantizer(z)
        # 7 positions per sample and chunk: 19 chunks, the last one partial.
        quantizer.distance_budget_bytes = 7 * 3 * quantizer.embedding.num_embeddings * 4
        assert quantizer.chunk_positions(3, 4) == 7
        chunked = quantizer(z)
    finally:
        quantizer.distance_budget_bytes = default
    assert torch.equal(whole[1], chunked[1])
    assert torch.equal(whole[0], chunked[0])
    # Reference formula on the flattened latent, unchunked.
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    codebook = quantizer.embedding.weight
    dist = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.t()
    assert torch.equal(whole[1].reshape(-1), dist.argmin(1))


@torch.no_grad()
def test_distances_stay_fp32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    quantizer = VectorQuantizer(4096, 3)
    quantizer.embedding.weight.normal_()  # dense codes: neighbours differ by less than bf16 resolves
    z = torch.randn(1, 3, 32, 32)
    _, exact = quantizer(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, under_autocast = quantizer(z)
        chunk = z.permute(0, 2, 3, 1).reshape(1, -1, 3)
        codebook = quantizer.embedding.weight
        lowp = torch.baddbmm(chunk.pow(2).sum(2, keepdim=True) + codebook.pow(2).sum(1), chunk,
                             codebook.t()[None], alpha=-2).argmin(2).reshape(1, 32, 32)  # fmt: skip
    assert torch.equal(under_autocast, exact)
    assert z_q.dtype == torch.float32
    assert (lowp != exact).float().mean() > 0.05  # what a bf16 distance matmul would have picked


def test_default_budget_bounds_the_distance_matrix() -> None:
    with torch.device("meta"):
        model = VQModelTorch(VQConfig())
    step = model.quantize.chunk_positions(2, 4)
    assert step * 2 * 8192 * 4 <= 64 * 2**20
    assert step == 1024


def test_decode_straight_through(small_model: VQModelTorch, io: dict[str, torch.Tensor]) -> None:
    z = io["latent"].clone().requires_grad_(True)
    out = small_model.decode_straight_through(z)
    with torch.no_grad():
        assert _max_abs(out, small_model.decode(io["latent"])) < 1e-5
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (grad_z,) = torch.autograd.grad((out * weight).sum(), z)
    # Identity gradient: equal to the decoder's gradient taken at the quantised latent.
    with torch.no_grad():
        z_q = small_model.quantize(io["latent"])[0]
    z_q.requires_grad_(True)
    out_q = small_model.decode(z_q, force_not_quantize=True)
    (grad_q,) = torch.autograd.grad((out_q * weight).sum(), z_q)
    assert float(grad_q.abs().max()) > 1e-3
    assert _max_abs(grad_z, grad_q) < 1e-5 * float(grad_q.abs().max())
    assert small_model.encoder.conv_in.weight.grad is None  # only the latent was asked for


def test_training_mode_backward_through_encoder(small_model: VQModelTorch, io: dict[str, torch.Tensor]) -> None:
    # In-place ops must stay autograd-safe when a graph is recorded.
    x = io["image"][:1].clone().requires_grad_(True)
    latent = small_model.encode(x)
    (grad,) = torch.autograd.grad(latent.square().sum(), x)
    assert torch.isfinite(grad).all() and float(grad.abs().max()) > 0
    with torch.no_grad():
        assert _max_abs(latent, io["latent"][:1]) < TOL


def test_bad_inputs_are_refused(small_model: VQModelTorch) -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        small_model.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        small_model.encode(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="4 channels"):
        small_model.quantize(torch.zeros(1, 4, 8, 8))


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # raised inside torch.export
def test_quantize_and_decode_export_to_onnx(
    small_model: VQModelTorch, io: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    """Graph C of method.md 5.1 (quantise + decode), chunked, exported with a dynamic batch."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")

    class QuantizeDecode(torch.nn.Module):
        def __init__(self, model: VQModelTorch) -> None:
            super().__init__()
            self.model = model

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.model.decode(z)

    quantizer = small_model.quantize
    default = quantizer.distance_budget_bytes
    quantizer.distance_budget_bytes = 100 * quantizer.embedding.num_embeddings * 4  # 3 chunks of 256
    path = tmp_path / "decode.onnx"
    try:
        torch.onnx.export(
            QuantizeDecode(small_model).eval(),
            (io["latent"],),
            str(path),
            input_names=["z"],
            output_names=["image"],
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
    finally:
        quantizer.distance_budget_bytes = default
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    latent = io["latent"].numpy()
    for batch in (latent[:1], np.concatenate([latent, latent[:1]])):
        (image,) = session.run(None, {"z": batch})
        expected = io["decoded"].numpy()[[0, 1, 0][: len(batch)]]
        assert np.abs(image - expected).max() < TOL
