"""What a plan costs on a given cascade: FLOPs per model call at each level, counted by
torch's FlopCounterMode, or seconds per call measured on the device; and the latency ratios
LowDiff's effective NFE uses."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from .plan import CascadePlan, pixel_ratios
from .protocol import ResolutionCascade, is_conditioned


def _call(cascade: ResolutionCascade, level: int, batch: int, device: torch.device | str, extra_args: dict[str, Any] | None):
    """A `denoise` call at `level` on a random batch (a conditioned level gets a condition)."""
    lv = cascade.levels[level]
    x = torch.randn(batch, *lv.shape, device=device)
    cond = torch.randn_like(x) if is_conditioned(cascade, level) else None
    sigma = torch.ones(batch, device=device)
    cond_sigma = None if cond is None else torch.full((batch,), 0.5, device=device)  # shape [B], as the protocol says
    return lambda: cascade.denoise(x, sigma, level=level, cond=cond, cond_sigma=cond_sigma, **(extra_args or {}))


def flops_per_call(cascade: ResolutionCascade, level: int, batch: int = 1, device: torch.device | str = "cpu") -> int:
    """FLOPs of one `denoise` call at `level` on a batch (a conditioned level gets a condition)."""
    call = _call(cascade, level, batch, device, None)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        call()
    return int(counter.get_total_flops())


def seconds_per_call(
    cascade: ResolutionCascade, level: int, batch: int = 64, *, device: torch.device | str = "cpu",
    repeats: int = 5, extra_args: dict[str, Any] | None = None,
) -> float:
    """Median wall seconds of one `denoise` call at `level` on a batch, after a warm-up call
    (synchronised on CUDA). `extra_args` (e.g. class labels for the batch) go to every call."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    call = _call(cascade, level, batch, device, extra_args)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            sync()
            start = time.perf_counter()
            call()
            sync()
            if i:  # the first call warms caches and allocators
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def plan_flops(cascade: ResolutionCascade, plan: CascadePlan, batch: int = 1) -> list[int]:
    """FLOPs each stage of `plan` spends on `batch` samples (NFE x FLOPs per call)."""
    indices = plan.level_indices(len(cascade.levels))
    return [stage.nfe() * flops_per_call(cascade, i, batch) for stage, i in zip(plan.stages, indices)]


def flop_ratios(cascade: ResolutionCascade, plan: CascadePlan) -> list[float]:
    """Per lower stage, FLOPs per call at its level / at the final level: the latency ratios
    for `CascadePlan.effective_nfe` when compute-bound. A cascade with no network to count
    (the analytic oracle) gets pixel ratios."""
    indices = plan.level_indices(len(cascade.levels))
    top = flops_per_call(cascade, indices[-1])
    if not top:
        return pixel_ratios(plan, cascade.levels)
    return [flops_per_call(cascade, i) / top for i in indices[:-1]]


COST_KINDS = {"latency": "s", "flops": "FLOPs"}


def level_costs(
    cascade: ResolutionCascade, kind: str = "latency", batch: int = 64, *, device: torch.device | str = "cpu",
    extra_args: dict[str, Any] | None = None, repeats: int = 5,
) -> list[float]:
    """Cost of one model call per sample at each level: measured seconds on `device` at
    `batch` (kind "latency"), or counted FLOPs (kind "flops"), for `search.plan_cost`."""
    if kind not in COST_KINDS:
        raise ValueError(f"cost must be one of {sorted(COST_KINDS)}, got {kind!r}")
    n = len(cascade.levels)
    if kind == "flops":
        flops = [flops_per_call(cascade, i, 1, device) for i in range(n)]
        if min(flops) <= 0:
            raise ValueError(f"torch's FLOP counter finds no FLOPs in some level of this model ({flops}): its work is in ops it does not count; use latency")
        return [float(f) for f in flops]
    return [seconds_per_call(cascade, i, batch, device=device, repeats=repeats, extra_args=extra_args) / batch for i in range(n)]
