"""k-diffusion samplers by name, and how many model evaluations each spends on a schedule."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from torch import Tensor

# One model evaluation per step.
_ONE_PER_STEP = ("euler", "euler_ancestral", "lms", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde")
# Two per step, except a step to sigma = 0, which is a plain Euler step.
_TWO_UNLESS_LAST = ("heun", "dpm_2", "dpmpp_sde")
# Two per step, except when the ancestral step's sigma_down is 0.
_TWO_UNLESS_SIGMA_DOWN_ZERO = ("dpm_2_ancestral", "dpmpp_2s_ancestral")
SAMPLER_NAMES: tuple[str, ...] = _ONE_PER_STEP + _TWO_UNLESS_LAST + _TWO_UNLESS_SIGMA_DOWN_ZERO
# Samplers whose default noise comes from a Brownian tree (correlated across sub-steps).
BROWNIAN_SAMPLERS: tuple[str, ...] = ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde")
_REJECTED = {
    "dpm_fast": "takes (sigma_min, sigma_max, n) instead of a schedule",
    "dpm_adaptive": "takes (sigma_min, sigma_max) and chooses its own steps",
}

SamplerFn = Callable[..., Tensor]


def sampler_name(sampler: str | SamplerFn) -> str | None:
    """The registry name of a sampler (string or k-diffusion function); None for a custom callable."""
    if isinstance(sampler, str):
        name = sampler.removeprefix("sample_")
    elif getattr(sampler, "__module__", None) == "k_diffusion.sampling" and sampler.__name__.startswith("sample_"):
        name = sampler.__name__.removeprefix("sample_")
    elif callable(sampler):
        return None
    else:
        raise TypeError(f"sampler must be a name or a callable, got {type(sampler).__name__}")
    if name in _REJECTED:
        raise ValueError(
            f"sampler {name!r} {_REJECTED[name]}, so it cannot integrate a stage's schedule; "
            f"use e.g. 'dpmpp_2m' or 'heun'"
        )
    if name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLER_NAMES)} or pass a callable")
    return name


def resolve_sampler(sampler: str | SamplerFn) -> SamplerFn:
    """The sampler function: `"heun"` -> `k_diffusion.sampling.sample_heun`; callables pass through."""
    name = sampler_name(sampler)
    if name is None:
        return sampler  # type: ignore[return-value]
    import k_diffusion.sampling as kds

    return getattr(kds, f"sample_{name}")


def accepts_noise_sampler(fn: SamplerFn) -> bool:
    try:
        return "noise_sampler" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _ancestral_sigma_down(sigma_from: Tensor, sigma_to: Tensor, eta: float) -> Tensor:
    # k-diffusion's get_ancestral_step, on the schedule's own tensors so float32 rounding
    # decides "sigma_down == 0" exactly as it does inside the sampler.
    if not eta:
        return sigma_to
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5


def check_schedule(sampler: str | SamplerFn, sigmas: Tensor) -> None:
    """Reject schedules a known sampler cannot run."""
    name = sampler_name(sampler)
    if name in ("dpmpp_2m_sde", "dpmpp_3m_sde") and sigmas.numel() == 2 and sigmas[-1] == 0:
        # k-diffusion's implementations fail (UnboundLocalError) on a single step to sigma = 0
        raise ValueError(f"sampler {name!r} needs at least 2 steps when the schedule ends at 0")


def count_nfe(sampler: str | SamplerFn, sigmas: Tensor, sampler_kwargs: Mapping[str, Any] | None = None) -> int:
    """Exact number of model evaluations `sampler` makes on `sigmas`.

    A custom callable must carry an `nfe(sigmas, **sampler_kwargs) -> int` attribute.
    """
    kwargs = dict(sampler_kwargs or {})
    name = sampler_name(sampler)
    values = [float(s) for s in sigmas.tolist()]
    steps = list(zip(values[:-1], values[1:]))
    if name is None:
        counter = getattr(sampler, "nfe", None)
        if counter is None:
            raise ValueError(
                f"cannot count model evaluations of custom sampler {getattr(sampler, '__name__', sampler)!r}: "
                f"give it an attribute nfe(sigmas, **kwargs) -> int"
            )
        return int(counter(sigmas, **kwargs))
    if name in _ONE_PER_STEP:
        return len(steps)
    if name in _TWO_UNLESS_LAST:
        return sum(1 if nxt == 0 else 2 for _, nxt in steps)
    eta = float(kwargs.get("eta", 1.0))
    return sum(1 if _ancestral_sigma_down(sigmas[i], sigmas[i + 1], eta) == 0 else 2 for i in range(len(steps)))
