"""Cascade plans as data: which level each stage runs at, on which schedule, with which
sampler, and how it is seeded from the stage before."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence, cast

import torch
from torch import Tensor

from .protocol import Level, ResolutionCascade, level_index
from .samplers import check_sampler_kwargs, check_schedule, count_nfe, sampler_name
from .schedules import validate_sigmas
from .transitions import Condition, Transition, transition_from_dict

JSON_VERSION = 1


@dataclass(frozen=True, eq=False)
class StagePlan:
    """One stage: run `sampler` over `sigmas` at cascade level `level`.

    `level` indexes the cascade's levels; negative values count from the top (-1 is the
    final resolution), so one plan fits cascades with extra lower levels. `sampler` is a
    k-diffusion name ("heun" -> k_diffusion.sampling.sample_heun) or a callable with that
    signature. `transition` seeds this stage from the previous one (None for the first).
    `denoiser_kwargs` go to the cascade's `denoise` at this stage only, e.g. MSF's per-scale
    guidance {"cfg_scale": 1.4} for the base and 1.0 for residuals (JSON-able values).
    """

    level: int
    sigmas: Tensor
    sampler: str | Callable[..., Tensor] = "heun"
    sampler_kwargs: Mapping[str, Any] = field(default_factory=dict)
    transition: Transition | None = None
    denoiser_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.level, bool) or not isinstance(self.level, int):
            raise TypeError(f"level must be an int, got {self.level!r}")
        if isinstance(self.sigmas, (list, tuple)):
            object.__setattr__(self, "sigmas", torch.tensor(self.sigmas, dtype=torch.float64))
        validate_sigmas(self.sigmas)
        object.__setattr__(self, "sigmas", self.sigmas.detach())
        name = sampler_name(self.sampler)  # rejects unknown names early
        if isinstance(self.sampler, str):
            object.__setattr__(self, "sampler", name)  # "sample_heun" -> "heun"
        check_schedule(self.sampler, self.sigmas)
        if not isinstance(self.sampler_kwargs, Mapping):
            raise TypeError(f"sampler_kwargs must be a mapping, got {type(self.sampler_kwargs).__name__}")
        object.__setattr__(self, "sampler_kwargs", dict(self.sampler_kwargs))
        check_sampler_kwargs(self.sampler, self.sampler_kwargs)
        if not isinstance(self.denoiser_kwargs, Mapping) or not all(isinstance(k, str) for k in self.denoiser_kwargs):
            raise TypeError(f"denoiser_kwargs must be a mapping with str keys, got {self.denoiser_kwargs!r}")
        object.__setattr__(self, "denoiser_kwargs", dict(self.denoiser_kwargs))
        if self.transition is not None and not isinstance(self.transition, Transition):
            raise TypeError(f"transition must be a Transition or None, got {type(self.transition).__name__}")

    @property
    def steps(self) -> int:
        return self.sigmas.numel() - 1

    @property
    def truncated(self) -> bool:
        """True when the stage stops above sigma = 0."""
        return bool(self.sigmas[-1] > 0)

    def nfe(self) -> int:
        """Model evaluations this stage spends (exact for every supported sampler)."""
        return count_nfe(self.sampler, self.sigmas, self.sampler_kwargs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StagePlan):
            return NotImplemented
        return (
            self.level == other.level
            and self.sigmas.dtype == other.sigmas.dtype
            and torch.equal(self.sigmas, other.sigmas)
            and self.sampler == other.sampler
            and self.sampler_kwargs == other.sampler_kwargs
            and self.transition == other.transition
            and self.denoiser_kwargs == other.denoiser_kwargs
        )

    def to_dict(self) -> dict[str, Any]:
        name = sampler_name(self.sampler)
        if name is None:
            raise ValueError(f"level {self.level}: a custom sampler callable cannot be written to JSON; use a name")
        return {
            "level": self.level,
            "sigmas": [float(s) for s in self.sigmas.tolist()],
            "dtype": str(self.sigmas.dtype).removeprefix("torch."),
            "sampler": name,
            "sampler_kwargs": self.sampler_kwargs,
            "transition": None if self.transition is None else self.transition.to_dict(),
            **({"denoiser_kwargs": self.denoiser_kwargs} if self.denoiser_kwargs else {}),
        }


_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def _stage_from_dict(data: Any, index: int) -> StagePlan:
    if not isinstance(data, dict):
        raise ValueError(f"stage {index}: must be an object, got {type(data).__name__}")
    known = {"level", "sigmas", "dtype", "sampler", "sampler_kwargs", "transition", "denoiser_kwargs"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"stage {index}: unknown field(s) {sorted(unknown)}")
    for key in ("level", "sigmas"):
        if key not in data:
            raise ValueError(f"stage {index}: missing field {key!r}")
    dtype = data.get("dtype", "float64")
    dtype = _DTYPES.get(dtype) if isinstance(dtype, str) else None
    if dtype is None:
        raise ValueError(f"stage {index}: dtype must be one of {sorted(_DTYPES)}, got {data.get('dtype')!r}")
    sigmas = data["sigmas"]
    if not isinstance(sigmas, list) or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in sigmas):
        raise ValueError(f"stage {index}: sigmas must be a list of numbers")
    transition = data.get("transition")
    try:
        transition = None if transition is None else transition_from_dict(transition)
    except ValueError as err:
        raise ValueError(f"stage {index}: transition: {err}") from None
    try:
        return StagePlan(
            level=data["level"],
            sigmas=torch.tensor(sigmas, dtype=dtype),
            sampler=data.get("sampler", "heun"),
            sampler_kwargs=data.get("sampler_kwargs", {}),
            transition=transition,
            denoiser_kwargs=data.get("denoiser_kwargs", {}),
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"stage {index}: {err}") from None


@dataclass(frozen=True, eq=False)
class CascadePlan:
    """An ordered list of stages from the lowest level to the final one.

    Later stages without a transition get `Condition()` (LowDiff); the last stage must run
    to sigma = 0. `validate(cascade)` adds the checks that need the cascade's levels.
    """

    stages: Sequence[StagePlan]
    name: str = ""

    def __post_init__(self) -> None:
        stages = list(self.stages)
        if not stages:
            raise ValueError("a CascadePlan needs at least one stage")
        for i, stage in enumerate(stages):
            if not isinstance(stage, StagePlan):
                raise TypeError(f"stage {i}: expected a StagePlan, got {type(stage).__name__}")
        if stages[0].transition is not None:
            raise ValueError("stage 0: the first stage has nothing to hand over from; its transition must be None")
        stages = [stages[0]] + [s if s.transition is not None else replace(s, transition=Condition()) for s in stages[1:]]
        if stages[-1].truncated:
            raise ValueError(
                f"stage {len(stages) - 1}: the last stage must run to sigma = 0, "
                f"its sigmas end at {stages[-1].sigmas[-1].item()}"
            )
        accumulating = [s.transition.accumulates for s in stages[1:]]  # type: ignore[union-attr]
        if any(accumulating) and not all(accumulating):
            raise ValueError("a residual (MSF) plan needs Residual transitions at every stage after the first: residuals only sum with residuals")
        if any(accumulating) and len({s.transition.mode for s in stages[1:]}) > 1:  # type: ignore[union-attr]
            raise ValueError("the Residual transitions of a plan must share one upsampling mode (the residuals are summed with it)")
        levels = [s.level for s in stages]
        if len({lv < 0 for lv in levels}) > 1:
            raise ValueError(f"levels mix negative and non-negative indices: {levels}; use one convention")
        for i in range(1, len(stages)):
            if levels[i] <= levels[i - 1]:
                raise ValueError(f"stage {i}: levels must increase from stage to stage, got {levels[i - 1]} -> {levels[i]}")
            prev, cur = stages[i - 1], stages[i]
            cur.transition.validate(i, prev.sigmas[-1].item(), cur.sigmas[0].item(), None, None)  # type: ignore[union-attr]
        object.__setattr__(self, "stages", tuple(stages))

    def __len__(self) -> int:
        return len(self.stages)

    @property
    def accumulates(self) -> bool:
        """True for residual (MSF) plans: the sample is the sum of every stage's residual."""
        return len(self.stages) > 1 and bool(self.stages[1].transition.accumulates)  # type: ignore[union-attr]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CascadePlan):
            return NotImplemented
        return self.name == other.name and tuple(self.stages) == tuple(other.stages)

    # ---- checks against a cascade -------------------------------------------------
    def level_indices(self, n_levels: int) -> list[int]:
        """Stage levels as non-negative indices into a cascade with `n_levels` levels."""
        out = []
        for i, stage in enumerate(self.stages):
            try:
                out.append(level_index(stage.level, n_levels))
            except ValueError as err:
                raise ValueError(f"stage {i}: {err}") from None
        return out

    def validate(self, cascade: ResolutionCascade | Sequence[Level]) -> "CascadePlan":
        """Check level indices and every transition against the cascade's level sizes."""
        levels = list(cascade if isinstance(cascade, Sequence) else cascade.levels)
        indices = self.level_indices(len(levels))
        for i in range(1, len(self.stages)):
            prev, cur = self.stages[i - 1], self.stages[i]
            if cur.transition.needs_adjacent_levels and indices[i] != indices[i - 1] + 1:  # type: ignore[union-attr]
                raise ValueError(
                    f"stage {i}: transition {cur.transition.kind} conditions level r on level r - 1, "  # type: ignore[union-attr]
                    f"but the previous stage ran at level {indices[i - 1]} and this one at {indices[i]}"
                )
            cur.transition.validate(  # type: ignore[union-attr]
                i, prev.sigmas[-1].item(), cur.sigmas[0].item(), levels[indices[i - 1]], levels[indices[i]]
            )
        return self

    # ---- cost ----------------------------------------------------------------------
    def nfe(self) -> list[int]:
        """Model evaluations per stage."""
        return [stage.nfe() for stage in self.stages]

    def effective_nfe(self, latency_ratios: Sequence[float]) -> int:
        """LowDiff Appendix B: ceil(sum_i eta_i NFE_i over the lower stages) + NFE_top.

        `latency_ratios[i]` = latency of one evaluation at stage i's level / at the final
        level; give one per lower stage (or one per stage, the last being 1).
        """
        ratios = [float(r) for r in latency_ratios]
        n = len(self.stages)
        if len(ratios) == n:
            if not math.isclose(ratios[-1], 1.0):
                raise ValueError(f"latency_ratios: the final stage's ratio must be 1, got {ratios[-1]}")
            ratios = ratios[:-1]
        if len(ratios) != n - 1:
            raise ValueError(f"latency_ratios needs {n - 1} values (one per lower stage), got {len(ratios)}")
        if any(not (r >= 0 and math.isfinite(r)) for r in ratios):
            raise ValueError(f"latency_ratios must be finite and non-negative, got {ratios}")
        nfe = self.nfe()
        # round before ceil so float noise (0.25 * 12 = 3.0000000000000004) does not add an evaluation
        return math.ceil(round(sum(r * k for r, k in zip(ratios, nfe[:-1])), 9)) + nfe[-1]

    # ---- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"version": JSON_VERSION, "name": self.name, "stages": [s.to_dict() for s in self.stages]}

    def to_json(self, indent: int | None = 2) -> str:
        try:
            return json.dumps(self.to_dict(), indent=indent)
        except TypeError as err:
            raise ValueError(f"plan is not JSON-serialisable (check sampler_kwargs): {err}") from None

    @classmethod
    def from_dict(cls, data: Any) -> "CascadePlan":
        if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
            raise ValueError("a plan must be a JSON object with a list 'stages'")
        version = data.get("version", JSON_VERSION)
        if version != JSON_VERSION:
            raise ValueError(f"unsupported plan version {version!r} (this library writes {JSON_VERSION})")
        name = data.get("name", "")
        if not isinstance(name, str):
            raise ValueError(f"a plan's name must be a string, got {name!r}")
        stages = [_stage_from_dict(s, i) for i, s in enumerate(data["stages"])]
        return cls(stages, name=name)

    @classmethod
    def from_json(cls, text: str) -> "CascadePlan":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"plan is not valid JSON: {err}") from None
        return cls.from_dict(data)

    # ---- display -------------------------------------------------------------------
    def describe(self, levels: Sequence[Level] | None = None, latency_ratios: Sequence[float] | None = None) -> str:
        """A table of the stages; with `levels`, sizes and (pixel-count) effective NFE."""
        rows = [("stage", "level", "size", "sigma range", "steps", "sampler", "transition", "NFE")]
        indices = self.level_indices(len(levels)) if levels is not None else None
        for i, s in enumerate(self.stages):
            size = "-" if indices is None else "x".join(map(str, levels[indices[i]].size))  # type: ignore[index]
            sampler = sampler_name(s.sampler) or cast(str, getattr(s.sampler, "__name__", "custom"))
            trans = "-" if s.transition is None else s.transition.kind
            if s.transition is not None and getattr(s.transition, "mode", None):
                trans += f"({s.transition.mode})"  # type: ignore[attr-defined]
            span = f"{s.sigmas[0].item():.4g} -> {s.sigmas[-1].item():.4g}"
            rows.append((str(i), str(s.level), size, span, str(s.steps), sampler, trans, str(s.nfe())))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        title = f"plan {self.name}" if self.name else "plan"
        total = f"total NFE {sum(self.nfe())}"
        if latency_ratios is not None:
            total += f", effective NFE {self.effective_nfe(latency_ratios)}"
        elif levels is not None:
            total += f", effective NFE {self.effective_nfe(pixel_ratios(self, levels))} (eta = pixel ratio)"
        return "\n".join([title, *lines, total])

    def __str__(self) -> str:
        return self.describe()


def pixel_ratios(plan: CascadePlan, levels: Sequence[Level]) -> list[float]:
    """Per lower stage, pixels at its level / pixels at the final level: the latency ratio
    of a network whose cost scales with pixel count (a FLOP model, not a measurement)."""
    indices = plan.level_indices(len(levels))
    top = levels[indices[-1]]
    return [levels[i].numel / top.numel for i in indices[:-1]]
