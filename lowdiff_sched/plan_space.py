"""The plans the plan search tries, each built from a few numbers (config as data).

Single-resolution plans: every supported k-diffusion sampler on a Karras schedule, for each
step count whose NFE lies in the range, each rho and each sigma_min. DPM++ 3M with eta = 0
(`dpmpp_3m_sde` without noise) is included as the deterministic third-order multistep solver.

Cascades split one such schedule s_0 > ... > s_n = 0 at step k between a lower level (f times
smaller) and the top level:
- continue: the first k steps run at the lower level on s_0/f .. s_k/f (the same trajectory on
  a coarser grid), then `Continue` hands over exactly and the top level runs s_k .. s_n;
- renoise (C2F-DM): the same low stage, then its last x0 estimate is upsampled and re-noised
  to s_k (`Renoise`);
- condition (LowDiff): the low stage runs s_0 .. s_k unshifted and the top level starts from
  fresh noise on Karras(m, 0.01, 50), conditioned on the upsampled noisy result, with m the
  remaining n - k steps (at least 2).
With `stages=3`, continue and renoise also split the schedule twice, at k1 < k2, through two
lower levels: s_0/f0 .. s_k1/f0 at the lowest, s_k1/f1 .. s_k2/f1 at the middle one, then
s_k2 .. s_n at the top (f0, f1 each level's factor below the top).
A model offers the transitions its levels can take (`protocol.hand_overs_of`).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterator, Sequence

import torch

from .plan import CascadePlan, StagePlan
from .protocol import ResolutionCascade, hand_overs_of
from .resample import integer_factor
from .samplers import SAMPLER_NAMES, count_nfe
from .schedules import karras_sigmas
from .transitions import Condition, Continue, Renoise

# Samplers whose output is a deterministic function of the starting noise (an ODE solver):
# their distance to the reference's samples on the same noise is their discretisation error.
DETERMINISTIC = ("euler", "heun", "dpm_2", "lms", "dpmpp_2m", "dpmpp_3m")
TRANSITIONS = ("continue", "renoise", "condition")
# LowDiff Table 10: conditioned stages use a narrower sigma range.
CONDITIONED_RANGE = (0.01, 50.0)


def _sampler(name: str) -> tuple[str, dict[str, Any]]:
    """A search-space sampler name as (k-diffusion sampler, its kwargs): 'dpmpp_3m' is DPM++ 3M SDE with eta 0."""
    return ("dpmpp_3m_sde", {"eta": 0.0}) if name == "dpmpp_3m" else (name, {})


@dataclass(frozen=True)
class SearchSpace:
    """Which plans to try. `nfe` bounds the model evaluations of a single-resolution plan
    (cascades: of the schedule they split); `cascade_steps` the steps of a split schedule;
    `stages` the most stages of a cascade (3: Continue and Renoise through two lower levels)."""

    samplers: tuple[str, ...] = (*SAMPLER_NAMES, "dpmpp_3m")
    cascade_samplers: tuple[str, ...] = ("dpmpp_2m", "dpmpp_3m", "euler", "heun")
    nfe: tuple[int, int] = (3, 20)
    rhos: tuple[float, ...] = (7.0,)
    sigma_mins: tuple[float, ...] = (0.002,)
    sigma_max: float = 80.0
    transitions: tuple[str, ...] = TRANSITIONS
    cascade_steps: int = 12
    stages: int = 2

    def __post_init__(self) -> None:
        known = set(SAMPLER_NAMES) | {"dpmpp_3m"}
        for name in ("samplers", "cascade_samplers"):
            values = tuple(getattr(self, name))
            bad = [s for s in values if s not in known]
            if bad:
                raise ValueError(f"SearchSpace.{name}: unknown sampler(s) {bad}; choose from {sorted(known)}")
            object.__setattr__(self, name, values)
        bad = [t for t in self.transitions if t not in TRANSITIONS]
        if bad:
            raise ValueError(f"SearchSpace.transitions: unknown {bad}; choose from {TRANSITIONS}")
        lo, hi = self.nfe
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            raise ValueError(f"SearchSpace.nfe must be (min, max) ints with 1 <= min <= max, got {self.nfe!r}")
        if not all(r > 0 for r in self.rhos) or not self.rhos:
            raise ValueError(f"SearchSpace.rhos must be positive numbers, got {self.rhos!r}")
        if not self.sigma_mins or not all(0 < s < self.sigma_max for s in self.sigma_mins):
            raise ValueError(f"SearchSpace.sigma_mins must lie in (0, sigma_max={self.sigma_max}), got {self.sigma_mins!r}")
        if isinstance(self.cascade_steps, bool) or not isinstance(self.cascade_steps, int) or self.cascade_steps < 2:
            raise ValueError(f"SearchSpace.cascade_steps must be an int >= 2, got {self.cascade_steps!r}")
        if self.stages not in (2, 3) or isinstance(self.stages, bool):
            raise ValueError(f"SearchSpace.stages must be 2 or 3, got {self.stages!r}")
        for name in ("nfe", "rhos", "sigma_mins", "transitions"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchSpace":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SearchSpace fields {unknown}; known: {sorted(known)}")
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)


@dataclass(frozen=True)
class Candidate:
    """A plan to try, its family, and whether it starts from the reference's own noise with a
    deterministic sampler (then its distance to the reference is its discretisation error)."""

    plan: CascadePlan
    family: str  # "single" (an ODE sampler), "stochastic" (single resolution, SDE or ancestral), "continue", "renoise", "condition"
    coupled: bool

    @property
    def name(self) -> str:
        return self.plan.name


def _karras(steps: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor | None:
    try:
        return karras_sigmas(steps, sigma_min, sigma_max, rho).double()
    except ValueError:  # degenerate in float32 (too many steps for the range)
        return None


def _tag(rho: float, sigma_min: float) -> str:
    return f"rho{float(rho)!r}-min{float(sigma_min)!r}"  # repr: distinct floats, distinct names


def single_resolution(space: SearchSpace, top: int) -> Iterator[Candidate]:
    """Every single-resolution plan of the space, at level `top`."""
    lo, hi = space.nfe
    for name in space.samplers:
        sampler, kwargs = _sampler(name)
        for rho in space.rhos:
            for sigma_min in space.sigma_mins:
                for steps in range(1, hi + 1):
                    sigmas = _karras(steps, sigma_min, space.sigma_max, rho)
                    if sigmas is None:
                        continue
                    nfe = count_nfe(sampler, sigmas, kwargs)
                    if nfe > hi:
                        break
                    if nfe < lo:
                        continue
                    try:
                        stage = StagePlan(top, sigmas, sampler, kwargs)
                    except ValueError:  # e.g. the SDE samplers' minimum of 2 steps
                        continue
                    plan = CascadePlan([stage], name=f"{name}-{steps}-{_tag(rho, sigma_min)}")
                    deterministic = name in DETERMINISTIC
                    yield Candidate(plan, "single" if deterministic else "stochastic", deterministic)


def cascades(space: SearchSpace, cascade: ResolutionCascade) -> Iterator[Candidate]:
    """Every cascade of the space that `cascade` supports: each lower level into the top, and
    with `space.stages == 3` each pair of lower levels into the top (Continue, Renoise)."""
    levels = list(cascade.levels)
    top = len(levels) - 1
    kinds = [t for t in space.transitions if t in hand_overs_of(cascade)]
    chains: list[tuple[int, ...]] = [(low,) for low in range(top)]
    if space.stages == 3:
        chains += [(low, mid) for low in range(top) for mid in range(low + 1, top)]
    for chain in chains:
        try:
            factors = [integer_factor(levels[i].size, levels[top].size) for i in chain]
        except ValueError:
            continue
        where = "+".join(str(levels[i].size[0]) for i in chain)
        for kind in kinds:
            if kind == "condition" and chain != (top - 1,):
                continue  # LowDiff conditions a level on the one right below it, in two stages here
            for name in space.cascade_samplers:
                sampler, kwargs = _sampler(name)
                for rho in space.rhos:
                    for sigma_min in space.sigma_mins:
                        for steps in range(len(chain) + 1, space.cascade_steps + 1):
                            sigmas = _karras(steps, sigma_min, space.sigma_max, rho)
                            if sigmas is None:
                                continue
                            for splits in itertools.combinations(range(1, steps), len(chain)):
                                for plan in _split(kind, sigmas, splits, factors, chain, top, sampler, kwargs, rho):
                                    tag = f"{kind}-{name}-{steps}-k{'+'.join(map(str, splits))}-L{where}-{_tag(rho, sigma_min)}"
                                    try:
                                        yield Candidate(CascadePlan(plan, name=tag + plan_suffix(plan)), kind,
                                                        kind == "continue" and name in DETERMINISTIC)
                                    except ValueError:
                                        continue


def plan_suffix(stages: Sequence[StagePlan]) -> str:
    """The top stage's step count, where it is not fixed by the split (LowDiff's fresh top schedule)."""
    return f"-top{stages[-1].steps}" if isinstance(stages[-1].transition, Condition) else ""


def split_schedule(sigmas: torch.Tensor, splits: Sequence[int], levels: Sequence[int], factors: Sequence[int],
                   sampler: str, kwargs: dict[str, Any] | None = None,
                   hand_over: type[Continue] | type[Renoise] = Continue) -> list[StagePlan]:
    """One schedule s_0 > ... > s_n cut at `splits` (k1 < k2 < ...): stage i runs its piece
    divided by factors[i] at levels[i] (its pixels are factors[i] times larger, so its noise is
    that much smaller), and each later stage takes over with `hand_over`."""
    if not (len(levels) == len(factors) == len(splits) + 1):
        raise ValueError(f"split_schedule: {len(splits)} split(s) need {len(splits) + 1} levels and factors, "
                         f"got {len(levels)} and {len(factors)}")
    cuts = [0, *splits, len(sigmas) - 1]
    if any(b <= a for a, b in zip(cuts, cuts[1:])):
        raise ValueError(f"split_schedule: splits {list(splits)} must increase strictly within 1..{len(sigmas) - 2}")
    return [StagePlan(level, sigmas[a:b + 1] / f, sampler, kwargs or {}, transition=hand_over() if i else None)
            for i, (level, f, a, b) in enumerate(zip(levels, factors, cuts, cuts[1:]))]


def _split(kind: str, sigmas: torch.Tensor, splits: Sequence[int], factors: Sequence[int], chain: Sequence[int], top: int,
           sampler: str, kwargs: dict[str, Any], rho: float) -> Iterator[list[StagePlan]]:
    """The stages of one cascade: `sigmas` cut at `splits`, stage i at level chain[i] (the top last)."""
    try:
        if kind in ("continue", "renoise"):
            yield split_schedule(sigmas, splits, (*chain, top), (*factors, 1), sampler, kwargs,
                                 Continue if kind == "continue" else Renoise)
        else:
            (k,) = splits
            head = StagePlan(chain[0], sigmas[: k + 1], sampler, kwargs)
            tail = _karras(max(len(sigmas) - 1 - k, 2), *CONDITIONED_RANGE, rho)
            if tail is not None:
                yield [head, StagePlan(top, tail, sampler, kwargs, transition=Condition())]
    except ValueError:  # a schedule the sampler cannot run (e.g. one SDE step to 0)
        return


def candidates(space: SearchSpace, cascade: ResolutionCascade) -> list[Candidate]:
    """All candidates for `cascade`, single-resolution first, names unique."""
    out = [*single_resolution(space, len(cascade.levels) - 1), *cascades(space, cascade)]
    seen: set[str] = set()
    unique = []
    for c in out:
        if c.name not in seen:
            seen.add(c.name)
            unique.append(c)
    return unique
