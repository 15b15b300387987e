"""C2F-DM's two schedule tools ("Coarse-to-Fine Diffusion Models with Time Step Sequence Redistribution", Sec. III-A3 and III-B), for any cascade and plan.

- `select_switch_sigma`: where the high-resolution stage should start. The low-resolution
  stage's x0 predictions are collected over n samples at every step; where their PCA rank
  (components needed for `threshold` of the variance) is lowest, "removing noise" ends and
  "generating details" begins.
- `redistribute_timesteps` (TRD): move each sigma of a plan, one at a time, to whichever of
  `n_candidates` evenly spaced points between its neighbours brings the final samples
  closest (L2) to a reference plan's on the same inputs (same seeds, so the same stage
  noises); repeat until nothing moves or `max_iter` sweeps.

Candidates are spaced evenly in sigma^(1/7), the variable in which Karras schedules are
uniform (the paper's DDPM steps are uniform in t; sigma itself would crowd the candidates
near sigma_max). A candidate replaces the current sigma only if it is strictly better, so the
L2 to the reference never rises.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Sequence, cast

import torch
from torch import Tensor

from .plan import CascadePlan, StagePlan
from .protocol import ResolutionCascade
from .sampling import sample_cascade

RHO = 7.0


# ---- the switch point ---------------------------------------------------------------------


def pca_rank(samples: Tensor, threshold: float = 0.99, *, continuous: bool = False) -> float:
    """Number of principal components of samples [N, ...] that explain `threshold` of their
    variance (the paper's "cut index"); 0 when the samples do not vary. With `continuous`,
    the fractional count at which the cumulative explained variance, interpolated linearly
    between whole components, reaches `threshold`."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    x = samples.flatten(1).double()
    if x.shape[0] < 2:
        raise ValueError(f"pca_rank needs at least 2 samples, got {x.shape[0]}")
    variances = torch.linalg.svdvals(x - x.mean(0)).square()
    total = variances.sum()
    if total <= 0:
        return 0
    explained = torch.cat([variances.new_zeros(1), torch.cumsum(variances, 0) / total])  # explained[k]: k components
    k = int((explained < threshold - 1e-12).sum()) - 1  # explained[k] < threshold <= explained[k + 1]
    if not continuous:
        return k + 1
    return k + float((threshold - explained[k]) / (explained[k + 1] - explained[k]))


@dataclass(frozen=True)
class SwitchPoint:
    """The chosen high-resolution starting sigma, and the rank at every step it came from."""

    sigma: float
    step: int  # index into the stage's steps: the end of the minimal-rank plateau
    sigmas: tuple[float, ...]  # sigma of each x0 prediction, in sampling order
    ranks: tuple[float, ...]  # continuous PCA rank of the predictions at each step


def select_switch_sigma(
    cascade: ResolutionCascade,
    plan: CascadePlan,
    *,
    n: int = 64,
    threshold: float = 0.99,
    rtol: float = 0.05,
    stage: int = 0,
    seeds: Sequence[int] | None = None,
    extra_args: dict[str, Any] | None = None,
) -> SwitchPoint:
    """Run `plan`'s stages up to `stage` on n seeds; return the sigma at which that stage's x0
    predictions reach their lowest PCA rank.

    The paper takes the arg-min rank. Ranks are often flat around their minimum (on a
    Gaussian they only grow as sigma falls), where the arg-min is decided by sampling noise;
    we take the end of the plateau instead: the latest step whose (continuous) rank is within
    `rtol` of the minimum, the point where the rank starts to rise (measured stable across
    seed sets: docs/benchmarks.md)."""
    if not 0 <= stage < len(plan.stages):
        raise ValueError(f"stage must index one of the plan's {len(plan.stages)} stages, got {stage}")
    if not rtol >= 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
    seeds = list(range(n)) if seeds is None else list(seeds)
    if len(seeds) < 2:
        raise ValueError(f"select_switch_sigma needs at least 2 samples, got {len(seeds)}")
    head = CascadePlan(list(plan.stages[: stage + 1]), name=plan.name)
    if head.stages[-1].truncated:
        head = CascadePlan([*head.stages[:-1], replace(head.stages[-1], sigmas=_with_final_zero(head.stages[-1].sigmas))], name=plan.name)
    predictions: dict[int, list[Tensor]] = {}
    sigma_of: dict[int, float] = {}

    def record(info: dict[str, Any]) -> None:
        if info["stage"] == stage:
            predictions.setdefault(info["i"], []).append(info["denoised"].detach().cpu())
            sigma_of[info["i"]] = float(info["sigma"].flatten()[0])

    with torch.no_grad():
        sample_cascade(cascade, head, seeds=seeds, extra_args=extra_args, callback=record, disable=True)
    steps = sorted(predictions)
    ranks = [pca_rank(torch.cat(predictions[i]), threshold, continuous=True) for i in steps]
    low = min(ranks)
    chosen = max(i for i, r in zip(steps, ranks) if r <= low * (1 + rtol))
    return SwitchPoint(sigma_of[chosen], chosen, tuple(sigma_of[i] for i in steps), tuple(ranks))


def _with_final_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


# ---- TRD ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TRDResult:
    plan: CascadePlan
    l2_before: float  # mean squared distance per element to the reference's samples
    l2_after: float
    sweeps: int
    evaluations: int  # plans sampled on the calibration set
    seconds: float

    def summary(self) -> str:
        return (
            f"TRD: L2 to the reference {self.l2_before:.4g} -> {self.l2_after:.4g} "
            f"({self.sweeps} sweeps, {self.evaluations} plans sampled, {self.seconds:.1f} s)"
        )


def _same_inputs(plan: CascadePlan, reference: CascadePlan, cascade: ResolutionCascade) -> None:
    n = len(cascade.levels)
    if plan.level_indices(n) != reference.level_indices(n):
        raise ValueError(
            "the reference plan must run the same levels as the plan (so both start from the same noise); "
            f"got {plan.level_indices(n)} and {reference.level_indices(n)}"
        )
    kinds = [type(s.transition) for s in plan.stages]
    if kinds != [type(s.transition) for s in reference.stages]:
        raise ValueError("the reference plan must use the same transitions as the plan")


def _candidates(sigmas: Tensor, i: int, n: int) -> list[float]:
    """n points evenly spaced in sigma^(1/rho) between sigma i's neighbours (or between it
    and its only neighbour at either end)."""
    u = sigmas.double().clamp_min(0) ** (1 / RHO)
    lo = u[i + 1] if i + 1 < len(u) else u[i]
    hi = u[i - 1] if i > 0 else u[i]
    points = [lo + (hi - lo) * j / (n + 1) for j in range(1, n + 1)]
    return [float(p) ** RHO for p in points]


def _movable(stage: StagePlan) -> range:
    """Indices of a stage's sigmas that TRD may move: all but a final sigma = 0."""
    return range(len(stage.sigmas) - (0 if stage.truncated else 1))


def redistribute_timesteps(
    cascade: ResolutionCascade,
    plan: CascadePlan,
    reference_plan: CascadePlan,
    *,
    n_calib: int = 16,
    n_candidates: int = 5,
    max_iter: int = 10,
    seeds: Sequence[int] | None = None,
    extra_args: dict[str, Any] | None = None,
    batch_size: int | None = None,
) -> TRDResult:
    """TRD: a plan with the same steps per stage as `plan`, sigmas moved to bring its samples
    closer (L2) to `reference_plan`'s on `n_calib` calibration seeds. Deterministic for fixed
    seeds. A move that would make the plan invalid (e.g. a Continue hand-over's sigma rule)
    is skipped."""
    for name, value, lo in (("n_calib", n_calib, 1), ("n_candidates", n_candidates, 1), ("max_iter", max_iter, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    plan.validate(cascade)
    reference_plan.validate(cascade)
    _same_inputs(plan, reference_plan, cascade)
    seeds = list(range(n_calib)) if seeds is None else list(seeds)
    started = time.perf_counter()

    def run(p: CascadePlan) -> Tensor:
        with torch.no_grad():
            return cast(Tensor, sample_cascade(cascade, p, seeds=seeds, extra_args=extra_args, batch_size=batch_size, disable=True)).double()

    target = run(reference_plan)
    evaluations = 0

    def l2(p: CascadePlan) -> float:
        nonlocal evaluations
        evaluations += 1
        return float((run(p) - target).square().mean())

    best_plan, best = plan, l2(plan)
    before, sweeps = best, 0
    for _ in range(max_iter):
        sweeps += 1
        moved = False
        for k in range(len(best_plan.stages)):
            for i in _movable(best_plan.stages[k]):
                for sigma in _candidates(best_plan.stages[k].sigmas, i, n_candidates):
                    trial = _with_sigma(best_plan, k, i, sigma, cascade)
                    if trial is None:
                        continue
                    score = l2(trial)
                    if score < best:
                        best_plan, best, moved = trial, score, True
        if not moved:
            break
    name = f"{plan.name}-trd" if plan.name else "trd"
    return TRDResult(replace(best_plan, name=name), before, best, sweeps, evaluations, time.perf_counter() - started)


def _with_sigma(plan: CascadePlan, k: int, i: int, sigma: float, cascade: ResolutionCascade) -> CascadePlan | None:
    """`plan` with stage k's sigma i set to `sigma`, or None if that plan is invalid."""
    stage = plan.stages[k]
    sigmas = stage.sigmas.clone()
    sigmas[i] = sigma
    try:
        stages = list(plan.stages)
        stages[k] = replace(stage, sigmas=sigmas)
        return CascadePlan(stages, name=plan.name).validate(cascade)
    except ValueError:
        return None
