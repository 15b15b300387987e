"""Rectified-flow (velocity) networks as k-diffusion denoisers.

Flow convention of LightningDiT and MSF: z_t = t x_data + (1 - t) noise (t = 0 is noise),
and the network predicts v = x_data - noise. In k-diffusion's terms x = z_t / t carries
noise of std sigma = (1 - t) / t, so t = 1 / (1 + sigma), and the x0 estimate is
z_t + (1 - t) v (LightningDiT's transport convention).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

Velocity = Callable[..., Tensor]  # v(z_t, t [B], **extra) -> v


def velocity_denoiser(velocity: Velocity) -> Callable[..., Tensor]:
    """D(x, sigma, **extra) of a velocity network `velocity(z_t, t, **extra)`."""

    def denoise(x: Tensor, sigma: Tensor, **extra: Any) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        t = 1 / (1 + sigma)
        z_t = x * t.view(-1, 1, 1, 1)
        return z_t + (1 - t).view(-1, 1, 1, 1) * velocity(z_t, t, **extra)

    return denoise
