"""The contract between backbones and samplers: `Level`, `ResolutionCascade`, `stage_denoiser`,
and the level checks every adapter's `denoise` shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor


@dataclass(frozen=True)
class Level:
    """One resolution of a cascade: the (H, W) and channel count of its images or latents."""

    size: tuple[int, int]
    channels: int

    def __post_init__(self) -> None:
        size = tuple(self.size)
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ValueError(f"Level.size must be two positive ints (H, W), got {self.size!r}")
        if not isinstance(self.channels, int) or self.channels <= 0:
            raise ValueError(f"Level.channels must be a positive int, got {self.channels!r}")
        object.__setattr__(self, "size", size)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W): the shape of one sample at this level."""
        return (self.channels, *self.size)

    @property
    def numel(self) -> int:
        return self.channels * self.size[0] * self.size[1]


def as_level(entry: Any, channels: int, index: int) -> Level:
    """`levels[index]` given as an int (square), an (H, W) pair or a Level, with `channels`."""
    if isinstance(entry, Level):
        if entry.channels != channels:
            raise ValueError(
                f"levels[{index}] has {entry.channels} channels but channels={channels}"
            )
        return entry
    if isinstance(entry, bool):
        raise TypeError(f"levels[{index}] must be an int, an (H, W) pair or a Level, got {entry!r}")
    if isinstance(entry, int):
        if entry <= 0:
            raise ValueError(f"levels[{index}] must be a positive size, got {entry!r}")
        return Level((entry, entry), channels)
    if isinstance(entry, (tuple, list)) and len(entry) == 2 and all(
        isinstance(s, int) and not isinstance(s, bool) for s in entry
    ):
        return Level((entry[0], entry[1]), channels)
    raise TypeError(f"levels[{index}] must be an int, an (H, W) pair or a Level, got {entry!r}")


@runtime_checkable
class ResolutionCascade(Protocol):
    """A denoiser defined at several resolutions, ordered from lowest to highest.

    `denoise` follows k-diffusion's convention: `x` is the noisy sample at noise std
    `sigma` (shape [B]) and the return value is the x0 estimate. `cond` is the previous
    stage's hand-over, already at this level's size (or None); `cond_sigma` its noise
    std (shape [B], or None); `extra` is forwarded (class labels, guidance ...).
    """

    levels: Sequence[Level]

    def denoise(
        self,
        x: Tensor,
        sigma: Tensor,
        *,
        level: int,
        cond: Tensor | None = None,
        cond_sigma: Tensor | None = None,
        **extra: Any,
    ) -> Tensor: ...


def stage_denoiser(
    cascade: ResolutionCascade,
    level: int,
    cond: Tensor | None = None,
    cond_sigma: Tensor | float | None = None,
) -> Callable[..., Tensor]:
    """A plain `model(x, sigma, **extra_args)` for one level, as every
    `k_diffusion.sampling.sample_*` expects; `cond` and `cond_sigma` are bound in."""
    if not isinstance(cascade, ResolutionCascade):
        raise TypeError(
            f"cascade must implement ResolutionCascade (levels + denoise), got {type(cascade).__name__}"
        )
    n = len(cascade.levels)
    if not -n <= level < n:
        raise ValueError(f"level {level} is outside the cascade's {n} levels")
    level = level % n
    if cond is not None and cond_sigma is not None and not isinstance(cond_sigma, Tensor):
        cond_sigma = torch.full((cond.shape[0],), float(cond_sigma), device=cond.device, dtype=cond.dtype)
    denoise = cascade.denoise

    def model(x: Tensor, sigma: Tensor, **extra_args: Any) -> Tensor:
        return denoise(x, sigma, level=level, cond=cond, cond_sigma=cond_sigma, **extra_args)

    return model


def check_level_input(levels: Sequence[Level], level: int, x: Tensor) -> int:
    """`level` as a non-negative index, after checking it and x's shape at that level."""
    n = len(levels)
    if not -n <= level < n:
        raise ValueError(f"level {level} is outside the model's {n} levels")
    level %= n
    lv = levels[level]
    if x.ndim != 4 or tuple(x.shape[1:]) != lv.shape:
        raise ValueError(f"x must have shape [B, {', '.join(map(str, lv.shape))}] at level {level}, got {tuple(x.shape)}")
    return level


def level_one_hot(n: int, level: int, device: torch.device) -> Tensor:
    """[1, n] with a 1 at `level`: the input of a level (or resolution-label) embedding."""
    one_hot = torch.zeros(1, n, device=device)
    one_hot[0, level] = 1
    return one_hot
