"""Does a cascade beat the strongest single-resolution plan on the digits? One run.

Rows: a cascade model (by default the LevelStack run of configs/mnist-fast.json: a 16x16
network distilled from mnist-base, with mnist-base itself on top) under a cascade plan,
against mnist-base under the strongest single-resolution plan the plan search found (any
sampler, any step count) and more single-resolution rows, all on the same held-out seeds
and classes. Since that LevelStack's top level *is* mnist-base, the single-resolution rows
are also "its own top level run alone". Plans are presets or plan JSON files (e.g. from
`lowdiff-sched search ... --out DIR`: DIR/plans/*.json).

- Quality: FD-MNIST and class accuracy with 95% bootstrap intervals, and the paired difference
  to the baseline (the same seeds resampled for both rows, so what the rows share cancels).
- Time: each plan samples all n seeds once per round; rounds alternate the order of the plans;
  the median over rounds is reported, and speed-ups are ratios of medians within this run.

    python bench/mnist_fast.py --model runs/mnist-fast --plan cascade.json --baseline mnist-base-dpmpp2m-5 [--n 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from lowdiff_sched import presets
from lowdiff_sched.judges import DigitJudge, class_labels_of, paired_difference, score
from lowdiff_sched.models import load_model
from lowdiff_sched.sampling import class_label_args, sample_cascade

SEED0 = 1_000_000  # held-out seeds, as the plan search judges on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--model", default="runs/mnist-fast", help="the cascade model: registered name or training run")
    parser.add_argument("--plan", required=True, help="the cascade plan: preset or plan JSON file")
    parser.add_argument("--baseline", default="mnist-base-dpmpp2m-5", help="the single-resolution plan to beat (on mnist-base)")
    parser.add_argument("--others", default="mnist-base-35", help="more rows, comma-separated: single-resolution plans run on mnist-base, cascades on --model")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    seeds = list(range(SEED0, SEED0 + args.n))
    labels = class_labels_of(seeds, 10)
    extra = class_label_args(labels.tolist(), 10, device)
    fast, base = load_model(args.model, device), load_model("mnist-base", device)
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

    judge = DigitJudge()
    seconds = {name: statistics.median(t) for name, t in times.items()}
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {device}, n = {args.n} held-out seeds (from {SEED0}), batch {args.batch}, {args.rounds} rounds")
    print(f"| model | plan | NFE per stage | FD-MNIST [95%] | accuracy [95%] | FD - baseline [95%] | accuracy - baseline [95%] "
          f"| s per {args.n} | speed-up vs `{args.baseline}` |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, model in rows:
        s = score(judge, samples[name], labels)
        d = paired_difference(judge, samples[name], samples[args.baseline], labels)
        timed = f"{seconds[name]:.2f}" + ("" if len(times[name]) > 1 else " (1 round)")
        print(f"| {args.model if model is fast else 'mnist-base'} | `{plans[name].name or name}` | {' + '.join(map(str, plans[name].nfe()))} "
              f"| {s['fd'].value:.2f} [{s['fd'].lo:.2f}, {s['fd'].hi:.2f}] "
              f"| {s['accuracy'].value:.1%} [{s['accuracy'].lo:.1%}, {s['accuracy'].hi:.1%}] "
              f"| {d['fd'].value:+.2f} [{d['fd'].lo:+.2f}, {d['fd'].hi:+.2f}] "
              f"| {d['accuracy'].value:+.1%} [{d['accuracy'].lo:+.1%}, {d['accuracy'].hi:+.1%}] "
              f"| {timed} | {seconds[args.baseline] / seconds[name]:.2f}x |")
    print("rounds (s): " + "; ".join(f"{k}: {', '.join(f'{t:.2f}' for t in v)}" for k, v in times.items()))


if __name__ == "__main__":
    main()
