"""VQ-f4 autoencoder stage: losses, gradients, codebook initialisation, patch GAN, export."""

from __future__ import annotations

import json

import torch

from rsd.nets.vqgan import VQModelTorch
from tests.training.tiny import tiny_recipe
from training.autoencoder import AutoencoderStage
from training.distributed import DistContext
from training.losses import vq_codebook_loss
from training.run import train
from training.weights import build_autoencoder, read_autoencoder

CPU = DistContext(0, 1, torch.device("cpu"))
SMALL = {
    "autoencoder": {"n_embed": 64},
    "data": {"hr_size": 32, "synthetic_size": 48, "synthetic_count": 8, "val_count": 2},
    "loop": {"batch": 4, "microbatch": 2},
}


def test_codebook_loss_pulls_codes_and_commits_the_encoder():
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    z_q = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = vq_codebook_loss(z, z_q, beta=0.25)
    gz, gq = torch.autograd.grad(loss, (z, z_q))
    n = z.numel()
    assert torch.allclose(gq, 2 * (z_q - z) / n)  # codebook term moves the codes to the encoder output
    assert torch.allclose(gz, 0.25 * 2 * (z - z_q) / n)  # commitment term, weight beta


def test_autoencoder_trains_encoder_decoder_and_codebook(tmp_path):
    stage = AutoencoderStage(tiny_recipe("autoencoder", tmp_path, **SMALL), CPU)
    start = {k: v.clone() for k, v in stage.vq.state_dict().items()}
    first = stage.train_step(0)
    assert {"rec", "codebook"} <= first.keys()
    for part in ("encoder.conv_in.weight", "decoder.conv_out.weight", "quantize.embedding.weight"):
        assert not torch.equal(start[part], stage.vq.state_dict()[part]), part  # straight-through reaches all
    losses = [stage.train_step(s)["rec"] for s in range(1, 25)]
    assert sum(losses[-5:]) / 5 < 0.8 * first["rec"]


def test_data_codebook_init_uses_more_codes_than_uniform(tmp_path):
    used = {}
    for init in ("data", "uniform"):
        stage = AutoencoderStage(tiny_recipe("autoencoder", tmp_path, loss={"codebook_init": init}, **SMALL), CPU)
        hr = stage.batches.next().hr
        with torch.no_grad():
            used[init] = stage.vq.quantize(stage.vq.encode(hr))[1].unique().numel()
    assert used["data"] > 4 * used["uniform"]


def test_patch_gan_option_trains_a_discriminator(tmp_path):
    recipe = tiny_recipe("autoencoder", tmp_path, loss={"disc_weight": 0.1, "disc_start": 1}, **SMALL)
    stage = AutoencoderStage(recipe, CPU)
    assert stage.disc is not None
    before = {k: v.clone() for k, v in stage.disc.state_dict().items()}
    assert stage.train_step(0)["d_loss"] == 0.0  # not active before disc_start
    assert all(torch.equal(v, stage.disc.state_dict()[k]) for k, v in before.items())
    metrics = stage.train_step(1)
    assert metrics["d_loss"] > 0 and metrics["g_adv"] != 0
    assert any(not torch.equal(v, stage.disc.state_dict()[k]) for k, v in before.items())


def test_exported_autoencoder_is_a_teacher_recipe_source(tmp_path):
    run = train(tiny_recipe("autoencoder", tmp_path / "run", **(SMALL | {"loop": {**SMALL["loop"], "iterations": 2}})))
    config, state = read_autoencoder(run / "autoencoder")
    assert config.n_embed == 64
    assert json.loads((run / "autoencoder" / "autoencoder.json").read_text())["ddconfig"]["ch"] == 32
    vq = build_autoencoder(run / "autoencoder", torch.device("cpu"))
    assert isinstance(vq, VQModelTorch) and not any(p.requires_grad for p in vq.parameters())
    assert torch.equal(vq.quantize.embedding.weight, state["quantize.embedding.weight"])
