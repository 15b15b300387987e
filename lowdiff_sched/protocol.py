"""The contract between backbones and samplers: `Level`, `ResolutionCascade` (its required
members) and `CascadeDefaults` (its optional ones, with their defaults and accessors),
`stage_denoiser`, and the level checks every adapter shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, cast, runtime_checkable

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
    std (shape [B], or None); `extra` is forwarded (class labels, guidance ...). Inside a
    stage, k-diffusion's steps promote `x` to the schedule's dtype (float64 for a plan's
    stored sigmas), so `denoise` casts its inputs to its network's dtype.

    These two members are all a cascade needs. The optional ones (`label_dim`,
    `conditions_on_lower_level`, `hand_overs`, `device`) are `CascadeDefaults`'s; code
    reads them through its accessors (`label_dim_of` ...), so a cascade without them works.
    """

    @property
    def levels(self) -> Sequence[Level]: ...

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


class CascadeDefaults:
    """The optional members of a `ResolutionCascade`, at their defaults. An adapter inherits
    it and overrides what differs; a cascade that does not is read through the accessors
    below (`label_dim_of` ...), which give these same defaults.

    - `label_dim`: the number of classes `denoise` takes as `class_labels`; 0, unconditional.
    - `conditions_on_lower_level`: whether each level above 0 is conditioned on the level
      below's hand-over (LowDiff, MSF); False where every level denoises from scratch
      (C2F-DM, LevelStack), which decides the hand-overs and the training loss.
    - `hand_overs`: the transition kinds ("condition", "continue", "renoise") its upper
      levels can take; by default what `conditions_on_lower_level` implies.
    - `device`: where sampling draws the noise: its first parameter's device (when it has
      `parameters()`, as an nn.Module does), else the CPU.
    """

    label_dim: int = 0
    conditions_on_lower_level: bool = True

    @property
    def hand_overs(self) -> tuple[str, ...]:
        return _implied_hand_overs(self)

    @property
    def device(self) -> torch.device:
        return _parameter_device(self)


def label_dim_of(cascade: ResolutionCascade) -> int:
    """The cascade's class count (`CascadeDefaults.label_dim`); 0 when it declares none."""
    return int(getattr(cascade, "label_dim", CascadeDefaults.label_dim))


def conditions_on_lower_level_of(cascade: ResolutionCascade) -> bool:
    """Whether its levels above 0 are conditioned on the level below (default True)."""
    return bool(getattr(cascade, "conditions_on_lower_level", CascadeDefaults.conditions_on_lower_level))


def hand_overs_of(cascade: ResolutionCascade) -> tuple[str, ...]:
    """The transition kinds its upper levels can take: `hand_overs` if it declares them; else
    Condition when they are conditioned on the level below (LowDiff), Continue and Renoise
    when every level is unconditional (C2F-DM, LevelStack)."""
    declared = getattr(cascade, "hand_overs", None)
    return tuple(declared) if declared is not None else _implied_hand_overs(cascade)


def device_of(cascade: ResolutionCascade) -> torch.device:
    """Where the cascade lives: its `device`, else its first parameter's, else the CPU."""
    device = getattr(cascade, "device", None)
    return torch.device(device) if device is not None else _parameter_device(cascade)


def is_conditioned(cascade: ResolutionCascade, level: int) -> bool:
    """Whether `level` is given the level below's hand-over as `cond`: never level 0, which
    has no level below; the others when the cascade conditions on the lower level."""
    return level_index(level, len(cascade.levels)) > 0 and conditions_on_lower_level_of(cascade)


def _implied_hand_overs(cascade: Any) -> tuple[str, ...]:
    return ("condition",) if conditions_on_lower_level_of(cascade) else ("continue", "renoise")


def _parameter_device(cascade: Any) -> torch.device:
    parameters = getattr(cascade, "parameters", None)
    if callable(parameters):
        first = next(iter(parameters()), None)
        if first is not None:
            return first.device
    return torch.device("cpu")


def level_index(level: int, n_levels: int) -> int:
    """`level` as an index into `n_levels` levels, a negative one counting from the top as in
    a Python sequence; ValueError outside them."""
    if not -n_levels <= level < n_levels:
        raise ValueError(f"level {level} is outside the cascade's {n_levels} levels")
    return level % n_levels


class MissingCondition(ValueError):
    """A level that is conditioned on the level below was given no condition."""


def check_condition(level: int, cond: Tensor | None, *, required: bool = True) -> None:
    """`cond` checked against `level` (an index >= 0): level 0 has no level below it, so
    takes no condition; with `required`, every level above it needs one."""
    if level == 0 and cond is not None:
        raise ValueError("level 0 is unconditional: cond must be None (only a level >= 1 has a level below it)")
    if required and level > 0 and cond is None:
        raise MissingCondition(f"level {level} is conditioned on the level below: cond is required")


def check_level_sizes(sizes: Sequence[int], top: int, *, multiple: int = 1, min_levels: int = 1) -> tuple[int, ...]:
    """A retrofit's level sizes as ints, after checking that there are at least `min_levels`,
    that they increase and end at the network's own size `top`, and that each is a multiple
    of `multiple`, the factor the network divides its input by (a UNet's downsamplings, a
    DiT's patches)."""
    sizes = tuple(int(r) for r in sizes)
    if len(sizes) < min_levels or list(sizes) != sorted(set(sizes)) or sizes[-1] != top:
        least = f"at least {min_levels} " if min_levels > 1 else ""
        raise ValueError(f"levels must be {least}increasing sizes that end at the network's resolution {top}, got {sizes}")
    bad = [r for r in sizes if r % multiple]
    if bad:
        raise ValueError(f"level sizes must be multiples of {multiple}, the factor the network divides its input by; got {bad}")
    return sizes


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
    level = level_index(level, len(cascade.levels))
    if cond is not None and cond_sigma is not None and not isinstance(cond_sigma, Tensor):
        cond_sigma = torch.full((cond.shape[0],), float(cond_sigma), device=cond.device, dtype=cond.dtype)
    bound_sigma = cast("Tensor | None", cond_sigma)  # passed on as given when there is no cond
    denoise = cascade.denoise

    def model(x: Tensor, sigma: Tensor, **extra_args: Any) -> Tensor:
        return denoise(x, sigma, level=level, cond=cond, cond_sigma=bound_sigma, **extra_args)

    return model


def check_level_input(levels: Sequence[Level], level: int, x: Tensor) -> int:
    """`level` as a non-negative index, after checking it and x's shape at that level."""
    level = level_index(level, len(levels))
    lv = levels[level]
    if x.ndim != 4 or tuple(x.shape[1:]) != lv.shape:
        raise ValueError(f"x must have shape [B, {', '.join(map(str, lv.shape))}] at level {level}, got {tuple(x.shape)}")
    return level


def level_one_hot(n: int, level: int, device: torch.device) -> Tensor:
    """[1, n] with a 1 at `level`: the input of a level (or resolution-label) embedding."""
    one_hot = torch.zeros(1, n, device=device)
    one_hot[0, level] = 1
    return one_hot
