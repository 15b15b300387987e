"""Fused resample ops: Triton on CUDA, the plain-torch reference (resample.py) elsewhere.

`upsample_concat` builds a LowDiff network input in one pass (read x and cond once, write
the result once) instead of interpolate + two scalings + cat; its backward is a Triton
kernel too. `upsample_renoise` is the exact noisy hand-over in one pass.

Dispatch, per call: CUDA tensors use Triton, anything else the reference. The environment
variable LOWDIFF_KERNELS forces a path: "torch" everywhere, or "triton" (on CPU tensors this
needs TRITON_INTERPRET=1, Triton's interpreter, which is how the tests run the kernels).
float64 always takes the reference: the kernels compute in float32. Both paths round an
fp16/bf16 result once, from float32: the kernels at their store, the reference at its end.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from .. import resample
from ..resample import check_concat_inputs, check_renoise_inputs

__all__ = ["backend", "upsample_concat", "upsample_renoise"]

BACKENDS = ("auto", "triton", "torch")


def backend(t: Tensor) -> str:
    """'triton' or 'torch': the path an op on tensor `t` takes now."""
    choice = os.environ.get("LOWDIFF_KERNELS", "auto").lower() or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"LOWDIFF_KERNELS must be one of {BACKENDS}, got {choice!r}")
    if choice == "torch":
        return "torch"
    if choice == "auto":
        return "triton" if t.is_cuda and _triton_available() else "torch"
    if not _triton_available():
        raise ValueError("LOWDIFF_KERNELS=triton but Triton cannot be imported")
    if not t.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"LOWDIFF_KERNELS=triton needs CUDA tensors (got {t.device}) or TRITON_INTERPRET=1")
    return "triton"


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _scale_vector(scale: float | Tensor, x: Tensor, name: str) -> Tensor:
    """A float32 [B] vector holding exactly the factor the reference multiplies by:
    a Python float as float32, a tensor rounded to x's dtype first (see resample.per_sample)."""
    b = x.shape[0]
    if isinstance(scale, Tensor):
        if scale.ndim not in (0, 1) or (scale.ndim == 1 and scale.shape[0] != b):
            raise ValueError(f"{name} must be a float or a tensor of shape [{b}], got {tuple(scale.shape)}")
        return scale.to(device=x.device, dtype=x.dtype).to(torch.float32).expand(b).contiguous()
    return torch.full((b,), float(scale), dtype=torch.float32, device=x.device)


class _UpsampleConcat(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, cond: Tensor, mode: str, xs: Tensor, cs: Tensor, out: Tensor | None) -> Tensor:
        from .triton_resample import upsample_concat_forward

        if out is None:
            fmt = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
            out = torch.empty((x.shape[0], x.shape[1] + cond.shape[1], *x.shape[-2:]), dtype=x.dtype, device=x.device, memory_format=fmt)
        upsample_concat_forward(x, cond, mode, xs, cs, out)
        ctx.mode, ctx.cx, ctx.cond_size = mode, x.shape[1], tuple(cond.shape[-2:])
        ctx.save_for_backward(x, cond, xs, cs)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        from .triton_resample import upsample_concat_backward

        x, cond, xs, cs = ctx.saved_tensors
        need_x, need_cond, _, need_xs, need_cs, _ = ctx.needs_input_grad
        grad_x, grad_cond = upsample_concat_backward(
            grad, ctx.cx, ctx.cond_size, ctx.mode, xs, cs, need_x, need_cond
        )
        # per-sample scales rarely need gradients; plain torch is enough there
        grad_xs = (grad[:, : ctx.cx].float() * x.float()).sum(dim=(1, 2, 3)) if need_xs else None
        grad_cs = None
        if need_cs:
            up = resample.upsample(cond.float(), (grad.shape[-2], grad.shape[-1]), ctx.mode)  # unrounded, as in the forward
            grad_cs = (grad[:, ctx.cx :].float() * up).sum(dim=(1, 2, 3))
        return grad_x, grad_cond, None, grad_xs, grad_cs, None


def _is_channels_last(x: Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def upsample_concat(
    x: Tensor,
    cond: Tensor,
    *,
    mode: str = "nearest",
    x_scale: float | Tensor = 1.0,
    cond_scale: float | Tensor = 1.0,
    out: Tensor | None = None,
) -> Tensor:
    """cat([x_scale * x, cond_scale * upsample(cond, x's size)], dim=1), fused on CUDA.

    Same contract as `lowdiff_sched.resample.upsample_concat`: nearest or bilinear
    (align_corners=False) to any larger size, float or per-sample [B] scales, fp32/fp16/bf16
    (fp32 arithmetic, rounded once), any strides, optional preallocated `out`. Differentiable.
    """
    check_concat_inputs(x, cond, mode, out)
    if x.dtype == torch.float64 or backend(x) == "torch":
        return resample.upsample_concat(x, cond, mode=mode, x_scale=x_scale, cond_scale=cond_scale, out=out)
    xs, cs = _scale_vector(x_scale, x, "x_scale"), _scale_vector(cond_scale, x, "cond_scale")
    if out is not None and torch.is_grad_enabled() and any(t.requires_grad for t in (x, cond, xs, cs)):
        raise ValueError("out= does not support automatic differentiation; drop out= or run under torch.no_grad()")
    return _UpsampleConcat.apply(x, cond, mode, xs, cs, out)


def upsample_renoise(x_low: Tensor, eps: Tensor, sigma_low: float | Tensor, factor: int) -> Tensor:
    """x_H = U(x_L) + f sigma_L (eps - U P eps) in one pass on CUDA (see
    `lowdiff_sched.resample.upsample_renoise`). Inputs that need gradients take the
    reference path, which autograd differentiates."""
    check_renoise_inputs(x_low, eps, factor)
    sigma = _scale_vector(sigma_low, x_low, "sigma_low")
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in (x_low, eps, sigma_low)
    )
    if needs_grad or x_low.dtype == torch.float64 or backend(x_low) == "torch":
        return resample.upsample_renoise(x_low, eps, sigma_low, factor)
    from .triton_resample import upsample_renoise as fused

    return fused(x_low, eps, sigma, factor)
