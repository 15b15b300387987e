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


def plot_fronts(result, path: str | Path, title: str = "") -> None:  # type: ignore[no-untyped-def]
    """Cost against quality for every judged plan of a `search.SearchResult`: single-resolution
    plans in blue, cascades in orange, each family's Pareto front as a line with its plans named."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install 'lowdiff-sched[plot]'") from None
    from .search import SINGLE_FAMILIES

    metric = result.primary
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    colors = {"single resolution": "C0", "cascade": "C1"}
    for label, front in result.family_fronts().items():
        members = [r for r in result.results if (r.family in SINGLE_FAMILIES) == (label == "single resolution")]
        points = [(r.cost, r.metric(metric)) for r in members if r.metric(metric) is not None]
        if points:
            ax.scatter(*zip(*points), s=10, alpha=0.35, color=colors[label])
        if front:
            ax.plot([r.cost for r in front], [r.metric(metric) for r in front], marker="o", ms=4, color=colors[label],
                    label=f"{label} front")
            for i, r in enumerate(front):  # labels alternate above and below the line
                ax.annotate(r.name, (r.cost, r.metric(metric)), textcoords="offset points", xytext=(4, 6 if i % 2 else -10),
                            fontsize=6, color=colors[label])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"cost per sample ({result.cost_unit}, log scale)")
    ax.set_ylabel(f"{metric} (lower is better, log scale)" if result.lower_is_better else f"{metric} (log scale)")
    ax.set_title(title or f"plan search: cost against {metric}", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
