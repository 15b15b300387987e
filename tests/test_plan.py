"""StagePlan / CascadePlan: NFE counted on k-diffusion's real samplers, JSON, validation,
effective NFE (LowDiff Appendix B) and display."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lowdiff_sched.plan import CascadePlan, StagePlan, pixel_ratios
from lowdiff_sched.protocol import Level
from lowdiff_sched.samplers import SAMPLER_NAMES, resolve_sampler
from lowdiff_sched.schedules import karras_sigmas
from lowdiff_sched.transitions import Condition, Continue, Renoise

# torchsde's Brownian tree warns about float32 round-off at its interval ends; harmless here
pytestmark = pytest.mark.filterwarnings("ignore:Should have:UserWarning")

HYP = settings(max_examples=25, deadline=None, derandomize=True, database=None)

ETA_SAMPLERS = ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde")
CHURN_SAMPLERS = ("euler", "heun", "dpm_2")


# ---- helpers ----------------------------------------------------------------------


@st.composite
def schedules(draw, min_steps=1, max_steps=8, end_zero=None, dtype=None, lo=0.01, hi=80.0):
    """Random strictly decreasing positive sigmas in [lo, hi], optionally ending at 0."""
    if end_zero is None:
        end_zero = draw(st.booleans())
    if dtype is None:
        dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    n_pos = draw(st.integers(min_steps + (0 if end_zero else 1), max_steps + (0 if end_zero else 1)))
    vals = sorted(set(draw(st.lists(st.floats(lo, hi), min_size=n_pos, max_size=n_pos))), reverse=True)
    vals = [v for i, v in enumerate(vals) if i == 0 or v < vals[i - 1] * (1 - 1e-5)]
    if end_zero:
        vals.append(0.0)
    while len(vals) < 2:
        vals = [hi] + vals if vals[0] < hi * (1 - 1e-5) else vals + [vals[-1] / 2]
    return torch.tensor(vals, dtype=dtype)


def count_calls(name: str, sigmas: torch.Tensor, kwargs: dict, seed: int = 0) -> int:
    """Run the real k-diffusion sampler and count denoiser evaluations."""
    calls = [0]

    def model(x, sigma, **extra):
        calls[0] += 1
        assert sigma.shape == (x.shape[0],)
        return 0.9 * x

    torch.manual_seed(seed)
    x = torch.randn(1, 1, 2, 2, dtype=sigmas.dtype) * sigmas[0]
    resolve_sampler(name)(model, x, sigmas, disable=True, **kwargs)
    return calls[0]


def P(level, sigmas, sampler="heun", transition=None, **kw):
    if not isinstance(sigmas, torch.Tensor):
        sigmas = torch.tensor(sigmas, dtype=torch.float64)
    return StagePlan(level, sigmas, sampler, kw, transition)


def LV(*sizes, c=3):
    return [Level((s, s), c) for s in sizes]


# ---- NFE exactness ------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLER_NAMES)
@HYP
@given(sigmas=schedules(), data=st.data())
def test_nfe_equals_real_model_calls(name, sigmas, data):
    kwargs = {}
    if name in ETA_SAMPLERS:
        kwargs["eta"] = data.draw(st.one_of(st.just(1.0), st.just(0.0), st.floats(0.0, 1.0)), label="eta")
    if name in CHURN_SAMPLERS and data.draw(st.booleans(), label="churn"):
        kwargs["s_churn"] = 0.5
    seed = data.draw(st.integers(0, 1000), label="seed")
    if name in ("dpmpp_2m_sde", "dpmpp_3m_sde") and sigmas.numel() == 2 and sigmas[-1] == 0:
        # k-diffusion's implementations crash (UnboundLocalError) on one step straight to 0:
        # the plan refuses such a stage up front with a clear error
        with pytest.raises(UnboundLocalError):
            count_calls(name, sigmas, kwargs, seed)
        with pytest.raises(ValueError, match="at least 2 steps"):
            StagePlan(0, sigmas, name, kwargs)
        return
    stage = StagePlan(0, sigmas, name, kwargs)
    assert stage.nfe() == count_calls(name, sigmas, kwargs, seed)


@pytest.mark.parametrize("name", ["dpm_2_ancestral", "dpmpp_2s_ancestral"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ancestral_nfe_large_step_ratio(name, dtype):
    # one step 80 -> 0.01 with eta = 1: in float32 (the dtype of karras_sigmas) k-diffusion's
    # get_ancestral_step gives sigma_down == 0 exactly and spends one evaluation.
    for vals in ([80.0, 0.01], [80.0, 0.01, 0.0], [80.0, 0.005, 0.002]):
        sigmas = torch.tensor(vals, dtype=dtype)
        stage = StagePlan(0, sigmas, name, {"eta": 1.0})
        assert stage.nfe() == count_calls(name, sigmas, {"eta": 1.0}), (vals, dtype)


@pytest.mark.parametrize("n", [1, 2, 5, 18])
def test_heun_truncated_and_to_zero(n):
    full = karras_sigmas(n)
    assert StagePlan(0, full, "heun").nfe() == 2 * n - 1 == count_calls("heun", full, {})
    trunc = karras_sigmas(n + 3)[: n + 1]
    assert trunc[-1] > 0
    assert StagePlan(0, trunc, "heun").nfe() == 2 * n == count_calls("heun", trunc, {})


def test_ancestral_default_eta_is_kdiffusion_default():
    sigmas = karras_sigmas(6)
    for name in ("dpm_2_ancestral", "dpmpp_2s_ancestral", "euler_ancestral"):
        assert StagePlan(0, sigmas, name).nfe() == count_calls(name, sigmas, {})


# ---- samplers: callables, rejected names --------------------------------------------


def test_custom_callable_with_nfe_attribute():
    seen = {}

    def my_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, k=1):
        for s in sigmas[:-1]:
            for _ in range(k):
                x = model(x, s * x.new_ones(x.shape[0]))
        return x

    def nfe(sigmas, **kwargs):
        seen["sigmas"], seen["kwargs"] = sigmas, kwargs
        return kwargs.get("k", 1) * (sigmas.numel() - 1)

    my_sampler.nfe = nfe
    sigmas = torch.tensor([5.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    stage = StagePlan(0, sigmas, my_sampler, {"k": 3})
    calls = [0]

    def model(x, sigma):
        calls[0] += 1
        return x

    my_sampler(model, torch.zeros(1, 1, 2, 2), sigmas, k=3)
    assert stage.nfe() == calls[0] == 9
    assert torch.equal(seen["sigmas"], sigmas) and seen["kwargs"] == {"k": 3}

    plan = CascadePlan([stage])
    assert plan.nfe() == [9]
    with pytest.raises(ValueError):
        plan.to_json()
    with pytest.raises(ValueError):
        stage.to_dict()


def test_custom_callable_without_nfe():
    def my_plain_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return x

    stage = StagePlan(0, torch.tensor([5.0, 0.0]), my_plain_sampler)
    with pytest.raises(ValueError, match="my_plain_sampler"):
        stage.nfe()


def test_kdiffusion_function_object_is_a_named_sampler():
    import k_diffusion.sampling as kds

    sigmas = karras_sigmas(4)
    stage = StagePlan(0, sigmas, kds.sample_euler)
    assert stage.nfe() == count_calls("euler", sigmas, {}) == 4
    plan = CascadePlan([stage])
    d = json.loads(plan.to_json())
    assert d["stages"][0]["sampler"] == "euler"
    back = CascadePlan.from_json(plan.to_json())
    assert back.stages[0].sampler == "euler"
    assert back == CascadePlan([StagePlan(0, sigmas, "euler")])
    assert StagePlan(0, sigmas, "sample_heun").sampler == "heun"  # names are normalised
    heun = StagePlan(0, sigmas, kds.sample_heun)
    assert heun.nfe() == 7 and heun.to_dict()["sampler"] == "heun"


@pytest.mark.parametrize("bad", ["dpm_fast", "dpm_adaptive", "sample_dpm_fast", "not_a_sampler", "Heun"])
def test_rejected_sampler_names(bad):
    with pytest.raises(ValueError, match=bad.removeprefix("sample_")):
        StagePlan(0, torch.tensor([5.0, 0.0]), bad)


def test_rejected_sampler_functions():
    import k_diffusion.sampling as kds

    for fn, name in ((kds.sample_dpm_fast, "dpm_fast"), (kds.sample_dpm_adaptive, "dpm_adaptive")):
        with pytest.raises(ValueError, match=name):
            StagePlan(0, torch.tensor([5.0, 0.0]), fn)


# ---- JSON round trip ----------------------------------------------------------------


def sampler_with_kwargs(draw):
    name = draw(st.sampled_from(SAMPLER_NAMES))
    kwargs = {}
    if name in ETA_SAMPLERS and draw(st.booleans()):
        kwargs["eta"] = draw(st.floats(0.0, 1.0))
    if name in CHURN_SAMPLERS and draw(st.booleans()):
        kwargs["s_churn"] = draw(st.floats(0.0, 2.0))
        kwargs["s_noise"] = draw(st.floats(0.5, 1.5))
    if name == "lms" and draw(st.booleans()):
        kwargs["order"] = draw(st.integers(1, 4))
    return name, kwargs


@st.composite
def plans(draw):
    n = draw(st.integers(1, 4))
    negative = draw(st.booleans())
    start = draw(st.integers(0, 2))
    levels = sorted(draw(st.lists(st.integers(0, 7), min_size=n, max_size=n, unique=True)))
    levels = [lv + start for lv in levels]
    if negative:
        top = levels[-1] + 1
        levels = [lv - top for lv in levels]
    stages = []
    for i in range(n):
        last = i == n - 1
        dtype = draw(st.sampled_from([torch.float32, torch.float64]))
        end_zero = True if last else draw(st.sampled_from([False, False, False, True]))
        name, kwargs = sampler_with_kwargs(draw)
        transition = None
        if i > 0:
            options = ["condition", "renoise", "none"]
            if stages[-1].sigmas[-1] > 0:
                options.append("continue")
            kind = draw(st.sampled_from(options))
            if kind == "condition":
                transition = Condition(draw(st.sampled_from(["nearest", "bilinear"])))
            elif kind == "renoise":
                transition = Renoise(draw(st.sampled_from(["nearest", "bilinear"])))
            elif kind == "continue":
                transition = Continue(draw(st.sampled_from([1e-5, 1e-3, 0.1])))
        stages.append(StagePlan(levels[i], draw(schedules(end_zero=end_zero, dtype=dtype)), name, kwargs, transition))
    name = draw(st.text(max_size=12))
    return CascadePlan(stages, name=name)


@HYP
@given(plan=plans(), indent=st.sampled_from([None, 2]))
def test_json_round_trip(plan, indent):
    text = plan.to_json(indent=indent)
    back = CascadePlan.from_json(text)
    assert back == plan
    assert back.name == plan.name
    assert len(back) == len(plan)
    for a, b in zip(plan.stages, back.stages):
        assert a.sigmas.dtype == b.sigmas.dtype
        assert a.sigmas.numpy().tobytes() == b.sigmas.numpy().tobytes()
        assert a.level == b.level
        assert a.sampler == b.sampler
        assert a.sampler_kwargs == b.sampler_kwargs
        assert a.transition == b.transition
        assert type(a.transition) is type(b.transition)
    # later stages without a transition got Condition()
    for s in back.stages[1:]:
        assert s.transition is not None
    # a second trip gives the same text
    assert back.to_json(indent=indent) == text


def _base_plan_dict():
    plan = CascadePlan(
        [P(0, [80.0, 10.0]), P(1, [50.0, 1.0, 0.0], "euler", transition=Condition())], name="p"
    )
    return plan.to_dict()


def _mutate(path_value):
    d = _base_plan_dict()
    path, value = path_value
    target = d
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return d


@pytest.mark.parametrize(
    "path,value,field",
    [
        (("stages", 1, "level"), KeyError, "level"),
        (("stages", 1, "sigmas"), KeyError, "sigmas"),
        (("stages", 1, "colour"), "red", "colour"),
        (("stages", 1, "transition"), {"type": "teleport"}, "transition"),
        (("stages", 1, "transition"), {"type": "condition", "strength": 2}, "transition"),
        (("stages", 1, "transition"), "condition", "transition"),
        (("stages", 1, "sigmas"), ["a", 1.0, 0.0], "sigmas"),
        (("stages", 1, "sigmas"), "50, 1, 0", "sigmas"),
        (("stages", 1, "sigmas"), [50.0, True, 0.0], "sigmas"),
        (("stages", 1, "sigmas"), [1.0, 5.0, 0.0], "sigmas"),
        (("stages", 1, "sigmas"), [5.0], "sigmas"),
        (("stages", 1, "dtype"), "int64", "dtype"),
        (("stages", 1, "sampler"), "dpm_adaptive", "sampler"),
        (("stages", 1, "sampler_kwargs"), [1, 2], "sampler_kwargs"),
        (("stages", 1, "level"), "1", "level"),
    ],
)
def test_from_json_bad_stage_fields(path, value, field):
    text = json.dumps(_mutate((path, value)))
    with pytest.raises(ValueError) as err:
        CascadePlan.from_json(text)
    msg = str(err.value)
    assert msg.count("stage 1") == 1, msg
    assert field in msg or (field == "sampler" and "dpm_adaptive" in msg), msg


def test_from_json_nan_sigma_names_stage():
    text = json.dumps(_base_plan_dict()).replace("10.0", "NaN")
    with pytest.raises(ValueError, match=r"stage 0.*(NaN|sigmas)"):
        CascadePlan.from_json(text)


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "not json",
        "[]",
        "{}",
        '{"version": 1, "stages": {}}',
        '{"version": 1, "stages": []}',
    ],
)
def test_from_json_invalid_documents(text):
    with pytest.raises(ValueError):
        CascadePlan.from_json(text)


def test_from_json_wrong_version():
    d = _base_plan_dict()
    d["version"] = 99
    with pytest.raises(ValueError, match="version"):
        CascadePlan.from_json(json.dumps(d))
    assert CascadePlan.from_json(json.dumps(_base_plan_dict())).name == "p"


def test_to_json_rejects_unserialisable_kwargs():
    plan = CascadePlan([P(0, [5.0, 0.0], "euler", s_churn=torch.tensor(0.5))])
    with pytest.raises(ValueError):
        plan.to_json()


# ---- validation ---------------------------------------------------------------------


def test_empty_plan():
    with pytest.raises(ValueError):
        CascadePlan([])


@pytest.mark.parametrize(
    "vals",
    [[5.0, 5.0, 0.0], [1.0, 5.0, 0.0], [5.0, 1.0, -1.0], [5.0, float("nan"), 0.0], [float("inf"), 1.0, 0.0]],
)
def test_stage_bad_sigmas(vals):
    with pytest.raises(ValueError, match="sigmas"):
        StagePlan(0, torch.tensor(vals, dtype=torch.float64))
    d = _base_plan_dict()
    d["stages"][1]["sigmas"] = vals
    with pytest.raises(ValueError, match=r"stage 1.*sigmas"):
        CascadePlan.from_dict(d)


def test_last_stage_truncated():
    with pytest.raises(ValueError, match=r"stage 1.*(sigma|last)"):
        CascadePlan([P(0, [80.0, 5.0]), P(1, [50.0, 1.0])])
    with pytest.raises(ValueError, match="stage 0"):
        CascadePlan([P(0, [80.0, 5.0])])


@pytest.mark.parametrize("levels", [(0, 0), (1, 0), (0, 2, 1), (-1, -2)])
def test_levels_must_increase(levels):
    stages = [P(lv, [80.0, 5.0]) for lv in levels[:-1]] + [P(levels[-1], [50.0, 0.0])]
    with pytest.raises(ValueError, match=r"stage \d.*level"):
        CascadePlan(stages)


def test_mixed_level_signs():
    with pytest.raises(ValueError, match="level"):
        CascadePlan([P(0, [80.0, 5.0]), P(-1, [50.0, 0.0])])
    with pytest.raises(ValueError, match="level"):
        CascadePlan([P(-3, [80.0, 5.0]), P(1, [50.0, 0.0])])


def test_first_stage_transition():
    with pytest.raises(ValueError, match=r"stage 0.*transition"):
        CascadePlan([P(0, [80.0, 0.0], transition=Condition())])


def test_missing_transition_becomes_condition():
    plan = CascadePlan([P(0, [80.0, 5.0]), P(1, [50.0, 2.0], transition=Renoise()), P(2, [50.0, 0.0])])
    assert plan.stages[0].transition is None
    assert plan.stages[1].transition == Renoise()
    assert plan.stages[2].transition == Condition()
    assert isinstance(plan.stages[2].transition, Condition) and plan.stages[2].transition.mode == "nearest"


def test_continue_after_stage_at_zero():
    with pytest.raises(ValueError, match=r"stage 1.*continue"):
        CascadePlan([P(0, [80.0, 0.0]), P(1, [50.0, 0.0], transition=Continue())])
    # a truncated previous stage is fine without a cascade
    CascadePlan([P(0, [80.0, 5.0]), P(1, [10.0, 0.0], transition=Continue())])


def test_validate_level_outside_cascade():
    plan = CascadePlan([P(0, [80.0, 5.0]), P(3, [50.0, 0.0], transition=Renoise())])
    with pytest.raises(ValueError, match=r"stage 1.*level 3"):
        plan.validate(LV(8, 16, 32))
    assert plan.validate(LV(8, 16, 32, 64)) is plan
    neg = CascadePlan([P(-4, [80.0, 5.0]), P(-1, [50.0, 0.0], transition=Renoise())])
    with pytest.raises(ValueError, match=r"stage 0.*level -4"):
        neg.validate(LV(8, 16, 32))
    assert neg.validate(LV(8, 16, 32, 64)) is neg


def test_validate_condition_needs_adjacent_levels():
    plan = CascadePlan([P(0, [80.0, 5.0]), P(2, [50.0, 0.0], transition=Condition())])
    with pytest.raises(ValueError, match=r"stage 1.*condition"):
        plan.validate(LV(8, 16, 32))
    # Renoise may skip a level
    CascadePlan([P(0, [80.0, 5.0]), P(2, [50.0, 0.0], transition=Renoise())]).validate(LV(8, 16, 32))
    # negative indices: -3 and -1 are not adjacent, -2 and -1 are
    with pytest.raises(ValueError, match="stage 1"):
        CascadePlan([P(-3, [80.0, 5.0]), P(-1, [50.0, 0.0])]).validate(LV(8, 16, 32))
    CascadePlan([P(-2, [80.0, 5.0]), P(-1, [50.0, 0.0])]).validate(LV(8, 16, 32))


def test_validate_continue_sigma_factor():
    # 8 -> 16 is factor 2: the next stage starts at 2 * 5 = 10
    good = CascadePlan([P(0, [80.0, 5.0]), P(1, [10.0, 1.0, 0.0], transition=Continue())])
    good.validate(LV(8, 16))
    bad = CascadePlan([P(0, [80.0, 5.0]), P(1, [5.0, 1.0, 0.0], transition=Continue())])
    with pytest.raises(ValueError, match=r"stage 1.*continue.*sigmas\[0\]"):
        bad.validate(LV(8, 16))
    # factor 4 across a skipped level
    CascadePlan([P(0, [80.0, 5.0]), P(2, [20.0, 0.0], transition=Continue())]).validate(LV(8, 16, 32))
    with pytest.raises(ValueError, match="stage 1"):
        CascadePlan([P(0, [80.0, 5.0]), P(2, [10.0, 0.0], transition=Continue())]).validate(LV(8, 16, 32))
    # rtol is honoured
    near = CascadePlan([P(0, [80.0, 5.0]), P(1, [10.05, 0.0], transition=Continue(rtol=1e-2))])
    near.validate(LV(8, 16))
    with pytest.raises(ValueError):
        CascadePlan([P(0, [80.0, 5.0]), P(1, [10.05, 0.0], transition=Continue())]).validate(LV(8, 16))


def test_validate_continue_non_integer_factor():
    plan = CascadePlan([P(0, [80.0, 5.0]), P(1, [7.5, 0.0], transition=Continue())])
    with pytest.raises(ValueError, match=r"stage 1.*continue"):
        plan.validate(LV(8, 12))
    with pytest.raises(ValueError, match=r"stage 1.*continue"):
        plan.validate([Level((8, 8), 3), Level((16, 24), 3)])


@pytest.mark.parametrize("transition", [Condition(), Renoise(), Continue()])
def test_validate_shrinking_sizes_and_channels(transition):
    plan = CascadePlan([P(0, [80.0, 5.0]), P(1, [10.0, 0.0], transition=transition)])
    with pytest.raises(ValueError, match="stage 1"):
        plan.validate(LV(16, 8))
    with pytest.raises(ValueError, match="stage 1"):
        plan.validate([Level((8, 8), 3), Level((16, 16), 4)])
    plan.validate(LV(8, 16))


# ---- effective NFE --------------------------------------------------------------------


def heun_stage(level, nfe, truncated, transition=None):
    """A Heun stage with exactly `nfe` evaluations (even when truncated, odd when not)."""
    if truncated:
        assert nfe % 2 == 0
        sigmas = karras_sigmas(nfe // 2 + 3)[: nfe // 2 + 1]
    else:
        assert nfe % 2 == 1
        sigmas = karras_sigmas((nfe + 1) // 2)
    return StagePlan(level, sigmas, "heun", transition=transition)


def test_effective_nfe_paper_example():
    plan = CascadePlan([heun_stage(0, 18, True), heun_stage(1, 12, True), heun_stage(2, 17, False)])
    assert plan.nfe() == [18, 12, 17]
    # ceil(18/16 + 12/4) + 17 = ceil(4.125) + 17 = 22
    assert plan.effective_nfe([1 / 16, 1 / 4]) == 22
    assert plan.effective_nfe([1 / 16, 1 / 4, 1.0]) == 22
    assert plan.effective_nfe([0.0, 0.0]) == 17
    assert plan.effective_nfe([1.0, 1.0]) == 47
    # exact products must not gain an evaluation from float noise: 0.1 * 30 = 3.0000000000000004
    p2 = CascadePlan([heun_stage(0, 30, True), heun_stage(1, 17, False)])
    assert p2.effective_nfe([0.1]) == 3 + 17
    assert p2.effective_nfe([0.25]) == math.ceil(7.5) + 17


@HYP
@given(
    nfes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    fracs=st.lists(st.tuples(st.integers(0, 64), st.integers(1, 64)), min_size=3, max_size=3),
    with_last=st.booleans(),
)
@example(nfes=[9, 6, 9], fracs=[(1, 16), (1, 4), (1, 1)], with_last=False)
def test_effective_nfe_formula(nfes, fracs, with_last):
    # stage i has nfes[i] Heun steps; lower stages truncated (2 per step), top to zero (2N - 1)
    n = len(nfes)
    stages = [heun_stage(i, 2 * k, True) for i, k in enumerate(nfes[:-1])] + [heun_stage(n - 1, 2 * nfes[-1] - 1, False)]
    plan = CascadePlan(stages)
    counted = [count_calls("heun", s.sigmas, {}) for s in plan.stages]
    assert plan.nfe() == counted
    ratios = [Fraction(p, q) for p, q in fracs[: n - 1]]
    # independent: exact rational sum, then math.ceil
    expected = math.ceil(sum(r * k for r, k in zip(ratios, counted[:-1]))) + counted[-1]
    arg = [float(r) for r in ratios] + ([1.0] if with_last else [])
    assert plan.effective_nfe(arg) == expected


def test_effective_nfe_single_stage():
    plan = CascadePlan([heun_stage(0, 35, False)])
    assert plan.effective_nfe([]) == 35
    assert plan.effective_nfe([1.0]) == 35
    with pytest.raises(ValueError):
        plan.effective_nfe([0.5])


@pytest.mark.parametrize(
    "ratios",
    [[], [0.25], [0.1, 0.2, 0.3, 1.0], [0.1, 0.2, 0.3, 0.4], [-0.1, 0.25], [0.1, float("nan")], [0.1, float("inf")], [0.1, 0.25, 0.5]],
)
def test_effective_nfe_bad_ratios(ratios):
    plan = CascadePlan([heun_stage(0, 18, True), heun_stage(1, 12, True), heun_stage(2, 17, False)])
    with pytest.raises(ValueError, match="latency_ratios"):
        plan.effective_nfe(ratios)


# ---- pixel ratios and display -------------------------------------------------------


def test_pixel_ratios():
    plan = CascadePlan([heun_stage(0, 18, True), heun_stage(1, 12, True), heun_stage(2, 17, False)])
    assert pixel_ratios(plan, LV(8, 16, 32)) == [1 / 16, 1 / 4]
    assert pixel_ratios(plan, [Level((8, 4), 3), Level((16, 8), 3), Level((32, 16), 3)]) == [1 / 16, 1 / 4]
    neg = CascadePlan([heun_stage(-2, 18, True), heun_stage(-1, 17, False)])
    # an extra lower level does not change anything for negative indices
    assert pixel_ratios(neg, LV(4, 8, 16, 32)) == [1 / 4]
    assert pixel_ratios(neg, LV(16, 32, c=32)) == [1 / 4]
    skip = CascadePlan([heun_stage(0, 18, True), heun_stage(2, 17, False, transition=Renoise())])
    assert pixel_ratios(skip, LV(8, 16, 32)) == [1 / 16]
    # channels count (numel): a 2-channel lower level under a 4-channel top
    mixed = [Level((8, 8), 2), Level((16, 16), 4)]
    assert pixel_ratios(neg, mixed) == [2 * 64 / (4 * 256)]


def test_describe_and_str():
    plan = CascadePlan(
        [heun_stage(0, 18, True), StagePlan(1, karras_sigmas(10)[:7], "dpmpp_2m"), StagePlan(2, karras_sigmas(5), "euler")],
        name="demo",
    )
    assert plan.nfe() == [18, 6, 5]
    text = str(plan)
    assert "demo" in text
    lines = text.splitlines()
    for i, (sampler, steps, nfe) in enumerate([("heun", 9, 18), ("dpmpp_2m", 6, 6), ("euler", 5, 5)]):
        row = next(line for line in lines if line.split()[:1] == [str(i)])
        cells = row.split()
        assert sampler in cells and str(steps) in cells and str(nfe) in cells, row
    assert "29" in lines[-1]
    described = plan.describe(LV(8, 16, 32))
    assert "8x8" in described and "16x16" in described and "32x32" in described
    # effective NFE with pixel ratios: ceil(18/16 + 6/4) + 5 = ceil(2.625) + 5 = 8
    assert "effective NFE 8" in described
    assert "effective NFE 5" in plan.describe(latency_ratios=[0.0, 0.0, 1.0])
    assert "effective NFE 13" in plan.describe(latency_ratios=[0.25, 0.5])  # ceil(4.5 + 3) + 5


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_argument_at_its_default_is_accepted_and_unknown_ones_are_not(sampler):
    import inspect

    import k_diffusion.sampling as kds

    sigmas = [10.0, 5.0, 1.0, 0.0]
    params = inspect.signature(getattr(kds, f"sample_{sampler}")).parameters
    defaults = {k: p.default for k, p in params.items() if k not in ("model", "x", "sigmas", "extra_args", "callback", "disable")
                and p.default is not None}
    assert P(0, sigmas, sampler, **defaults).sampler_kwargs == defaults
    with pytest.raises(ValueError, match="takes no 'churn'"):
        P(0, sigmas, sampler, churn=1.0)
    for key, value in defaults.items():
        with pytest.raises(ValueError, match=key):
            P(0, sigmas, sampler, **{key: "lots"})
