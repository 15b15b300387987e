"""C2F-DM on the exact Gaussian oracle: the PCA-rank switch point, then TRD, with FD before
and after and TRD's search time, all in one run.

The cascade is C2F's: a full low-resolution run at 16x16, its clean estimate upsampled and
re-noised to the switch sigma, then a short 32x32 run (Renoise). The switch sigma comes from
`select_switch_sigma` (its spread over 4 seed sets is printed); TRD tunes the plan against
the same cascade with 4x the steps, on 16 calibration seeds; FD is measured on N fresh seeds
against the true law, next to EDM's single-resolution sampler at similar cost.

    python bench/c2f_trd.py [--n 4000] [--low-steps 10] [--top-steps 6]
"""

from __future__ import annotations

import argparse
import time

import torch

from lowdiff_sched.adapters.analytic import GaussianFieldCascade
from lowdiff_sched.trd import redistribute_timesteps, select_switch_sigma
from lowdiff_sched.metrics import frechet_distance
from lowdiff_sched.plan import CascadePlan, StagePlan, pixel_ratios
from lowdiff_sched.sampling import sample_cascade
from lowdiff_sched.schedules import karras_sigmas
from lowdiff_sched.transitions import Renoise


def c2f(low_steps: int, start: float, top_steps: int, name: str) -> CascadePlan:
    return CascadePlan(
        [StagePlan(-2, karras_sigmas(low_steps), "heun"),
         StagePlan(-1, karras_sigmas(top_steps, 0.002, start), "heun", transition=Renoise())],
        name=name,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--low-steps", type=int, default=10)
    parser.add_argument("--top-steps", type=int, default=6)
    args = parser.parse_args()

    oracle = GaussianFieldCascade(levels=(16, 32), channels=1)
    true = (oracle.mean_vector(-1), oracle.covariance(-1))
    floor = frechet_distance(oracle.sample_data(args.n, -1, torch.Generator().manual_seed(12345)).flatten(1), true)

    low = CascadePlan([StagePlan(-2, karras_sigmas(args.low_steps), "heun"), StagePlan(-1, karras_sigmas(2), "heun", transition=Renoise())])
    started = time.perf_counter()
    points = [select_switch_sigma(oracle, low, n=64, seeds=range(b, b + 64)) for b in (0, 1000, 2000, 3000)]
    switch_seconds = time.perf_counter() - started
    sigma = points[0].sigma
    print(f"switch sigma over 4 seed sets of 64: {sorted({round(p.sigma, 4) for p in points})} "
          f"(step {[p.step for p in points]}; {switch_seconds:.1f} s); ranks of set 0: {[round(r, 1) for r in points[0].ranks]}")

    plan = c2f(args.low_steps, sigma, args.top_steps, "c2f")
    reference = c2f(4 * args.low_steps, sigma, 4 * args.top_steps, "c2f-reference")
    result = redistribute_timesteps(oracle, plan, reference, n_calib=16, n_candidates=5, max_iter=10)
    print(result.summary())

    def fd(p: CascadePlan) -> float:
        x = sample_cascade(oracle, p, seeds=range(10_000, 10_000 + args.n), batch_size=1000, disable=True)
        return frechet_distance(x.flatten(1).double(), true)

    edm_steps = (sum(plan.nfe()) // 2 + 1) // 2 + 1
    edm = CascadePlan([StagePlan(-1, karras_sigmas(edm_steps), "heun")], name=f"edm-{2 * edm_steps - 1}")
    print(f"\noracle levels 16/32, 1 channel, N = {args.n}; Monte-Carlo floor FD {floor:.3f}")
    print("| plan | NFE per stage | effective NFE | L2 to reference (16 seeds) | FD | FD - floor |")
    print("|---|---|---|---|---|---|")
    for p, l2 in ((plan, result.l2_before), (result.plan, result.l2_after), (reference, 0.0), (edm, None)):
        value = fd(p)
        eff = p.effective_nfe(pixel_ratios(p, oracle.levels))
        l2_text = "-" if l2 is None else f"{l2:.3g}"
        print(f"| `{p.name}` | {' + '.join(map(str, p.nfe()))} | {eff} | {l2_text} | {value:.3f} | {value - floor:+.3f} |")
    print(f"\nTRD search: {result.seconds:.1f} s, {result.evaluations} plans sampled, {result.sweeps} sweeps")
    print("tuned sigmas:", [[round(float(s), 4) for s in st.sigmas] for st in result.plan.stages])


if __name__ == "__main__":
    main()
