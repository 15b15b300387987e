"""Distribution metrics for comparing sampler outputs with a known law.

The Frechet distance between Gaussians is the Wasserstein-2 distance squared; with the
exact Gaussian oracle it measures how far a sampler's output law is from the truth.
Everything is computed in float64 torch, on the device of the inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["gaussian_stats", "frechet_distance", "kernel_distance", "kernel_within"]

# Relative tolerances for "symmetric" and "positive semi-definite" at a public boundary.
_SYM_RTOL = 1e-6
_PSD_RTOL = 1e-6


def _as_float64(name: str, value: Any, device: torch.device | None = None) -> Tensor:
    if isinstance(value, Tensor):
        t = value.detach()
    elif isinstance(value, np.ndarray):
        try:
            t = torch.from_numpy(value)
        except TypeError:
            raise TypeError(f"{name} must hold real numbers, got numpy dtype {value.dtype}") from None
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
    t = t.to(dtype=torch.float64, device=device)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    return t


def _stats(name: str, samples: Any) -> tuple[Tensor, Tensor]:
    x = _as_float64(name, samples)
    if x.ndim == 0:
        raise ValueError(f"{name} must be samples [N, ...], got a scalar")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"{name} needs at least 2 samples for a covariance, got N={n}")
    x = x.reshape(n, -1)
    mean = x.mean(dim=0)
    xc = x - mean
    cov = xc.T @ xc / (n - 1)
    return mean, (cov + cov.T) / 2


def gaussian_stats(samples: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """(mean [D], unbiased covariance [D, D]) float64 of samples [N, ...] flattened to [N, D]."""
    return _stats("samples", samples)


def _moments(name: str, arg: Any) -> tuple[Tensor, Tensor]:
    """A checked (mean, cov) from samples or from a (mean, cov) pair."""
    if isinstance(arg, (tuple, list)):
        if len(arg) != 2:
            raise ValueError(f"{name} must be samples [N, ...] or a (mean, cov) pair, got a sequence of {len(arg)}")
        mean = _as_float64(f"{name} mean", arg[0])
        cov = _as_float64(f"{name} cov", arg[1], device=mean.device)
        if mean.ndim != 1:
            raise ValueError(f"{name} mean must be 1-D [D], got shape {tuple(mean.shape)}")
        if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
            raise ValueError(f"{name} cov must be a square matrix [D, D], got shape {tuple(cov.shape)}")
        if cov.shape[0] != mean.shape[0]:
            raise ValueError(
                f"{name} cov has shape {tuple(cov.shape)} but its mean has D={mean.shape[0]}"
            )
        scale = cov.abs().max().item() if cov.numel() else 0.0
        asym = (cov - cov.T).abs().max().item() if cov.numel() else 0.0
        if asym > _SYM_RTOL * scale:
            raise ValueError(f"{name} cov is not symmetric (max |cov - cov^T| = {asym:.3g})")
        return mean, (cov + cov.T) / 2
    return _stats(name, arg)


def _check_psd(name: str, w: Tensor) -> None:
    top = w.abs().max().item() if w.numel() else 0.0
    if w.numel() and w.min().item() < -_PSD_RTOL * top:
        raise ValueError(f"{name} cov is not positive semi-definite (eigenvalue {w.min().item():.3g})")


def frechet_distance(a: Any, b: Any) -> float:
    """Frechet (Wasserstein-2 squared) distance between two Gaussians, each given as
    samples [N, ...] or a (mean, cov) pair:
    FD = |m1 - m2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)."""
    m1, S1 = _moments("a", a)
    m2, S2 = _moments("b", b)
    if m1.shape != m2.shape:
        raise ValueError(f"a and b have different dimensions: D={m1.shape[0]} vs D={m2.shape[0]}")
    m2, S2 = m2.to(m1.device), S2.to(m1.device)
    w1, v1 = torch.linalg.eigh(S1)
    _check_psd("a", w1)
    _check_psd("b", torch.linalg.eigvalsh(S2))
    # Eigenvalues within rounding of 0 are clipped: sample covariances are often singular.
    root1 = (v1 * w1.clamp_min(0).sqrt()) @ v1.T
    M = root1 @ S2 @ root1
    ev = torch.linalg.eigvalsh((M + M.T) / 2)
    tr_cross = ev.clamp_min(0).sqrt().sum()
    fd = (m1 - m2).square().sum() + torch.trace(S1) + torch.trace(S2) - 2 * tr_cross
    return max(float(fd), 0.0)


def _kernel(u: Tensor, v: Tensor) -> Tensor:
    return (u @ v.T / u.shape[1] + 1) ** 3


def kernel_within(b: Any) -> float:
    """A feature set's own term of `kernel_distance`: the mean kernel over its distinct pairs.
    A fixed reference's is computed once and passed as `within_b`."""
    y = _as_float64("b", b)
    if y.ndim != 2 or y.shape[0] < 2:
        raise ValueError(f"b must be features [M, D] with M >= 2, got {tuple(y.shape)}")
    k = _kernel(y, y)
    return float((k.sum() - k.diagonal().sum()) / (y.shape[0] * (y.shape[0] - 1)))


def kernel_distance(a: Any, b: Any, within_b: float | None = None) -> float:
    """The unbiased squared MMD between two feature sets [N, D] and [M, D] under the cubic
    polynomial kernel k(x, y) = (x.y / D + 1)^3: the Kernel Inception Distance of
    "Demystifying MMD GANs" (Binkowski et al., 2018, Sec. 4) on all samples at once, in any
    feature space. `within_b` is b's `kernel_within`, if already known."""
    x, y = _as_float64("a", a), _as_float64("b", b)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"a and b must be features [N, D] and [M, D], got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"the kernel distance needs at least 2 samples on each side, got {x.shape[0]} and {y.shape[0]}")
    y = y.to(x.device)
    return kernel_within(x) + (kernel_within(y) if within_b is None else within_b) - 2 * float(_kernel(x, y).mean())
