"""EDM's exponential moving average of the weights, specified by a half-life in images."""

from __future__ import annotations

import torch
from torch import nn


def ema_halflife(images_seen: int, halflife_kimg: float, rampup_ratio: float | None) -> float:
    """The half-life in images in effect: halflife_kimg thousand, capped at rampup_ratio *
    images_seen early in training (EDM training_loop)."""
    halflife = halflife_kimg * 1000
    if rampup_ratio is not None:
        halflife = min(halflife, images_seen * rampup_ratio)
    return halflife


def ema_beta(images_seen: int, batch: int, halflife_kimg: float, rampup_ratio: float | None) -> float:
    """Decay for one step of `batch` images: 0.5 ** (batch / halflife), with `ema_halflife`'s."""
    return 0.5 ** (batch / max(ema_halflife(images_seen, halflife_kimg, rampup_ratio), 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema <- beta ema + (1 - beta) model for parameters; buffers are copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
