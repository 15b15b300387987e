"""Run a CascadePlan stage by stage; each stage is integrated by an unmodified k-diffusion
sampler through `stage_denoiser`."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .plan import CascadePlan, StagePlan
from .protocol import Level, MissingCondition, ResolutionCascade, device_of, hand_overs_of, stage_denoiser
from .resample import downsample, integer_factor, upsample
from .samplers import BROWNIAN_SAMPLERS, accepts_noise_sampler, history_sampler, resolve_sampler, sampler_name
from .transitions import StageOutput

NoiseSampler = Callable[[Tensor, Tensor], Tensor]
# Builds a stage's noise sampler from (stage, its initial x, its sigmas), or returns None.
NoiseFactory = Callable[[StagePlan, Tensor, Tensor], "NoiseSampler | None"]


class _PerSampleNoise:
    """A k-diffusion noise sampler drawing each sample's noise from its own generator."""

    def __init__(self, generators: Sequence[torch.Generator], like: Tensor) -> None:
        self.generators, self.shape, self.dtype, self.device = generators, like.shape[1:], like.dtype, like.device

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        return torch.stack(
            [torch.randn(self.shape, generator=g, device=self.device, dtype=self.dtype) for g in self.generators]
        )


def _tree_seed(generator: torch.Generator) -> int:
    return int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device).item())


def _noise_factory(generators: Sequence[torch.Generator] | torch.Generator | None) -> NoiseFactory:
    """Noise samplers that keep a stage's randomness on the explicit generator(s):
    per-sample Brownian trees or Gaussians with seeds, one generator otherwise."""

    def make(stage: StagePlan, x: Tensor, sigmas: Tensor) -> NoiseSampler | None:
        fn = resolve_sampler(stage.sampler)
        if generators is None or not accepts_noise_sampler(fn):
            return None
        per_sample = not isinstance(generators, torch.Generator)
        if sampler_name(stage.sampler) in BROWNIAN_SAMPLERS:
            from k_diffusion.sampling import BrownianTreeNoiseSampler

            seed: Any = [_tree_seed(g) for g in generators] if per_sample else _tree_seed(generators)  # type: ignore[union-attr,arg-type]
            # a hair wider than the schedule: sigma round trips through log/exp land just outside it
            lo, hi = sigmas[sigmas > 0].min().item() * (1 - 1e-4), sigmas.max().item() * (1 + 1e-4)
            return BrownianTreeNoiseSampler(x, lo, hi, seed=seed)
        if not isinstance(generators, torch.Generator):  # per sample
            return _PerSampleNoise(generators, x)
        gen = generators
        return lambda sigma, sigma_next: torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)

    return make


def _run_stages(
    cascade: ResolutionCascade,
    plan: CascadePlan,
    starts: Sequence[Tensor],
    *,
    extra_args: dict[str, Any] | None,
    callback: Callable[[dict[str, Any]], None] | None,
    disable: bool | None,
    noise_factory: NoiseFactory,
) -> list[StageOutput]:
    """The cascade loop. `starts[k]` is stage k's fresh noise already times its first sigma."""
    levels = list(cascade.levels)
    indices = plan.level_indices(len(levels))
    final_size = levels[indices[-1]].size
    residual_mode = plan.stages[-1].transition.mode if plan.accumulates else None  # type: ignore[union-attr]
    outputs: list[StageOutput] = []
    for k, (stage, index) in enumerate(zip(plan.stages, indices)):
        sigmas = stage.sigmas.to(starts[k].device)
        if k == 0:
            x, cond, cond_sigma, history = starts[0], None, None, None
        else:
            x, cond, cond_sigma, history = stage.transition.start(outputs[-1], starts[k], sigmas[0].item(), levels[index])  # type: ignore[union-attr]
        sampler = resolve_sampler(stage.sampler)
        kwargs = dict(stage.sampler_kwargs)
        continued = history_sampler(stage.sampler) if history is not None else None
        if continued is not None:
            sampler, kwargs["history"] = continued, history
        if "noise_sampler" not in kwargs:
            noise_sampler = noise_factory(stage, x, sigmas)
            if noise_sampler is not None:
                kwargs["noise_sampler"] = noise_sampler
        model = stage_denoiser(cascade, index, cond, cond_sigma)
        last: list[Tensor] = []

        stage_kwargs = dict(stage.denoiser_kwargs)  # the plan's per-stage options win over extra_args

        def recorded(x: Tensor, sigma: Tensor, **extra: Any) -> Tensor:
            denoised = model(x, sigma, **{**extra, **stage_kwargs})  # noqa: B023  (called within this stage only)
            last[:] = [denoised, sigma]  # noqa: B023
            return denoised

        stage_callback = None
        if callback is not None:
            stage_callback = lambda info, k=k, index=index: callback({**info, "stage": k, "level": index})  # noqa: E731
        try:
            x = sampler(recorded, x, sigmas, extra_args=extra_args, callback=stage_callback, disable=disable, **kwargs)
        except MissingCondition as err:
            what = f"plan {plan.name}" if plan.name else "the plan"
            how = "starts the plan there" if k == 0 else f"is handed over with {stage.transition.kind}, which gives no condition"  # type: ignore[union-attr]
            raise ValueError(f"{what}, stage {k}: {err}, but the stage {how}; this model takes the hand-overs "
                             f"{', '.join(hand_overs_of(cascade))}") from None
        # the state keeps the dtype it started in (sample_cascade's `dtype`), whatever the
        # schedule's or the denoiser's, so hand-overs meet tensors of one dtype
        x = x.to(starts[k].dtype)
        total = None
        if residual_mode is not None:
            total = upsample(x, final_size, residual_mode)
            total = total if k == 0 else outputs[-1].total + total  # type: ignore[operator]
        denoised, denoised_sigma = (last[0].to(x.dtype), _on_schedule(last[1], stage.sigmas)) if last else (x, None)
        outputs.append(StageOutput(index, x, denoised, float(stage.sigmas[-1]), total, denoised_sigma))
    return outputs


def _on_schedule(sigma: Tensor, sigmas: Tensor) -> float:
    """The schedule's own value of a sigma the model saw (which carries the state's rounding),
    so a hand-over passes on the schedule's exact number; other sigmas (churn) pass as they are."""
    seen = float(sigma.flatten()[0])
    nearest = float(sigmas[(sigmas.double() - seen).abs().argmin()])
    return nearest if math.isclose(nearest, seen, rel_tol=1e-6) else seen


def _stage_noise(
    plan: CascadePlan, shapes: Sequence[tuple[int, int, int]], draw: Callable[[tuple[int, ...]], Tensor], final: Tensor | None = None
) -> list[Tensor]:
    """Each stage's unit noise: drawn with `draw` in stage order (the last stage's is `final`
    when given), except where the next stage's transition couples the noise (`Continue`):
    there it is the next stage's noise mean-pooled to this stage's size, times the factor, so
    the plan starts from one draw at the finer grid."""
    n = len(plan.stages)
    coupled = [k + 1 < n and plan.stages[k + 1].transition.couples_noise for k in range(n)]  # type: ignore[union-attr]
    noise: list[Tensor | None] = [
        None if c else final if (k == n - 1 and final is not None) else draw(shape)
        for k, (c, shape) in enumerate(zip(coupled, shapes))
    ]
    for k in reversed(range(len(noise))):
        if coupled[k]:
            finer = noise[k + 1]
            factor = integer_factor(shapes[k][1:], (finer.shape[-2], finer.shape[-1]))  # type: ignore[union-attr]
            noise[k] = downsample(finer, shapes[k][1:]) * factor  # type: ignore[arg-type]
    return noise  # type: ignore[return-value]


def _sample(output: StageOutput) -> Tensor:
    """What a cascade produces: the last stage's state, or for residual plans the sum."""
    return output.total if output.total is not None else output.x


SEED_LIMIT = 2**32


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """`seeds` as a list, checked: not empty, each an int in [0, 2**32)."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must not be empty")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"seeds must be non-negative ints, got {s!r}")
        if s >= SEED_LIMIT:  # seeds are drawn EDM-style, modulo 2**32: a larger one would repeat a smaller one
            raise ValueError(f"seeds must be below 2**32 = {SEED_LIMIT} (seed s draws as s mod 2**32), got {s}")
    return seeds


def _check_noise(noise: Sequence[Tensor] | Tensor, shapes: Sequence[tuple[int, ...]]) -> list[Tensor]:
    if isinstance(noise, Tensor):
        noise = [noise]
    noise = list(noise)
    if len(noise) != len(shapes):
        raise ValueError(f"noise needs one tensor per stage ({len(shapes)}), got {len(noise)}")
    batch = noise[0].shape[0] if noise[0].ndim else -1
    for k, (n, shape) in enumerate(zip(noise, shapes)):
        if not isinstance(n, Tensor) or tuple(n.shape) != (batch, *shape):
            got = tuple(n.shape) if isinstance(n, Tensor) else type(n).__name__
            raise ValueError(f"noise[{k}] must have shape {(batch, *shape)} (stage {k}'s level), got {got}")
        if not torch.isfinite(n).all():
            raise ValueError(f"noise[{k}] contains NaN or inf")
    return noise


def _split_extra(extra_args: dict[str, Any] | None, n: int, lo: int, hi: int) -> dict[str, Any] | None:
    """Per-sample tensors in extra_args (first dim = number of samples) follow the batching."""
    if extra_args is None:
        return None
    return {k: v[lo:hi] if isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == n else v for k, v in extra_args.items()}


def sample_cascade(
    cascade: ResolutionCascade,
    plan: CascadePlan,
    *,
    seeds: Sequence[int] | None = None,
    batch_size: int | None = None,
    noise: Sequence[Tensor] | Tensor | None = None,
    generator: torch.Generator | None = None,
    extra_args: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    disable: bool | None = None,
    return_stages: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor | tuple[Tensor, list[StageOutput]]:
    """Sample `plan` on `cascade`; returns the final samples [B, C, H, W].

    Randomness, in order of precedence:
    - `seeds`: each sample has its own `torch.Generator` seeded EDM-style
      (seed % 2**32), which draws all its stage noises first and then any sampler noise,
      so a sample is the same whatever `batch_size` it is run in;
    - `noise`: one unit-normal tensor per stage ([B, *level shape]); sampler noise comes
      from `generator` if given, else from k-diffusion's defaults;
    - otherwise `batch_size` samples drawn from `generator` (or the global RNG).
    The callback gets k-diffusion's dict plus `stage` and `level`. With `return_stages`,
    also returns each stage's `StageOutput`.
    """
    if not isinstance(cascade, ResolutionCascade):
        raise TypeError(f"cascade must implement ResolutionCascade, got {type(cascade).__name__}")
    if not isinstance(plan, CascadePlan):
        raise TypeError(f"plan must be a CascadePlan, got {type(plan).__name__}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    plan.validate(cascade)
    levels: list[Level] = [cascade.levels[i] for i in plan.level_indices(len(cascade.levels))]
    shapes = [level.shape for level in levels]
    run = lambda starts, factory, extra: _run_stages(  # noqa: E731
        cascade, plan, starts, extra_args=extra, callback=callback, disable=disable, noise_factory=factory
    )
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch dtype (torch.float32, torch.float64, ...), got {dtype!r}")
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device {device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')") from None

    if seeds is not None:
        if noise is not None:
            raise ValueError("give either seeds or noise, not both")
        seeds = check_seeds(seeds)
        device = torch.device(device) if device is not None else device_of(cascade)
        step = batch_size or len(seeds)
        chunks = []
        for lo in range(0, len(seeds), step):
            chunk = seeds[lo : lo + step]
            gens = [torch.Generator(device).manual_seed(s % 2**32) for s in chunk]
            draw = lambda shape: torch.stack([torch.randn(shape, generator=g, device=device, dtype=dtype) for g in gens])  # noqa: E731, B023  (used in this iteration)
            starts = [eps * stage.sigmas[0].to(device, dtype) for eps, stage in zip(_stage_noise(plan, shapes, draw), plan.stages)]
            # k-diffusion's churn noise uses the global RNG: fork it so runs repeat and the caller's state is kept.
            forked = [device.index or 0] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=forked):
                torch.manual_seed(chunk[0] % 2**32)
                chunks.append(run(starts, _noise_factory(gens), _split_extra(extra_args, len(seeds), lo, lo + step)))
        outputs = [
            StageOutput(
                o[0].level, torch.cat([c.x for c in o]), torch.cat([c.denoised for c in o]), o[0].sigma,
                None if o[0].total is None else torch.cat([c.total for c in o]),
                o[0].denoised_sigma,
            )
            for o in zip(*chunks)
        ]
    else:
        if noise is not None:
            noise = _check_noise(noise, shapes)
        else:
            if batch_size is None:
                raise ValueError("give seeds, noise, or batch_size")
            device = torch.device(device) if device is not None else device_of(cascade)
            noise = [torch.randn((batch_size, *shape), generator=generator, device=device, dtype=dtype) for shape in shapes]
        starts = [n * stage.sigmas[0].to(n.device) for n, stage in zip(noise, plan.stages)]
        outputs = run(starts, _noise_factory(generator), extra_args)
    return (_sample(outputs[-1]), outputs) if return_stages else _sample(outputs[-1])


def cascade_sampler(plan: CascadePlan) -> Callable[..., Tensor]:
    """A function with k-diffusion's sampler signature that runs the whole cascade.

    `sampler(model, x, sigmas, extra_args=None, callback=None, disable=None)`: `model` is a
    ResolutionCascade, `x` the final level's initial noise already times sigmas[0], and
    `sigmas` the final stage's schedule; the earlier stages come from `plan` and draw
    their noise from the global RNG, as k-diffusion's ancestral samplers do.
    """
    if not isinstance(plan, CascadePlan):
        raise TypeError(f"plan must be a CascadePlan, got {type(plan).__name__}")

    def sample(
        model: ResolutionCascade,
        x: Tensor,
        sigmas: Tensor,
        extra_args: dict[str, Any] | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
        disable: bool | None = None,
    ) -> Tensor:
        if not isinstance(model, ResolutionCascade):
            raise TypeError(f"model must implement ResolutionCascade, got {type(model).__name__}")
        final = replace(plan.stages[-1], sigmas=torch.as_tensor(sigmas))
        full = CascadePlan([*plan.stages[:-1], final], name=plan.name).validate(model)
        levels = [model.levels[i] for i in full.level_indices(len(model.levels))]
        if x.ndim != 4 or tuple(x.shape[1:]) != levels[-1].shape:
            raise ValueError(f"x must have shape [B, {', '.join(map(str, levels[-1].shape))}], got {tuple(x.shape)}")
        shapes = [level.shape for level in levels]
        draw = lambda shape: torch.randn((x.shape[0], *shape), device=x.device, dtype=x.dtype)  # noqa: E731
        noise = _stage_noise(full, shapes, draw, final=x / full.stages[-1].sigmas[0].to(x.device, x.dtype))
        starts = [n * stage.sigmas[0].to(x.device, x.dtype) for n, stage in zip(noise[:-1], full.stages[:-1])]
        outputs = _run_stages(
            model, full, [*starts, x], extra_args=extra_args, callback=callback, disable=disable,
            noise_factory=_noise_factory(None),
        )
        return _sample(outputs[-1])

    sample.__name__ = f"sample_cascade_{plan.name or 'plan'}".replace("-", "_")
    sample.__doc__ = f"Cascade sampler for plan {plan.name or '(unnamed)'}; k-diffusion sampler signature."
    return sample
