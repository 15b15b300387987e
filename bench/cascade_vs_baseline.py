"""Does a cascade beat the strongest single-resolution plan on its own top network? One run.

Rows: a cascade model (e.g. mnist-fast: a LevelStack whose 16x16 network is distilled from
mnist-base, with mnist-base itself on top) under a cascade plan, against the base model
under the strongest single-resolution plan the plan search found (any sampler, any step
count) and more single-resolution rows, all on the same held-out seeds and classes. Since a
LevelStack's top level *is* the base model, the single-resolution rows are also "its own top
level run alone". Plans are presets or plan JSON files (e.g. from `lowdiff-sched search ...
--out DIR`: DIR/plans/*.json).

- Quality: the base model's judge (FD-MNIST and class accuracy for the MNIST models; FD-emoji,
  KID, the Laplacian-pyramid SWD bands and accuracy for the emoji models), each metric with
  its 95% bootstrap interval and the paired difference to the baseline (the same seeds
  resampled for both rows, so what the rows share cancels).
- Time: each plan samples all n seeds once per round; rounds alternate the order of the plans;
  the median over rounds is reported, and speed-ups are ratios of medians within this run.
- FLOPs: torch's FLOP counter per model call at each level, times each stage's NFE; the FLOP
  ratio is the baseline's FLOPs over the row's (the speed-up a machine bound by arithmetic
  alone would see).

    python bench/cascade_vs_baseline.py --model mnist-fast --plan mnist-fast --base mnist-base --baseline mnist-base-dpmpp2m-5 [--n 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from lowdiff_sched import presets
from lowdiff_sched.cost import level_costs
from lowdiff_sched.datasets import load_emoji
from lowdiff_sched.judges import EmojiJudge, EmojiReference, class_labels_of, paired_difference, score
from lowdiff_sched.models import load_model, model_spec
from lowdiff_sched.protocol import label_dim_of
from lowdiff_sched.labels import class_label_args
from lowdiff_sched.sampling import sample_cascade
from lowdiff_sched.search import plan_cost

SEED0 = 1_000_000  # held-out seeds, as the plan search judges on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--model", default="mnist-fast", help="the cascade model: registered name or training run")
    parser.add_argument("--plan", required=True, help="the cascade plan: preset or plan JSON file")
    parser.add_argument("--base", default="mnist-base", help="the registered model the cascade's top level equals; its judge scores every row")
    parser.add_argument("--baseline", default="mnist-base-dpmpp2m-5", help="the single-resolution plan to beat (on --base)")
    parser.add_argument("--others", default="mnist-base-35", help="more rows, comma-separated: single-resolution plans run on --base, cascades on --model")
    parser.add_argument("--metrics", default=None, help="judge metrics to show, comma-separated [the judge's primary metric and accuracy]")
    parser.add_argument("--seed0", type=int, default=SEED0, help="first seed; a claim checked after a plan search uses seeds it did not (e.g. 2000000)")
    parser.add_argument("--reference", choices=("judge", "heldout"), default="judge",
                        help="emoji models: score against the judge's shipped train-split reference, or against one built from the held-out "
                             "split (a judge the plan search did not use; needs `lowdiff-sched data emoji`)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    fast, base = load_model(args.model, device), load_model(args.base, device)
    judge = model_spec(args.base).judge(base)
    if args.reference == "heldout":
        judge = heldout_judge(judge)
    metrics = args.metrics.split(",") if args.metrics else [judge.primary, "accuracy"]
    classes = label_dim_of(base)
    seeds = list(range(args.seed0, args.seed0 + args.n))
    labels = class_labels_of(seeds, classes)
    extra = class_label_args(labels.tolist(), classes, device) if classes else None
    plans = {name: presets.load_plan(name) for name in [args.plan, args.baseline, *(p for p in args.others.split(",") if p)]}
    rows = [(args.plan, fast), (args.baseline, base)] + [(p, fast if len(plans[p].stages) > 1 else base) for p in list(plans)[2:]]

    def run(name: str, model) -> torch.Tensor:  # type: ignore[no-untyped-def]
        with torch.no_grad():
            return sample_cascade(model, plans[name], seeds=seeds, batch_size=args.batch, extra_args=extra, disable=True, device=device)

    samples: dict[str, torch.Tensor] = {}
    times: dict[str, list[float]] = {name: [] for name, _ in rows[:2]}
    for r in range(args.rounds):  # the timed pair alternates its order every round
        for name, model in rows[:2][:: 1 if r % 2 == 0 else -1]:
            sync()
            start = time.perf_counter()
            samples[name] = run(name, model).cpu()
            sync()
            times[name].append(time.perf_counter() - start)
    for name, model in rows[2:]:
        start = time.perf_counter()
        samples[name] = run(name, model).cpu()
        times[name] = [time.perf_counter() - start]

    seconds = {name: statistics.median(t) for name, t in times.items()}
    level_flops = {id(m): level_costs(m, "flops") for m in (fast, base)}
    flops = {name: plan_cost(plans[name], level_flops[id(model)], len(model.levels)) for name, model in rows}
    reference = "every held-out image" if args.reference == "heldout" else "the judge's own"
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {device}, n = {args.n} seeds (from {args.seed0}), batch {args.batch}, {args.rounds} rounds, "
          f"reference: {reference}")
    print("| model | plan | NFE per stage | " + " | ".join(f"{m} [95%] | {m} - baseline [95%]" for m in metrics)
          + f" | s per {args.n} | speed-up vs `{args.baseline}` | MFLOP per sample | FLOP ratio |")
    print("|---|---|---|" + "---|---|" * len(metrics) + "---|---|---|---|")
    for name, model in rows:
        s = score(judge, samples[name], labels)
        d = paired_difference(judge, samples[name], samples[args.baseline], labels)
        timed = f"{seconds[name]:.2f}" + ("" if len(times[name]) > 1 else " (1 round)")
        cells = [f"{_fmt(m, s[m].value)} [{_fmt(m, s[m].lo)}, {_fmt(m, s[m].hi)}] | "
                 f"{_fmt(m, d[m].value, True)} [{_fmt(m, d[m].lo, True)}, {_fmt(m, d[m].hi, True)}]" for m in metrics]
        print(f"| {args.model if model is fast else args.base} | `{plans[name].name or name}` | {' + '.join(map(str, plans[name].nfe()))} "
              f"| {' | '.join(cells)} | {timed} | {seconds[args.baseline] / seconds[name]:.2f}x | {flops[name] / 1e6:,.0f} "
              f"| {flops[args.baseline] / flops[name]:.2f}x |")
    print("rounds (s): " + "; ".join(f"{k}: {', '.join(f'{t:.2f}' for t in v)}" for k, v in times.items()))


def heldout_judge(judge: EmojiJudge) -> EmojiJudge:
    """The same classifier and measures against every held-out emoji image (no train image, and
    not the images nor the patch draws the plan search was judged against)."""
    if not isinstance(judge, EmojiJudge):
        raise SystemExit(f"--reference heldout is for the emoji models; this model's judge is {type(judge).__name__}")
    images, _ = load_emoji("heldout")
    return EmojiJudge(judge.classifier, EmojiReference.of(judge.classifier, images, kid_count=len(images), seed=1))


def _fmt(metric: str, value: float, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{value:{sign}.1%}" if metric == "accuracy" else f"{value:{sign}.3g}" if metric == "kid" else f"{value:{sign}.2f}"


if __name__ == "__main__":
    main()
