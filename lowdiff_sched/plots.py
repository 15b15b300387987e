"""Pictures of plans (matplotlib, an optional dependency: pip install lowdiff-sched[plot])."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

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


def plot_fronts(
    families: Mapping[str, tuple[Sequence[tuple[float, float]], Sequence[tuple[str, float, float]]]],
    path: str | Path, *, metric: str, cost_unit: str, lower_is_better: bool = True, title: str = "",
) -> None:
    """Cost against quality, one colour per family ("single resolution", "cascade"): every
    measured (cost, value) as a faint point and the family's Pareto front, (name, cost,
    value) per plan, as a line with its plans named."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install 'lowdiff-sched[plot]'") from None

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for color, (label, (points, front)) in enumerate(families.items()):
        if points:
            xs, ys = zip(*points)
            ax.scatter(xs, ys, s=10, alpha=0.35, color=f"C{color}")
        if front:
            ax.plot([c for _, c, _ in front], [v for _, _, v in front], marker="o", ms=4, color=f"C{color}", label=f"{label} front")
            for i, (name, cost, value) in enumerate(front):  # labels alternate above and below the line
                ax.annotate(name, (cost, value), textcoords="offset points", xytext=(4, 6 if i % 2 else -10),
                            fontsize=6, color=f"C{color}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"cost per sample ({cost_unit}, log scale)")
    ax.set_ylabel(f"{metric} (lower is better, log scale)" if lower_is_better else f"{metric} (log scale)")
    ax.set_title(title or f"plan search: cost against {metric}", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
