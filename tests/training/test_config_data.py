"""Recipes (TOML, strict), the folder dataset, the batch stream, and bad input failing before training."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from rsd.spec import ArtifactError
from tests.factories import TEACHER, make_teacher_artifact
from tests.training.tiny import CONFIGS, REPO, tiny_recipe
from training.config import ConfigError, DistillRecipe, TeacherRecipe, load_recipe
from training.data import BatchStream, DataError, PairDataset, list_images, random_hr_crop
from training.distributed import DistContext
from training.run import build_stage

CPU = DistContext(0, 1, torch.device("cpu"))


def test_official_recipe_has_the_method_values():
    r = load_recipe(REPO / "configs" / "official_x4.toml", "distill")
    assert isinstance(r, DistillRecipe)
    assert (r.optim.lr, r.optim.betas, r.optim.weight_decay) == (5e-5, (0.9, 0.95), 0.0)
    assert (r.loop.batch, r.loop.microbatch, r.loop.iterations, r.loop.seed) == (64, 8, 3000, 123456)
    d = r.distill
    assert (d.fake_updates, d.ema_rate, d.lpips_weight, d.gan_weight) == (5, 0.999, 2.0, 3e-3)
    assert d.student_timesteps == [3, 7, 11, 14] and len(d.student_timesteps) == 4
    assert d.detach_xt is False and d.sid_normalization and not d.time_power_ten and d.true_data
    assert (d.timestep_weighting, d.gan_loss, d.mse_weight) == ("uniform", "non_saturating", 0.0)
    assert r.data.hr_size == 256 and r.data.degradation.final_sinc_prob == 0.8
    t = load_recipe(REPO / "configs" / "official_x4_teacher.toml", "teacher")
    assert isinstance(t, TeacherRecipe)
    assert t.unet.model_channels == 160 and t.optim.warmup_steps == 5000 and t.loop.iterations == 500000


@pytest.mark.parametrize("name", ["tiny_autoencoder", "tiny_teacher", "tiny_distill"])
@pytest.mark.parametrize("folder", ["tests", "repo"])
def test_tiny_recipes_load(name, folder):
    # both the tests' own recipes and the bundled model's recipes in configs/ validate
    directory = CONFIGS if folder == "tests" else REPO / "configs"
    assert load_recipe(directory / f"{name}.toml").stage == name.removeprefix("tiny_")


def test_unknown_key_is_an_error_naming_it(tmp_path):
    text = (CONFIGS / "tiny_teacher.toml").read_text().replace("[optim]", "[optim]\nlearning_rate = 1.0")
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"bad.toml: optim.learning_rate: Extra inputs"):
        load_recipe(tmp_path / "bad.toml")
    (tmp_path / "typo.toml").write_text((CONFIGS / "tiny_distill.toml").read_text().replace("[distill]", "[distil]"))
    with pytest.raises(ConfigError, match=r"typo\.toml: distil: Extra inputs"):
        load_recipe(tmp_path / "typo.toml")
    (tmp_path / "nostage.toml").write_text("[loop]\niterations = 3\n")
    with pytest.raises(ConfigError, match="missing top-level key 'stage'"):
        load_recipe(tmp_path / "nostage.toml")
    with pytest.raises(ConfigError, match="not 'distill'"):
        load_recipe(CONFIGS / "tiny_teacher.toml", "distill")
    with pytest.raises(ConfigError, match="no such config"):
        load_recipe(tmp_path / "missing.toml")


def test_lpips_requested_without_weights_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"lpips\.alexnet_weights"):
        tiny_recipe("distill", tmp_path, distill={"lpips_weight": 2.0})


def write_images(folder, count, size=40, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(count):
        arr = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{start + i}.{['png', 'jpg', 'webp'][i % 3]}")


def test_folder_dataset_recursive_extensions_and_unreadable_files(tmp_path):
    write_images(tmp_path / "a", 3)
    write_images(tmp_path / "a" / "deep" / "er", 2, start=10)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG garbage")
    assert len(list_images([tmp_path / "a"])) == 6  # 5 images + the broken png, not the txt
    cfg = tiny_recipe(
        "teacher", tmp_path, autoencoder="x", data={"source": "folder", "dirs": [str(tmp_path / "a")]}
    ).data
    ds = PairDataset(cfg, seed=0)
    broken = ds.paths.index(tmp_path / "a" / "broken.png")
    with pytest.warns(UserWarning, match="skipping unreadable image .*broken.png"):
        hr, lr = ds.pair(0, broken)
    assert ds.skipped == {tmp_path / "a" / "broken.png"}
    assert hr.shape == (3, 64, 64) and lr.shape == (3, 16, 16)
    assert hr.min() >= -1 and hr.max() <= 1 and lr.min() >= -1 and lr.max() <= 1
    # deterministic per (seed, epoch, index), independent of call order
    assert torch.equal(ds.pair(3, 1)[1], PairDataset(cfg, seed=0).pair(3, 1)[1])
    assert not torch.equal(ds.pair(3, 1)[1], ds.pair(4, 1)[1])


@pytest.mark.parametrize(
    ("folder", "error"), [("empty", "empty holds no jpg/jpeg/png/webp images"), ("nope", "does not exist")]
)
def test_empty_or_missing_data_folder_fails_before_training(tmp_path, folder, error):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    teacher = make_teacher_artifact(tmp_path / "teacher")
    data = {"source": "folder", "dirs": [str(tmp_path / folder)]}
    recipe = tiny_recipe("teacher", tmp_path / "run", autoencoder=str(teacher), data=data)
    with pytest.raises(DataError, match=error):
        build_stage(recipe, CPU)
    assert not (tmp_path / "run").exists()  # nothing was written


def test_wrong_shape_teacher_checkpoint_fails_before_training(tmp_path):
    teacher = make_teacher_artifact(tmp_path / "teacher")
    wider = TEACHER.model_copy(update={"model_channels": 64})
    # fine-tuning a teacher of another size
    recipe = tiny_recipe(
        "teacher",
        tmp_path / "run",
        autoencoder=str(teacher),
        init_from=str(teacher),
        unet=wider.model_dump(mode="json"),
    )
    with pytest.raises(ArtifactError, match=r"config differs.*model_channels"):
        build_stage(recipe, CPU)
    # a published-style .pth whose tensors do not fit the recipe's UNet
    from rsd.artifact import load_artifact

    state = load_artifact(teacher)[1]["teacher"]
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "teacher.pth")
    recipe = tiny_recipe(
        "teacher",
        tmp_path / "run",
        autoencoder=str(teacher),
        init_from=str(tmp_path / "teacher.pth"),
        unet=wider.model_dump(mode="json"),
    )
    with pytest.raises(
        ArtifactError, match=r"teacher.pth: .*time_embed.0.weight: expected shape \[256, 64\], found \[128, 32\]"
    ):
        build_stage(recipe, CPU)
    # a distillation teacher artifact whose weights do not match its spec
    bad = make_teacher_artifact(tmp_path / "bad")
    spec_path = bad / "spec.json"
    spec_path.write_text(spec_path.read_text().replace('"model_channels": 32', '"model_channels": 64'))
    with pytest.raises(ArtifactError, match="expected shape"):
        build_stage(tiny_recipe("distill", tmp_path / "run", teacher=str(bad)), CPU)
    assert not (tmp_path / "run").exists()


def test_teacher_fine_tunes_from_a_published_style_pth(tmp_path):
    teacher = make_teacher_artifact(tmp_path / "teacher")
    from rsd.artifact import load_artifact

    state = load_artifact(teacher)[1]["teacher"]
    stripped = {f"module.{k}": v for k, v in state.items() if "attn_mask" not in k}  # buffers regenerated
    torch.save({"state_dict": stripped}, tmp_path / "teacher.pth")
    stage = build_stage(
        tiny_recipe("teacher", tmp_path / "run", autoencoder=str(teacher), init_from=str(tmp_path / "teacher.pth")), CPU
    )
    for k, v in state.items():
        assert torch.equal(stage.net.state_dict()[k], v), k


def test_batch_stream_covers_each_epoch_and_resumes():
    stream = BatchStream(10, seed=3)
    keys = stream.next_keys(25)
    assert sorted(i for e, i in keys if e == 0) == list(range(10))
    assert sorted(i for e, i in keys if e == 1) == list(range(10))
    assert [i for e, i in keys if e == 0] != list(range(10))  # shuffled
    state = stream.state_dict()
    rest = stream.next_keys(7)
    other = BatchStream(10, seed=3)
    other.load_state_dict(state)
    assert other.next_keys(7) == rest


def test_random_crop_modes():
    rng = np.random.default_rng(0)
    img = np.random.default_rng(1).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    assert random_hr_crop(img, 64, "rescale", True, rng).shape == (64, 64, 3)  # padded up, then square
    assert random_hr_crop(img, 32, "crop", False, rng).shape == (32, 32, 3)
    small = img[:10, :12]
    assert random_hr_crop(small, 64, "rescale", False, rng).shape == (64, 64, 3)
    crop = random_hr_crop(img, 32, "crop", False, np.random.default_rng(5))
    found = any(np.array_equal(crop, img[r : r + 32, c : c + 32]) for r in range(19) for c in range(49))
    assert found  # a true patch at native resolution


def test_bicubic_fraction_gives_plain_bicubic_pairs(tmp_path):
    from training.degradation import bicubic_downsample

    cfg = tiny_recipe("teacher", tmp_path, autoencoder="x", data={"bicubic_fraction": 1.0}).data
    hr, lr = PairDataset(cfg, 0).pair(0, 2)
    assert torch.equal(lr, bicubic_downsample((hr + 1) / 2) * 2 - 1)
    cfg0 = tiny_recipe("teacher", tmp_path, autoencoder="x", data={"bicubic_fraction": 0.0}).data
    hr0, lr0 = PairDataset(cfg0, 0).pair(0, 2)
    assert torch.equal(hr0, hr) and not torch.equal(lr0, lr)


def test_channel_shuffle_permutes_the_same_crop(tmp_path):
    plain = tiny_recipe("teacher", tmp_path, autoencoder="x", data={"bicubic_fraction": 1.0}).data
    shuffled = plain.model_copy(update={"channel_shuffle": True})
    orders = set()
    for index in range(8):
        hr, _ = PairDataset(plain, 0).pair(0, index)
        hr_s, _ = PairDataset(shuffled, 0).pair(0, index)
        order = next(p for p in itertools.permutations(range(3)) if torch.equal(hr_s, hr[list(p)]))
        orders.add(order)
    assert len(orders) > 1  # not always the identity
    assert torch.equal(PairDataset(shuffled, 0).pair(0, 5)[0], PairDataset(shuffled, 0).pair(0, 5)[0])  # seeded
