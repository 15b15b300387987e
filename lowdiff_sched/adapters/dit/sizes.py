"""The LightningDiT sizes lowdiff-sched knows by name: `dit-b1` and `dit-xl1` (the released
B/1 and XL/1 on 16x16x32 VA-VAE latents) and `dit-s1`, a small one for tests and smoke runs."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .networks import DiTConfig

# LightningDiT's released sizes (B/1 and XL/1 on 16x16x32 VA-VAE latents) and a small one for tests.
SIZES: dict[str, DiTConfig] = {
    "dit-b1": DiTConfig(hidden_size=768, depth=12, num_heads=12),
    "dit-xl1": DiTConfig(hidden_size=1152, depth=28, num_heads=16),
    "dit-s1": DiTConfig(hidden_size=128, depth=4, num_heads=4),
}


def names() -> list[str]:
    return list(SIZES)


def meta_cascade(name: str) -> Any:
    """The LowDiff retrofit (half and full latent size) of a named size, on the meta device:
    its parameters counted without weights or memory."""
    import torch

    from .cascade import LowDiffDiT
    from .networks import LightningDiT

    config = size_config(name)
    with torch.device("meta"):
        return LowDiffDiT(LightningDiT(config), (config.input_size // 2, config.input_size))


def size_config(name: str, **overrides: Any) -> DiTConfig:
    """The config of a named size (`SIZES`), with fields replaced by `overrides`."""
    if name not in SIZES:
        raise ValueError(f"unknown DiT size {name!r}; known: {', '.join(SIZES)}")
    return replace(SIZES[name], **overrides)
