"""MSF's multi-scale residual factorization ("MSF: Efficient Diffusion Model Via Multi-Scale Latent Factorize", Alg. 1 and 2), as tensor functions.

A signal f at the final size (h_N, w_N) is split into residuals r_0 .. r_N, one per scale
(h_i, w_i), low to high: r_0 is the base (f downsampled, or the encoding of the downsampled
image in the latent variant), and each later residual is what the scales below it miss,
downsampled to its own size. Upsampling them all to the final size and summing gives f
back exactly (the last residual is taken at the final size). The input prior of scale i is
the sum of the residuals below it, at the final size, downsampled to scale i: what a
scale-i network is conditioned on, in training (teacher forcing) and in sampling (Alg. 3).

Sizes need not be powers of two (MSF's ImageNet model runs 12 -> 16 latents). Upsampling
is `resample.upsample` (bilinear by default), downsampling `resample.downsample` (area).
`MSFCascade` holds the per-scale networks; a plan whose later stages use the `Residual`
transition samples it (Alg. 3) through `sample_cascade`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import Tensor

from .protocol import CascadeDefaults, Level, as_level, check_condition, level_index
from .resample import check_image, downsample, upsample

Size = tuple[int, int]


def check_sizes(sizes: Sequence[Sequence[int]]) -> list[Size]:
    """Scale sizes as (H, W) pairs, at least two, non-decreasing in both dimensions."""
    out: list[Size] = []
    for s in sizes:
        pair = (int(s), int(s)) if isinstance(s, int) else tuple(int(v) for v in s)
        if len(pair) != 2 or min(pair) <= 0:
            raise ValueError(f"scale sizes must be positive ints or (H, W) pairs, got {s!r}")
        out.append(pair)
    if len(out) < 2:
        raise ValueError(f"MSF needs at least two scales, got {len(out)}")
    for a, b in zip(out, out[1:]):
        if b[0] < a[0] or b[1] < a[1]:
            raise ValueError(f"scale sizes must grow from low to high, got {a} then {b}")
    return out


def factorize(f: Tensor, sizes: Sequence[Sequence[int]], base: Tensor | None = None, mode: str = "bilinear") -> list[Tensor]:
    """Alg. 1: residuals [r_0 at sizes[0], ..., r_N at sizes[-1]] of f [B, C, *sizes[-1]],
    with sum_i up(r_i, sizes[-1]) == f. `base` replaces r_0 = down(f, sizes[0]) (the latent
    variant: the encoding of the downsampled image)."""
    scales = check_sizes(sizes)
    check_image("f", f)
    final = scales[-1]
    if tuple(f.shape[-2:]) != final:
        raise ValueError(f"f must be at the last scale's size {final}, got {tuple(f.shape[-2:])}")
    if base is None:
        base = downsample(f, scales[0])
    elif tuple(base.shape) != (*f.shape[:2], *scales[0]):
        raise ValueError(f"base must have shape {(*f.shape[:2], *scales[0])}, got {tuple(base.shape)}")
    residuals = [base]
    rest = f
    for size in scales[1:]:
        rest = rest - upsample(residuals[-1], final, mode)
        residuals.append(downsample(rest, size))
    return residuals


def factorize_latent(
    image: Tensor, encode: Callable[[Tensor], Tensor], sizes: Sequence[Sequence[int]], low_image_size: Sequence[int],
    mode: str = "bilinear",
) -> list[Tensor]:
    """MSF's "scaling residual latent": f = encode(image), the base = encode(image downsampled
    to `low_image_size`), which must land on sizes[0]; then Alg. 1."""
    check_image("image", image)
    f = encode(image)
    base = encode(downsample(image, tuple(int(v) for v in low_image_size)))  # type: ignore[arg-type]
    return factorize(f, sizes, base=base, mode=mode)


def accumulate(residuals: Sequence[Tensor], size: Sequence[int], mode: str = "bilinear") -> Tensor:
    """sum_i up(r_i, size): the signal the residuals so far make, at `size`."""
    if not residuals:
        raise ValueError("accumulate needs at least one residual")
    target = (int(size[0]), int(size[1]))
    total = upsample(residuals[0], target, mode)
    for r in residuals[1:]:
        total = total + upsample(r, target, mode)
    return total


def input_priors(residuals: Sequence[Tensor], sizes: Sequence[Sequence[int]], mode: str = "bilinear") -> list[Tensor]:
    """Alg. 2: the prior of each scale i >= 1, down(sum_{j < i} up(r_j, final), sizes[i])."""
    scales = check_sizes(sizes)
    if len(residuals) != len(scales):
        raise ValueError(f"need one residual per scale ({len(scales)}), got {len(residuals)}")
    priors = []
    total = None
    for i in range(1, len(scales)):
        step = upsample(residuals[i - 1], scales[-1], mode)
        total = step if total is None else total + step
        priors.append(downsample(total, scales[i]))
    return priors


class MSFCascade(CascadeDefaults):
    """MSF's cascade: one network per scale (MSF trains them separately), as a
    ResolutionCascade, so Alg. 3 runs through `sample_cascade` with Residual transitions.

    `denoisers[0](x, sigma, **extra)` denoises the base; `denoisers[i](x, sigma, cond=prior,
    **extra)` a scale-i residual given its input prior (`input_priors` in training).
    """

    def __init__(self, denoisers: Sequence[Callable[..., Tensor]], levels: Sequence[int | Sequence[int] | Level], channels: int) -> None:
        self.levels: tuple[Level, ...] = tuple(as_level(e, channels, i) for i, e in enumerate(levels))
        check_sizes([lv.size for lv in self.levels])
        if len(denoisers) != len(self.levels) or not all(callable(d) for d in denoisers):
            raise ValueError(f"MSFCascade needs one callable denoiser per scale ({len(self.levels)}), got {len(denoisers)}")
        self.denoisers = list(denoisers)

    def denoise(
        self, x: Tensor, sigma: Tensor, *, level: int, cond: Tensor | None = None, cond_sigma: Tensor | float | None = None, **extra: Any
    ) -> Tensor:
        level = level_index(level, len(self.levels))
        check_condition(level, cond)  # the base has no input prior; every residual scale needs its own
        if level == 0:
            return self.denoisers[0](x, sigma, **extra)
        return self.denoisers[level](x, sigma, cond=cond, **extra)
