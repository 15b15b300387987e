"""Up/down-sampling between cascade levels, in plain torch.

These functions are the reference semantics: the Triton kernels in
`lowdiff_sched.kernels` must match them, and call them on the CPU.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

UpsampleMode = Literal["nearest", "bilinear"]
UPSAMPLE_MODES: tuple[str, ...] = ("nearest", "bilinear")
HALF = (torch.float16, torch.bfloat16)  # computed in float32 and rounded once


def check_image(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must be 4-D [B, C, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")


def _check_size(size: tuple[int, int] | list[int]) -> tuple[int, int]:
    checked = tuple(int(s) for s in size)
    if len(checked) != 2 or min(checked) <= 0:
        raise ValueError(f"size must be two positive ints (H, W), got {checked!r}")
    return checked


def integer_factor(low: tuple[int, int], high: tuple[int, int]) -> int:
    """The integer factor f with high == f * low in both dimensions, else ValueError."""
    (hl, wl), (hh, wh) = low, high
    if hh % hl or wh % wl or hh // hl != wh // wl:
        raise ValueError(f"size {high} is not one integer multiple of {low} in both dimensions")
    return hh // hl


def upsample(x: Tensor, size: tuple[int, int], mode: str = "nearest") -> Tensor:
    """Resize x [B, C, h, w] up to `size` (nearest, or bilinear with align_corners=False)."""
    check_image("x", x)
    size = _check_size(size)
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
    if size[0] < x.shape[-2] or size[1] < x.shape[-1]:
        raise ValueError(f"cannot upsample {tuple(x.shape[-2:])} to the smaller size {size}")
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def downsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Mean-pool x [B, C, H, W] down to `size` (area averaging; exact block means for integer factors)."""
    check_image("x", x)
    size = _check_size(size)
    if size[0] > x.shape[-2] or size[1] > x.shape[-1]:
        raise ValueError(f"cannot downsample {tuple(x.shape[-2:])} to the larger size {size}")
    if tuple(x.shape[-2:]) == size:
        return x
    return F.adaptive_avg_pool2d(x, size)


def per_sample(scale: float | Tensor, x: Tensor, name: str) -> float | Tensor:
    if isinstance(scale, Tensor):
        if scale.ndim == 0:
            return scale.to(x.dtype)
        if scale.ndim != 1 or scale.shape[0] != x.shape[0]:
            raise ValueError(f"{name} must be a float or a tensor of shape [{x.shape[0]}], got {tuple(scale.shape)}")
        return scale.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
    return float(scale)


def check_concat_inputs(x: Tensor, cond: Tensor, mode: str, out: Tensor | None) -> None:
    """The argument checks shared by every implementation of upsample_concat."""
    check_image("x", x)
    check_image("cond", cond)
    if cond.shape[0] != x.shape[0]:
        raise ValueError(f"x and cond have different batch sizes: {x.shape[0]} vs {cond.shape[0]}")
    if cond.dtype != x.dtype or cond.device != x.device:
        raise ValueError(f"x and cond must share dtype and device, got {x.dtype}/{x.device} and {cond.dtype}/{cond.device}")
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
    if cond.shape[-2] > x.shape[-2] or cond.shape[-1] > x.shape[-1]:
        raise ValueError(f"cond {tuple(cond.shape[-2:])} is larger than x {tuple(x.shape[-2:])}: cannot upsample it")
    if out is not None:
        shape = (x.shape[0], x.shape[1] + cond.shape[1], *x.shape[-2:])
        if not isinstance(out, Tensor) or tuple(out.shape) != shape or out.dtype != x.dtype or out.device != x.device:
            got = f"{tuple(out.shape)} {out.dtype} {out.device}" if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"out must be a {x.dtype} tensor of shape {shape} on {x.device}, got {got}")


def upsample_concat(
    x: Tensor,
    cond: Tensor,
    *,
    mode: str = "nearest",
    x_scale: float | Tensor = 1.0,
    cond_scale: float | Tensor = 1.0,
    out: Tensor | None = None,
) -> Tensor:
    """cat([x_scale * x, cond_scale * upsample(cond, x's size)], dim=1): a LowDiff network input.

    Scales are floats or per-sample tensors [B] (EDM's c_in depends on each sample's sigma);
    `out` is an optional preallocated [B, Cx + Cc, H, W] buffer.
    """
    check_concat_inputs(x, cond, mode, out)
    work = x.float() if x.dtype in HALF else x  # fp16/bf16: computed in float32, rounded once
    up = upsample(cond.to(work.dtype), (x.shape[-2], x.shape[-1]), mode)
    parts = [work * per_sample(x_scale, x, "x_scale"), up * per_sample(cond_scale, x, "cond_scale")]
    if out is None:
        return torch.cat(parts, dim=1).to(x.dtype)
    return torch.cat(parts, dim=1, out=out)


def check_renoise_inputs(x_low: Tensor, eps: Tensor, factor: int) -> None:
    """The argument checks shared by every implementation of upsample_renoise."""
    check_image("x_low", x_low)
    check_image("eps", eps)
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    b, c, h, w = x_low.shape
    if tuple(eps.shape) != (b, c, h * factor, w * factor):
        raise ValueError(f"eps must have shape {(b, c, h * factor, w * factor)}, got {tuple(eps.shape)}")
    if eps.dtype != x_low.dtype or eps.device != x_low.device:
        raise ValueError(f"x_low and eps must share dtype and device, got {x_low.dtype}/{x_low.device} and {eps.dtype}/{eps.device}")


def upsample_renoise(x_low: Tensor, eps: Tensor, sigma_low: float | Tensor, factor: int) -> Tensor:
    """Exact hand-over of a noisy state to a grid `factor` times finer:
    x_H = U(x_L) + f sigma_L (eps - U P eps), with U nearest upsampling and P mean pooling.

    x_H carries white noise of std f * sigma_L and mean-pools back to x_L exactly: the detail
    term has zero block means, and it lifts each pixel's noise variance from sigma_L^2 to
    (f sigma_L)^2 while cancelling the correlation U adds inside a block. `eps` is unit noise
    at the fine size.
    """
    check_renoise_inputs(x_low, eps, factor)
    if x_low.dtype in HALF:  # computed in float32, rounded once
        sigma = sigma_low.to(x_low.dtype).float() if isinstance(sigma_low, Tensor) else sigma_low  # as per_sample rounds it
        return upsample_renoise(x_low.float(), eps.float(), sigma, factor).to(x_low.dtype)
    h, w = x_low.shape[-2:]
    fine = (h * factor, w * factor)
    detail = eps - upsample(downsample(eps, (h, w)), fine)
    return upsample(x_low, fine) + detail * (per_sample(sigma_low, x_low, "sigma_low") * factor)
