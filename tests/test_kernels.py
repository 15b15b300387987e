"""The Triton kernels against resample.py's reference, run by Triton's interpreter on the CPU
(TRITON_INTERPRET=1, set in conftest.py) or on a GPU when there is one."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lowdiff_sched import kernels, resample

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def force_triton(monkeypatch):
    monkeypatch.setenv("LOWDIFF_KERNELS", "triton")


def close(a: torch.Tensor, b: torch.Tensor, exact: bool) -> None:
    """Nearest is a gather and a multiply: bit-exact, except that Triton's interpreter casts
    float32 to bfloat16 by truncation where torch (and a GPU) rounds to nearest even, so
    bfloat16 may differ by one unit in the last place. Bilinear: float rounding only."""
    assert a.shape == b.shape and a.dtype == b.dtype
    if exact and (a.dtype != torch.bfloat16 or a.is_cuda):
        assert torch.equal(a, b), (a - b).abs().max()
        return
    tol = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[a.dtype]
    torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol)


def layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


case = st.fixed_dictionaries(
    {
        "b": st.integers(1, 2), "cx": st.integers(1, 3), "cc": st.integers(1, 3),
        "h": st.integers(1, 6), "w": st.integers(1, 6), "dh": st.integers(0, 7), "dw": st.integers(0, 7),
        "mode": st.sampled_from(["nearest", "bilinear"]), "dtype": st.sampled_from(DTYPES),
        "x_last": st.booleans(), "cond_last": st.booleans(), "use_out": st.booleans(),
        "per_sample": st.booleans(), "seed": st.integers(0, 2**16),
    }
)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(c=case)
def test_upsample_concat_matches_reference(c):
    gen = torch.Generator().manual_seed(c["seed"])
    H, W = c["h"] + c["dh"], c["w"] + c["dw"]  # any larger size, integer ratio or not
    x = layout(torch.randn(c["b"], c["cx"], H, W, generator=gen).to(DEVICE, c["dtype"]), c["x_last"])
    cond = layout(torch.randn(c["b"], c["cc"], c["h"], c["w"], generator=gen).to(DEVICE, c["dtype"]), c["cond_last"])
    if c["per_sample"]:
        xs, cs = torch.rand(c["b"], generator=gen).to(DEVICE), torch.randn(c["b"], generator=gen).to(DEVICE)
    else:
        xs, cs = 0.7, -1.3
    ref = resample.upsample_concat(x, cond, mode=c["mode"], x_scale=xs, cond_scale=cs)
    out = None
    if c["use_out"]:
        out = layout(torch.full(ref.shape, float("nan"), dtype=c["dtype"], device=DEVICE), c["x_last"])
    got = kernels.upsample_concat(x, cond, mode=c["mode"], x_scale=xs, cond_scale=cs, out=out)
    assert out is None or got.data_ptr() == out.data_ptr()
    close(got, ref, exact=c["mode"] == "nearest")


def test_msf_ratio_12_to_16_and_1x1_and_same_size():
    gen = torch.Generator().manual_seed(0)
    for (h, H) in [(12, 16), (1, 5), (7, 7)]:
        x = torch.randn(2, 2, H, H, generator=gen).to(DEVICE)
        cond = torch.randn(2, 3, h, h, generator=gen).to(DEVICE)
        for mode in ("nearest", "bilinear"):
            close(kernels.upsample_concat(x, cond, mode=mode), resample.upsample_concat(x, cond, mode=mode), exact=mode == "nearest")


def test_writes_into_a_slice_of_a_larger_buffer():
    """`out` may be a non-contiguous view, e.g. channels 2..7 of a bigger network input."""
    x, cond = torch.randn(2, 3, 8, 8).to(DEVICE), torch.randn(2, 2, 4, 4).to(DEVICE)
    big = torch.zeros(2, 9, 8, 8, device=DEVICE)
    kernels.upsample_concat(x, cond, out=big[:, 2:7])
    assert torch.equal(big[:, 2:7], resample.upsample_concat(x, cond))
    assert big[:, :2].abs().sum() == 0 and big[:, 7:].abs().sum() == 0


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(
    b=st.integers(1, 2), cx=st.integers(1, 2), cc=st.integers(1, 2), h=st.integers(1, 5), w=st.integers(1, 5),
    dh=st.integers(0, 6), dw=st.integers(0, 6), mode=st.sampled_from(["nearest", "bilinear"]),
    grad_last=st.booleans(), seed=st.integers(0, 2**16),
)
def test_backward_matches_reference_autograd(b, cx, cc, h, w, dh, dw, mode, grad_last, seed):
    gen = torch.Generator().manual_seed(seed)
    H, W = h + dh, w + dw
    x = torch.randn(b, cx, H, W, generator=gen).to(DEVICE).requires_grad_()
    cond = torch.randn(b, cc, h, w, generator=gen).to(DEVICE).requires_grad_()
    xs = torch.rand(b, generator=gen).to(DEVICE).requires_grad_()
    cs = torch.rand(b, generator=gen).to(DEVICE).requires_grad_()
    g = layout(torch.randn(b, cx + cc, H, W, generator=gen).to(DEVICE), grad_last)
    ours = torch.autograd.grad(kernels.upsample_concat(x, cond, mode=mode, x_scale=xs, cond_scale=cs), [x, cond, xs, cs], g)
    ref = torch.autograd.grad(resample.upsample_concat(x, cond, mode=mode, x_scale=xs, cond_scale=cs), [x, cond, xs, cs], g)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("sizes", [((3, 4), (8, 8)), ((12, 12), (16, 16)), ((1, 1), (4, 3)), ((5, 5), (5, 5))])
def test_kernel_adjoint_is_the_transpose_of_upsampling(mode, sizes):
    """<U c, g> == <c, U^T g>: the backward kernel is the exact adjoint of the forward map."""
    (h, w), (H, W) = sizes
    gen = torch.Generator().manual_seed(1)
    cond = torch.randn(2, 3, h, w, generator=gen).to(DEVICE).requires_grad_()
    g = torch.randn(2, 3, H, W, generator=gen).to(DEVICE)
    x = torch.zeros(2, 0, H, W, device=DEVICE)
    (adjoint,) = torch.autograd.grad(kernels.upsample_concat(x, cond, mode=mode), [cond], g)
    lhs = (resample.upsample(cond.detach().double(), (H, W), mode) * g.double()).sum()
    assert lhs.item() == pytest.approx((cond.detach().double() * adjoint.double()).sum().item(), rel=1e-5)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_reference_gradients_pass_gradcheck(mode):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 2, 5, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    cond = torch.randn(2, 1, 3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    xs = torch.rand(2, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c, s: resample.upsample_concat(a, c, mode=mode, x_scale=s, cond_scale=0.5), (x, cond, xs))


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(
    b=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 5), w=st.integers(1, 5), f=st.integers(1, 4),
    dtype=st.sampled_from(DTYPES), per_sample=st.booleans(), channels_last=st.booleans(), seed=st.integers(0, 2**16),
)
def test_upsample_renoise_matches_reference(b, c, h, w, f, dtype, per_sample, channels_last, seed):
    gen = torch.Generator().manual_seed(seed)
    x_low = layout(torch.randn(b, c, h, w, generator=gen).to(DEVICE, dtype), channels_last)
    eps = layout(torch.randn(b, c, h * f, w * f, generator=gen).to(DEVICE, dtype), channels_last)
    sigma = torch.rand(b, generator=gen).to(DEVICE) * 10 if per_sample else 3.5
    got = kernels.upsample_renoise(x_low, eps, sigma, f)
    ref = resample.upsample_renoise(x_low, eps, sigma, f)
    # the reference rounds after each of its ops; the kernel once, in float32
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 8e-2}[dtype] * (1 + 10 * f)
    torch.testing.assert_close(got.float(), ref.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(resample.downsample(got.float(), (h, w)), x_low.float(), rtol=tol, atol=tol)


def test_dispatch(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.setenv("LOWDIFF_KERNELS", "auto")
    assert kernels.backend(cpu) == "torch"
    monkeypatch.setenv("LOWDIFF_KERNELS", "torch")
    assert kernels.backend(cpu) == "torch"
    monkeypatch.setenv("LOWDIFF_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        kernels.backend(cpu)
    monkeypatch.setenv("LOWDIFF_KERNELS", "fast")
    with pytest.raises(ValueError, match="LOWDIFF_KERNELS must be one of"):
        kernels.backend(cpu)


def test_float64_takes_the_exact_reference():
    x, cond = torch.randn(1, 2, 6, 6, dtype=torch.float64), torch.randn(1, 2, 3, 3, dtype=torch.float64)
    assert torch.equal(kernels.upsample_concat(x, cond, mode="bilinear"), resample.upsample_concat(x, cond, mode="bilinear"))


def test_bad_input_is_a_clear_value_error():
    x, cond = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)
    cases = [
        ((x, cond[:1]), {}, "different batch sizes"),
        ((x[0], cond), {}, "4-D"),
        ((x.long(), cond.long()), {}, "floating-point"),
        ((cond, x), {}, "larger than x"),
        ((x, cond.half()), {}, "share dtype"),
        ((x, cond), {"mode": "bicubic"}, "mode"),
        ((x, cond), {"out": torch.empty(2, 5, 8, 8)}, "out must be"),
        ((x, cond), {"x_scale": torch.ones(3)}, "x_scale"),
        ((x.requires_grad_(), cond), {"out": torch.empty(2, 6, 8, 8)}, "automatic differentiation"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            kernels.upsample_concat(*args, **kwargs)
    with pytest.raises(ValueError, match="eps must have shape"):
        kernels.upsample_renoise(torch.randn(1, 1, 2, 2), torch.randn(1, 1, 3, 3), 1.0, 2)
    with pytest.raises(ValueError, match="factor"):
        kernels.upsample_renoise(torch.randn(1, 1, 2, 2), torch.randn(1, 1, 4, 4), 1.0, 0)


# Rounding: the fused ops compute in float32 and round once to fp16/bf16 (issue 14, item 15),
# checked against exact float64 arithmetic on the same low-precision inputs.

HALF = [torch.float16, torch.bfloat16]
TINY = 2.0**-24  # float32's unit roundoff: the scale of the kernels' own arithmetic error


def ulp(ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of `dtype` at each |ref| (float64), subnormal range included."""
    fi = torch.finfo(dtype)
    _, e = torch.frexp(ref.abs())  # |ref| = m * 2**e, m in [0.5, 1)
    return torch.ldexp(torch.full_like(ref, fi.eps), (e - 1).clamp_min(int(math.log2(fi.tiny))))


def assert_rounded_once(got: torch.Tensor, ref: torch.Tensor, slack: torch.Tensor, triton_path: bool) -> None:
    """`got` is float64 `ref` (exact up to the float32 `slack`) rounded once: within half an ulp,
    or under one ulp where Triton's interpreter truncates float32 to bfloat16 (see close())."""
    truncates = triton_path and got.dtype == torch.bfloat16 and not got.is_cuda
    err, unit = (got.double() - ref).abs(), ulp(ref, got.dtype)
    bad = err > (1.0 if truncates else 0.5) * unit + slack
    assert not bad.any(), f"{int(bad.sum())} of {bad.numel()} off; worst {(err / unit).max().item():.2f} ulp"


def axis_weights(n_in: int, n_out: int, mode: str) -> torch.Tensor:
    """[n_in, n_out] float64: how much each output index takes from each source index, with
    interpolate's own float32 source coordinates (the convention the kernels implement)."""
    eye = torch.eye(n_in)[None]  # 1-D interpolation of unit impulses gives the weights
    if mode == "nearest":
        return F.interpolate(eye, size=n_out, mode="nearest")[0].double()
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].double()


def exact_upsample(cond: torch.Tensor, size: tuple[int, int], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(U cond, U |cond|) in float64; the second bounds the terms the first sums."""
    (h, w), (H, W) = cond.shape[-2:], size
    ah, aw = axis_weights(h, H, mode), axis_weights(w, W, mode)
    c = cond.double().cpu()
    return torch.einsum("kH,bckl,lW->bcHW", ah, c, aw), torch.einsum("kH,bckl,lW->bcHW", ah, c.abs(), aw)


def test_axis_weights_are_interpolates_bilinear():
    """The exact reference below follows interpolate (float32 coordinates: equal to ~1e-6)."""
    c = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    exact, _ = exact_upsample(c, (9, 11), "bilinear")
    torch.testing.assert_close(exact, F.interpolate(c, size=(9, 11), mode="bilinear", align_corners=False), rtol=0, atol=1e-5)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    b=st.integers(1, 2), cx=st.integers(0, 2), cc=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6),
    dh=st.integers(0, 9), dw=st.integers(0, 9), mode=st.sampled_from(["nearest", "bilinear"]),
    dtype=st.sampled_from(HALF), per_sample=st.booleans(), path=st.sampled_from(["triton", "torch"]),
    seed=st.integers(0, 2**16),
)
def test_upsample_concat_rounds_once(b, cx, cc, h, w, dh, dw, mode, dtype, per_sample, path, seed):
    """Both paths (Triton and the torch fallback) interpolate, scale and round once: within
    half an ulp of exact float64 arithmetic on the same inputs and scales."""
    gen = torch.Generator().manual_seed(seed)
    H, W = h + dh, w + dw
    x = torch.randn(b, cx, H, W, generator=gen).to(DEVICE, dtype)
    cond = torch.randn(b, cc, h, w, generator=gen).to(DEVICE, dtype)
    if per_sample:  # values the low-precision dtype holds, so the scales are exact inputs too
        xs, cs = (2 * torch.randn(b, generator=gen)).to(dtype).to(DEVICE), (2 * torch.randn(b, generator=gen)).to(dtype).to(DEVICE)
    else:
        xs, cs = 0.75, -1.375
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOWDIFF_KERNELS", path)
        got = kernels.upsample_concat(x, cond, mode=mode, x_scale=xs, cond_scale=cs).cpu()

    def col(s: float | torch.Tensor) -> torch.Tensor:
        return s.double().cpu().view(-1, 1, 1, 1) if isinstance(s, torch.Tensor) else torch.tensor(s, dtype=torch.float64)

    up, up_abs = exact_upsample(cond, (H, W), mode)
    ref = torch.cat([x.double().cpu() * col(xs), up * col(cs)], dim=1)
    # float32's own error: a few roundings of the terms summed, and the coordinates (GPU FMA)
    slack = torch.cat([torch.zeros_like(x, dtype=torch.float64).cpu(), (8 + 2 * max(h, w)) * TINY * up_abs * col(cs).abs()], dim=1)
    assert_rounded_once(got, ref, slack, triton_path=path == "triton")


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(
    b=st.integers(1, 2), c=st.integers(1, 2), h=st.integers(1, 4), w=st.integers(1, 4), f=st.integers(1, 4),
    dtype=st.sampled_from(HALF), per_sample=st.booleans(), path=st.sampled_from(["triton", "torch"]),
    seed=st.integers(0, 2**16),
)
def test_upsample_renoise_rounds_once(b, c, h, w, f, dtype, per_sample, path, seed):
    """The hand-over, on both paths, is the exact float64 value rounded once."""
    gen = torch.Generator().manual_seed(seed)
    x_low = torch.randn(b, c, h, w, generator=gen).to(DEVICE, dtype)
    eps = torch.randn(b, c, h * f, w * f, generator=gen).to(DEVICE, dtype)
    sigma = (4 * torch.rand(b, generator=gen)).to(dtype).to(DEVICE) if per_sample else 2.5
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOWDIFF_KERNELS", path)
        got = kernels.upsample_renoise(x_low, eps, sigma, f).cpu()

    s = sigma.double().cpu().view(-1, 1, 1, 1) if per_sample else torch.tensor(sigma, dtype=torch.float64)
    xl, e = x_low.double().cpu(), eps.double().cpu()

    def up(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(f, -2).repeat_interleave(f, -1)

    ref = up(xl) + f * s * (e - up(F.avg_pool2d(e, f)))
    # float32's own error: the block sum of f * f terms, then a few roundings
    slack = (f * f + 8) * TINY * (up(xl.abs()) + f * s.abs() * (e.abs() + up(F.avg_pool2d(e.abs(), f))))
    assert_rounded_once(got, ref, slack, triton_path=path == "triton")
