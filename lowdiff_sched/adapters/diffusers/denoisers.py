"""diffusers' noise schedules in EDM's sigma convention (x = x0 + sigma n), and the
k-diffusion denoisers of diffusers' models on them.

DDPM family (the schedules of `DDPMScheduler`, `EulerDiscreteScheduler`, ...): the training
timesteps i = 0 .. T-1 have alpha_bar_i = prod_{j <= i} (1 - beta_j) and sigma_i =
sqrt((1 - alpha_bar_i) / alpha_bar_i). A network trained there sees x_vp = x / sqrt(sigma^2 + 1)
at timestep t(sigma), and its output gives the x0 estimate by its prediction type:
epsilon: x - sigma eps; v_prediction: x / (sigma^2 + 1) - sigma v / sqrt(sigma^2 + 1);
sample: the output itself ("Elucidating the Design Space of Diffusion-Based Generative Models",
Table 1, VP column; "Progressive Distillation for Fast Sampling of Diffusion Models", Sec. 4,
for v). t(sigma) inverts the scheduler's own map between timesteps and sigmas: linear
interpolation of sigma in t (`interpolation_type="linear"`), or of log sigma in t where the
scheduler converts its sigmas (Karras, exponential or beta sigmas), as k-diffusion's
`DiscreteSchedule.sigma_to_t` does.

Flow matching (`FlowMatchEulerDiscreteScheduler`, SD3 and Flux): x_s = (1 - s) x0 + s n for a
noise fraction s in [0, 1], the network takes timestep s T and predicts v = n - x0
("Scaling Rectified Flow Transformers for High-Resolution Image Synthesis", Sec. 2). In EDM's
convention sigma = s / (1 - s), so s = 1 (pure noise) is sigma = inf: a plan starts at a
finite sigma instead (`schedules.FLOW_SIGMA_MAX`, s = 0.999), from noise of that std.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from ...flow import velocity_denoiser
from ...schedules import FLOW_SIGMA_MAX, discrete_vp_sigmas

PREDICTIONS = ("epsilon", "v_prediction", "sample")


def ddpm_sigmas(config: Mapping[str, Any]) -> Tensor:
    """The training sigmas of a DDPM-family scheduler config (`schedules.discrete_vp_sigmas`)."""
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr schedules end at infinite sigma (zero SNR); they are not supported")
    return discrete_vp_sigmas(config.get("beta_schedule", "linear"), float(config.get("beta_start", 0.0001)),
                              float(config.get("beta_end", 0.02)), int(config.get("num_train_timesteps", 1000)),
                              config.get("trained_betas"))


def uses_log_sigma_timesteps(config: Mapping[str, Any]) -> bool:
    """Whether the scheduler maps sigmas to timesteps through log sigma (it converts its sigmas)."""
    return bool(config.get("use_karras_sigmas") or config.get("use_exponential_sigmas") or config.get("use_beta_sigmas")
                or config.get("interpolation_type", "linear") != "linear")


def sigma_to_timestep(sigma: Tensor, train_sigmas: Tensor, log: bool) -> Tensor:
    """The fractional training timestep of each sigma: where it falls between two training
    sigmas, interpolated linearly in sigma (`log=False`) or in log sigma; clamped to [0, T-1]."""
    table = train_sigmas.to(sigma.device, torch.float64)
    s = sigma.to(torch.float64)
    if log:
        table, s = table.log(), s.clamp_min(1e-10).log()
    low = (torch.searchsorted(table, s, right=True) - 1).clamp(0, len(table) - 2)
    w = ((s - table[low]) / (table[low + 1] - table[low])).clamp(0, 1)
    return low + w


def ddpm_denoiser(network: Callable[..., Tensor], config: Mapping[str, Any], train_sigmas: Tensor | None = None) -> Callable[..., Tensor]:
    """D(x, sigma, **extra) of a network `network(x_vp, timesteps, **extra)` trained on the
    DDPM-family schedule `config` (a scheduler's config; `train_sigmas` its `ddpm_sigmas`, if
    already computed), for its prediction type."""
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction_type {prediction!r} is not supported ({', '.join(PREDICTIONS)})")
    if config.get("timestep_type", "discrete") != "discrete":
        raise ValueError(f"timestep_type {config.get('timestep_type')!r} is not supported (discrete timesteps only)")
    train_sigmas, log = ddpm_sigmas(config) if train_sigmas is None else train_sigmas, uses_log_sigma_timesteps(config)

    def denoise(x: Tensor, sigma: Tensor, **extra: Any) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1).expand(x.shape[0])
        s = sigma.to(x.dtype).view(-1, 1, 1, 1)
        out = network(x / (s**2 + 1) ** 0.5, sigma_to_timestep(sigma, train_sigmas, log).to(torch.float32), **extra)
        if prediction == "epsilon":
            return x - s * out
        if prediction == "v_prediction":
            return x / (s**2 + 1) - s * out / (s**2 + 1) ** 0.5
        return out

    return denoise


def flow_denoiser(network: Callable[..., Tensor], config: Mapping[str, Any], fraction_timesteps: bool = False) -> Callable[..., Tensor]:
    """D(x, sigma, **extra) of a velocity network `network(x_s, timesteps, **extra)` (v = n - x0,
    timestep s T, or s itself with `fraction_timesteps`, as Flux takes it) on a
    `FlowMatchEulerDiscreteScheduler` schedule, through the project's flow denoiser (whose
    time runs the other way: t = 1 - s and v_t = -v)."""
    steps = 1.0 if fraction_timesteps else float(config.get("num_train_timesteps", 1000))
    return velocity_denoiser(lambda z, t, **extra: -network(z, (1 - t) * steps, **extra))


def flow_shift(config: Mapping[str, Any], image_seq_len: int | None = None) -> Callable[[Tensor], Tensor]:
    """The scheduler's time shift of noise fractions: its fixed `shift`, or with
    `use_dynamic_shifting` the shift of a picture of `image_seq_len` tokens (mu linear in the
    token count between base_image_seq_len and max_image_seq_len, as SD3 and Flux set it)."""
    if config.get("use_dynamic_shifting"):
        if image_seq_len is None:
            raise ValueError("this scheduler shifts by resolution (use_dynamic_shifting): give the level's token count")
        lo, hi = int(config.get("base_image_seq_len", 256)), int(config.get("max_image_seq_len", 4096))
        base, top = float(config.get("base_shift", 0.5)), float(config.get("max_shift", 1.15))
        mu = base + (top - base) * (image_seq_len - lo) / (hi - lo)
        if config.get("time_shift_type", "exponential") == "linear":
            return lambda s: mu / (mu + (1 / s - 1))
        return lambda s: math.exp(mu) / (math.exp(mu) + (1 / s - 1))
    shift = float(config.get("shift", 1.0))
    return lambda s: shift * s / (1 + (shift - 1) * s)


def flow_sigmas_for(config: Mapping[str, Any], n_steps: int, image_seq_len: int | None = None,
                    sigma_max: float = FLOW_SIGMA_MAX) -> Tensor:
    """The scheduler's `set_timesteps(n_steps)` schedule (noise fractions from 1 down to its
    sigma_min, time-shifted) in EDM sigmas, ending at 0; its s = 1 point becomes `sigma_max`. float64."""
    if config.get("use_karras_sigmas") or config.get("use_exponential_sigmas") or config.get("use_beta_sigmas") \
            or config.get("shift_terminal") or config.get("invert_sigmas"):
        raise ValueError("flow schedulers with converted, stretched or inverted sigmas are not supported")
    steps = int(config.get("num_train_timesteps", 1000))
    shift = flow_shift(config, image_seq_len)
    # the grid ends at the scheduler's sigma_min: 1/T, already shifted once when the shift is fixed
    low = 1.0 / steps if config.get("use_dynamic_shifting") else float(shift(torch.tensor(1.0 / steps, dtype=torch.float64)))
    s = shift(torch.linspace(1.0, low, n_steps, dtype=torch.float64))
    sigmas = torch.cat([s / (1 - s).clamp_min(1e-300), torch.zeros(1, dtype=torch.float64)])
    sigmas[0] = min(float(sigmas[0]), sigma_max)
    return sigmas
