"""The three methods side by side on the exact Gaussian oracle, at about equal effective NFE.

Levels 16/32, one channel (D = 1024). LowDiff and C2F-DM run on the oracle's exact
denoisers (`GaussianFieldCascade`), MSF on exact per-scale residual models for the same
field (`exact_msf`), so every bit of Frechet distance above the Monte-Carlo floor is the
method's own error: discretisation and hand-over. Each plan spends about 19 effective NFE
(pixel-ratio weighting, 1/4 for 16x16); the single-resolution EDM sampler at 19 NFE and a
long run of each plan give the references. C2F's switch sigma comes from the PCA-rank
criterion; its TRD-tuned plan is listed separately (tuned on 16 other seeds).

    python bench/methods_oracle.py [--n 4000]
"""

from __future__ import annotations

import argparse
import time

import torch

from lowdiff_sched.adapters.analytic import GaussianFieldCascade, exact_msf
from lowdiff_sched.trd import redistribute_timesteps, select_switch_sigma
from lowdiff_sched.metrics import frechet_distance
from lowdiff_sched.plan import CascadePlan, StagePlan, pixel_ratios
from lowdiff_sched.sampling import sample_cascade
from lowdiff_sched.schedules import karras_sigmas, truncate_at_sigma
from lowdiff_sched.transitions import Condition, Renoise, Residual


def edm(steps: int) -> CascadePlan:
    return CascadePlan([StagePlan(-1, karras_sigmas(steps), "heun")], name=f"edm-{2 * steps - 1}")


def lowdiff(low_steps: int, cut: float, top_steps: int) -> CascadePlan:
    return CascadePlan(
        [StagePlan(-2, truncate_at_sigma(karras_sigmas(low_steps), cut), "heun"),
         StagePlan(-1, karras_sigmas(top_steps, 0.01, 50.0), "heun", transition=Condition())],
        name=f"lowdiff-{low_steps}to{cut:g}-top{top_steps}",
    )


def c2f(low_steps: int, start: float, top_steps: int) -> CascadePlan:
    return CascadePlan(
        [StagePlan(-2, karras_sigmas(low_steps), "heun"),
         StagePlan(-1, karras_sigmas(top_steps, 0.002, start), "heun", transition=Renoise())],
        name=f"c2f-{low_steps}-from{start:.3g}-top{top_steps}",
    )


def msf(base_steps: int, residual_steps: int) -> CascadePlan:
    return CascadePlan(
        [StagePlan(0, karras_sigmas(base_steps), "heun"),
         StagePlan(1, karras_sigmas(residual_steps), "heun", transition=Residual())],
        name=f"msf-{base_steps}-residual{residual_steps}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000)
    args = parser.parse_args()

    field = GaussianFieldCascade(levels=(16, 32), channels=1)
    residual_model = exact_msf(field)
    true = (field.mean_vector(-1), field.covariance(-1))
    floor = frechet_distance(field.sample_data(args.n, -1, torch.Generator().manual_seed(12345)).flatten(1), true)
    switch = select_switch_sigma(field, c2f(18, 2.0, 2), n=64).sigma
    tuned = redistribute_timesteps(field, c2f(10, switch, 7), c2f(40, switch, 28), n_calib=16, seeds=range(50_000, 50_016))

    rows = [
        ("EDM (single resolution)", field, edm(10)),
        ("LowDiff (Condition)", field, lowdiff(18, 2.0, 7)),
        ("C2F-DM (Renoise, PCA switch)", field, c2f(10, switch, 7)),
        ("C2F-DM + TRD", field, tuned.plan),
        ("MSF (Residual)", residual_model, msf(10, 7)),
        ("LowDiff, long", field, lowdiff(72, 2.0, 28)),
        ("C2F-DM, long", field, c2f(40, switch, 28)),
        ("MSF, long", residual_model, msf(40, 28)),
    ]
    print(f"oracle levels 16/32, 1 channel (D = 1024), N = {args.n} per row; Monte-Carlo floor FD {floor:.3f}; "
          f"C2F switch sigma {switch:.3g}; TRD: {tuned.summary()}")
    print("| method | plan | NFE per stage | effective NFE | FD | FD - floor | seconds |")
    print("|---|---|---|---|---|---|---|")
    for label, cascade, plan in rows:
        start = time.perf_counter()
        x = sample_cascade(cascade, plan, seeds=range(args.n), batch_size=500, disable=True)
        seconds = time.perf_counter() - start
        value = frechet_distance(x.flatten(1).double(), true)
        eff = plan.effective_nfe(pixel_ratios(plan, field.levels))
        print(f"| {label} | `{plan.name}` | {' + '.join(map(str, plan.nfe()))} | {eff} | {value:.3f} | {value - floor:+.3f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
