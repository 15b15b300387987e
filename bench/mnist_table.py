"""Quality against cost on real MNIST digits: the baseline at 35/19/11 NFE against the LowDiff
cascades, all rows measured in one run on one machine, with the same seeds and classes.

Rows: mnist-base with `mnist-base-35/19/11`, mnist-lowdiff (levels 8/16/32) with
`mnist-3stage`, mnist-lowdiff-2level (levels 16/32) with `mnist-2stage`, and mnist-c2f (C2F-DM's
resolution-label fine-tune at 16/32) with `mnist-c2f` (Renoise) and `mnist-continue`
(Continue). `--plans` measures a subset (mnist-base-35, the speed-up reference, always runs
first). Columns: FD-MNIST,
class accuracy, seconds per 64 samples, speed-up over baseline-35, NFE and effective NFE
(FLOP-weighted). Writes a CSV, prints the markdown table,
and with --plot draws FD against seconds.

    python bench/mnist_table.py [--n 2000] [--csv docs/mnist-table.csv] [--plot docs/mnist-fd-vs-time.png]
    python bench/mnist_table.py --base runs/mnist-base --lowdiff runs/mnist-lowdiff --lowdiff-2level runs/mnist-lowdiff-2level
    python bench/mnist_table.py --from-csv docs/mnist-table.csv --plot docs/mnist-fd-vs-time.png  # redraw only
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from lowdiff_sched import presets
from lowdiff_sched.classifier import load_classifier
from lowdiff_sched.evaluate import Evaluation, append_csv, evaluate
from lowdiff_sched.judges import DigitJudge
from lowdiff_sched.models import load_model

ROWS = [
    ("base", "mnist-base-35"),
    ("base", "mnist-base-19"),
    ("base", "mnist-base-11"),
    ("lowdiff", "mnist-3stage"),
    ("lowdiff-2level", "mnist-2stage"),
    ("c2f", "mnist-c2f"),
    ("c2f", "mnist-continue"),
]


def markdown(results: list[Evaluation]) -> str:
    ref = next(r for r in results if r.plan == "mnist-base-35")
    lines = [
        "| model | plan | FD-MNIST | class accuracy | s / 64 samples | speed-up | NFE | effective NFE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.model} | `{r.plan}` | {r.metrics['fd']:.2f} | {r.metrics['accuracy']:.1%} | {r.seconds_per_64:.2f} | "
            f"{ref.seconds_per_64 / r.seconds_per_64:.2f}x | {r.nfe} | {r.effective_nfe} |"
        )
    return "\n".join(lines)


def plot(results: list[Evaluation], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for r in results:
        cascade = not r.plan.startswith("mnist-base")
        ax.scatter(r.seconds_per_64, r.metrics['fd'], marker="o" if cascade else "s", s=40, color="C1" if cascade else "C0")
        ax.annotate(f"{r.plan} ({r.nfe} NFE)", (r.seconds_per_64, r.metrics['fd']), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("seconds per 64 samples (this CPU)")
    ax.set_ylabel("FD-MNIST (lower is better)")
    ax.set_title("MNIST: cascades (orange) vs single-resolution baseline (blue)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--base", default="mnist-base", help="baseline model name or training run")
    parser.add_argument("--lowdiff", default="mnist-lowdiff", help="LowDiff model (levels 8/16/32) name or training run")
    parser.add_argument("--lowdiff-2level", default="mnist-lowdiff-2level", help="LowDiff model (levels 16/32) name or training run")
    parser.add_argument("--c2f", default="mnist-c2f", help="C2F-DM model (levels 16/32) name or training run")
    parser.add_argument("--plans", default=None, help="comma-separated plans of ROWS to measure [all]")
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--from-csv", type=Path, default=None, help="print the table and plot from a CSV written earlier; measure nothing")
    args = parser.parse_args()
    if args.from_csv is not None:
        import csv

        with open(args.from_csv) as f:
            results = [Evaluation(r["model"], r["plan"], int(r["n"]), {"fd": float(r["fd"]), "accuracy": float(r["accuracy"])},
                                  float(r["seconds_per_64"]), int(r["nfe"]), int(r["effective_nfe"])) for r in csv.DictReader(f)]
        print(markdown(results))
        if args.plot is not None:
            plot(results, args.plot)
            print(f"wrote {args.plot}")
        return

    rows = ROWS
    if args.plans is not None:
        wanted = {"mnist-base-35", *args.plans.split(",")}
        unknown = wanted - {plan for _, plan in ROWS}
        if unknown:
            parser.error(f"--plans: not rows of this table: {sorted(unknown)}")
        rows = [row for row in ROWS if row[1] in wanted]
    names = {"base": args.base, "lowdiff": args.lowdiff, "lowdiff-2level": args.lowdiff_2level, "c2f": args.c2f}
    models = {key: (names[key], load_model(names[key])) for key in dict.fromkeys(key for key, _ in rows)}
    judge = DigitJudge(load_classifier())
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, n={args.n}")
    results = []
    for key, plan_name in rows:
        name, model = models[key]
        result = evaluate(model, presets.get(plan_name), seeds=range(args.n), batch=args.batch, judge=judge, model_name=name)
        print(result.summary(), flush=True)
        results.append(result)
        if args.csv is not None:
            append_csv(args.csv, result)
    print(markdown(results))
    if args.plot is not None:
        plot(results, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
