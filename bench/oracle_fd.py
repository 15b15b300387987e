"""Frechet distance against effective NFE on the exact Gaussian oracle, all rows in one run.

The oracle's denoisers are exact, so every bit of distance above the Monte-Carlo floor (N true
samples against the true law) is the plan's own error: discretisation and hand-over. Levels
8/16/32 as CIFAR-10, one channel (D = 1024), N samples per row.

    python bench/oracle_fd.py [--n 4000] [--markdown]
"""

from __future__ import annotations

import argparse
import time

import torch

from lowdiff_sched import presets
from lowdiff_sched.adapters.analytic import GaussianFieldCascade
from lowdiff_sched.metrics import frechet_distance
from lowdiff_sched.plan import CascadePlan, StagePlan, pixel_ratios
from lowdiff_sched.sampling import sample_cascade
from lowdiff_sched.schedules import karras_sigmas, shift_sigmas, truncate_at_sigma, truncate_steps
from lowdiff_sched.transitions import Continue, Renoise


def edm(steps: int) -> CascadePlan:
    return CascadePlan([StagePlan(-1, karras_sigmas(steps), "heun")], name=f"edm-{2 * steps - 1}")


def lowdiff(n_levels: int, steps: int, top_steps: int, cut: float) -> CascadePlan:
    stages = [StagePlan(-n_levels, truncate_at_sigma(karras_sigmas(steps), cut), "heun")]
    stages += [StagePlan(lv, truncate_at_sigma(karras_sigmas(steps, 0.01, 50.0), cut), "heun") for lv in range(-n_levels + 1, -1)]
    stages.append(StagePlan(-1, karras_sigmas(top_steps, 0.01, 50.0), "heun"))
    return CascadePlan(stages, name=f"lowdiff-{n_levels}stage-{steps}to{cut:g}-top{top_steps}")


def continue_plan(steps: int, switch_sigma: float) -> CascadePlan:
    """One EDM trajectory: steps above switch_sigma at 16x16 (schedule shifted by 1/2), the rest at 32x32."""
    top = karras_sigmas(steps)
    k = int((top > switch_sigma).sum())
    return CascadePlan(
        [StagePlan(-2, shift_sigmas(truncate_steps(top, k), 0.5), "heun"), StagePlan(-1, top[k:], "heun", transition=Continue())],
        name=f"continue-{steps}-switch{switch_sigma:g}",
    )


def renoise_plan(low_steps: int, start: float, top_steps: int) -> CascadePlan:
    """C2F-style: a full 16x16 run, its clean estimate upsampled and re-noised to `start`."""
    return CascadePlan(
        [StagePlan(-2, karras_sigmas(low_steps), "heun"), StagePlan(-1, karras_sigmas(top_steps, 0.002, start), "heun", transition=Renoise())],
        name=f"renoise-{low_steps}-from{start:g}-top{top_steps}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000)
    args = parser.parse_args()
    torch.set_num_threads(2)

    oracle = GaussianFieldCascade(levels=(8, 16, 32), channels=1)
    true = (oracle.mean_vector(-1), oracle.covariance(-1))
    floor = frechet_distance(oracle.sample_data(args.n, -1, torch.Generator().manual_seed(12345)).flatten(1), true)
    rows = [
        edm(18), edm(10), edm(6),
        presets.get("cifar10-3stage"), presets.get("cifar10-2stage"),
        lowdiff(3, 18, 18, 2.0), lowdiff(2, 18, 18, 2.0), lowdiff(2, 18, 12, 2.0),
        continue_plan(18, 5.0), continue_plan(18, 1.0),
        renoise_plan(18, 2.0, 6),
    ]
    print(f"oracle levels 8/16/32, 1 channel, N = {args.n} per row; Monte-Carlo floor (N true samples): FD {floor:.3f}")
    print("| plan | NFE per stage | effective NFE | FD | FD - floor | seconds |")
    print("|---|---|---|---|---|---|")
    for plan in rows:
        start = time.perf_counter()
        x = sample_cascade(oracle, plan, seeds=range(args.n), batch_size=1000, disable=True)
        seconds = time.perf_counter() - start
        value = frechet_distance(x.flatten(1).double(), true)
        eff = plan.effective_nfe(pixel_ratios(plan, oracle.levels))
        print(f"| `{plan.name}` | {' + '.join(map(str, plan.nfe()))} | {eff} | {value:.3f} | {value - floor:+.3f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
