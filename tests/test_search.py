"""Plan search: DPM++ 2M with a multistep history, Continue's coupled noise, the search space,
the Pareto front and targets, the search itself on the exact Gaussian oracle (cascades that
hand over exactly beat single-resolution plans per cost), resume, outputs, and the CLI."""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import types

import k_diffusion.sampling as kds
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

import lowdiff_sched.search as search_module
from lowdiff_sched.adapters.analytic import GaussianFieldCascade
from lowdiff_sched.cli.app import app
from lowdiff_sched.judges import OracleJudge, Score
from lowdiff_sched.plan import CascadePlan, StagePlan
from lowdiff_sched.plan_space import (
    CONDITIONED_RANGE,
    SearchSpace,
    candidates,
    cascades,
    single_resolution,
    split_schedule,
)
from lowdiff_sched.protocol import Level, hand_overs_of
from lowdiff_sched.resample import upsample
from lowdiff_sched.samplers import count_nfe, history_sampler, sample_dpmpp_2m
from lowdiff_sched.sampling import sample_cascade
from lowdiff_sched.schedules import karras_sigmas
from lowdiff_sched.search import (
    PlanResult,
    SearchResult,
    cheapest,
    parse_target,
    pareto_front,
    plan_cost,
    check_search_folder,
    model_fingerprint,
    search_plans,
)
from lowdiff_sched.transitions import Condition, Continue, Renoise

HYP = settings(max_examples=15, deadline=None, derandomize=True, database=None)


def nonlinear(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A fixed deterministic nonlinear x0 estimate, in x's dtype."""
    s = sigma.to(x.dtype).view(-1, 1, 1, 1)
    return 0.7 * torch.tanh(x / (1 + s)) + 0.1 * x.roll(1, -1) / (1 + s * s)


class TwinLevels:
    """Two levels of one size: a Continue hand-over between them (factor 1) is the identity,
    so a run split between them is one unbroken run."""

    levels = (Level((8, 8), 1), Level((8, 8), 1))

    def denoise(self, x, sigma, *, level, cond=None, cond_sigma=None, **extra):
        return nonlinear(x, sigma)


def record(into: list):
    def callback(info):
        into.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in info.items()})

    return callback


def same_infos(a: list, b: list) -> bool:
    if len(a) != len(b) or any(x.keys() != y.keys() for x, y in zip(a, b)):
        return False
    return all(
        torch.equal(x[k], y[k]) if isinstance(x[k], torch.Tensor) else x[k] == y[k] for x, y in zip(a, b) for k in x
    )


# ---- sample_dpmpp_2m ---------------------------------------------------------------------------


@HYP
@given(
    st.integers(1, 12),
    st.data(),
    st.sampled_from([0.002, 0.02, 0.5]),
    st.sampled_from([1.0, 80.0]),
    st.floats(2.0, 10.0),
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(1, 3),
    st.integers(0, 2**31 - 1),
)
def test_dpmpp_2m_without_history_is_k_diffusion_bit_for_bit(n, data, sigma_min, sigma_max, rho, dtype, batch, seed):
    """On Karras schedules (run to 0 or truncated above it), float32 and float64, the sampler
    and every callback dict are k-diffusion's exactly."""
    steps = data.draw(st.integers(1, n), label="steps kept")
    sigmas = karras_sigmas(n, sigma_min, sigma_max, rho)[: steps + 1].to(dtype)
    x = torch.randn(batch, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype) * sigmas[0]
    ours, theirs = [], []
    out = sample_dpmpp_2m(nonlinear, x, sigmas, callback=record(ours), disable=True)
    ref = kds.sample_dpmpp_2m(nonlinear, x, sigmas, callback=record(theirs), disable=True)
    assert out.dtype == dtype and torch.equal(out, ref)
    assert len(ours) == steps and same_infos(ours, theirs)
    assert torch.equal(sample_dpmpp_2m(nonlinear, x, sigmas, disable=True, history=None), ref)


@HYP
@given(st.integers(2, 10), st.data(), st.sampled_from([torch.float32, torch.float64]), st.booleans(), st.integers(0, 2**31 - 1))
def test_dpmpp_2m_history_resumes_an_unbroken_run(n, data, dtype, as_float, seed):
    """Restarting at step k from k-diffusion's state with history = (sigma_{k-1}, D_{k-1})
    finishes exactly as k-diffusion's unbroken run does."""
    k = data.draw(st.integers(1, n - 1), label="k")
    sigmas = karras_sigmas(n).to(dtype)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype) * sigmas[0]
    infos: list = []
    ref = kds.sample_dpmpp_2m(nonlinear, x, sigmas, callback=record(infos), disable=True)
    history = (float(sigmas[k - 1]) if as_float else sigmas[k - 1], infos[k - 1]["denoised"])
    out = sample_dpmpp_2m(nonlinear, infos[k]["x"], sigmas[k:], disable=True, history=history)
    assert torch.equal(out, ref)
    if k < n - 1:  # a restart without history is first order there, so it differs
        assert not torch.equal(sample_dpmpp_2m(nonlinear, infos[k]["x"], sigmas[k:], disable=True), ref)


def test_history_sampler_exists_for_dpmpp_2m_only():
    assert history_sampler("dpmpp_2m") is sample_dpmpp_2m
    assert history_sampler(kds.sample_dpmpp_2m) is sample_dpmpp_2m
    assert history_sampler("heun") is None and history_sampler("dpmpp_3m_sde") is None
    assert history_sampler(nonlinear) is None  # a custom callable


# ---- Continue with history through sample_cascade ----------------------------------------------


def split_plans(s: torch.Tensor, k: int, history: bool = True) -> tuple[CascadePlan, CascadePlan]:
    split = CascadePlan(
        [StagePlan(0, s[: k + 1], "dpmpp_2m"), StagePlan(1, s[k:], "dpmpp_2m", transition=Continue(history=history))]
    )
    return split, CascadePlan([StagePlan(1, s, "dpmpp_2m")])


@HYP
@given(
    st.integers(3, 10),
    st.data(),
    st.sampled_from([torch.float32, torch.float64]),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_continue_with_history_reproduces_the_unsplit_run(n, data, sigma_dtype, state_dtype):
    """Splitting DPM++ 2M between two levels of one size reproduces the unsplit run bit for
    bit; without history the top stage is k-diffusion restarted (first order) and differs."""
    k = data.draw(st.integers(1, n - 1), label="k")
    s = karras_sigmas(n).to(sigma_dtype)
    cascade, seeds = TwinLevels(), [0, 5, 9]
    split, whole = split_plans(s, k)
    ref = sample_cascade(cascade, whole, seeds=seeds, disable=True, dtype=state_dtype)
    assert torch.equal(sample_cascade(cascade, split, seeds=seeds, disable=True, dtype=state_dtype), ref)
    restart, stages = sample_cascade(
        cascade, split_plans(s, k, history=False)[0], seeds=seeds, disable=True, dtype=state_dtype, return_stages=True
    )
    low = stages[0].x
    assert torch.equal(restart, kds.sample_dpmpp_2m(nonlinear, low, s[k:].to(low.device), disable=True).to(state_dtype))
    assert torch.equal(restart, ref) == (k == n - 1)  # one last step to 0 is first order anyway


class TripletLevels(TwinLevels):
    levels = (Level((8, 8), 1),) * 3
    conditions_on_lower_level = False


def test_three_stage_continue_plans_of_the_search_are_one_unbroken_run():
    """Every three-stage Continue plan the search space builds (two hand-overs, DPM++ 2M's
    history carried through both) samples what the unsplit schedule samples, bit for bit,
    when the levels are one size."""
    space = SearchSpace(samplers=("dpmpp_2m",), cascade_samplers=("dpmpp_2m",), nfe=(2, 3), transitions=("continue",),
                        cascade_steps=6, stages=3)
    cascade, seeds = TripletLevels(), [0, 5, 9]
    three = [c for c in candidates(space, cascade) if len(c.plan.stages) == 3]
    assert len(three) == sum(math.comb(n - 1, 2) for n in range(3, 7))  # every k1 < k2 of 3-6 steps, levels 0 and 1 into 2
    for c in three:
        s = torch.cat([c.plan.stages[0].sigmas, *(stage.sigmas[1:] for stage in c.plan.stages[1:])])
        whole = CascadePlan([StagePlan(2, s, "dpmpp_2m")])
        assert torch.equal(sample_cascade(cascade, c.plan, seeds=seeds, disable=True),
                           sample_cascade(cascade, whole, seeds=seeds, disable=True)), c.name


@settings(max_examples=60, deadline=None)
@given(st.integers(3, 20), st.data(), st.sampled_from([Continue, Renoise]))
def test_split_schedule_cuts_one_schedule_into_scaled_pieces(n, data, hand_over):
    """Each piece, times its level's factor, is the schedule between its cuts; neighbours
    share the sigma of their cut; only the later stages carry the hand-over."""
    depth = data.draw(st.integers(1, min(3, n - 1)))
    splits = sorted(data.draw(st.sets(st.integers(1, n - 1), min_size=depth, max_size=depth)))
    s = karras_sigmas(n, 0.002, 80.0).double()
    levels, factors = list(range(-depth - 1, 0)), [2**d for d in range(depth, -1, -1)]
    stages = split_schedule(s, splits, levels, factors, "dpmpp_2m", hand_over=hand_over)
    cuts = [0, *splits, n]
    for stage, level, f, a, b in zip(stages, levels, factors, cuts, cuts[1:]):
        assert stage.level == level and stage.sampler == "dpmpp_2m"
        assert torch.equal(stage.sigmas * f, s[a:b + 1])
    assert stages[0].transition is None and all(isinstance(x.transition, hand_over) for x in stages[1:])


@pytest.mark.parametrize("splits, levels, factors, message", [
    ([2, 2], [-3, -2, -1], [4, 2, 1], "must increase strictly"),
    ([3, 1], [-3, -2, -1], [4, 2, 1], "must increase strictly"),
    ([0], [-2, -1], [2, 1], "must increase strictly"),
    ([5], [-2, -1], [2, 1], "must increase strictly"),
    ([2], [-3, -2, -1], [4, 2, 1], "1 split(s) need 2 levels"),
])
def test_split_schedule_rejects_bad_cuts(splits, levels, factors, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        split_schedule(karras_sigmas(5, 0.002, 80.0).double(), splits, levels, factors, "euler")


def float64_karras(n: int) -> torch.Tensor:
    """Karras' schedule computed in float64 (k-diffusion's is float32, exact in float64)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = 0.002 ** (1 / 7), 80.0 ** (1 / 7)
    return torch.cat([(hi + ramp * (lo - hi)) ** 7, torch.zeros(1, dtype=torch.float64)])


@pytest.mark.parametrize("k", range(1, 8))
def test_continue_with_a_float64_schedule(k):
    """A schedule with values float32 cannot hold: bit for bit with a float64 state; with a
    float32 state equal to float32 rounding (see the comment)."""
    s, cascade, seeds = float64_karras(9), TwinLevels(), [0, 5, 9]
    split, whole = split_plans(s, k)
    run = lambda plan, dtype: sample_cascade(cascade, plan, seeds=seeds, disable=True, dtype=dtype)  # noqa: E731
    assert torch.equal(run(split, torch.float64), run(whole, torch.float64))
    # With a float32 state the model sees sigma_i * ones(float32), i.e. float32(s_i), and the
    # hand-over takes the history's sigma from that call (sampling._run_stages, denoised_sigma),
    # while the unsplit run's step uses s_{k-1} in float64: r = h_last / h differs in the last
    # float32 bits. Measured: 8.9e-8 (one float32 ulp) at k = 6, exact otherwise.
    torch.testing.assert_close(run(split, torch.float32), run(whole, torch.float32), rtol=0, atol=5e-7)


# ---- stage noises: Continue couples them, other plans draw per stage ---------------------------

FIELD = GaussianFieldCascade(levels=(8, 16), channels=1)


def first_states(cascade, plan, seeds):
    firsts: dict[int, torch.Tensor] = {}

    def callback(info):
        if info["i"] == 0:
            firsts[info["stage"]] = info["x"].clone()

    out, stages = sample_cascade(cascade, plan, seeds=seeds, disable=True, callback=callback, return_stages=True)
    return firsts, stages


def own_draws(seed: int, *shapes) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for shape in shapes]


def test_continue_low_stage_starts_from_the_pooled_top_noise():
    """With seeds, a Continue plan's low stage starts at factor * avgpool(eps_top) * sigma_0,
    eps_top being the draw a one-stage top plan starts from; its top stage starts from a state
    that mean-pools back to the low stage's end exactly (up to float32 rounding)."""
    s, k, seeds = karras_sigmas(6).double(), 2, [3, 11]
    plan = CascadePlan([StagePlan(0, s[: k + 1] / 2, "dpmpp_2m"), StagePlan(1, s[k:], "dpmpp_2m", transition=Continue())])
    top_plan = CascadePlan([StagePlan(1, s, "dpmpp_2m")])
    top_first, _ = first_states(FIELD, top_plan, seeds)
    eps_top = torch.stack([own_draws(seed, (1, 16, 16))[0] for seed in seeds])
    assert torch.equal(top_first[0], eps_top * s[0].float())
    firsts, stages = first_states(FIELD, plan, seeds)
    assert torch.equal(firsts[0], 2 * F.avg_pool2d(eps_top, 2) * (s[0] / 2).float())
    torch.testing.assert_close(F.avg_pool2d(firsts[1], 2), stages[0].x, rtol=0, atol=1e-5)
    assert firsts[1].shape == (2, 1, 16, 16) and not torch.equal(firsts[1], upsample(stages[0].x, (16, 16)))


@pytest.mark.parametrize("transition", [Renoise(), Condition()], ids=["renoise", "condition"])
def test_uncoupled_plans_draw_each_stage_in_order(transition):
    """Without Continue each stage's noise is its own draw from the seed's generator, stage 0's
    shape first, then stage 1's: a Renoise top stage starts at U(D_low) + eps_1 sigma, a
    Condition one at eps_1 sigma."""
    low, top = karras_sigmas(5)[:3], karras_sigmas(4, 0.01, 20.0)
    plan = CascadePlan([StagePlan(0, low, "heun"), StagePlan(1, top, "heun", transition=transition)])
    seeds = [0, 7]
    firsts, stages = first_states(FIELD, plan, seeds)
    eps0, eps1 = (torch.stack(t) for t in zip(*(own_draws(seed, (1, 8, 8), (1, 16, 16)) for seed in seeds)))
    assert torch.equal(firsts[0], eps0 * low[0])
    if isinstance(transition, Renoise):
        assert torch.equal(firsts[1], upsample(stages[0].denoised, (16, 16), "bilinear") + eps1 * top[0])
    else:
        assert torch.equal(firsts[1], eps1 * top[0])


# ---- the search space ---------------------------------------------------------------------------

SPACE_CASCADE = GaussianFieldCascade(levels=(4, 8, 16), channels=1)
NAME = re.compile(r"^(continue|renoise|condition)-(\w+)-(\d+)-k([\d+]+)-L([\d+]+)-rho([0-9.]+)-min([0-9.e-]+)(-top\d+)?$")
SAMPLER = {"dpmpp_3m": ("dpmpp_3m_sde", {"eta": 0.0})}
SINGLE_SAMPLERS = ["euler", "heun", "dpmpp_2m", "dpmpp_3m", "dpm_2_ancestral", "dpmpp_2m_sde", "lms"]
CASCADE_SAMPLERS = ["euler", "heun", "dpmpp_2m", "dpmpp_3m"]
TRANSITIONS = ["continue", "renoise", "condition"]


@st.composite
def spaces(draw):
    lo = draw(st.integers(1, 6))
    return SearchSpace(
        samplers=tuple(draw(st.lists(st.sampled_from(SINGLE_SAMPLERS), min_size=1, max_size=3, unique=True))),
        cascade_samplers=tuple(draw(st.lists(st.sampled_from(CASCADE_SAMPLERS), min_size=1, max_size=2, unique=True))),
        nfe=(lo, lo + draw(st.integers(0, 6))),
        rhos=tuple(draw(st.lists(st.sampled_from([3.0, 7.0, 9.5]), min_size=1, max_size=2, unique=True))),
        sigma_mins=tuple(draw(st.lists(st.sampled_from([0.002, 0.05]), min_size=1, max_size=2, unique=True))),
        transitions=tuple(draw(st.lists(st.sampled_from(TRANSITIONS), min_size=1, max_size=3, unique=True))),
        cascade_steps=draw(st.integers(2, 5)),
        stages=draw(st.sampled_from([2, 3])),
    )


@HYP
@given(spaces())
def test_every_candidate_is_valid_and_where_the_space_says(space):
    """Every candidate validates on the cascade; names are unique and none is lost to
    de-duplication; single-resolution plans are every (sampler, steps) whose NFE lies in
    space.nfe; each cascade's stages are the named Karras schedule split as documented
    (Continue/Renoise: low stage = top schedule / factor)."""
    cands = candidates(space, SPACE_CASCADE)
    for c in cands:
        c.plan.validate(SPACE_CASCADE)
    names = [c.name for c in cands]
    assert len(set(names)) == len(names)
    assert len(names) == len(list(single_resolution(space, 2))) + len(list(cascades(space, SPACE_CASCADE)))
    assert {c.family for c in cands} <= {"single", "stochastic", *space.transitions}

    lo, hi = space.nfe
    expected = set()
    for name, rho, sigma_min, steps in itertools.product(space.samplers, space.rhos, space.sigma_mins, range(1, hi + 1)):
        sampler, kwargs = SAMPLER.get(name, (name, {}))
        sigmas = karras_sigmas(steps, sigma_min, space.sigma_max, rho).double()
        if lo <= count_nfe(sampler, sigmas, kwargs) <= hi and not (sampler.endswith("m_sde") and steps == 1):
            expected.add(f"{name}-{steps}-rho{float(rho)!r}-min{float(sigma_min)!r}")
    singles = [c for c in cands if c.family in ("single", "stochastic")]
    assert {c.name for c in singles} == expected
    for c in singles:
        assert c.family == ("single" if c.coupled else "stochastic")
        (stage,) = c.plan.stages
        assert stage.level == 2 and lo <= stage.nfe() <= hi

    for c in cands:
        if c.family in ("single", "stochastic"):
            continue
        kind, name, steps, ks, sizes, rho, sigma_min, _ = NAME.match(c.name).groups()
        steps, splits, sizes = int(steps), [int(k) for k in ks.split("+")], [int(r) for r in sizes.split("+")]
        sampler, kwargs = SAMPLER.get(name, (name, {}))
        s = karras_sigmas(steps, float(sigma_min), space.sigma_max, float(rho)).double()
        *lows, top = c.plan.stages
        assert c.family == kind and name in space.cascade_samplers and top.level == 2
        assert len(lows) == len(splits) == len(sizes) <= space.stages - 1 and splits == sorted(set(splits))
        assert all((stage.sampler, stage.sampler_kwargs) == (sampler, kwargs) for stage in c.plan.stages)
        assert [low.level for low in lows] == [{4: 0, 8: 1}[r] for r in sizes] and sizes == sorted(set(sizes))
        if kind == "condition":
            (k,) = splits
            assert lows[0].level == 1 and isinstance(top.transition, Condition)
            assert torch.equal(lows[0].sigmas, s[: k + 1])
            assert torch.equal(top.sigmas, karras_sigmas(max(steps - k, 2), *CONDITIONED_RANGE, float(rho)).double())
        else:
            cuts = [0, *splits, steps]
            for stage, factor, a, b in zip(c.plan.stages, [16 // r for r in sizes] + [1], cuts, cuts[1:]):
                assert torch.equal(stage.sigmas, s[a:b + 1] / factor)
            assert all(isinstance(stage.transition, Continue if kind == "continue" else Renoise) for stage in c.plan.stages[1:])
            assert c.coupled == (kind == "continue" and name in ("euler", "heun", "dpmpp_2m", "dpmpp_3m"))
    three = [c for c in cands if len(c.plan.stages) == 3]
    assert bool(three) == (space.stages == 3 and space.cascade_steps >= 3 and bool({"continue", "renoise"} & set(space.transitions)))


class OneLevel:
    levels = (Level((16, 16), 1),)

    def denoise(self, x, sigma, *, level, cond=None, cond_sigma=None, **extra):
        return x


class StackLike(OneLevel):
    """Unconditional levels (LevelStack, C2F-DM)."""

    levels = (Level((8, 8), 1), Level((16, 16), 1))
    conditions_on_lower_level = False


class LowDiffLike(OneLevel):
    levels = (Level((8, 8), 1), Level((16, 16), 1))


@pytest.mark.parametrize(
    "cascade, families",
    [
        (OneLevel(), {"single"}),
        (StackLike(), {"single", "continue", "renoise"}),
        (LowDiffLike(), {"single", "condition"}),
        (FIELD, {"single", "continue", "renoise", "condition"}),
    ],
    ids=["one-level", "stack", "lowdiff", "gaussian-field"],
)
def test_models_get_the_hand_overs_they_support(cascade, families):
    """One level: single-resolution only; unconditional levels: Continue and Renoise; levels
    conditioned on the one below: Condition; the oracle declares all three."""
    space = SearchSpace(samplers=("euler",), cascade_samplers=("euler",), nfe=(2, 4), cascade_steps=3)
    assert {c.family for c in candidates(space, cascade)} == families
    if len(cascade.levels) > 1:
        assert set(hand_overs_of(cascade)) == families - {"single"}
    only = SearchSpace(**{**space.to_dict(), "transitions": ("continue",)})
    assert {c.family for c in candidates(only, cascade)} == families & {"single", "continue"}


@HYP
@given(spaces())
def test_search_space_round_trips_through_json(space):
    """to_dict -> JSON -> from_dict gives the same space."""
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"samplers": ("euler", "nonsense")}, r"SearchSpace.samplers: unknown sampler\(s\) \['nonsense'\]"),
        ({"cascade_samplers": ("dpm_fast",)}, r"SearchSpace.cascade_samplers: unknown sampler"),
        ({"nfe": (0, 3)}, r"SearchSpace.nfe must be .* got \(0, 3\)"),
        ({"nfe": (5, 3)}, r"SearchSpace.nfe"),
        ({"rhos": ()}, r"SearchSpace.rhos must be positive"),
        ({"rhos": (7.0, -1.0)}, r"SearchSpace.rhos"),
        ({"sigma_mins": (0.002, 100.0)}, r"SearchSpace.sigma_mins must lie in \(0, sigma_max=80.0\)"),
        ({"sigma_mins": ()}, r"SearchSpace.sigma_mins"),
        ({"transitions": ("residual",)}, r"SearchSpace.transitions: unknown \['residual'\]"),
        ({"cascade_steps": 1}, r"SearchSpace.cascade_steps must be an int >= 2"),
        ({"stages": 4}, r"SearchSpace.stages must be 2 or 3, got 4"),
    ],
)
def test_bad_search_space_fields_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace(**fields)
    with pytest.raises(ValueError, match=message):
        SearchSpace.from_dict({k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()})


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown SearchSpace fields \['nfe_max'\]"):
        SearchSpace.from_dict({"nfe_max": 3})


# ---- Pareto front, targets, cost -----------------------------------------------------------------


def result(name: str, cost: float, metric: str = "fd", value: float | None = None, **scores: float) -> PlanResult:
    r = PlanResult(name, "single", True, {}, [1], [0], float(cost))
    if metric == "rmse":
        r.rmse = value
    elif value is not None:
        r.scores[metric] = Score(value, value, value)
    for k, v in scores.items():
        r.scores[k] = Score(v, v, v)
    return r


def brute_front(results, metric, lower):
    """The results nothing beats: no other with cost <= and metric <= (one strictly, or a
    full tie won by the earlier name), cheapest first."""
    sign = 1 if lower else -1
    scored = [r for r in results if r.metric(metric) is not None]

    def beats(s, r):
        cs, cr, ms, mr = s.cost, r.cost, sign * s.metric(metric), sign * r.metric(metric)
        return cs <= cr and ms <= mr and (cs < cr or ms < mr or s.name < r.name)

    return sorted((r for r in scored if not any(s is not r and beats(s, r) for s in scored)), key=lambda r: r.cost)


points = st.lists(
    st.tuples(st.one_of(st.integers(0, 6), st.floats(0, 6)), st.one_of(st.none(), st.integers(0, 6), st.floats(-3, 3))),
    max_size=25,
)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(points, st.sampled_from(["fd", "rmse"]), st.booleans(), st.randoms(use_true_random=False))
def test_pareto_front_matches_brute_force(pts, metric, lower, rng):
    """The front is exactly the undominated results (ties included), cheapest first, each
    strictly better than the one before, whatever order the results come in."""
    results = [result(f"p{i:02d}", c, metric, m) for i, (c, m) in enumerate(pts)]
    rng.shuffle(results)
    front = pareto_front(results, metric, lower)
    assert [r.name for r in front] == [r.name for r in brute_front(results, metric, lower)]
    sign = 1 if lower else -1
    assert all(a.cost < b.cost and sign * b.metric(metric) < sign * a.metric(metric) for a, b in zip(front, front[1:]))


def test_parse_target():
    """'fd<=25,accuracy>=0.9' parses to triples; wrong operators and values say what is wrong."""
    assert parse_target("fd<=25,accuracy>=0.9") == [("fd", "<=", 25.0), ("accuracy", ">=", 0.9)]
    assert parse_target(" rmse < 0.1 , fd>1e-3") == [("rmse", "<", 0.1), ("fd", ">", 0.001)]
    with pytest.raises(ValueError, match=r"target 'fd=3': write METRIC<=VALUE"):
        parse_target("fd=3")
    with pytest.raises(ValueError, match=r"target 'fd<=x': 'x' is not a number"):
        parse_target("fd<=x")


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    st.lists(st.tuples(st.integers(0, 9), st.floats(0, 10), st.floats(0, 1)), max_size=12),
    st.floats(0, 10),
    st.floats(0, 1),
)
def test_cheapest_meets_every_constraint_at_least_cost(rows, fd_max, acc_min):
    """cheapest returns a result meeting all constraints at the lowest cost any does, or None."""
    results = [result(f"r{i}", c, "fd", fd, accuracy=acc) for i, (c, fd, acc) in enumerate(rows)]
    results.append(result("unjudged", 0.0))  # no scores: never meets a target
    target = parse_target(f"fd<={fd_max!r},accuracy>={acc_min!r}")
    meets = [r for r in results if r.scores and r.metric("fd") <= fd_max and r.metric("accuracy") >= acc_min]
    best = cheapest(results, target)
    if not meets:
        assert best is None
    else:
        assert best in meets and best.cost == min(r.cost for r in meets)


def test_plan_cost_is_nfe_times_level_cost():
    plan = CascadePlan(
        [StagePlan(-2, karras_sigmas(5)[:3], "heun"), StagePlan(-1, karras_sigmas(3, 0.01, 50.0), "euler", transition=Condition())]
    )
    assert plan_cost(plan, [0.5, 0.25, 1.0], 3) == 4 * 0.25 + 3 * 1.0  # heun: 2 per step above 0


def test_plan_result_round_trips_through_json():
    r = result("x", 2.5, "fd", 3.0)
    r.rmse = 0.125
    assert PlanResult.from_record(json.loads(json.dumps(r.to_record()))) == r


# ---- the search on the exact oracle --------------------------------------------------------------

SPACE = SearchSpace(samplers=("euler", "heun", "dpmpp_2m"), cascade_samplers=("dpmpp_2m",), nfe=(3, 10), cascade_steps=8)
SETTINGS = dict(space=SPACE, n_calib=16, n_judge=400, bootstrap=0)
COSTS = [0.25, 1.0]  # the pixel ratio of 8x8 to 16x16
REFERENCE_NFE = 63  # the default reference, Heun on 32 steps


class CountingField(GaussianFieldCascade):
    """The same oracle, counting denoiser calls."""

    def __init__(self) -> None:
        super().__init__(levels=(8, 16), channels=1)
        self.calls: list[tuple[int, int]] = []

    def denoise(self, x, sigma, *, level, **kwargs):
        self.calls.append((level, x.shape[0]))
        return super().denoise(x, sigma, level=level, **kwargs)


class BrokenLowLevel(GaussianFieldCascade):
    """The oracle with a low level that does not denoise (returns its noisy input)."""

    def denoise(self, x, sigma, *, level, **kwargs):
        return x.clone() if level % 2 == 0 else super().denoise(x, sigma, level=level, **kwargs)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    return out, search_plans(FIELD, COSTS, judge=OracleJudge(FIELD), out_dir=out, **SETTINGS)


def records(result: SearchResult) -> list[dict]:
    return [r.to_record() for r in result.results]


def continue_beats_single(result: SearchResult):
    """The single-resolution front plan with the lowest FD among those costing <= 6, and the
    continue plans on the overall front costing <= 0.8x it with no worse FD."""
    singles = pareto_front([r for r in result.results if r.family == "single"], "fd")
    best = min((r for r in singles if r.cost <= 6), key=lambda r: r.metric("fd"))
    better = [
        r for r in result.front
        if r.family == "continue" and r.cost <= 0.8 * best.cost and r.metric("fd") <= best.metric("fd")
    ]
    return best, better


def test_continue_cascades_beat_single_resolution_per_cost(searched):
    """On the oracle, Continue hands over exactly: DPM++ 2M on 5 steps at 16x16 (cost 5,
    FD 4.372) is matched by the same schedule with 2 steps at 8x8 (cost 3.5, FD 4.351);
    the reference's own FD, the Monte-Carlo floor at 400 samples, is 3.453. Continue plans
    make up most of the front, and a split after one step changes the RMSE to the reference by
    under 1% (measured <= 0.7%) for every schedule."""
    _, result = searched
    best, better = continue_beats_single(result)
    assert best.name == "dpmpp_2m-5-rho7.0-min0.002" and better
    assert sum(r.family == "continue" for r in result.front) > len(result.front) / 2
    by_name = {r.name: r for r in result.results}
    for steps in range(3, 9):
        single = by_name[f"dpmpp_2m-{steps}-rho7.0-min0.002"].rmse
        assert abs(by_name[f"continue-dpmpp_2m-{steps}-k1-L8-rho7.0-min0.002"].rmse - single) < 0.01 * single
    reference = by_name["reference-heun-32"]
    assert reference.rmse == 0 and reference.metric("fd") < best.metric("fd")


def test_a_broken_low_level_loses_the_advantage():
    """If the low level returns garbage, no continue plan is cheaper at the same quality, and
    every continue plan is far from the reference (measured: RMSE >= 0.304 against the single
    plan's 0.064)."""
    space = SearchSpace(
        samplers=("dpmpp_2m",), cascade_samplers=("dpmpp_2m",), transitions=("continue",), nfe=(3, 10), cascade_steps=8
    )
    broken = BrokenLowLevel(levels=(8, 16), channels=1)
    result = search_plans(broken, COSTS, judge=OracleJudge(broken), **{**SETTINGS, "space": space})
    best, better = continue_beats_single(result)
    assert best.name == "dpmpp_2m-5-rho7.0-min0.002" and not better
    assert min(r.rmse for r in result.results if r.family == "continue") > 3 * best.rmse


def test_search_resumes_without_measuring_again(searched):
    """A second run in the same folder samples no candidate (at most the reference's own calls)
    and returns the same results."""
    out, first = searched
    counting = CountingField()
    again = search_plans(counting, COSTS, judge=OracleJudge(counting), out_dir=out, **SETTINGS)
    assert records(again) == records(first)
    assert len(counting.calls) <= REFERENCE_NFE and set(counting.calls) <= {(1, SETTINGS["n_calib"])}


def test_judge_also_judges_the_named_plans_off_the_front(searched, tmp_path):
    """Resumed with `judge_also`, a search judges exactly the plans matching the patterns that
    were not judged yet, sampling only those on the held-out seeds, and leaves the rest as they
    were; a pattern that matches no candidate is refused before anything is sampled."""
    out, first = searched
    folder = tmp_path / "again"
    shutil.copytree(out, folder)
    pattern = "continue-dpmpp_2m-8-k*"
    before = {r.name: r for r in first.results}
    new = {n for n, r in before.items() if re.fullmatch(r"continue-dpmpp_2m-8-k\d.*", n) and not r.scores}
    assert new  # the RMSE front left some of them unjudged
    counting = CountingField()
    again = search_plans(counting, COSTS, judge=OracleJudge(counting), out_dir=folder, judge_also=[pattern], **SETTINGS)
    judged = {r.name for r in again.results if r.scores and not before[r.name].scores}
    assert judged == new
    assert all(r.to_record() == before[r.name].to_record() for r in again.results if r.name not in new)
    assert sum(b for _, b in counting.calls) == SETTINGS["n_judge"] * sum(sum(before[n].nfe) for n in new)
    with pytest.raises(ValueError, match=r"judge_also: \['continue-\*-L99-\*'\] match\(es\) no candidate"):
        search_plans(counting := CountingField(), COSTS, judge=OracleJudge(counting), out_dir=folder,
                     judge_also=["continue-dpmpp_2m-8-k*", "continue-*-L99-*"], **SETTINGS)
    assert not counting.calls


def test_other_settings_in_the_same_folder_are_refused(searched):
    out, _ = searched
    before = (out / "search.json").read_text()
    with pytest.raises(ValueError, match=r"other settings \(n_calib differ\)"):
        search_plans(FIELD, COSTS, judge=OracleJudge(FIELD), out_dir=out, **{**SETTINGS, "n_calib": 8})
    assert (out / "search.json").read_text() == before


def test_a_folder_of_another_model_is_refused(searched):
    """The same settings on a model with other weights (here another oracle law) do not
    resume the folder: its results would be another model's."""
    out, _ = searched
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    other = GaussianFieldCascade(levels=(8, 16), channels=1, alpha=FIELD.alpha + 0.5)
    with pytest.raises(ValueError, match=r"holds a search of the model with other weights, not of the model"):
        search_plans(other, COSTS, judge=OracleJudge(other), out_dir=out, **SETTINGS)
    with pytest.raises(ValueError, match=r"holds a search of the model, not of field"):
        check_search_folder(out, "field", model_fingerprint(other))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert model_fingerprint(CountingField()) == model_fingerprint(FIELD)  # the same law, counted
    assert model_fingerprint(other) != model_fingerprint(FIELD)


def test_a_record_cut_by_a_kill_is_measured_again_on_its_own_line(searched, tmp_path):
    """A kill mid-write leaves candidates.jsonl ending in half a record; the resumed search
    drops it, measures that plan again, and every line of the file is a whole record (the
    next record used to be glued to the cut one and lost again on the next resume)."""
    out, first = searched
    folder = tmp_path / "resumed"
    shutil.copytree(out, folder)
    lines = (folder / "candidates.jsonl").read_text().splitlines(keepends=True)
    cut = lines[-1][: len(lines[-1]) // 2]
    (folder / "candidates.jsonl").write_text("".join(lines[:-1]) + cut)
    again = search_plans(FIELD, COSTS, judge=OracleJudge(FIELD), out_dir=folder, **SETTINGS)
    assert records(again) == records(first)
    text = (folder / "candidates.jsonl").read_text()
    assert text.endswith("\n")
    assert [json.loads(line)["name"] for line in text.splitlines()] == [json.loads(line)["name"] for line in lines]


def test_budget_stops_early_and_a_resumed_search_equals_a_fresh_one(searched, tmp_path, monkeypatch):
    """With a clock that ticks once per check, a budget stops the search part-way: what it
    returns is a subset measured exactly as in a full run. Resumed without the budget, the
    search ends where a fresh run ends (results depend only on the seeds)."""
    _, full = searched
    by_name = {r.name: r.to_record() for r in full.results}
    ticks = itertools.count()
    monkeypatch.setattr(search_module, "time", types.SimpleNamespace(monotonic=lambda: float(next(ticks))))
    part = search_plans(FIELD, COSTS, judge=OracleJudge(FIELD), out_dir=tmp_path, budget_seconds=20, **SETTINGS)
    assert 0 < len(part.results) < len(full.results)
    for r in part.results:
        want = by_name[r.name]
        assert (r.rmse, r.cost) == (want["rmse"], want["cost"])
        assert not r.scores or r.to_record()["scores"] == want["scores"]
    assert any(r.scores for r in part.results)
    monkeypatch.undo()
    assert records(search_plans(FIELD, COSTS, judge=OracleJudge(FIELD), out_dir=tmp_path, **SETTINGS)) == records(full)
    tiny = search_plans(FIELD, COSTS, judge=OracleJudge(FIELD), budget_seconds=1e-9, **SETTINGS)
    assert {r.name for r in tiny.results} <= set(by_name)


def test_search_checks_its_arguments():
    with pytest.raises(ValueError, match=r"level_costs needs one positive cost per level \(2\)"):
        search_plans(FIELD, [1.0], space=SPACE)
    with pytest.raises(ValueError, match="n_calib must be an int >= 2, got 1"):
        search_plans(FIELD, COSTS, space=SPACE, n_calib=1)


def test_write_outputs(searched, tmp_path):
    """front.md has one row per front plan, results.csv one per result with on_front, plans/
    one JSON per front plan that loads and validates, and front.png is a PNG."""
    _, result = searched
    written = result.write(tmp_path, title="oracle")
    assert {p.name for p in written if p.parent == tmp_path} == {"front.md", "results.csv", "front.png"}
    front = result.front
    table = (tmp_path / "front.md").read_text().splitlines()
    assert len(table) == 2 + len(front) and all(f"`{r.name}`" in line for r, line in zip(front, table[2:]))
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0].startswith("name,family,nfe,cost,rmse,fd,fd_lo,fd_hi") and len(rows) == 1 + len(result.results)
    assert sum(row.endswith(",True") for row in rows[1:]) == len(front)
    plans = sorted((tmp_path / "plans").glob("*.json"))
    assert [p.stem for p in plans] == sorted(r.name for r in front)
    for path in plans:
        plan = CascadePlan.from_dict(json.loads(path.read_text())).validate(FIELD)
        assert plan.to_dict() == next(r.plan for r in front if r.name == path.stem)
    assert Image.open(tmp_path / "front.png").format == "PNG"


# ---- the CLI -------------------------------------------------------------------------------------

runner = CliRunner()
SMALL = ["search", "--model", "gaussian-field", "--nfe", "3-6", "--samplers", "euler,dpmpp_2m", "--cascade-samplers", "dpmpp_2m",
         "--cascade-steps", "5", "--n-judge", "100", "--n-calib", "8", "--bootstrap", "0"]


def test_cli_search_writes_the_best_plan(tmp_path):
    """A small search on the 3x32x32 oracle exits 0 and writes front.md and best.json, the
    cheapest plan meeting the target; an unmeetable target exits 1 (resuming, so quickly)."""
    out = tmp_path / "search"
    result = runner.invoke(app, [*SMALL, "--out", str(out), "--target", "fd<=1e9"])
    assert result.exit_code == 0, result.output
    assert (out / "front.md").is_file() and "cheapest plan meeting fd<=1e9" in result.stdout
    best = json.loads((out / "best.json").read_text())
    plan = CascadePlan.from_dict(best).validate(GaussianFieldCascade())
    measured = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    judged = [r for r in measured if r["scores"]]
    assert plan.name == best["name"] and best["name"] in {r["name"] for r in judged}
    assert next(r["cost"] for r in measured if r["name"] == best["name"]) == min(r["cost"] for r in judged)

    result = runner.invoke(app, [*SMALL, "--out", str(out), "--target", "fd<=-1"])
    assert result.exit_code == 1 and "no measured plan meets fd<=-1" in result.stderr


TINY = ["--nfe", "1-1", "--samplers", "euler", "--cascade-samplers", "euler", "--cascade-steps", "2", "--n-calib", "2",
        "--n-judge", "2", "--bootstrap", "0", "--batch", "2"]


def test_cli_search_refuses_a_folder_of_another_model(tmp_path):
    """search --model mnist-c2f, then mnist-fast (the same levels) and gaussian-field (three
    levels) with the same settings into the same folder: one line naming the model that is
    there, and the folder unchanged."""
    out = tmp_path / "search"
    first = runner.invoke(app, ["search", "--model", "mnist-c2f", *TINY, "--out", str(out)])
    assert first.exit_code == 0, first.output
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for other in ("mnist-fast", "gaussian-field"):
        result = runner.invoke(app, ["search", "--model", other, *TINY, "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert result.stderr.strip().splitlines() == [
            f"lowdiff-sched: error: {out} holds a search of mnist-c2f, not of {other}; use another output folder"]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cost", "flops"], "FLOP counter finds no FLOPs"),
        (["--nfe", "x"], "--nfe: 'x' is not a list of ints"),
        (["--samplers", "nonsense"], "unknown sampler(s) ['nonsense']"),
        (["--target", "fd=3"], "target 'fd=3'"),
        (["--budget-minutes", "0"], "--budget-minutes must be positive"),
        (["--seed", "-1"], "--seed must be a non-negative int, got -1"),
        (["--bootstrap", "-1"], "--bootstrap must be a non-negative int, got -1"),
        (["--reference", "LOW_REFERENCE"], "the reference must be a single-resolution plan at the top level"),
    ],
)
def test_cli_search_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "search"
    low = tmp_path / "low.json"  # a reference at the lowest level
    low.write_text(json.dumps({"name": "low", "stages": [{"level": 0, "sigmas": [1.0, 0.0], "sampler": "euler"}]}))
    args = [str(low) if a == "LOW_REFERENCE" else a for a in args]
    result = runner.invoke(app, [*SMALL, "--out", str(out), *args])
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("name", ["candidates.jsonl", "search.json"])
def test_cli_search_into_a_folder_whose_files_are_folders_is_one_line(tmp_path, name):
    out = tmp_path / "search"
    (out / name).mkdir(parents=True)
    result = runner.invoke(app, [*SMALL, "--out", str(out)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert f"{out / name} is not a file, so {out} holds no search" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == [name]


def test_cli_search_whose_budget_measures_nothing_says_so(tmp_path):
    """A budget too short for one measurement: exit 1 and one line saying so (it used to exit 0
    with an empty front and a matplotlib warning); no front files, and a rerun resumes."""
    out = tmp_path / "search"
    result = runner.invoke(app, ["search", "--model", "gaussian-field", *TINY, "--budget-minutes", "0.0000001", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines()[-1].startswith("the budget ran out before any plan was measured")
    assert "Warning" not in result.stderr and not (out / "front.md").exists()
