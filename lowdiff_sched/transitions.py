"""How stage k seeds stage k + 1.

Every transition receives the previous stage's outcome and the next stage's fresh
noise already scaled to its first sigma (`x_noise = sigma_start * eps`), and returns the
next stage's initial state plus its condition. Each is a small frozen dataclass, so a plan
that holds it stays data (JSON round trip through `to_dict` / `transition_from_dict`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, cast

from torch import Tensor

from .kernels import upsample_renoise
from .protocol import Level
from .resample import UPSAMPLE_MODES, downsample, integer_factor, upsample

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class StageOutput(NamedTuple):
    """What a finished stage hands on."""

    level: int  # index into the cascade's levels
    x: Tensor  # final state, still noisy at `sigma` when the stage was truncated
    denoised: Tensor  # the last x0 estimate the stage's sampler computed
    sigma: float  # the stage's last sigma
    total: Tensor | None = None  # residual cascades (MSF): the sum of the residuals so far, at the final size
    denoised_sigma: float | None = None  # the sigma `denoised` was computed at (None: unknown)


class StageStart(NamedTuple):
    """How the next stage begins."""

    x: Tensor  # initial state at the stage's first sigma
    cond: Tensor | None = None  # condition at the stage's size, or None
    cond_sigma: float | None = None  # noise std of `cond`
    history: tuple[float, Tensor] | None = None  # (sigma, x0 estimate) before the first step, for multistep samplers


_REGISTRY: dict[str, type["Transition"]] = {}


class Transition(ABC):
    """Base class: subclasses set `kind`, implement `start`, and may refine `validate`."""

    kind: ClassVar[str] = ""
    # True when the next stage's network was trained on the level right below it (LowDiff).
    needs_adjacent_levels: ClassVar[bool] = False
    # True when stages generate residuals whose upsampled sum is the sample (MSF): the
    # sampling loop then keeps the running sum in StageOutput.total, upsampled with `mode`.
    accumulates: ClassVar[bool] = False
    # True when the previous stage walks the same trajectory at a coarser grid: its unit noise
    # is then this stage's, mean-pooled and times the factor (still unit normal), so a seed
    # starts from the same point whether the plan has this stage split off or not.
    couples_noise: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            _REGISTRY[cls.kind] = cls

    @abstractmethod
    def start(self, prev: StageOutput, x_noise: Tensor, sigma_start: float, level: Level) -> StageStart:
        """The next stage's initial state and condition."""

    def validate(
        self, stage: int, prev_sigma_end: float, sigma_start: float, prev_level: Level | None, level: Level | None
    ) -> None:
        """Raise ValueError naming `stage` if this transition cannot join the two stages.
        Levels are None when no cascade is known yet (size checks are then skipped)."""
        if prev_level is not None and level is not None:
            if level.size[0] < prev_level.size[0] or level.size[1] < prev_level.size[1]:
                raise ValueError(
                    f"stage {stage}: transition {self.kind} needs a level at least as large as the previous one, "
                    f"got {prev_level.size} -> {level.size}"
                )
            if level.channels != prev_level.channels:
                raise ValueError(
                    f"stage {stage}: transition {self.kind} needs equal channel counts, "
                    f"got {prev_level.channels} -> {level.channels}"
                )

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, **asdict(self)}  # type: ignore[call-overload]


def transition_from_dict(data: Any, stage: int | None = None) -> Transition:
    """Rebuild a transition from `Transition.to_dict()` output."""
    where = f"stage {stage}: " if stage is not None else ""
    if not isinstance(data, dict) or "type" not in data:
        raise ValueError(f"{where}transition must be an object with a 'type', got {data!r}")
    given = dict(data)
    kind = given.pop("type")
    if not isinstance(kind, str) or kind not in _REGISTRY:
        raise ValueError(f"{where}unknown transition type {kind!r}; known: {', '.join(sorted(_REGISTRY))}")
    known = [f.name for f in fields(cast("type[DataclassInstance]", _REGISTRY[kind]))]  # every kind is a dataclass
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"{where}transition {kind!r} has no field(s) {unknown}; its fields: {', '.join(known) or 'none'}")
    return _REGISTRY[kind](**given)


def _check_mode(mode: str) -> None:
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"mode must be one of {UPSAMPLE_MODES}, got {mode!r}")


@dataclass(frozen=True)
class Condition(Transition):
    """LowDiff (Alg. 2): start from fresh noise; condition on the upsampled, still-noisy
    final state of the previous stage: cond = U(x_prev), cond_sigma = sigma_prev."""

    mode: str = "nearest"
    kind: ClassVar[str] = "condition"
    needs_adjacent_levels: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_mode(self.mode)

    def start(self, prev: StageOutput, x_noise: Tensor, sigma_start: float, level: Level) -> StageStart:
        return StageStart(x_noise, upsample(prev.x, level.size, self.mode), prev.sigma)


@dataclass(frozen=True)
class Renoise(Transition):
    """C2F-DM: upsample the previous stage's last x0 estimate and add fresh noise at the
    next stage's first sigma: x = U(D_prev) + sigma_start * eps."""

    mode: str = "bilinear"
    kind: ClassVar[str] = "renoise"

    def __post_init__(self) -> None:
        _check_mode(self.mode)

    def start(self, prev: StageOutput, x_noise: Tensor, sigma_start: float, level: Level) -> StageStart:
        return StageStart(upsample(prev.denoised, level.size, self.mode) + x_noise)


@dataclass(frozen=True)
class Continue(Transition):
    """Continue the same trajectory on a grid f times finer: x_H = U(x_L) + f sigma_L (eps - U P eps)
    at sigma_H = f sigma_L, where U is nearest upsampling and P mean pooling (white noise of
    std f sigma_L, P(x_H) = x_L; docs/architecture.md, "The exact hand-over").

    The stages share one noise draw (`couples_noise`), and with `history` the previous stage's
    last x0 estimate, upsampled, is handed to a multistep sampler (DPM++ 2M), whose first
    step at the finer grid then stays second order."""

    rtol: float = 1e-5
    history: bool = True
    kind: ClassVar[str] = "continue"
    couples_noise: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if isinstance(self.rtol, bool) or not isinstance(self.rtol, (int, float)) or not 0 <= self.rtol < 1:
            raise ValueError(f"Continue.rtol must be a number in [0, 1), got {self.rtol!r}")
        if not isinstance(self.history, bool):
            raise ValueError(f"Continue.history must be true or false, got {self.history!r}")

    def start(self, prev: StageOutput, x_noise: Tensor, sigma_start: float, level: Level) -> StageStart:
        factor = integer_factor((prev.x.shape[-2], prev.x.shape[-1]), level.size)
        x = upsample_renoise(prev.x, x_noise / sigma_start, prev.sigma, factor)
        history = None
        if self.history and prev.denoised_sigma is not None and prev.denoised_sigma > prev.sigma:
            history = (factor * prev.denoised_sigma, upsample(prev.denoised, level.size, "nearest"))
        return StageStart(x, history=history)

    def validate(
        self, stage: int, prev_sigma_end: float, sigma_start: float, prev_level: Level | None, level: Level | None
    ) -> None:
        super().validate(stage, prev_sigma_end, sigma_start, prev_level, level)
        if prev_sigma_end <= 0:
            raise ValueError(f"stage {stage}: transition continue needs a truncated previous stage (last sigma > 0)")
        if prev_level is None or level is None:
            return
        try:
            factor = integer_factor(prev_level.size, level.size)
        except ValueError as err:
            raise ValueError(f"stage {stage}: transition continue: {err}") from None
        expected = factor * prev_sigma_end
        if not math.isclose(sigma_start, expected, rel_tol=self.rtol):
            raise ValueError(
                f"stage {stage}: transition continue needs sigmas[0] = {factor} * {prev_sigma_end} = {expected} "
                f"(factor times the previous stage's last sigma), got {sigma_start}"
            )


@dataclass(frozen=True)
class Residual(Transition):
    """MSF (Alg. 3): the next stage generates a residual from fresh noise, conditioned on the
    input prior: the sum of all residuals so far at the final size (StageOutput.total),
    downsampled to the next level. The sample is the final sum (`msf.accumulate`)."""

    mode: str = "bilinear"  # how residuals are upsampled into the sum, as in msf.factorize
    kind: ClassVar[str] = "residual"
    accumulates: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_mode(self.mode)

    def start(self, prev: StageOutput, x_noise: Tensor, sigma_start: float, level: Level) -> StageStart:
        if prev.total is None:
            raise ValueError("transition residual needs the running sum of residuals (StageOutput.total)")
        return StageStart(x_noise, downsample(prev.total, level.size), 0.0)

    def validate(
        self, stage: int, prev_sigma_end: float, sigma_start: float, prev_level: Level | None, level: Level | None
    ) -> None:
        super().validate(stage, prev_sigma_end, sigma_start, prev_level, level)
        if prev_sigma_end != 0:
            raise ValueError(
                f"stage {stage}: transition residual needs the previous stage to finish its residual (run to sigma = 0), "
                f"its sigmas end at {prev_sigma_end}"
            )
