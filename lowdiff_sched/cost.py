"""What a plan costs on a given cascade: FLOPs per model call at each level, counted by
torch's FlopCounterMode, and the latency ratios LowDiff's effective NFE uses."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .plan import CascadePlan
from .protocol import ResolutionCascade


def flops_per_call(cascade: ResolutionCascade, level: int, batch: int = 1, device: torch.device | str = "cpu") -> int:
    """FLOPs of one `denoise` call at `level` on a batch (a conditioned level gets a condition)."""
    lv = cascade.levels[level]
    x = torch.randn(batch, *lv.shape, device=device)
    # a level above 0 gets a condition unless the cascade's levels are unconditional (C2F)
    conditioned = level % len(cascade.levels) != 0 and getattr(cascade, "conditions_on_lower_level", True)
    cond = torch.randn_like(x) if conditioned else None
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        cascade.denoise(x, torch.ones(batch, device=device), level=level, cond=cond, cond_sigma=None if cond is None else 0.5)
    return int(counter.get_total_flops())


def plan_flops(cascade: ResolutionCascade, plan: CascadePlan, batch: int = 1) -> list[int]:
    """FLOPs each stage of `plan` spends on `batch` samples (NFE x FLOPs per call)."""
    indices = plan.level_indices(len(cascade.levels))
    return [stage.nfe() * flops_per_call(cascade, i, batch) for stage, i in zip(plan.stages, indices)]


def flop_ratios(cascade: ResolutionCascade, plan: CascadePlan) -> list[float]:
    """Per lower stage, FLOPs per call at its level / at the final level: the latency ratios
    for `CascadePlan.effective_nfe` when compute-bound."""
    indices = plan.level_indices(len(cascade.levels))
    top = flops_per_call(cascade, indices[-1])
    return [flops_per_call(cascade, i) / top for i in indices[:-1]]
