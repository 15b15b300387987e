"""MSF's residual factorization (Alg. 1) and input priors (Alg. 2) on arbitrary scale sizes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowdiff_sched.msf import accumulate, factorize, factorize_latent, input_priors
from lowdiff_sched.resample import downsample, upsample


@st.composite
def scales(draw):
    """2-4 growing (H, W) sizes, not only powers of two (e.g. 12 -> 16)."""
    n = draw(st.integers(2, 4))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    sizes = [(h, w)]
    for _ in range(n - 1):
        h, w = h + draw(st.integers(0, 7)), w + draw(st.integers(0, 7))
        sizes.append((h, w))
    return sizes


@settings(max_examples=60, deadline=None)
@given(scales(), st.integers(1, 3), st.integers(1, 3), st.sampled_from(["bilinear", "nearest"]), st.integers(0, 2**31 - 1))
def test_residuals_sum_back_to_the_signal(sizes, batch, channels, mode, seed):
    f = torch.randn(batch, channels, *sizes[-1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    residuals = factorize(f, sizes, mode=mode)
    assert [tuple(r.shape[-2:]) for r in residuals] == sizes
    torch.testing.assert_close(accumulate(residuals, sizes[-1], mode), f, rtol=0, atol=1e-12)
    priors = input_priors(residuals, sizes, mode)
    assert [tuple(p.shape[-2:]) for p in priors] == sizes[1:]
    # the last prior plus the last residual is the signal; each prior is the residuals below it
    torch.testing.assert_close(priors[-1] + residuals[-1], f, rtol=0, atol=1e-12)
    for i, p in enumerate(priors, start=1):
        torch.testing.assert_close(p, downsample(accumulate(residuals[:i], sizes[-1], mode), sizes[i]), rtol=0, atol=1e-12)


def test_alg1_by_hand_on_two_scales():
    """12 -> 16, as MSF's ImageNet latents: r_0 = down(f), r_1 = f - up(r_0)."""
    f = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    r0, r1 = factorize(f, [12, 16])
    torch.testing.assert_close(r0, downsample(f, (12, 12)))
    torch.testing.assert_close(r1, f - upsample(r0, (16, 16), "bilinear"))
    (prior,) = input_priors([r0, r1], [12, 16])
    torch.testing.assert_close(prior, upsample(r0, (16, 16), "bilinear"))


def test_latent_variant_uses_the_encoding_of_the_downsampled_image():
    """A toy encoder (2x mean pool, 3 -> 2 channels): the base is encode(down(image))."""
    weight = torch.randn(2, 3, 1, 1, generator=torch.Generator().manual_seed(1))

    def encode(image):
        return torch.nn.functional.conv2d(downsample(image, (image.shape[-2] // 2, image.shape[-1] // 2)), weight)

    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    residuals = factorize_latent(image, encode, [12, 16], low_image_size=(24, 24))
    torch.testing.assert_close(residuals[0], encode(downsample(image, (24, 24))))
    torch.testing.assert_close(accumulate(residuals, (16, 16)), encode(image), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="base must have shape"):
        factorize_latent(image, encode, [12, 16], low_image_size=(20, 20))


def test_errors():
    f = torch.zeros(1, 1, 16, 16)
    with pytest.raises(ValueError, match="at least two scales"):
        factorize(f, [16])
    with pytest.raises(ValueError, match="grow from low to high"):
        factorize(f, [16, 8, 16])
    with pytest.raises(ValueError, match="last scale's size"):
        factorize(f, [8, 12])
    with pytest.raises(ValueError, match="one residual per scale"):
        input_priors([f], [8, 16])


# ---- Alg. 3 through sample_cascade -----------------------------------------------------------

from lowdiff_sched.msf import MSFCascade  # noqa: E402
from lowdiff_sched.plan import CascadePlan, StagePlan  # noqa: E402
from lowdiff_sched.sampling import sample_cascade  # noqa: E402
from lowdiff_sched.schedules import karras_sigmas  # noqa: E402
from lowdiff_sched.transitions import Condition, Residual  # noqa: E402


def base_denoiser(x, sigma):
    return 0.8 * x / (1 + sigma.view(-1, 1, 1, 1) ** 2) + 0.1


def residual_denoiser(weight):
    def denoise(x, sigma, cond):
        return (x + weight * cond.tanh()) / (1 + sigma.view(-1, 1, 1, 1) ** 2)

    return denoise


def msf_plan(steps=(6, 4, 3), mode="bilinear"):
    return CascadePlan(
        [StagePlan(0, karras_sigmas(steps[0]), "heun")]
        + [StagePlan(i, karras_sigmas(n), "dpmpp_2m", transition=Residual(mode)) for i, n in enumerate(steps[1:], start=1)],
        name="msf-test",
    )


def test_alg3_through_sample_cascade_equals_a_direct_implementation():
    import k_diffusion.sampling as kds

    sizes = [(6, 6), (9, 12), (16, 16)]  # not powers of two, not square in the middle
    cascade = MSFCascade([base_denoiser, residual_denoiser(0.5), residual_denoiser(-0.7)], sizes, channels=2)
    plan = msf_plan()
    gen = torch.Generator().manual_seed(0)
    noise = [torch.randn(3, 2, *s, generator=gen) for s in sizes]
    got, stages = sample_cascade(cascade, plan, noise=noise, return_stages=True)

    # Alg. 3 by hand
    st0, st1, st2 = plan.stages
    r = [kds.sample_heun(base_denoiser, noise[0] * st0.sigmas[0], st0.sigmas, disable=True)]
    total = upsample(r[0], sizes[-1], "bilinear")
    for i, stage in ((1, st1), (2, st2)):
        prior = downsample(total, sizes[i])
        model = lambda x, s, prior=prior, i=i: cascade.denoisers[i](x, s, cond=prior)  # noqa: E731
        r.append(kds.sample_dpmpp_2m(model, noise[i] * stage.sigmas[0], stage.sigmas, disable=True))
        total = total + upsample(r[i], sizes[-1], "bilinear")
    torch.testing.assert_close(got, total, rtol=0, atol=0)
    # each stage hands on its residual and the running sum
    for i in range(3):
        torch.testing.assert_close(stages[i].x, r[i], rtol=0, atol=0)
        torch.testing.assert_close(stages[i].total, accumulate(r[: i + 1], sizes[-1]), rtol=0, atol=1e-6)
    # seeds: batch-independent, like every plan
    a = sample_cascade(cascade, plan, seeds=[4, 5, 6], batch_size=3)
    b = sample_cascade(cascade, plan, seeds=[4, 5, 6], batch_size=1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_residual_plans_are_data_and_are_checked():
    plan = msf_plan(mode="nearest")
    assert plan.accumulates and CascadePlan.from_json(plan.to_json()) == plan
    stages = list(msf_plan().stages)
    with pytest.raises(ValueError, match="Residual transitions at every stage"):
        CascadePlan([stages[0], stages[1], StagePlan(2, karras_sigmas(3), "heun", transition=Condition())])
    with pytest.raises(ValueError, match="one upsampling mode"):
        CascadePlan([stages[0], stages[1], StagePlan(2, karras_sigmas(3), "heun", transition=Residual("nearest"))])
    with pytest.raises(ValueError, match="finish its residual"):
        CascadePlan([StagePlan(0, karras_sigmas(6)[:4], "heun"), stages[1]])
    cascade = MSFCascade([base_denoiser, residual_denoiser(0.5)], [4, 8], channels=1)
    with pytest.raises(ValueError, match="cond is required"):
        cascade.denoise(torch.zeros(1, 1, 8, 8), torch.ones(1), level=1)
    with pytest.raises(ValueError, match="one callable denoiser per scale"):
        MSFCascade([base_denoiser], [4, 8], channels=1)


# ---- the per-scale rectified-flow loss and the flow denoiser ---------------------------------

from lowdiff_sched.flow import velocity_denoiser  # noqa: E402
from lowdiff_sched.training import msf_loss  # noqa: E402


def test_msf_loss_is_zero_for_the_true_velocity_and_teacher_forces_the_priors():
    """Velocity "networks" that know the true residuals give v = (r - z_t) / (1 - t) exactly;
    each scale i >= 1 must be handed the prior made from the true residuals below it."""
    sizes = [(6, 6), (10, 8), (16, 16)]
    x = torch.randn(4, 2, 16, 16, generator=torch.Generator().manual_seed(3))
    residuals = factorize(x, sizes)
    priors = input_priors(residuals, sizes)
    seen = {}

    def oracle(i):
        def v(z_t, t, cond=None, label=None):
            seen[i] = (cond, label)
            return (residuals[i] - z_t) / (1 - t).view(-1, 1, 1, 1)

        return v

    total, per_scale = msf_loss([oracle(i) for i in range(3)], x, sizes, generator=torch.Generator().manual_seed(0), label="c")
    assert float(total) < 1e-10 and set(per_scale) == {0, 1, 2}
    assert seen[0] == (None, "c")
    for i in (1, 2):
        torch.testing.assert_close(seen[i][0], priors[i - 1], rtol=0, atol=0)
        assert seen[i][1] == "c"


def test_msf_loss_matches_eq5_by_hand_and_trains_each_scale_separately():
    sizes = [8, 16]
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    nets = [torch.nn.Conv2d(1, 1, 3, padding=1), torch.nn.Conv2d(2, 1, 3, padding=1)]
    v0 = lambda z, t: nets[0](z) * t.view(-1, 1, 1, 1)  # noqa: E731
    v1 = lambda z, t, cond: nets[1](torch.cat([z, cond], 1))  # noqa: E731
    total, per_scale = msf_loss([v0, v1], x, sizes, generator=torch.Generator().manual_seed(1))
    # Eq. 5 by hand with the same draws: noise then t, scale by scale
    gen = torch.Generator().manual_seed(1)
    r0, r1 = factorize(x, sizes)
    z0 = torch.randn(r0.shape, generator=gen)
    t0 = torch.rand(3, generator=gen)
    z1 = torch.randn(r1.shape, generator=gen)
    t1 = torch.rand(3, generator=gen)
    zt0 = t0.view(-1, 1, 1, 1) * r0 + (1 - t0).view(-1, 1, 1, 1) * z0
    zt1 = t1.view(-1, 1, 1, 1) * r1 + (1 - t1).view(-1, 1, 1, 1) * z1
    want0 = (r0 - z0 - v0(zt0, t0)).square().mean()
    want1 = (r1 - z1 - v1(zt1, t1, upsample(r0, (16, 16), "bilinear"))).square().mean()
    torch.testing.assert_close(per_scale[0], want0)
    torch.testing.assert_close(per_scale[1], want1)
    per_scale[1].backward()
    assert nets[0].weight.grad is None and nets[1].weight.grad is not None
    with pytest.raises(ValueError, match="one velocity network per scale"):
        msf_loss([v0], x, sizes)


def test_velocity_denoiser_recovers_the_data_for_the_true_velocity():
    """x = x0 + sigma * eps; with v = x0 - eps the flow denoiser returns x0 for every sigma."""
    gen = torch.Generator().manual_seed(7)
    x0, eps = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64), torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    for sigma in (0.01, 0.5, 3.0, 200.0):
        denoise = velocity_denoiser(lambda z_t, t: x0 - eps)
        torch.testing.assert_close(denoise(x0 + sigma * eps, torch.full((2,), sigma, dtype=torch.float64)), x0)


def test_per_stage_denoiser_kwargs_reach_each_scale_and_round_trip():
    """MSF's per-scale guidance: the plan carries cfg_scale per stage (1.4 base, 1.0 residual)."""
    seen = []

    def base(x, sigma, cfg_scale, label):
        seen.append(("base", cfg_scale, label))
        return base_denoiser(x, sigma)

    def resid(x, sigma, cond, cfg_scale, label):
        seen.append(("residual", cfg_scale, label))
        return residual_denoiser(0.5)(x, sigma, cond)

    plan = CascadePlan([
        StagePlan(0, karras_sigmas(3), "euler", denoiser_kwargs={"cfg_scale": 1.4}),
        StagePlan(1, karras_sigmas(2), "euler", transition=Residual(), denoiser_kwargs={"cfg_scale": 1.0}),
    ])
    assert CascadePlan.from_json(plan.to_json()) == plan
    sample_cascade(MSFCascade([base, resid], [4, 8], channels=1), plan, seeds=[0], extra_args={"label": 3})
    assert seen == [("base", 1.4, 3)] * 3 + [("residual", 1.0, 3)] * 2
    with pytest.raises(TypeError, match="denoiser_kwargs"):
        StagePlan(0, karras_sigmas(3), denoiser_kwargs=[1])
