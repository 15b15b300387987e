"""sample_cascade / cascade_sampler against k-diffusion's own samplers."""

from __future__ import annotations

import inspect

import k_diffusion.sampling as kds
import pytest
import torch
from conftest import IidCascade

from lowdiff_sched import presets
from lowdiff_sched.plan import CascadePlan, StagePlan
from lowdiff_sched.protocol import stage_denoiser
from lowdiff_sched.resample import upsample
from lowdiff_sched.samplers import SAMPLER_NAMES
from lowdiff_sched.sampling import cascade_sampler, sample_cascade
from lowdiff_sched.schedules import karras_sigmas, truncate_steps
from lowdiff_sched.transitions import Condition, Continue, Renoise


def two_stage(sampler: str = "heun", transition=None, low_steps: int = 3) -> CascadePlan:
    return CascadePlan(
        [
            StagePlan(-2, truncate_steps(karras_sigmas(6), low_steps), sampler),
            StagePlan(-1, karras_sigmas(4, 0.01, 50.0), sampler, transition=transition),
        ]
    )


@pytest.mark.parametrize("steps", [1, 2, 7, 18])
def test_one_stage_heun_is_bit_identical_to_k_diffusion(iid_cascade, steps):
    plan = CascadePlan([StagePlan(-1, karras_sigmas(steps), "heun")])
    eps = torch.randn(3, 2, 16, 16, generator=torch.Generator().manual_seed(steps))
    ours = sample_cascade(iid_cascade, plan, noise=[eps], disable=True)
    sigmas = karras_sigmas(steps)
    ref = kds.sample_heun(stage_denoiser(iid_cascade, -1), eps * sigmas[0], sigmas, disable=True)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_every_k_diffusion_sampler_runs_a_stage_unchanged(iid_cascade, name):
    """A stage integrated by sample_cascade equals calling k-diffusion's function directly
    on stage_denoiser with the same noise and the same global RNG state."""
    sigmas = truncate_steps(karras_sigmas(8), 5)
    plan = CascadePlan([StagePlan(0, sigmas, name), StagePlan(1, karras_sigmas(3), "euler")])
    eps = [torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(1)), torch.randn(2, 2, 8, 8)]
    torch.manual_seed(7)
    _, stages = sample_cascade(iid_cascade, plan, noise=eps, disable=True, return_stages=True)
    torch.manual_seed(7)
    ref = getattr(kds, f"sample_{name}")(stage_denoiser(iid_cascade, 0), eps[0] * sigmas[0], sigmas, disable=True)
    assert torch.equal(stages[0].x, ref)


def test_readme_example_dpmpp_2m_stage(iid_cascade):
    """The README's k-diffusion example: a stage run by sample_dpmpp_2m by hand equals the cascade's."""
    plan = two_stage("dpmpp_2m")
    eps = [torch.randn(2, 2, 8, 8), torch.randn(2, 2, 16, 16)]
    final, stages = sample_cascade(iid_cascade, plan, noise=eps, disable=True, return_stages=True)
    low, high = plan.stages
    x_low = kds.sample_dpmpp_2m(stage_denoiser(iid_cascade, -2), eps[0] * low.sigmas[0], low.sigmas, disable=True)
    cond = upsample(x_low, (16, 16), "nearest")
    model = stage_denoiser(iid_cascade, -1, cond=cond, cond_sigma=low.sigmas[-1].item())
    x = kds.sample_dpmpp_2m(model, eps[1] * high.sigmas[0], high.sigmas, disable=True)
    assert torch.equal(stages[0].x, x_low) and torch.equal(final, x)


@pytest.mark.parametrize("name", ["heun", "euler_ancestral", "dpm_2_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_seeded_samples_do_not_depend_on_batch_size(name):
    cascade = IidCascade()
    plan = two_stage(name)
    seeds = [5, 0, 11, 3, 8]
    labels = torch.tensor([1, 2, 3, 4, 5])
    whole = sample_cascade(cascade, plan, seeds=seeds, disable=True, extra_args={"label": labels})
    ones = sample_cascade(cascade, plan, seeds=seeds, batch_size=2, disable=True, extra_args={"label": labels})
    torch.testing.assert_close(whole, ones, rtol=0, atol=1e-6)
    alone = sample_cascade(cascade, plan, seeds=[11], disable=True, extra_args={"label": labels[2:3]})
    torch.testing.assert_close(alone[0], whole[2], rtol=0, atol=1e-6)
    assert not torch.allclose(whole[0], whole[1])  # different seeds, different samples


def test_seeded_noise_matches_edm_generator_convention(iid_cascade):
    """EDM draws each sample's latents with torch.Generator().manual_seed(seed % 2**32); a
    seed of 2**32 or more would silently repeat a smaller one, so it is refused."""
    plan = CascadePlan([StagePlan(-1, karras_sigmas(4), "heun")])
    seeds = [3, 2**32 - 1]
    ours = sample_cascade(iid_cascade, plan, seeds=seeds, disable=True)
    eps = torch.stack([torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(s)) for s in seeds])
    assert torch.equal(ours, sample_cascade(iid_cascade, plan, noise=[eps], disable=True))
    with pytest.raises(ValueError, match=r"seeds must be below 2\*\*32 = 4294967296 .*got 4294967305"):
        sample_cascade(iid_cascade, plan, seeds=[3, 2**32 + 9], disable=True)


def test_seeded_sampling_leaves_the_global_rng_alone(iid_cascade):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    sample_cascade(iid_cascade, two_stage("heun", low_steps=2), seeds=[1, 2], disable=True)
    assert torch.equal(torch.get_rng_state(), before)


def test_generator_makes_runs_repeat(iid_cascade):
    plan = two_stage("euler_ancestral")
    a = sample_cascade(iid_cascade, plan, batch_size=3, generator=torch.Generator().manual_seed(4), disable=True)
    torch.manual_seed(0)  # the global RNG must not matter
    b = sample_cascade(iid_cascade, plan, batch_size=3, generator=torch.Generator().manual_seed(4), disable=True)
    assert torch.equal(a, b)


def test_condition_hands_over_the_noisy_upsampled_state(iid_cascade):
    plan = two_stage("heun", Condition("nearest"))
    final, stages = sample_cascade(iid_cascade, plan, seeds=[0, 1], disable=True, return_stages=True)
    high_calls = [c for c in iid_cascade.calls if c[0] == 2]
    assert len(high_calls) == plan.nfe()[1]
    _, _, _, cond, cond_sigma, _ = high_calls[0]
    assert torch.equal(cond, upsample(stages[0].x, (16, 16), "nearest"))
    assert torch.equal(cond_sigma, torch.full((2,), plan.stages[0].sigmas[-1].item()))
    assert all(c[0] == 1 and c[3] is None for c in iid_cascade.calls[: plan.nfe()[0]])


def test_renoise_upsamples_the_last_estimate_and_adds_fresh_noise():
    cascade = IidCascade(cond_weight=0.0)
    plan = two_stage("euler", Renoise("bilinear"))
    eps = [torch.randn(2, 2, 8, 8), torch.randn(2, 2, 16, 16)]
    _, stages = sample_cascade(cascade, plan, noise=eps, disable=True, return_stages=True)
    low_last = cascade.denoise  # recompute the last x0 estimate Euler made: at sigmas[-2] of stage 0
    x_low = kds.sample_euler(stage_denoiser(cascade, 1), eps[0] * plan.stages[0].sigmas[0], plan.stages[0].sigmas[:-1], disable=True)
    last_d = low_last(x_low, plan.stages[0].sigmas[-2].repeat(2), level=1)
    start = upsample(last_d, (16, 16), "bilinear") + eps[1] * plan.stages[1].sigmas[0]
    high = plan.stages[1]
    ref = kds.sample_euler(stage_denoiser(cascade, 2), start, high.sigmas, disable=True)
    torch.testing.assert_close(stages[1].x, ref)
    assert all(c[3] is None for c in cascade.calls)  # renoise passes no condition


def test_continue_starts_where_the_low_stage_stopped():
    """The exact hand-over: x_H = U(x_L) + f sigma_L (eps - U P eps) at sigma_H = f sigma_L."""
    cascade = IidCascade(cond_weight=0.0)
    low = truncate_steps(karras_sigmas(6), 3)
    sigma_l = low[-1].item()
    plan = CascadePlan([StagePlan(1, low, "euler"), StagePlan(2, karras_sigmas(4, 0.01, 2 * sigma_l), "euler", transition=Continue())])
    eps = [torch.randn(3, 2, 8, 8, dtype=torch.float64), torch.randn(3, 2, 16, 16, dtype=torch.float64)]
    _, stages = sample_cascade(cascade, plan, noise=eps, disable=True, return_stages=True)
    level, _, sigma, cond, _, x_start = next(c for c in cascade.calls if c[0] == 2)
    assert cond is None and sigma[0].item() == pytest.approx(2 * sigma_l)
    detail = eps[1] - upsample(torch.nn.functional.avg_pool2d(eps[1], 2), (16, 16))
    torch.testing.assert_close(x_start, upsample(stages[0].x, (16, 16)) + 2 * sigma_l * detail)
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(x_start, 2), stages[0].x)


def test_callback_sees_stage_and_level(iid_cascade):
    plan = two_stage("heun")
    seen = []
    sample_cascade(iid_cascade, plan, seeds=[0], disable=True, callback=seen.append)
    assert [(d["stage"], d["level"]) for d in seen] == [(0, 1)] * plan.stages[0].steps + [(1, 2)] * plan.stages[1].steps
    assert {"x", "i", "sigma", "sigma_hat", "denoised"} <= set(seen[0])


def test_cascade_sampler_has_k_diffusion_signature_and_matches_sample_cascade(iid_cascade):
    plan = presets.get("cifar10-3stage")
    sampler = cascade_sampler(plan)
    ref_params = list(inspect.signature(kds.sample_heun).parameters)[:6]
    assert list(inspect.signature(sampler).parameters) == ref_params
    sigmas = plan.stages[-1].sigmas
    x = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(9)  # the earlier stages draw their noise from the global RNG, in stage order
    ours = sampler(iid_cascade, x * sigmas[0], sigmas, disable=True)
    torch.manual_seed(9)
    eps = [torch.randn(2, 2, 4, 4), torch.randn(2, 2, 8, 8)]
    ref = sample_cascade(iid_cascade, plan, noise=[*eps, x], disable=True)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_cascade_sampler_one_stage_is_sample_heun(iid_cascade):
    sigmas = karras_sigmas(9)
    sampler = cascade_sampler(CascadePlan([StagePlan(-1, sigmas, "heun")]))
    x = torch.randn(2, 2, 16, 16) * sigmas[0]
    assert torch.equal(sampler(iid_cascade, x, sigmas, disable=True), kds.sample_heun(stage_denoiser(iid_cascade, -1), x, sigmas, disable=True))


def test_cascade_sampler_takes_the_final_schedule_from_its_caller(iid_cascade):
    plan = two_stage("euler")
    sampler = cascade_sampler(plan)
    sampler(iid_cascade, torch.randn(1, 2, 16, 16) * 30.0, karras_sigmas(5, 0.01, 30.0), disable=True)
    top = [c for c in iid_cascade.calls if c[0] == 2]
    assert len(top) == 5 and top[0][2].item() == pytest.approx(30.0)


def test_bad_input_gets_clear_errors(iid_cascade):
    plan = two_stage()
    with pytest.raises(ValueError, match="non-negative"):
        sample_cascade(iid_cascade, plan, seeds=[-1])
    with pytest.raises(ValueError, match="either seeds or noise"):
        sample_cascade(iid_cascade, plan, seeds=[1], noise=[torch.randn(1, 2, 8, 8), torch.randn(1, 2, 16, 16)])
    with pytest.raises(ValueError, match="batch_size"):
        sample_cascade(iid_cascade, plan)
    with pytest.raises(ValueError, match=r"noise\[1\] must have shape"):
        sample_cascade(iid_cascade, plan, noise=[torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8)])
    with pytest.raises(ValueError, match="one tensor per stage"):
        sample_cascade(iid_cascade, plan, noise=[torch.randn(1, 2, 8, 8)])
    with pytest.raises(ValueError, match="NaN"):
        sample_cascade(iid_cascade, plan, noise=[torch.full((1, 2, 8, 8), float("nan")), torch.randn(1, 2, 16, 16)])
    with pytest.raises(ValueError, match="stage 1: level 5 is outside"):
        sample_cascade(iid_cascade, CascadePlan([StagePlan(0, truncate_steps(karras_sigmas(4), 2)), StagePlan(5, karras_sigmas(3))]), seeds=[0])
    with pytest.raises(TypeError, match="ResolutionCascade"):
        sample_cascade(object(), plan, seeds=[0])
    with pytest.raises(ValueError, match="x must have shape"):
        cascade_sampler(plan)(iid_cascade, torch.randn(1, 2, 8, 8), plan.stages[-1].sigmas)
    with pytest.raises(ValueError, match="batch_size"):
        sample_cascade(iid_cascade, plan, seeds=[0], batch_size=0)


@pytest.mark.parametrize("transition", [Continue(), Renoise(), Condition()], ids=lambda t: t.kind)
@pytest.mark.parametrize("as_tensor", [False, True], ids=["list", "float64-tensor"])
def test_the_state_dtype_is_sample_cascades_whatever_the_plan_sigmas(transition, as_tensor):
    """Plan sigmas are float64 (a list is stored so); the state at every stage is the dtype
    asked of sample_cascade, and a hand-over never mixes dtypes."""
    from lowdiff_sched.adapters.analytic import GaussianFieldCascade

    first = [80.0, 20.0, 5.0, 2.0]
    plan = CascadePlan([
        StagePlan(0, torch.tensor(first, dtype=torch.float64) if as_tensor else first),
        StagePlan(1, [4.0, 1.0, 0.3, 0.0], transition=transition),
    ])
    cascade = GaussianFieldCascade(levels=(8, 16), channels=1)
    for dtype in (torch.float32, torch.float64):
        x, stages = sample_cascade(cascade, plan, seeds=range(4), dtype=dtype, return_stages=True)
        assert x.dtype == dtype and all(s.x.dtype == s.denoised.dtype == dtype for s in stages)
        assert torch.isfinite(x).all()


# ---- the Python API says what is wrong in the caller's terms (issue 21 item 10) ----------------------


@pytest.fixture(scope="module")
def digits():
    from lowdiff_sched.models import load_model

    return load_model("mnist-base")


@pytest.mark.parametrize("kwargs, message", [
    ({"extra_args": {"class_labels": torch.zeros(2, 3)}}, r"class_labels must be one row of 10 class weights per sample, shape \[2, 10\], got \(2, 3\)"),
    ({"extra_args": {"class_labels": torch.tensor([1, 2])}}, r"got \(2,\); class ids become rows with labels.class_label_args"),
    ({"device": "nope"}, r"device 'nope' is not a torch device"),
    ({"dtype": torch.int64}, r"dtype must be a floating-point torch dtype .* got torch.int64"),
])
def test_bad_arguments_are_named(digits, kwargs, message):
    from lowdiff_sched import presets

    with pytest.raises(ValueError, match=message) as info:
        sample_cascade(digits, presets.load_plan("mnist-base-dpmpp2m-5"), seeds=[0, 1], disable=True, **kwargs)
    assert len(str(info.value).splitlines()) == 1


def test_a_hand_over_without_a_condition_into_a_conditioned_level_names_the_plan():
    """Renoise into a LowDiff level (which needs the level below as its condition): the error
    names the plan, the stage, the hand-over and what the model takes."""
    from lowdiff_sched.models import load_model
    from lowdiff_sched.transitions import Renoise

    model, s = load_model("mnist-lowdiff-2level"), karras_sigmas(6).double()
    plan = CascadePlan([StagePlan(0, s[:3] / 2, "euler"), StagePlan(1, s[2:], "euler", transition=Renoise())], name="mine")
    with pytest.raises(ValueError, match=r"plan mine, stage 1: level 1 is conditioned on the level below: cond is required, "
                                         r"but the stage is handed over with renoise, which gives no condition; "
                                         r"this model takes the hand-overs condition"):
        sample_cascade(model, plan, seeds=[0, 1], disable=True, extra_args={"class_labels": torch.eye(10)[:2]})
