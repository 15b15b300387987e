"""Sigma schedules: construction, truncation, resolution shift, flow-matching time <-> sigma,
and the discrete VP (DDPM) training sigmas.

Schedules are 1-D tensors of noise levels in k-diffusion's (VE) convention, strictly
decreasing; a schedule ending at 0 runs to the clean sample, one ending above 0 is
truncated and stops at its last sigma.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

# LightningDiT's first time point t = 0 is sigma = inf; k-diffusion samplers need a finite
# start, so flow schedules begin at this sigma (t = 1 / 1001, within 0.1% of pure noise).
FLOW_SIGMA_MAX = 1000.0


def validate_sigmas(sigmas: Tensor, name: str = "sigmas") -> Tensor:
    """Check a schedule: 1-D, at least two points, finite, non-negative, strictly decreasing."""
    if not isinstance(sigmas, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(sigmas).__name__}")
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"{name} must be 1-D with at least 2 points, got shape {tuple(sigmas.shape)}")
    if not sigmas.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {sigmas.dtype}")
    if not torch.isfinite(sigmas).all():
        raise ValueError(f"{name} contains NaN or inf: {sigmas.tolist()}")
    if (sigmas < 0).any():
        raise ValueError(f"{name} contains negative values: {sigmas.tolist()}")
    if not (sigmas[1:] < sigmas[:-1]).all():
        raise ValueError(f"{name} must be strictly decreasing, got {sigmas.tolist()}")
    return sigmas


def karras_sigmas(
    n_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, device: str | torch.device = "cpu"
) -> Tensor:
    """EDM's schedule (Karras et al. 2022, eq. 5): `n_steps` steps, then a final 0.

    Delegates to `k_diffusion.sampling.get_sigmas_karras`, so plans built here give the
    same numbers as k-diffusion code.
    """
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    if not 0 < sigma_min < sigma_max or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho}")
    from k_diffusion.sampling import get_sigmas_karras

    sigmas = get_sigmas_karras(n_steps, sigma_min, sigma_max, rho=rho, device=device)
    try:
        return validate_sigmas(sigmas)
    except ValueError:
        raise ValueError(
            f"karras_sigmas(n_steps={n_steps}, sigma_min={sigma_min}, sigma_max={sigma_max}, rho={rho}) "
            f"is degenerate in float32 (points coincide): {sigmas.tolist()}; use fewer steps, a wider range or a larger rho"
        ) from None


def truncate_steps(sigmas: Tensor, n_steps: int) -> Tensor:
    """The first `n_steps` steps of a schedule (n_steps + 1 points): stop early, still noisy."""
    validate_sigmas(sigmas)
    total = sigmas.numel() - 1
    if not isinstance(n_steps, int) or not 1 <= n_steps <= total:
        raise ValueError(f"n_steps must be an int in [1, {total}], got {n_steps!r}")
    return sigmas[: n_steps + 1].clone()


def truncate_at_sigma(sigmas: Tensor, sigma_stop: float) -> Tensor:
    """The schedule run down to exactly `sigma_stop`: every point above it, then sigma_stop.

    When sigma_stop is a point of the schedule this is a prefix of it; otherwise the last
    step is shortened to land on sigma_stop.
    """
    validate_sigmas(sigmas)
    stop = sigmas.new_tensor(float(sigma_stop))  # compared in the schedule's own dtype
    if not sigmas[-1] <= stop < sigmas[0]:
        raise ValueError(
            f"sigma_stop must lie in [{sigmas[-1].item()}, {sigmas[0].item()}) of the schedule "
            f"(in {sigmas.dtype}), got {sigma_stop}"
        )
    head = sigmas[sigmas > stop]
    return torch.cat([head, stop.view(1)])


def shift_sigmas(sigmas: Tensor, factor: float, kind: str = "ve") -> Tensor:
    """Move a schedule to a resolution `factor` times larger: logSNR shifted by -2 log f.

    kind="ve": sigma is the k-diffusion noise std (SNR = 1 / sigma^2), so sigma' = f sigma.
    kind="flow": sigma in [0, 1] is the rectified-flow noise fraction
    (x = (1 - sigma) x0 + sigma eps), so sigma' = f sigma / (1 + (f - 1) sigma), the SD3 shift.
    A factor below 1 shifts toward lower resolutions; shift by f then 1/f is the identity.
    """
    if not isinstance(sigmas, Tensor) or sigmas.ndim != 1:
        raise ValueError("sigmas must be a 1-D tensor")
    factor = float(factor)
    if not (factor > 0 and math.isfinite(factor)):
        raise ValueError(f"factor must be positive and finite, got {factor}")
    if kind == "ve":
        return sigmas * factor
    if kind == "flow":
        if ((sigmas < 0) | (sigmas > 1)).any():
            raise ValueError(f"flow sigmas must lie in [0, 1], got {sigmas.tolist()}")
        shifted = factor * sigmas / (1 + (factor - 1) * sigmas)
        # the ends are fixed points; keep them exact rather than a rounding step off
        return torch.where((sigmas == 0) | (sigmas == 1), sigmas, shifted)
    raise ValueError(f"kind must be 've' or 'flow', got {kind!r}")


def _check_shift(shift: float) -> float:
    shift = float(shift)
    if not (shift > 0 and math.isfinite(shift)):
        raise ValueError(f"shift must be positive and finite, got {shift}")
    return shift


def flow_time_to_sigma(t: Tensor, shift: float = 1.0) -> Tensor:
    """LightningDiT flow time (t = 0 noise, t = 1 data) to a k-diffusion sigma.

    The time shift t' = s t / (1 + (s - 1) t) is applied first; then sigma = (1 - t') / t'.
    In sigma terms the shift divides sigma by s. t = 0 maps to inf.
    """
    shift = _check_shift(shift)
    t = t if isinstance(t, Tensor) else torch.as_tensor(t, dtype=torch.float64)
    if ((t < 0) | (t > 1)).any():
        raise ValueError(f"flow time must lie in [0, 1], got {t.tolist()}")
    t_shifted = shift * t / (1 + (shift - 1) * t)
    # t = 1 is the data end: sigma exactly 0, not a rounding residue of either sign
    return torch.where(t == 1, 0.0, ((1 - t_shifted) / t_shifted).clamp_min(0.0)).to(t_shifted.dtype)


def sigma_to_flow_time(sigma: Tensor, shift: float = 1.0) -> Tensor:
    """Inverse of `flow_time_to_sigma`: t' = 1 / (1 + sigma), then undo the shift."""
    shift = _check_shift(shift)
    sigma = sigma if isinstance(sigma, Tensor) else torch.as_tensor(sigma, dtype=torch.float64)
    if (sigma < 0).any():
        raise ValueError(f"sigma must be non-negative, got {sigma.tolist()}")
    t_shifted = 1 / (1 + sigma)
    return t_shifted / (shift - (shift - 1) * t_shifted)


def flow_sigmas(n_steps: int, shift: float = 1.0, sigma_max: float = FLOW_SIGMA_MAX) -> Tensor:
    """LightningDiT's Euler grid as a sigma schedule: t = linspace(0, 1, n_steps + 1),
    time-shifted, converted to sigma; the t = 0 point (sigma = inf) becomes `sigma_max`.
    float64, since the first sigmas are large."""
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    t = torch.linspace(0, 1, n_steps + 1, dtype=torch.float64)
    sigmas = flow_time_to_sigma(t, shift)
    if not sigmas[1] < sigma_max:
        raise ValueError(f"sigma_max={sigma_max} must exceed the schedule's second point {sigmas[1].item()}")
    sigmas[0] = sigma_max
    return sigmas


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def discrete_vp_sigmas(beta_schedule: str = "linear", beta_start: float = 0.0001, beta_end: float = 0.02,
                       num_train_timesteps: int = 1000, trained_betas: Sequence[float] | None = None) -> Tensor:
    """sigma_i = sqrt((1 - alpha_bar_i) / alpha_bar_i), alpha_bar_i = prod_{j <= i} (1 - beta_j), of
    each training timestep i of a discrete VP (DDPM) schedule, increasing; float32, as diffusers
    computes them. Betas: `trained_betas`, else linear in beta ("Denoising Diffusion Probabilistic
    Models", Sec. 4), linear in sqrt(beta) (scaled_linear, Stable Diffusion's) or the cosine
    schedule ("Improved Denoising Diffusion Probabilistic Models", Eq. 17, capped at 0.999)."""
    steps = int(num_train_timesteps)
    if steps < 2:
        raise ValueError(f"num_train_timesteps must be at least 2, got {num_train_timesteps!r}")
    if trained_betas is not None:
        betas = torch.tensor(list(trained_betas), dtype=torch.float32)
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)],
                             dtype=torch.float32)
    else:
        raise ValueError(f"beta_schedule {beta_schedule!r} is not supported ({', '.join(BETA_SCHEDULES)} or trained_betas)")
    if not ((betas > 0) & (betas < 1)).all():
        raise ValueError("betas must lie in (0, 1)")
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
