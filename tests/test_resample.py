"""resample.py (the reference semantics of the kernels) and the transition objects."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowdiff_sched.resample import downsample, integer_factor, upsample, upsample_concat, upsample_renoise
from lowdiff_sched.transitions import Condition, Continue, Renoise, transition_from_dict

shapes = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5))
factors = st.integers(1, 4)
float_dtypes = st.sampled_from([torch.float32, torch.float64])


@settings(max_examples=40, deadline=None)
@given(shape=shapes, f=factors, dtype=float_dtypes, seed=st.integers(0, 2**16))
def test_nearest_upsample_is_block_repetition(shape, f, dtype, seed):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    ref = x.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)
    assert torch.equal(upsample(x, (shape[2] * f, shape[3] * f), "nearest"), ref)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, f=factors, seed=st.integers(0, 2**16))
def test_downsample_is_block_mean_and_inverts_nearest(shape, f, seed):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    b, c, h, w = shape
    big = torch.randn(b, c, h * f, w * f, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    ref = big.reshape(b, c, h, f, w, f).mean(dim=(3, 5))
    torch.testing.assert_close(downsample(big, (h, w)), ref)
    torch.testing.assert_close(downsample(upsample(x, (h * f, w * f)), (h, w)), x)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 6), w=st.integers(1, 6), out_h=st.integers(6, 13), out_w=st.integers(6, 13), seed=st.integers(0, 99))
def test_bilinear_reproduces_planes_away_from_borders(h, w, out_h, out_w, seed):
    """align_corners=False bilinear maps output pixel centre i to source coordinate
    (i + 0.5) * h / H - 0.5; a linear ramp must come out as the ramp at that coordinate,
    wherever the coordinate lies inside the source grid (independent of torch's code)."""
    gen = torch.Generator().manual_seed(seed)
    a, b, c = torch.randn(3, generator=gen, dtype=torch.float64)
    ys, xs = torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64)
    plane = (a + b * ys[:, None] + c * xs[None, :]).expand(1, 1, h, w)
    out = upsample(plane, (out_h, out_w), "bilinear")[0, 0]
    src_y = ((torch.arange(out_h, dtype=torch.float64) + 0.5) * h / out_h - 0.5).clamp(0, h - 1)
    src_x = ((torch.arange(out_w, dtype=torch.float64) + 0.5) * w / out_w - 0.5).clamp(0, w - 1)
    torch.testing.assert_close(out, a + b * src_y[:, None] + c * src_x[None, :])


@settings(max_examples=30, deadline=None)
@given(shape=shapes, f=factors, per_sample=st.booleans(), mode=st.sampled_from(["nearest", "bilinear"]), seed=st.integers(0, 99))
def test_upsample_concat_scales_and_stacks(shape, f, per_sample, mode, seed):
    gen = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    x = torch.randn(b, c + 1, h * f, w * f, generator=gen)
    cond = torch.randn(b, c, h, w, generator=gen)
    xs = torch.rand(b, generator=gen) if per_sample else 0.7
    cs = torch.rand(b, generator=gen) if per_sample else -1.5
    out = upsample_concat(x, cond, mode=mode, x_scale=xs, cond_scale=cs)
    view = (lambda s: s.view(-1, 1, 1, 1)) if per_sample else (lambda s: s)
    ref = torch.cat([x * view(xs), upsample(cond, (h * f, w * f), mode) * view(cs)], dim=1)
    assert out.shape == (b, 2 * c + 1, h * f, w * f)
    torch.testing.assert_close(out, ref)


@settings(max_examples=30, deadline=None)
@given(shape=shapes, f=st.integers(2, 4), sigma=st.floats(0.01, 50.0), seed=st.integers(0, 99))
def test_renoise_handover_pools_back_exactly(shape, f, sigma, seed):
    gen = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    x_low = torch.randn(shape, generator=gen, dtype=torch.float64)
    eps = torch.randn(b, c, h * f, w * f, generator=gen, dtype=torch.float64)
    x_high = upsample_renoise(x_low, eps, sigma, f)
    torch.testing.assert_close(downsample(x_high, (h, w)), x_low)


def test_renoise_handover_noise_is_white_with_std_f_sigma():
    """x_L = sigma_L * eps_L (pure noise): the hand-over must be white noise of std f sigma_L,
    with no correlation inside the f x f blocks (which plain nearest upsampling would have)."""
    gen = torch.Generator().manual_seed(0)
    f, sigma = 2, 3.0
    x_low = sigma * torch.randn(20000, 1, 2, 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(20000, 1, 4, 4, generator=gen, dtype=torch.float64)
    x_high = upsample_renoise(x_low, eps, sigma, f).flatten(1)
    corr = torch.cov(x_high.T) / (f * sigma) ** 2  # standard error of each entry about 0.01
    torch.testing.assert_close(corr, torch.eye(16, dtype=torch.float64), atol=0.06, rtol=0)
    nearest = upsample(x_low, (4, 4)).flatten(1)
    assert torch.cov(nearest.T)[0, 1] > 5  # the naive hand-over is block-correlated


def test_per_sample_sigma_in_renoise():
    x_low, eps = torch.zeros(2, 1, 2, 2), torch.randn(1, 1, 4, 4).repeat(2, 1, 1, 1)
    out = upsample_renoise(x_low, eps, torch.tensor([1.0, 2.0]), 2)
    torch.testing.assert_close(out[1], 2 * out[0])


def test_integer_factor():
    assert integer_factor((8, 4), (32, 16)) == 4
    with pytest.raises(ValueError, match="integer multiple"):
        integer_factor((12, 12), (16, 16))
    with pytest.raises(ValueError, match="integer multiple"):
        integer_factor((8, 8), (16, 32))


def test_bad_input_errors():
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match="4-D"):
        upsample(torch.randn(4, 4), (8, 8))
    with pytest.raises(ValueError, match="floating-point"):
        upsample(torch.ones(1, 1, 4, 4, dtype=torch.int64), (8, 8))
    with pytest.raises(ValueError, match="smaller size"):
        upsample(x, (2, 2))
    with pytest.raises(ValueError, match="mode"):
        upsample(x, (8, 8), "bicubic")
    with pytest.raises(ValueError, match="larger size"):
        downsample(x, (8, 8))
    with pytest.raises(ValueError, match="batch sizes"):
        upsample_concat(torch.randn(2, 1, 8, 8), x)
    with pytest.raises(ValueError, match="x_scale"):
        upsample_concat(torch.randn(2, 1, 8, 8), torch.randn(2, 1, 4, 4), x_scale=torch.ones(3))
    with pytest.raises(ValueError, match="eps must have shape"):
        upsample_renoise(x, torch.randn(1, 1, 4, 4), 1.0, 2)
    with pytest.raises(TypeError, match="torch.Tensor"):
        upsample([[1.0]], (2, 2))


@pytest.mark.parametrize("t", [Condition(), Condition("bilinear"), Renoise(), Renoise("nearest"), Continue(), Continue(1e-3)])
def test_transitions_round_trip_through_dicts(t):
    assert transition_from_dict(t.to_dict()) == t


def test_transition_errors():
    with pytest.raises(ValueError, match="mode"):
        Condition("area")
    with pytest.raises(ValueError, match="stage 3: unknown transition type 'warp'"):
        transition_from_dict({"type": "warp"}, 3)
    with pytest.raises(ValueError, match="has no field"):
        transition_from_dict({"type": "condition", "bogus": 1})
