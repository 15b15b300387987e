"""Cascades on the exact Gaussian oracle reproduce the true distribution.

With exact denoisers the only errors left are the sampler's discretisation and Monte-Carlo
noise, so a cascade plan with enough steps must reach the Frechet distance that N true
samples have to the true law, and a wrong hand-over must not.
"""

from __future__ import annotations

import pytest
import torch

from lowdiff_sched.adapters.analytic import GaussianFieldCascade
from lowdiff_sched.metrics import frechet_distance
from lowdiff_sched.plan import CascadePlan, StagePlan
from lowdiff_sched.sampling import sample_cascade
from lowdiff_sched.schedules import karras_sigmas, shift_sigmas, truncate_at_sigma, truncate_steps
from lowdiff_sched.transitions import Condition, Continue

N = 2000
ORACLE = GaussianFieldCascade(levels=(4, 8, 16), channels=1)
TRUE = (ORACLE.mean_vector(-1), ORACLE.covariance(-1))
# N true samples: the distance a perfect sampler reaches, about 0.59 here
FLOOR = frechet_distance(ORACLE.sample_data(N, -1, torch.Generator().manual_seed(1)).flatten(1), TRUE)


def fd(cascade, plan: CascadePlan) -> float:
    x = sample_cascade(cascade, plan, seeds=range(N), batch_size=N, disable=True)
    return frechet_distance(x.flatten(1).double(), TRUE)


def lowdiff_plan(levels: int, steps: int = 40, cut: float = 2.0) -> CascadePlan:
    """Each lower stage truncated at sigma = cut, the top stage run to 0 (LowDiff Alg. 2)."""
    stages = [StagePlan(-levels, truncate_at_sigma(karras_sigmas(steps), cut), "heun")]
    stages += [
        StagePlan(lv, truncate_at_sigma(karras_sigmas(steps, 0.01, 50.0), cut), "heun", transition=Condition())
        for lv in range(-levels + 1, -1)
    ]
    stages.append(StagePlan(-1, karras_sigmas(steps), "heun", transition=Condition()))
    return CascadePlan(stages)


@pytest.mark.parametrize("levels", [2, 3])
def test_lowdiff_cascade_reproduces_the_distribution(levels):
    assert fd(ORACLE, lowdiff_plan(levels)) < 1.2 * FLOOR + 0.02


def test_continue_cascade_reproduces_the_distribution():
    """The exact hand-over continues one trajectory: the low stage runs the top schedule
    shifted by 1/f, and switches at a high enough sigma that sub-block detail is noise."""
    top = karras_sigmas(40)
    switch = int((top > 20).sum())
    plan = CascadePlan(
        [
            StagePlan(-2, shift_sigmas(truncate_steps(top, switch), 0.5), "heun"),
            StagePlan(-1, top[switch:], "heun", transition=Continue()),
        ]
    )
    assert fd(ORACLE, plan) < 1.2 * FLOOR + 0.02


class WrongConditionNoise:
    """The oracle told the condition is clean when it is not: a broken hand-over."""

    levels = ORACLE.levels

    def denoise(self, x, sigma, *, level, cond=None, cond_sigma=None, **extra):
        return ORACLE.denoise(x, sigma, level=level, cond=cond, cond_sigma=None if cond is None else 0.0)


def test_a_wrong_hand_over_is_detected():
    assert fd(WrongConditionNoise(), lowdiff_plan(3)) > 10 * FLOOR


def test_too_few_steps_are_detected():
    assert fd(ORACLE, lowdiff_plan(2, steps=4)) > 3 * FLOOR


# ---- MSF and C2F on the oracle -------------------------------------------------------------------


def test_msf_two_scale_cascade_reproduces_the_distribution():
    """MSF (Alg. 3) with exact per-scale models: 8x8 base, 16x16 residual given its prior."""
    from lowdiff_sched.adapters.analytic import exact_msf
    from lowdiff_sched.transitions import Residual

    msf = exact_msf(GaussianFieldCascade(levels=(8, 16), channels=1))
    plan = CascadePlan([StagePlan(0, karras_sigmas(30), "heun"), StagePlan(1, karras_sigmas(30), "heun", transition=Residual())])
    assert fd(msf, plan) < 1.2 * FLOOR + 0.02
    few = CascadePlan([StagePlan(0, karras_sigmas(2), "euler"), StagePlan(1, karras_sigmas(2), "euler", transition=Residual())])
    assert fd(msf, few) > 3 * FLOOR  # and the test can fail


def test_c2f_renoise_cascade_reproduces_the_distribution_from_a_high_enough_sigma():
    """C2F: the clean 8x8 estimate upsampled and re-noised; from sigma = 40 the 16x16 stage
    regenerates what the upsampling lost. From sigma = 0.5 it cannot."""
    from lowdiff_sched.transitions import Renoise

    def c2f(start: float) -> CascadePlan:
        return CascadePlan([StagePlan(-2, karras_sigmas(20), "heun"), StagePlan(-1, karras_sigmas(40, 0.002, start), "heun", transition=Renoise())])

    assert fd(ORACLE, c2f(40.0)) < 1.2 * FLOOR + 0.02
    assert fd(ORACLE, c2f(0.5)) > 2 * FLOOR
