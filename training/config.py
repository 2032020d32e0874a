"""Typed training recipes (pydantic, `extra="forbid"`), one TOML file per recipe in `configs/`.

A recipe names its stage (`stage = "autoencoder" | "teacher" | "distill"`) and holds every knob of that
stage. Every choice that method.md marks [reconstructed] or [unconfirmed] is a field here whose default
is the method.md default, so a run states its assumptions in its config. Unknown keys are errors.
Relative paths are relative to the working directory the command runs in.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from rsd.config import ScheduleConfig, StrictModel, UNetConfig, VQConfig


class ConfigError(ValueError):
    """A recipe file is missing, unreadable or invalid (the message names the file and the key)."""


Pair = tuple[float, float]


class DegradationConfig(StrictModel):
    """Real-ESRGAN two-stage degradation; defaults are the RSD.yaml values (method.md 4.12)."""

    scale: Literal[4] = 4
    # first stage: blur kernel (sizes 3..blur_kernel_size-2, odd, padded to blur_kernel_size)
    blur_kernel_size: int = 21
    kernel_prob: tuple[float, float, float, float, float, float] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: Pair = (0.2, 3.0)
    betag_range: Pair = (0.5, 4.0)
    betap_range: Pair = (1.0, 2.0)
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: Pair = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: Pair = (1.0, 30.0)  # sigma in 8-bit units
    poisson_scale_range: Pair = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: Pair = (30.0, 95.0)
    # second stage
    second_order_prob: float = 0.5
    second_blur_prob: float = 0.8
    blur_kernel_size2: int = 15
    kernel_prob2: tuple[float, float, float, float, float, float] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob2: float = 0.1
    blur_sigma2: Pair = (0.2, 1.5)
    betag_range2: Pair = (0.5, 4.0)
    betap_range2: Pair = (1.0, 2.0)
    resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: Pair = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: Pair = (1.0, 25.0)
    poisson_scale_range2: Pair = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: Pair = (30.0, 95.0)
    final_sinc_prob: float = 0.8

    @model_validator(mode="after")
    def _check(self) -> DegradationConfig:
        for name in ("blur_kernel_size", "blur_kernel_size2"):
            size = getattr(self, name)
            if size < 5 or size % 2 == 0:
                raise ValueError(f"{name} {size} must be odd and >= 5")
        for name in ("kernel_prob", "kernel_prob2", "resize_prob", "resize_prob2"):
            probs = getattr(self, name)
            if min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
                raise ValueError(f"{name} {probs} must be non-negative and sum to 1")
        for name in ("jpeg_range", "jpeg_range2"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi <= 100:
                raise ValueError(f"{name} {(lo, hi)} must satisfy 1 <= low <= high <= 100")
        return self


class DataConfig(StrictModel):
    """Training pairs: HR crops from a folder (or procedurally generated images) + degraded LR."""

    #: "folder": images under `dirs` (recursive; jpg/jpeg/png/webp); "synthetic": `synthetic_count`
    #: generated images (seeded), for tiny CPU recipes and tests
    source: Literal["folder", "synthetic"] = "folder"
    dirs: list[Path] = Field(default_factory=list)
    synthetic_count: int = Field(default=64, ge=1)
    synthetic_size: int = Field(default=96, ge=8)
    hr_size: int = Field(default=256, ge=16)
    #: "rescale": random square of side max(min(h, w), hr_size), area-resized to hr_size (method.md
    #: 4.12, `rescale_gt: True`); "crop": a random hr_size patch at the native resolution
    crop: Literal["rescale", "crop"] = "rescale"
    hflip: bool = True
    #: random RGB channel order per crop: more colours from few photos (the bundled autoencoder: 6 of its
    #: 13 photos are grayscale); off for SR stages, where colours should stay natural
    channel_shuffle: bool = False
    #: fraction of pairs whose LR is a plain bicubic downsample instead of the Real-ESRGAN degradation
    bicubic_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    degradation: DegradationConfig = Field(default_factory=DegradationConfig)
    #: threads that load and degrade samples (results do not depend on it)
    workers: int = Field(default=0, ge=0)
    #: validation: a folder with `gt/` and `lq/` (paired by file stem) or of HR images only (LR by
    #: bicubic x1/4); none = validate on `val_count` held-out synthetic/training pairs
    val_dir: Path | None = None
    val_count: int = Field(default=4, ge=0)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.hr_size % 16:
            raise ValueError(f"hr_size {self.hr_size} must be a multiple of 16")
        if self.source == "folder" and not self.dirs:
            raise ValueError("data.source is 'folder' but data.dirs is empty")
        return self


class OptimConfig(StrictModel):
    """AdamW (method.md 4.11: lr 5e-5, betas (0.9, 0.95), weight decay 0, eps 1e-8; constant lr)."""

    lr: float = Field(default=5e-5, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(default=0.0, ge=0)
    eps: float = Field(default=1e-8, gt=0)
    #: linear warm-up steps (method.md 1.7 teacher: 5000); 0 = constant from the first step
    warmup_steps: int = Field(default=0, ge=0)
    #: gradient-norm clipping (0 = off; the reference does not clip)
    grad_clip: float = Field(default=0.0, ge=0)
    #: cosine decay from lr down to lr * final_lr_ratio at this step (0 = none; the reference keeps lr
    #: constant). Short CPU runs (the bundled model) end better with a decayed rate.
    cosine_steps: int = Field(default=0, ge=0)
    final_lr_ratio: float = Field(default=0.1, ge=0, le=1)


class LoopConfig(StrictModel):
    """Iterations, batch sizes and bookkeeping shared by every stage."""

    iterations: int = Field(default=3000, ge=1)
    #: global batch (all processes); each process takes batch / world_size
    batch: int = Field(default=64, ge=1)
    #: samples per forward/backward; gradients accumulate over batch / world / microbatch steps
    microbatch: int = Field(default=8, ge=1)
    seed: int = 123456
    out_dir: Path = Path("runs/train")
    device: str = "cpu"
    #: torch intra-op CPU threads (0 = torch's default). 1 is fastest for tiny models on busy machines.
    cpu_threads: int = Field(default=0, ge=0)
    log_every: int = Field(default=10, ge=1)
    checkpoint_every: int = Field(default=1000, ge=1)
    validate_every: int = Field(default=1000, ge=1)
    #: keep only the newest k step checkpoints (0 = keep all)
    keep_checkpoints: int = Field(default=2, ge=0)
    tensorboard: bool = True
    progress: bool = True


class LPIPSConfig(StrictModel):
    """LPIPS(AlexNet, v0.1) weights. The backbone is a local torchvision-layout AlexNet state dict
    (`features.0/3/6/8/10`); the linear heads default to the files shipped in the `lpips` package."""

    alexnet_weights: Path | None = None
    linear_weights: Path | None = None


class ExportConfig(StrictModel):
    """What goes into the artifact's spec.json besides the nets (rsd.spec.ModelSpec)."""

    #: LR tile sizes exported engines are built for; multiples of the UNet's size multiple
    tiles: list[int] = Field(default_factory=lambda: [64, 128])
    default_tile: int = 64
    default_overlap: int = 16
    #: also store the frozen teacher (`teacher.*`) for the 15-step sampler (distillation only)
    include_teacher: bool = True
    #: spec `lr_consistency`: a back-projection step onto the LR after decoding (rsd.onestep.lr_consistent);
    #: the student's image-space losses then see the corrected output too
    lr_consistency: bool = False


class AutoencoderLoss(StrictModel):
    """VQ-f4 training loss: reconstruction + codebook/commitment (+ optional LPIPS, patch GAN)."""

    reconstruction: Literal["l1", "l2"] = "l1"
    codebook_weight: float = Field(default=1.0, ge=0)
    #: commitment weight beta (method.md 3: VectorQuantizer2 beta 0.25)
    beta: float = Field(default=0.25, ge=0)
    #: codebook start: "data" = encoder outputs of the first training images (fewer dead codes),
    #: "uniform" = the reference's U(-1/n, 1/n); ignored when fine-tuning (init_from)
    codebook_init: Literal["data", "uniform"] = "data"
    lpips_weight: float = Field(default=0.0, ge=0)
    #: patch discriminator (0 = off) and the iteration from which it is active
    disc_weight: float = Field(default=0.0, ge=0)
    disc_start: int = Field(default=0, ge=0)
    disc_channels: int = Field(default=64, ge=8)
    disc_layers: int = Field(default=3, ge=1)


class AutoencoderRecipe(StrictModel):
    stage: Literal["autoencoder"]
    name: str = "vq-f4"
    autoencoder: VQConfig = Field(default_factory=VQConfig)
    #: initialise from an artifact directory (its autoencoder.*) or our autoencoder output directory
    init_from: Path | None = None
    loss: AutoencoderLoss = Field(default_factory=AutoencoderLoss)
    lpips: LPIPSConfig = Field(default_factory=LPIPSConfig)
    data: DataConfig
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=1e-4, betas=(0.5, 0.9)))
    loop: LoopConfig = Field(default_factory=LoopConfig)


class TeacherRecipe(StrictModel):
    """ResShift teacher training (method.md 1.2 loss, 1.7 recipe)."""

    stage: Literal["teacher"]
    name: str = "resshift-teacher"
    unet: UNetConfig = Field(default_factory=UNetConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    #: the frozen VQ: an artifact directory or an autoencoder output directory
    autoencoder: Path
    #: fine-tune from: an artifact directory (its teacher.*, else a noise-free student.*) or a
    #: published ResShift .pth (read with weights_only); none = from scratch
    init_from: Path | None = None
    ema_rate: float = Field(default=0.999, ge=0, lt=1)
    export: ExportConfig = Field(default_factory=ExportConfig)
    #: LPIPS for validation only (when alexnet_weights is given)
    lpips: LPIPSConfig = Field(default_factory=LPIPSConfig)
    data: DataConfig
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(betas=(0.9, 0.999), warmup_steps=5000))
    loop: LoopConfig = Field(default_factory=LoopConfig)


class DistillConfig(StrictModel):
    """RSD distillation knobs (method.md 4.1-4.14); defaults are the method.md choices."""

    fake_updates: int = Field(default=5, ge=1)  # 4.11 n_fake_loop
    ema_rate: float = Field(default=0.999, ge=0, lt=1)
    noise_channels: int = Field(default=1, ge=1)  # 4.2
    #: 0-based student timesteps; the last must be T-1 (4.8, [unconfirmed] set)
    student_timesteps: list[int] = Field(default_factory=lambda: [3, 7, 11, 14])
    #: True: student input from the real HR latent (4.8 true_data); False: backward simulation
    true_data: bool = True
    #: 4.4 w_t: "uniform" (released config) or "kl" (alpha_t / (2 kappa^2 eta_t eta_{t-1}))
    timestep_weighting: Literal["uniform", "kl"] = "uniform"
    #: 4.6: False = x_t keeps its graph into the student (exact gradient of 4.4); True = DMD2-style
    detach_xt: bool = False
    sid_normalization: bool = True  # 4.7
    time_power_ten: bool = False  # 4.7 normalize_generator_loss_by_t_power_ten
    lpips_weight: float = Field(default=2.0, ge=0)  # 4.9
    gan_weight: float = Field(default=3e-3, ge=0)  # 4.10 (discriminator and generator)
    gan_loss: Literal["non_saturating", "hinge"] = "non_saturating"
    #: 4.14 mse_loss: supervised regression of the student output to the ground truth
    mse_weight: float = Field(default=0.0, ge=0)
    mse_space: Literal["image", "latent"] = "image"
    #: fixed set of pairs whose latents (z_gt, z_y) are encoded once and reused (0 = off: fresh
    #: degraded pairs for every batch). Makes CPU runs feasible.
    cache_latents: int = Field(default=0, ge=0)


class DistillRecipe(StrictModel):
    stage: Literal["distill"]
    name: str = "rsd"
    #: the teacher: an artifact directory (teacher.*, or a noise-free student.*; its VQ and schedule
    #: are used) or the published ResShift x4 .pth (official UNet and schedule; needs `autoencoder`)
    teacher: Path
    #: the frozen VQ when it is not the teacher artifact's: an artifact, autoencoder dir or VQ-f4 .pth
    autoencoder: Path | None = None
    distill: DistillConfig = Field(default_factory=DistillConfig)
    lpips: LPIPSConfig = Field(default_factory=LPIPSConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)

    @model_validator(mode="after")
    def _check(self) -> DistillRecipe:
        if self.distill.lpips_weight > 0 and self.lpips.alexnet_weights is None:
            raise ValueError(
                f"distill.lpips_weight is {self.distill.lpips_weight} but lpips.alexnet_weights is not set "
                "(give a local AlexNet state dict, or set lpips_weight = 0)"
            )
        return self


Recipe = Annotated[AutoencoderRecipe | TeacherRecipe | DistillRecipe, Field(discriminator="stage")]
_RECIPE = TypeAdapter(Recipe)
STAGES = ("autoencoder", "teacher", "distill")


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = err["loc"][1:] if err["loc"] and err["loc"][0] in STAGES else err["loc"]  # drop the union tag
    where = ".".join(str(p) for p in loc) or "(top level)"
    extra = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {err['msg']}{extra}"


def recipe_from_dict(data: dict, source: str = "<dict>") -> AutoencoderRecipe | TeacherRecipe | DistillRecipe:
    """Validate a parsed recipe; the error names the source, the dotted key and the problem."""
    if "stage" not in data:
        raise ConfigError(f"{source}: missing top-level key 'stage' (one of {', '.join(STAGES)})")
    try:
        return _RECIPE.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_first_error(exc)}") from exc


def load_recipe(path: str | Path, stage: str | None = None) -> AutoencoderRecipe | TeacherRecipe | DistillRecipe:
    """Read a TOML recipe; with `stage` given, refuse a recipe of another stage."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from exc
    recipe = recipe_from_dict(data, str(p))
    if stage is not None and recipe.stage != stage:
        raise ConfigError(f"{p}: is a {recipe.stage!r} recipe, not {stage!r}")
    return recipe
