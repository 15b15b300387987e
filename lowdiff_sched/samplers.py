"""k-diffusion samplers by name, how many model evaluations each spends on a schedule, and
the one sampler written here: DPM++ 2M that can continue a multistep history across stages."""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping

import torch
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


# A sampler's own arguments, which a plan does not set through sampler_kwargs.
_CALL_ARGS = frozenset({"model", "x", "sigmas", "extra_args", "callback", "disable"})
_CHOICES = {"solver_type": ("heun", "midpoint")}  # k-diffusion checks these only once sampling runs


def check_sampler_kwargs(sampler: str | SamplerFn, kwargs: Mapping[str, Any]) -> None:
    """Reject keyword arguments `sampler` does not take, or of the wrong kind, when a plan is
    made rather than when its stage runs: names against the signature, values against the
    defaults (a non-negative number for a number, a positive int for an int, a known choice)."""
    fn = resolve_sampler(sampler)
    try:
        params = {k: p for k, p in inspect.signature(fn).parameters.items() if k not in _CALL_ARGS}
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # a custom sampler taking **kwargs: its names are its own business
    label = getattr(fn, "__name__", "the sampler")
    for key, value in kwargs.items():
        if key not in params:
            known = ", ".join(sorted(params)) or "none"
            raise ValueError(f"sampler_kwargs: {label} takes no {key!r} (it takes: {known})")
        default = params[key].default
        where = f"sampler_kwargs[{key!r}] = {value!r}"
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ValueError(f"{where}: must be one of {', '.join(map(repr, _CHOICES[key]))}")
        if key == "noise_sampler" and not callable(value):
            raise ValueError(f"{where}: must be a callable noise_sampler(sigma, sigma_next)")
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            continue
        if isinstance(default, int) and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ValueError(f"{where}: must be a positive int ({label}'s default is {default})")
        if isinstance(value, Tensor) and value.ndim == 0 and value.is_floating_point():
            value = value.item()  # a library caller's scalar tensor is a number too
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: must be a number ({label}'s default is {default})")
        if not value >= 0 or (value == math.inf and default != math.inf):
            raise ValueError(f"{where}: must be finite and non-negative")


@torch.no_grad()
def sample_dpmpp_2m(
    model: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    disable: bool | None = None,
    history: tuple[Tensor | float, Tensor] | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2) with k-diffusion's signature.

    `history` is (sigma, x0 estimate) of the evaluation made just before sigmas[0], e.g. by
    the previous stage of a cascade that hands over with `Continue` (the same trajectory on a
    finer grid): the first step is then second order, as it would be in one unbroken run.
    Without it this is `k_diffusion.sampling.sample_dpmpp_2m`, bit for bit.
    """
    from tqdm.auto import trange

    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    old_sigma, old_denoised = (None, None) if history is None else (sigmas.new_tensor(float(history[0])), history[1])
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()  # t = -log sigma
        h = t_next - t
        if old_sigma is None or old_denoised is None or sigmas[i + 1] == 0:
            x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * denoised
        else:
            r = (t - old_sigma.log().neg()) / h  # h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * denoised_d
        old_sigma, old_denoised = sigmas[i], denoised
    return x


# Samplers that continue a multistep history handed over by the previous stage (`Continue`).
_WITH_HISTORY: dict[str, SamplerFn] = {"dpmpp_2m": sample_dpmpp_2m}


def history_sampler(sampler: str | SamplerFn) -> SamplerFn | None:
    """The version of `sampler` that takes `history=(sigma, x0 estimate)`, or None if it has none."""
    name = sampler_name(sampler)
    return _WITH_HISTORY.get(name) if name is not None else None


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
