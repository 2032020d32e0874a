"""The ResShift schedule: the only home of the eta/kappa arithmetic (architecture.md invariant 1).

All tables are float64 numpy arrays indexed by the 0-based code timestep `t` in {0, ..., T-1}
(method.md 1.3). The tensor operations gather a coefficient per sample, cast it to the dtype of the
tensor it multiplies and broadcast it over the remaining axes; this is the reference order of
operations (float64 table -> cast -> float32 arithmetic), so float32 results match the reference to
the last few ulps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from rsd.config import ScheduleConfig


def _sqrt_etas(config: ScheduleConfig) -> np.ndarray:
    """sqrt(eta_t), t = 0..T-1 (method.md 1.3): geometric in (t/(T-1))**power, ends at etas_end."""
    steps = config.steps
    # sqrt(eta_1) = min_noise_level / kappa, so that kappa * sqrt(eta_1) = min_noise_level.
    sqrt_eta_start = min(config.min_noise_level / config.kappa, config.min_noise_level)
    increaser = math.exp(math.log(config.etas_end / sqrt_eta_start) / (steps - 1))
    powers = np.linspace(0, 1, steps, endpoint=True, dtype=np.float64) ** config.power * (steps - 1)
    return sqrt_eta_start * increaser**powers


class Schedule:
    """Tables and per-sample operations of the ResShift Markov chain (method.md 1.2-1.4).

    Tensor arguments: `t` is a (N,) int64 tensor of code timesteps; `x0`, `y`, `x_t`, `noise` are
    (N, C, h, w) latents of one dtype (float32 normally). No clamping anywhere (the reference
    sets clip_denoised False whenever an autoencoder is used).
    """

    def __init__(self, config: ScheduleConfig) -> None:
        self.config = config
        self._tables: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}
        self.T = config.steps
        self.kappa = config.kappa
        kappa = config.kappa

        self.sqrt_etas = _sqrt_etas(config)
        self.etas = self.sqrt_etas**2
        # eta_0 := 0 (method.md 1.2): the posterior at t = 0 collapses onto x0.
        self.etas_prev = np.append(0.0, self.etas[:-1])
        self.alpha = self.etas - self.etas_prev
        self.kappa_times_sqrt_etas = kappa * self.sqrt_etas

        # q(x_{t-1} | x_t, x0, y) = N(coef1 x_t + coef2 x0, kappa^2 eta_{t-1}/eta_t alpha_t) (method.md 1.2).
        self.posterior_variance = kappa**2 * self.etas_prev / self.etas * self.alpha
        # log(0) at t = 0 is replaced by the t = 1 value; no noise is added at t = 0 anyway.
        self.posterior_variance_clipped = np.append(self.posterior_variance[1], self.posterior_variance[1:])
        self.posterior_log_variance_clipped = np.log(self.posterior_variance_clipped)
        self.posterior_mean_coef1 = self.etas_prev / self.etas
        self.posterior_mean_coef2 = self.alpha / self.etas

    def digest(self) -> str:
        """Hash of the schedule configuration (exported engines carry it)."""
        return self.config.digest()

    # -- coefficient gathering -------------------------------------------------------------------

    def _gather(self, table: np.ndarray, t: Tensor, like: Tensor) -> Tensor:
        """table[t] as a (N, 1, ..., 1) tensor of `like`'s dtype and device.

        Cast before indexing (equal to the reference's index-then-cast, and it keeps float64 off
        devices without it).
        """
        if t.dim() != 1 or t.dtype != torch.int64:
            raise ValueError(f"t must be a (N,) int64 tensor, got shape {tuple(t.shape)} dtype {t.dtype}")
        if t.shape[0] != like.shape[0]:
            raise ValueError(f"t has {t.shape[0]} entries but the tensor has batch size {like.shape[0]}")
        coef = self._device_table(table, like.dtype, t.device)[t]
        return coef.reshape((-1,) + (1,) * (like.dim() - 1)).to(device=like.device)

    def _device_table(self, table: np.ndarray, dtype: torch.dtype, device: torch.device) -> Tensor:
        """`table` as a tensor of `dtype` on `device`, copied there once per (table, dtype, device).

        The cache keeps host-to-device copies out of every call after the first, so a CUDA graph can be
        captured after one warm-up call. Traced and compiled graphs build it inline (no tensors cached
        from a trace)."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return torch.from_numpy(table).to(dtype=dtype).to(device=device)
        key = (id(table), dtype, device)
        cached = self._tables.get(key)
        if cached is None:
            cached = self._tables[key] = torch.from_numpy(table).to(dtype=dtype).to(device=device)
        return cached

    # -- forward process ----------------------------------------------------------------------------

    def q_sample(self, x0: Tensor, y: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) noise (method.md 1.2, marginal)."""
        eta = self._gather(self.etas, t, x0)
        std = self._gather(self.kappa_times_sqrt_etas, t, x0)
        return eta * (y - x0) + x0 + std * noise

    def prior_sample(self, y: Tensor, noise: Tensor) -> Tensor:
        """x_T = y + kappa sqrt(eta_T) noise (method.md 1.2: the reference's approximation of q(x_T))."""
        std = float(self.kappa_times_sqrt_etas[-1])
        # A Python scalar, not a tensor built from one: no host-to-device copy (CUDA graph capture).
        # In fp32 the product rounds the same (the scalar is applied in the tensor's precision).
        return y + std * noise

    def scale_input(self, x_t: Tensor, t: Tensor) -> Tensor:
        """x_t / std_t, what the network sees in place of x_t (method.md 1.4): std_t = sqrt(kappa^2 eta_t + 1)
        in latent space, 3 kappa sqrt(eta_t) + 1 otherwise, 1 without `normalize_input`. Called only
        through rsd.denoiser.denoise (tests aside).

        The std is evaluated in x_t's dtype from the gathered eta, as the reference does, so float32
        inputs match it bit for bit (the float64 table rounded to float32 can differ by one ulp).
        """
        if not self.config.normalize_input:
            return x_t
        if self.config.latent_flag:
            std = torch.sqrt(self._gather(self.etas, t, x_t) * self.kappa**2 + 1)
        else:
            std = self._gather(self.sqrt_etas, t, x_t) * self.kappa * 3 + 1
        return x_t / std

    # -- reverse process ----------------------------------------------------------------------------

    def posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0, y) (method.md 1.2).

        Variance and log-variance are broadcast to x_t's full shape, as the reference returns them.
        """
        mean = (
            self._gather(self.posterior_mean_coef1, t, x_t) * x_t + self._gather(self.posterior_mean_coef2, t, x_t) * x0
        )
        variance = self._gather(self.posterior_variance, t, x_t).expand_as(x_t)
        log_variance = self._gather(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    def p_sample(self, x0_pred: Tensor, x_t: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_{t-1} = posterior mean + [t > 0] exp(log_var / 2) noise, given the network's x0 prediction."""
        mean, _, log_variance = self.posterior_mean_variance(x0_pred, x_t, t)
        nonzero = (t != 0).to(x_t.dtype).reshape((-1,) + (1,) * (x_t.dim() - 1))
        return mean + nonzero * torch.exp(0.5 * log_variance) * noise
