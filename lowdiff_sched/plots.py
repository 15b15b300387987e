"""Pictures of plans (matplotlib, an optional dependency: pip install lowdiff-sched[plot])."""

from __future__ import annotations

from pathlib import Path

from .outputs import atomic_path
from .plan import CascadePlan


def plot_plan(plan: CascadePlan, path: str | Path) -> None:
    """Sigma against cumulative step, one line per stage (log scale; the final 0 is left off)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install 'lowdiff-sched[plot]'") from None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    offset = 0
    for i, stage in enumerate(plan.stages):
        sigmas = stage.sigmas.double()
        steps = list(range(offset, offset + len(sigmas)))
        keep = sigmas > 0
        label = f"stage {i}: level {stage.level}, {stage.steps} steps, NFE {stage.nfe()}"
        ax.plot([s for s, k in zip(steps, keep) if k], sigmas[keep].tolist(), marker="o", ms=3, label=label)
        offset += len(sigmas) - 1
    ax.set_yscale("log")
    ax.set_xlabel("step (stages one after another)")
    ax.set_ylabel("sigma")
    ax.set_title(f"plan {plan.name}" if plan.name else "plan")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
