"""CUDA checks (pytest -m gpu): the stages run on a GPU, agree with the CPU, and the official-size
distillation iteration time."""

from __future__ import annotations

import time

import pytest
import torch

from rsd.config import ScheduleConfig, UNetConfig, VQConfig
from rsd.onestep import OneStepSR
from tests.factories import make_teacher_artifact
from tests.training.tiny import tiny_recipe
from training.distributed import DistContext
from training.run import build_stage, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_tiny_chain_on_cuda_matches_cpu(tmp_path):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    teacher = make_teacher_artifact(tmp_path / "teacher")
    losses = {}
    for device in ("cpu", "cuda"):
        loop = {"iterations": 1, "batch": 4, "microbatch": 2, "device": device}
        stage = build_stage(
            tiny_recipe(
                "distill",
                tmp_path / device,
                teacher=str(teacher),
                loop=loop,
                distill={"fake_updates": 2, "cache_latents": 4},
            ),
            DistContext(0, 1, torch.device(device)),
        )
        losses[device] = stage.train_step(0)
    for key in ("fake_loss", "g_loss", "objective"):
        assert losses["cuda"][key] == pytest.approx(losses["cpu"][key], rel=1e-3, abs=1e-5), key
    # full runs on CUDA: teacher fine-tuning, distillation, and the artifact on the GPU
    common = {"loop": {"iterations": 2, "batch": 4, "microbatch": 2, "device": "cuda"}}
    run_t = train(tiny_recipe("teacher", tmp_path / "t", autoencoder=str(teacher), init_from=str(teacher), **common))
    run_d = train(tiny_recipe("distill", tmp_path / "d", teacher=str(run_t / "artifact"), **common))
    model = OneStepSR.from_artifact(run_d / "artifact", device="cuda")
    lq = torch.rand(2, 3, 32, 32, device="cuda") * 2 - 1
    with torch.no_grad():
        sr = model(lq, torch.randn(2, model.noise_channels, 32, 32, device="cuda"))
    assert sr.shape == (2, 3, 128, 128) and torch.isfinite(sr).all()


def test_official_size_distillation_iteration_time(tmp_path):
    """One official-size iteration (5 fake + 1 student step) at batch 8; prints s/iteration and memory."""
    teacher = make_teacher_artifact(tmp_path / "teacher", unet=UNetConfig())
    spec_path = teacher / "spec.json"  # give the artifact the official VQ-f4 config and weights
    import json

    from rsd.artifact import load_artifact, save_artifact
    from rsd.nets.vqgan import VQModelTorch
    from rsd.spec import ModelSpec

    spec, states = load_artifact(teacher)
    vq = VQModelTorch(VQConfig())
    weights = {f"{net}.{k}": v for net, st in states.items() if net != "autoencoder" for k, v in st.items()}
    weights |= {f"autoencoder.{k}": v for k, v in vq.state_dict().items()}
    spec = ModelSpec.model_validate(
        {
            **json.loads(spec_path.read_text()),
            "autoencoder": VQConfig().model_dump(),
            "schedule": ScheduleConfig().model_dump(),
            "schedule_hash": "",
            "tiles": [64],
            "default_tile": 64,
            "default_overlap": 16,
        }
    )
    save_artifact(teacher, spec, weights)
    recipe = tiny_recipe(
        "distill",
        tmp_path / "run",
        teacher=str(teacher),
        distill={"fake_updates": 5, "cache_latents": 8, "lpips_weight": 0.0},
        data={"hr_size": 256, "synthetic_size": 256, "synthetic_count": 8, "workers": 8},
        export={"tiles": [64], "default_tile": 64, "default_overlap": 16, "include_teacher": False},
        loop={"iterations": 3, "batch": 8, "microbatch": 8, "device": "cuda", "cpu_threads": 0},
    )
    stage = build_stage(recipe, DistContext(0, 1, torch.device("cuda")))
    torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        metrics = stage.train_step(step)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    per_it = min(times[1:])
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(
        f"\nofficial-size distill iteration, batch 8 (fp32, {torch.cuda.get_device_name()}): "
        f"{per_it:.2f} s; x8 for batch 64 ~ {8 * per_it:.1f} s/it -> 3000 its ~ {3000 * 8 * per_it / 3600:.1f} h; "
        f"peak memory {peak:.1f} GiB; metrics {metrics}"
    )
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
