"""Sigma schedules against independent references.

References: k-diffusion's own `get_sigmas_karras`, EDM's eq. 5 and the flow-matching
flow-time and hand-over relations, all recomputed here in float64 numpy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lowdiff_sched.schedules import (
    FLOW_SIGMA_MAX,
    flow_sigmas,
    flow_time_to_sigma,
    karras_sigmas,
    shift_sigmas,
    sigma_to_flow_time,
    truncate_at_sigma,
    truncate_steps,
    validate_sigmas,
)

HYP = settings(max_examples=40, deadline=None, derandomize=True, database=None)


# ---- strategies -------------------------------------------------------------------


@st.composite
def positive_schedules(draw, min_points=2, max_points=10, end_zero=None, lo=0.01, hi=80.0):
    """Strictly decreasing float64 schedules in [lo, hi], optionally ending at 0."""
    n = draw(st.integers(min_points, max_points))
    start = draw(st.floats(lo * 4, hi))
    gaps = draw(st.lists(st.floats(0.02, 1.5), min_size=n - 1, max_size=n - 1))
    values = [start]
    for g in gaps:
        values.append(values[-1] * math.exp(-g))
    values = [v for v in values if v >= lo]
    if len(values) < 2:
        values = [start, start / 2]
    if end_zero is None:
        end_zero = draw(st.booleans())
    if end_zero:
        values.append(0.0)
    return torch.tensor(values, dtype=torch.float64)


def edm_formula(n: int, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
    """EDM eq. 5 in float64: (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, then 0."""
    i = np.arange(n, dtype=np.float64)
    frac = i / (n - 1) if n > 1 else np.zeros(1)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return np.append((a + frac * (b - a)) ** rho, 0.0)


# ---- karras_sigmas ----------------------------------------------------------------


@HYP
@given(
    n=st.integers(1, 60),
    sigma_min=st.floats(1e-3, 1.0),
    ratio=st.floats(2.0, 1e5),
    rho=st.floats(1.5, 10.0),
)
def test_karras_matches_kdiffusion_and_edm(n, sigma_min, ratio, rho):
    from k_diffusion.sampling import get_sigmas_karras

    sigma_max = sigma_min * ratio
    s = karras_sigmas(n, sigma_min, sigma_max, rho)
    ref = get_sigmas_karras(n, sigma_min, sigma_max, rho=rho)
    assert s.dtype == ref.dtype
    assert torch.equal(s, ref)
    assert s.shape == (n + 1,)
    # EDM's formula, independently, in float64
    ref64 = edm_formula(n, sigma_min, sigma_max, rho)
    # k-diffusion works in float32: the base max^(1/rho) + ramp (min^(1/rho) - max^(1/rho)) carries
    # an absolute error of a few float32 ulps of max^(1/rho), amplified rho times in relative terms.
    base = ref64[:-1] ** (1 / rho)
    rtol = 1e-6 + rho * 8 * 2.0**-24 * sigma_max ** (1 / rho) / base
    assert (np.abs(s[:-1].double().numpy() - ref64[:-1]) <= rtol * ref64[:-1]).all()
    assert s[-1].item() == 0.0
    assert (s[1:] < s[:-1]).all()
    assert math.isclose(s[0].item(), sigma_max, rel_tol=1e-6)
    if n > 1:
        assert math.isclose(s[-2].item(), sigma_min, rel_tol=rtol[-1])
    assert (s[:-1] > 0).all()
    assert (s[:-1].double().numpy() <= sigma_max * (1 + 1e-6)).all()
    assert (s[:-1].double().numpy() >= sigma_min * (1 - rtol[-1])).all()


def test_karras_small_rho_is_still_a_valid_schedule():
    # rho < 1 with a wide range: sigma_max^(1/rho) = 4097^2 is beyond float32's integer
    # precision, and k-diffusion's float32 ramp cancels sigma_min^(1/rho) = 1 to 0, giving
    # [4097, 0, 0]. A result must be a valid schedule ending at sigma_min then 0, or be refused.
    try:
        s = karras_sigmas(2, 1.0, 4097.0, rho=0.5)
    except ValueError:
        return
    validate_sigmas(s)
    assert s.numel() == 3
    assert math.isclose(s[1].item(), 1.0, rel_tol=1e-3)


def test_karras_edm_default_18_steps():
    s = karras_sigmas(18)
    ref = edm_formula(18, 0.002, 80.0, 7.0)
    np.testing.assert_allclose(s.double().numpy(), ref, rtol=2e-6)
    assert s.shape == (19,)


@pytest.mark.parametrize(
    "args",
    [
        dict(n_steps=0),
        dict(n_steps=-3),
        dict(n_steps=2.5),
        dict(n_steps=10, sigma_min=1.0, sigma_max=1.0),
        dict(n_steps=10, sigma_min=2.0, sigma_max=1.0),
        dict(n_steps=10, sigma_min=0.0),
        dict(n_steps=10, sigma_min=-1.0),
        dict(n_steps=10, sigma_max=float("inf")),
        dict(n_steps=10, rho=0.0),
        dict(n_steps=10, rho=-7.0),
    ],
)
def test_karras_bad_args(args):
    with pytest.raises(ValueError):
        karras_sigmas(**args)


# ---- truncate_steps ---------------------------------------------------------------


@HYP
@given(sigmas=positive_schedules(), data=st.data())
def test_truncate_steps(sigmas, data):
    total = sigmas.numel() - 1
    n = data.draw(st.integers(1, total))
    out = truncate_steps(sigmas, n)
    assert out.shape == (n + 1,)
    assert out.dtype == sigmas.dtype
    assert out.tolist() == sigmas.tolist()[: n + 1]
    if n < total:
        assert out[-1].item() > 0
    else:
        assert out[-1].item() == sigmas[-1].item()


@HYP
@given(sigmas=positive_schedules(), bad=st.sampled_from(["zero", "neg", "over", "float"]))
def test_truncate_steps_bad_n(sigmas, bad):
    total = sigmas.numel() - 1
    n = {"zero": 0, "neg": -1, "over": total + 1, "float": 1.0}[bad]
    with pytest.raises(ValueError):
        truncate_steps(sigmas, n)


# ---- truncate_at_sigma ------------------------------------------------------------


@HYP
@given(sigmas=positive_schedules(), data=st.data())
def test_truncate_at_sigma(sigmas, data):
    arr = sigmas.numpy()
    how = data.draw(st.sampled_from(["grid", "between", "uniform"]))
    if how == "grid":
        k = data.draw(st.integers(1, len(arr) - 1))
        stop = float(arr[k])
    elif how == "between":
        k = data.draw(st.integers(0, len(arr) - 2))
        u = data.draw(st.floats(0.01, 0.99))
        stop = float(arr[k + 1] + u * (arr[k] - arr[k + 1]))
    else:
        stop = data.draw(st.floats(float(arr[-1]), float(arr[0]), exclude_max=True))
    out = truncate_at_sigma(sigmas, stop)
    o = out.numpy()
    assert out.dtype == sigmas.dtype
    assert o[-1] == stop
    assert (o[1:] < o[:-1]).all()
    head = o[:-1]
    assert (head > stop).all()
    assert head.tolist() == arr[: len(head)].tolist()
    # every input point above stop is kept
    assert len(head) == int((arr > stop).sum())
    if how == "grid":
        assert o.tolist() == arr[: k + 1].tolist()


def test_truncate_at_sigma_grid_point_prefix_float32():
    s = karras_sigmas(18)
    for k in (1, 5, 17, 18):
        out = truncate_at_sigma(s, s[k].item())
        assert torch.equal(out, s[: k + 1])


def test_truncate_at_sigma_result_is_a_valid_schedule_float32():
    # 0.99999999 is below the first point in float64 but rounds to it in float32: the
    # result must still be a valid (>= 2 points, strictly decreasing) schedule, or be refused.
    s = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float32)
    for stop in (0.99999999, 0.5 + 1e-9, 0.5 - 1e-9):
        try:
            out = truncate_at_sigma(s, stop)
        except ValueError:
            continue
        assert out.numel() >= 2, f"sigma_stop={stop!r} gave {out.tolist()}"
        validate_sigmas(out)
        assert math.isclose(out[-1].item(), stop, rel_tol=1e-6)


@HYP
@given(sigmas=positive_schedules(), where=st.sampled_from(["first", "above", "below", "neg"]))
def test_truncate_at_sigma_out_of_range(sigmas, where):
    first, last = sigmas[0].item(), sigmas[-1].item()
    stop = {"first": first, "above": first * 1.5, "below": last / 2 - 1e-3, "neg": -1.0}[where]
    with pytest.raises(ValueError):
        truncate_at_sigma(sigmas, stop)


# ---- shift_sigmas -----------------------------------------------------------------


def ve_logsnr(s):
    return -2 * np.log(s)


def flow_logsnr(s):
    return 2 * np.log((1 - s) / s)


@HYP
@given(sigmas=positive_schedules(lo=0.01, hi=80.0), factor=st.floats(0.05, 20.0))
def test_shift_ve_logsnr(sigmas, factor):
    out = shift_sigmas(sigmas, factor, "ve")
    a, b = sigmas.numpy(), out.numpy()
    assert b.shape == a.shape
    interior = a > 0
    np.testing.assert_allclose(ve_logsnr(b[interior]) - ve_logsnr(a[interior]), -2 * math.log(factor), atol=1e-9)
    assert (b[~interior] == 0).all()
    assert (b[1:] < b[:-1]).all()
    back = shift_sigmas(out, 1 / factor, "ve").numpy()
    np.testing.assert_allclose(back, a, rtol=1e-12, atol=0)


@st.composite
def flow_schedules(draw):
    """Strictly decreasing flow sigmas in [0, 1], with optional endpoints 1 and 0."""
    inner = sorted(set(draw(st.lists(st.floats(1e-3, 1 - 1e-3), min_size=1, max_size=8))), reverse=True)
    vals = ([1.0] if draw(st.booleans()) else []) + inner + ([0.0] if draw(st.booleans()) else [])
    if len(vals) < 2:
        vals = [1.0] + vals
    return torch.tensor(vals, dtype=torch.float64)


@HYP
@given(sigmas=flow_schedules(), factor=st.floats(0.05, 20.0))
def test_shift_flow_logsnr_and_sd3(sigmas, factor):
    out = shift_sigmas(sigmas, factor, "flow")
    a, b = sigmas.numpy(), out.numpy()
    interior = (a > 0) & (a < 1)
    np.testing.assert_allclose(
        flow_logsnr(b[interior]) - flow_logsnr(a[interior]), -2 * math.log(factor), atol=1e-7
    )
    # the SD3 timestep shift (Esser et al. 2024, "Scaling Rectified Flow Transformers"), written as the logistic of the shifted logSNR:
    # s' = 1 / (1 + (1 - s) / (f s))
    np.testing.assert_allclose(b[interior], 1 / (1 + (1 - a[interior]) / (factor * a[interior])), rtol=1e-12)
    assert (b[1:] < b[:-1]).all()
    assert ((b >= 0) & (b <= 1)).all()


@HYP
@given(sigmas=flow_schedules(), factor=st.floats(0.05, 20.0))
@example(sigmas=torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64), factor=0.1)
@example(sigmas=torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64), factor=0.3)
def test_shift_flow_endpoints_and_round_trip(sigmas, factor):
    out = shift_sigmas(sigmas, factor, "flow")
    a, b = sigmas.numpy(), out.numpy()
    # the data end stays exactly 0 and the pure-noise end exactly 1 (else the next flow
    # shift of this schedule is refused as outside [0, 1])
    assert (b[a == 0] == 0).all()
    assert (b[a == 1] == 1).all(), f"shift {factor}: 1 -> {b[a == 1].tolist()}"
    back = shift_sigmas(out, 1 / factor, "flow").numpy()
    np.testing.assert_allclose(back, a, rtol=1e-12, atol=1e-15)


def test_shift_zero_stays_zero_ve():
    s = torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64)
    assert shift_sigmas(s, 4.0, "ve").tolist() == [12.0, 4.0, 0.0]


@pytest.mark.parametrize(
    "sigmas,factor,kind",
    [
        (torch.tensor([2.0, 1.0, 0.0]), 2.0, "vp"),
        (torch.tensor([2.0, 1.0, 0.0]), 2.0, "VE"),
        (torch.tensor([2.0, 1.0, 0.0]), 0.0, "ve"),
        (torch.tensor([2.0, 1.0, 0.0]), -2.0, "ve"),
        (torch.tensor([2.0, 1.0, 0.0]), float("inf"), "ve"),
        (torch.tensor([2.0, 1.0, 0.0]), float("nan"), "ve"),
        (torch.tensor([0.5, 0.2, 0.0]), 0.0, "flow"),
        (torch.tensor([1.5, 0.5, 0.0]), 2.0, "flow"),
        (torch.tensor([0.5, 0.2, -0.1]), 2.0, "flow"),
        (torch.tensor([[0.5, 0.2]]), 2.0, "ve"),
        ([0.5, 0.2], 2.0, "ve"),
    ],
)
def test_shift_bad_args(sigmas, factor, kind):
    with pytest.raises(ValueError):
        shift_sigmas(sigmas, factor, kind)


# ---- flow time <-> sigma ----------------------------------------------------------


@HYP
@given(t=st.lists(st.floats(1e-4, 1.0), min_size=1, max_size=6), shift=st.floats(0.1, 5.0))
def test_flow_time_sigma_inverse_and_shift(t, shift):
    tt = torch.tensor(t, dtype=torch.float64)
    sig = flow_time_to_sigma(tt, shift)
    t_np = np.array(t)
    # unshifted sigma = (1 - t) / t; the shift divides it by s (LightningDiT's timestep shift)
    ref = (1 - t_np) / t_np / shift
    np.testing.assert_allclose(sig.numpy(), ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(flow_time_to_sigma(tt, 1.0).numpy() / shift, sig.numpy(), rtol=1e-9, atol=1e-12)
    back = sigma_to_flow_time(sig, shift)
    np.testing.assert_allclose(back.numpy(), t_np, rtol=1e-9, atol=1e-12)


@HYP
@given(sig=st.lists(st.floats(0.0, 1e3), min_size=1, max_size=6), shift=st.floats(0.1, 5.0))
def test_sigma_to_flow_time_inverse(sig, shift):
    s = torch.tensor(sig, dtype=torch.float64)
    t = sigma_to_flow_time(s, shift)
    # independent: unshifted time 1/(1 + s sigma), since the shift divides sigma by s
    np.testing.assert_allclose(t.numpy(), 1 / (1 + shift * np.array(sig)), rtol=1e-9)
    np.testing.assert_allclose(flow_time_to_sigma(t, shift).numpy(), sig, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shift", [0.1, 0.3, 1.0, 3.0])
def test_flow_time_endpoints(dtype, shift):
    s = flow_time_to_sigma(torch.tensor([0.0, 1.0], dtype=dtype), shift)
    assert math.isinf(s[0].item()) and s[0].item() > 0
    assert s[1].item() == 0.0
    assert s.dtype == dtype
    assert sigma_to_flow_time(torch.tensor([0.0], dtype=torch.float64), shift).item() == pytest.approx(1.0, abs=1e-15)


@HYP
@given(t=st.floats(1e-3, 1.0), shift=st.floats(0.1, 5.0), seed=st.integers(0, 2**31 - 1))
def test_flow_path_as_kdiffusion_state(t, shift, seed):
    """x_t = t x0 + (1-t) n in flow time; x_sigma = x_t / t = x0 + sigma n (LightningDiT's convention)."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(2, 3, dtype=torch.float64, generator=g)
    n = torch.randn(2, 3, dtype=torch.float64, generator=g)
    # the shifted schedule evaluates the path at t' = s t / (1 + (s - 1) t)
    tp = shift * t / (1 + (shift - 1) * t)
    x_t = tp * x0 + (1 - tp) * n
    sigma = flow_time_to_sigma(torch.tensor(t, dtype=torch.float64), shift).item()
    torch.testing.assert_close(x_t / tp, x0 + sigma * n, rtol=1e-9, atol=1e-9)
    v = x0 - n
    torch.testing.assert_close(x_t + (1 - tp) * v, x0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "fn,arg,shift",
    [
        (flow_time_to_sigma, [-0.1, 0.5], 1.0),
        (flow_time_to_sigma, [0.5, 1.1], 1.0),
        (flow_time_to_sigma, [0.5], 0.0),
        (flow_time_to_sigma, [0.5], -1.0),
        (flow_time_to_sigma, [0.5], float("inf")),
        (sigma_to_flow_time, [-1.0], 1.0),
        (sigma_to_flow_time, [1.0], 0.0),
    ],
)
def test_flow_conversion_bad_args(fn, arg, shift):
    with pytest.raises(ValueError):
        fn(torch.tensor(arg, dtype=torch.float64), shift)


# ---- flow_sigmas ------------------------------------------------------------------


@HYP
@given(n=st.integers(1, 300), shift=st.floats(0.1, 5.0))
def test_flow_sigmas(n, shift):
    second = (n - 1) / shift  # sigma at t = 1/n: (1 - 1/n) / (1/n) / s
    if n > 1 and second >= FLOW_SIGMA_MAX * (1 - 1e-9):
        if second > FLOW_SIGMA_MAX * (1 + 1e-9):
            with pytest.raises(ValueError):
                flow_sigmas(n, shift)
        return
    s = flow_sigmas(n, shift)
    assert s.dtype == torch.float64
    assert s.shape == (n + 1,)
    assert s[0].item() == FLOW_SIGMA_MAX
    assert s[-1].item() == 0.0
    assert (s[1:] < s[:-1]).all()
    t = np.linspace(0, 1, n + 1)
    tp = shift * t[1:-1] / (1 + (shift - 1) * t[1:-1])
    np.testing.assert_allclose(s[1:-1].numpy(), (1 - tp) / tp, rtol=1e-10)
    lin = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    assert torch.equal(s[1:], flow_time_to_sigma(lin, shift)[1:])


def test_flow_sigmas_custom_max_and_bad_args():
    s = flow_sigmas(10, 1.0, sigma_max=50.0)
    assert s[0].item() == 50.0 and s[1].item() == pytest.approx(9.0)
    with pytest.raises(ValueError):
        flow_sigmas(10, 1.0, sigma_max=5.0)  # second point is 9
    for bad in (0, -2, 3.0):
        with pytest.raises(ValueError):
            flow_sigmas(bad)


# ---- validate_sigmas --------------------------------------------------------------


@HYP
@given(sigmas=positive_schedules())
def test_validate_accepts_valid(sigmas):
    assert validate_sigmas(sigmas) is sigmas
    assert validate_sigmas(sigmas.float()) is not None


@pytest.mark.parametrize(
    "bad",
    [
        torch.tensor([3.0, float("nan"), 0.0]),
        torch.tensor([float("inf"), 1.0, 0.0]),
        torch.tensor([3.0, 1.0, -0.5]),
        torch.tensor([3.0, 3.0, 0.0]),
        torch.tensor([1.0, 3.0, 0.0]),
        torch.tensor([[3.0, 1.0, 0.0]]),
        torch.tensor([3.0]),
        torch.tensor([], dtype=torch.float32),
        torch.tensor([3, 1, 0]),
    ],
)
def test_validate_rejects(bad):
    with pytest.raises(ValueError, match="my_schedule"):
        validate_sigmas(bad, name="my_schedule")


@pytest.mark.parametrize("bad", [[3.0, 1.0, 0.0], np.array([3.0, 1.0, 0.0]), None])
def test_validate_rejects_non_tensor(bad):
    with pytest.raises((TypeError, ValueError), match="my_schedule"):
        validate_sigmas(bad, name="my_schedule")


@HYP
@given(sigmas=positive_schedules(min_points=3), data=st.data())
def test_validate_rejects_perturbed(sigmas, data):
    s = sigmas.clone()
    i = data.draw(st.integers(0, s.numel() - 1))
    kind = data.draw(st.sampled_from(["nan", "inf", "neg", "dup", "swap"]))
    if kind == "nan":
        s[i] = float("nan")
    elif kind == "inf":
        s[i] = float("inf")
    elif kind == "neg":
        s[i] = -1.0
    elif kind == "dup":
        j = min(i, s.numel() - 2)
        s[j + 1] = s[j]
    else:
        j = min(i, s.numel() - 2)
        s[j], s[j + 1] = s[j + 1].clone(), s[j].clone()
    with pytest.raises(ValueError, match="sigmas"):
        validate_sigmas(s)
