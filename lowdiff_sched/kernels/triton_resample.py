"""Triton kernels for the resample ops; semantics are resample.py's, index maths are
torch.nn.functional.interpolate's (nearest: src = min(floor(dst * in/out), in - 1);
bilinear, align_corners=False: src = max((dst + 0.5) * in/out - 0.5, 0)).

Every kernel loads in the tensor's dtype, computes in float32 and rounds once, at the store,
so an fp16/bf16 result is the exact value on the same inputs rounded once (up to float32's own
error), as the reference in resample.py computes it.
Tensors of any strides are accepted (contiguous, channels_last, slices of a larger buffer); the
flat index is decomposed in the output's memory order so writes stay coalesced.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 1024
NEAREST, BILINEAR = 0, 1
MODES = {"nearest": NEAREST, "bilinear": BILINEAR}


@triton.jit
def _unflatten(n, C, H, W):
    """Flat NCHW index -> (b, c, h, w)."""
    w = n % W
    t = n // W
    h = t % H
    t = t // H
    return t // C, t % C, h, w


@triton.jit
def _source_index(o, scale, n_in, MODE: tl.constexpr):
    """Output index o -> (i0, i1, lambda1) of the source samples it reads."""
    of = o.to(tl.float32)
    if MODE == 0:
        i0 = tl.minimum((of * scale).to(tl.int32), n_in - 1)
        return i0, i0, tl.zeros_like(of)
    else:
        src = tl.maximum(scale * (of + 0.5) - 0.5, 0.0)
        i0 = src.to(tl.int32)  # src >= 0: truncation is floor
        i1 = tl.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0.to(tl.float32)


@triton.jit
def _axis_weight(o, s, scale, n_in, MODE: tl.constexpr):
    """How much output index o draws from source index s along one axis."""
    i0, i1, l1 = _source_index(o, scale, n_in, MODE)
    if MODE == 0:
        return tl.where(i0 == s, 1.0, 0.0)
    else:
        return tl.where(i0 == s, 1.0 - l1, 0.0) + tl.where(i1 == s, l1, 0.0)


@triton.jit
def _upsample_concat_fwd(
    x_ptr, cond_ptr, out_ptr, xs_ptr, cs_ptr,
    CX, CC, H, W, h, w,
    sxb, sxc, sxh, sxw, scb, scc, sch, scw, sob, soc, soh, sow,
    scale_h, scale_w, total,
    MODE: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = n < total
    C = CX + CC
    if CHANNELS_LAST:
        c = n % C
        t = n // C
        ow = t % W
        t = t // W
        oh = t % H
        b = t // H
    else:
        b, c, oh, ow = _unflatten(n, C, H, W)
    from_x = c < CX
    xs = tl.load(xs_ptr + b, mask=mask, other=0.0)
    cs = tl.load(cs_ptr + b, mask=mask, other=0.0)
    xv = tl.load(x_ptr + b * sxb + c * sxc + oh * sxh + ow * sxw, mask=mask & from_x, other=0.0).to(tl.float32)

    cmask = mask & (c >= CX)
    base = cond_ptr + b * scb + (c - CX) * scc
    y0, y1, ly = _source_index(oh, scale_h, h, MODE)
    x0, x1, lx = _source_index(ow, scale_w, w, MODE)
    if MODE == 0:
        up = tl.load(base + y0 * sch + x0 * scw, mask=cmask, other=0.0).to(tl.float32)
    else:
        v00 = tl.load(base + y0 * sch + x0 * scw, mask=cmask, other=0.0).to(tl.float32)
        v01 = tl.load(base + y0 * sch + x1 * scw, mask=cmask, other=0.0).to(tl.float32)
        v10 = tl.load(base + y1 * sch + x0 * scw, mask=cmask, other=0.0).to(tl.float32)
        v11 = tl.load(base + y1 * sch + x1 * scw, mask=cmask, other=0.0).to(tl.float32)
        # kept in float32 through the scaling: rounding here too would cost up to ~2 ulps in half precision
        up = (1.0 - ly) * ((1.0 - lx) * v00 + lx * v01) + ly * ((1.0 - lx) * v10 + lx * v11)
    val = tl.where(from_x, xv * xs, up * cs)
    tl.store(out_ptr + b * sob + c * soc + oh * soh + ow * sow, val.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scaled_slice(g_ptr, gx_ptr, xs_ptr, CX, H, W, sgb, sgc, sgh, sgw, total, BLOCK: tl.constexpr):
    """grad_x = x_scale * grad_out[:, :CX] (written contiguous)."""
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = n < total
    b, c, oh, ow = _unflatten(n, CX, H, W)
    g = tl.load(g_ptr + b * sgb + c * sgc + oh * sgh + ow * sgw, mask=mask, other=0.0).to(tl.float32)
    xs = tl.load(xs_ptr + b, mask=mask, other=0.0)
    tl.store(gx_ptr + n, (g * xs).to(gx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _upsample_adjoint(
    g_ptr, gc_ptr, cs_ptr,
    CX, CC, H, W, h, w,
    sgb, sgc, sgh, sgw,
    scale_h, scale_w, span_h, span_w, total,
    MODE: tl.constexpr, BLOCK: tl.constexpr,
):
    """grad_cond = cond_scale * U^T grad_out[:, CX:]: each source pixel gathers the output
    pixels whose interpolation reads it (no atomics, so the result is deterministic)."""
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = n < total
    b, cc, sy, sx = _unflatten(n, CC, h, w)
    # first output row/column that can read this source pixel (a safe lower bound)
    if MODE == 0:
        lo_y = tl.maximum((sy.to(tl.float32) / scale_h).to(tl.int32) - 1, 0)
        lo_x = tl.maximum((sx.to(tl.float32) / scale_w).to(tl.int32) - 1, 0)
    else:
        lo_y = tl.maximum(((sy.to(tl.float32) - 0.5) / scale_h - 0.5).to(tl.int32) - 2, 0)
        lo_x = tl.maximum(((sx.to(tl.float32) - 0.5) / scale_w - 0.5).to(tl.int32) - 2, 0)
    base = g_ptr + b * sgb + (CX + cc) * sgc
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for dy in range(0, span_h):
        oy = lo_y + dy
        wy = tl.where(oy < H, _axis_weight(oy, sy, scale_h, h, MODE), 0.0)
        for dx in range(0, span_w):
            ox = lo_x + dx
            wgt = wy * tl.where(ox < W, _axis_weight(ox, sx, scale_w, w, MODE), 0.0)
            g = tl.load(base + oy * sgh + ox * sgw, mask=mask & (wgt != 0.0), other=0.0).to(tl.float32)
            acc += g * wgt
    cs = tl.load(cs_ptr + b, mask=mask, other=0.0)
    tl.store(gc_ptr + n, (acc * cs).to(gc_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _upsample_renoise(
    xl_ptr, eps_ptr, out_ptr, sig_ptr,
    C, h, w,
    slb, slc, slh, slw, seb, sec, seh, sew, sob, soc, soh, sow, total,
    F: tl.constexpr, BLOCK: tl.constexpr,
):
    """x_H = U(x_L) + F sigma (eps - U P eps), one low-resolution pixel (an F x F block) per lane."""
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = n < total
    b, c, lh, lw = _unflatten(n, C, h, w)
    xl = tl.load(xl_ptr + b * slb + c * slc + lh * slh + lw * slw, mask=mask, other=0.0).to(tl.float32)
    coef = tl.load(sig_ptr + b, mask=mask, other=0.0) * F
    e_base = eps_ptr + b * seb + c * sec + (lh * F) * seh + (lw * F) * sew
    o_base = out_ptr + b * sob + c * soc + (lh * F) * soh + (lw * F) * sow
    block_sum = tl.zeros([BLOCK], dtype=tl.float32)
    for dy in tl.static_range(F):
        for dx in tl.static_range(F):
            block_sum += tl.load(e_base + dy * seh + dx * sew, mask=mask, other=0.0).to(tl.float32)
    mean = block_sum / (F * F)
    for dy in tl.static_range(F):
        for dx in tl.static_range(F):
            e = tl.load(e_base + dy * seh + dx * sew, mask=mask, other=0.0).to(tl.float32)
            tl.store(o_base + dy * soh + dx * sow, (xl + coef * (e - mean)).to(out_ptr.dtype.element_ty), mask=mask)


def _ratio(n_in: int, n_out: int) -> float:
    # interpolate's scale is the float32 quotient in / out; round the same way
    return float(np.float32(n_in) / np.float32(n_out))


def _grid(total: int) -> tuple[int]:
    return (triton.cdiv(total, BLOCK),)


def _channels_last(t: Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def upsample_concat_forward(x: Tensor, cond: Tensor, mode: str, xs: Tensor, cs: Tensor, out: Tensor) -> Tensor:
    """Fill `out` [B, CX + CC, H, W]; xs, cs are float32 [B] per-sample scales."""
    B, CX, H, W = x.shape
    _, CC, h, w = cond.shape
    total = out.numel()
    if total:
        _upsample_concat_fwd[_grid(total)](
            x, cond, out, xs, cs, CX, CC, H, W, h, w,
            *x.stride(), *cond.stride(), *out.stride(),
            _ratio(h, H), _ratio(w, W), total,
            MODE=MODES[mode], CHANNELS_LAST=_channels_last(out), BLOCK=BLOCK,
        )
    return out


def upsample_concat_backward(
    grad: Tensor, cx: int, cond_size: tuple[int, int], mode: str, xs: Tensor, cs: Tensor, need_x: bool, need_cond: bool
) -> tuple[Tensor | None, Tensor | None]:
    """(grad_x, grad_cond), both contiguous, from grad_out [B, CX + CC, H, W]."""
    B, C, H, W = grad.shape
    h, w = cond_size
    grad_x = grad_cond = None
    if need_x:
        grad_x = torch.empty((B, cx, H, W), dtype=grad.dtype, device=grad.device)
        if grad_x.numel():
            _scaled_slice[_grid(grad_x.numel())](grad, grad_x, xs, cx, H, W, *grad.stride(), grad_x.numel(), BLOCK=BLOCK)
    if need_cond:
        grad_cond = torch.empty((B, C - cx, h, w), dtype=grad.dtype, device=grad.device)
        if grad_cond.numel():
            # output rows that can read one source row: ratio + margin (twice that for bilinear)
            reach = 1 if mode == "nearest" else 2
            span_h, span_w = reach * math.ceil(H / h) + 4, reach * math.ceil(W / w) + 4
            _upsample_adjoint[_grid(grad_cond.numel())](
                grad, grad_cond, cs, cx, C - cx, H, W, h, w, *grad.stride(),
                _ratio(h, H), _ratio(w, W), span_h, span_w, grad_cond.numel(),
                MODE=MODES[mode], BLOCK=BLOCK,
            )
    return grad_x, grad_cond


def upsample_renoise(x_low: Tensor, eps: Tensor, sigma: Tensor, factor: int) -> Tensor:
    """The exact hand-over in one pass; sigma is float32 [B]."""
    B, C, h, w = x_low.shape
    out = torch.empty_like(eps)
    total = x_low.numel()
    if total:
        _upsample_renoise[_grid(total)](
            x_low, eps, out, sigma, C, h, w, *x_low.stride(), *eps.stride(), *out.stride(), total,
            F=factor, BLOCK=BLOCK,
        )
    return out
