"""The papers' configurations as named plans, with their single-resolution baselines.

Levels count from the top (-1 = final resolution), so `cifar10-2stage` runs 16 -> 32 on a
cascade with levels (16, 32) or (8, 16, 32) alike. Where the paper's NFE for a truncated
Heun stage is odd, the plan uses the nearest even count below it: a truncated Heun stage
spends 2 evaluations on every step (its last step is not a step to sigma = 0), so odd
counts do not exist. docs/presets.md lists both.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

from torch import Tensor

from .plan import CascadePlan, StagePlan
from .plan_space import split_schedule
from .schedules import flow_sigmas, karras_sigmas, truncate_steps
from .transitions import Condition, Continue, Renoise

# LowDiff Table 10: the unconditional lowest stage keeps EDM's range, conditioned stages use a narrower one.
EDM_RANGE = (0.002, 80.0)
CONDITIONED_RANGE = (0.01, 50.0)
# LightningDiT's time shift for ImageNet 256.
DIT_SHIFT = 0.3


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    paper_nfe: tuple[int, ...]  # per stage, low -> high, as the paper reports it
    build: Callable[[], CascadePlan]


def _heun_truncated(total_steps: int, nfe: int, sigma_range: tuple[float, float], level: int) -> StagePlan:
    """A Heun stage that stops after `nfe // 2` steps of a `total_steps`-step Karras schedule."""
    sigmas = truncate_steps(karras_sigmas(total_steps, *sigma_range), nfe // 2)
    return StagePlan(level, sigmas, "heun")


def _heun_full(nfe: int, sigma_range: tuple[float, float], level: int) -> StagePlan:
    """A Heun stage run to sigma = 0 with `nfe` = 2 * steps - 1 evaluations (EDM's sampler)."""
    return StagePlan(level, karras_sigmas((nfe + 1) // 2, *sigma_range), "heun")


def _euler_flow(total_steps: int, steps: int, level: int) -> StagePlan:
    """An Euler stage on LightningDiT's shifted flow grid, optionally truncated."""
    sigmas = flow_sigmas(total_steps, shift=DIT_SHIFT)
    return StagePlan(level, sigmas if steps == total_steps else truncate_steps(sigmas, steps), "euler")


# `select_switch_sigma` on mnist-c2f with mnist-2stage's 16x16 stage run to 0 (64 seeds):
# the end of its x0 predictions' minimal-PCA-rank plateau, step 8 of 18 (docs/benchmarks.md, Real data: MNIST).
MNIST_C2F_SWITCH = 3.257


def _continue_2stage(name: str) -> CascadePlan:
    """cifar10-2stage's truncated 16x16 stage, continued on the 32x32 grid at twice its last
    sigma (the exact noisy hand-over), then Heun to 0."""
    low = _heun_truncated(18, 19, EDM_RANGE, -2)
    top = _heun_full(17, (0.002, 2 * low.sigmas[-1].item()), -1)
    return CascadePlan([low, replace(top, transition=Continue())], name=name)


def _continue_split(sigmas: Tensor, splits: Sequence[int], sampler: str, name: str) -> CascadePlan:
    """A single-resolution schedule cut at `splits` (k1 < k2 < ...): its first k1 steps run
    len(splits) levels down, each next piece one level higher (sigmas divided by each level's
    factor below the top, 2 per level), and every hand-over is exact (`Continue`): one
    trajectory, its early steps on coarser grids."""
    depth = len(splits)
    return CascadePlan(split_schedule(sigmas, splits, range(-depth - 1, 0), [2**d for d in range(depth, -1, -1)], sampler),
                       name=name)


def _lowdiff(stages: list[StagePlan], name: str) -> CascadePlan:
    """LowDiff (Alg. 2): every later stage is conditioned on the previous one's noisy output."""
    return CascadePlan([stages[0], *(replace(s, transition=Condition()) for s in stages[1:])], name=name)


def _dpmpp2m(nfe: int, model: str) -> CascadePlan:
    """DPM++ 2M on `nfe` Karras steps over EDM's range, on the top level (MODEL-dpmpp2m-NFE)."""
    return CascadePlan([StagePlan(-1, karras_sigmas(nfe, *EDM_RANGE), "dpmpp_2m")], name=f"{model}-dpmpp2m-{nfe}")


def _edm_baseline(nfe: int, model: str = "mnist-base") -> CascadePlan:
    """EDM's Heun sampler on the top level with `nfe` evaluations (MODEL-NFE)."""
    return CascadePlan([_heun_full(nfe, EDM_RANGE, -1)], name=f"{model}-{nfe}")


_PRESETS = [
    Preset(
        "cifar10-3stage", "LowDiff CIFAR-10 32x32, levels 8/16/32, EDM Heun", (18, 13, 17),
        lambda: _lowdiff([_heun_truncated(18, 18, EDM_RANGE, -3), _heun_truncated(18, 13, CONDITIONED_RANGE, -2),
                          _heun_full(17, CONDITIONED_RANGE, -1)], "cifar10-3stage"),
    ),
    Preset(
        "cifar10-2stage", "LowDiff CIFAR-10 32x32, levels 16/32 (35-NFE low schedule truncated, Table 11)", (19, 17),
        lambda: _lowdiff([_heun_truncated(18, 19, EDM_RANGE, -2), _heun_full(17, CONDITIONED_RANGE, -1)], "cifar10-2stage"),
    ),
    Preset(
        "cifar10-edm-35", "EDM baseline at 32x32: 18 Heun steps, 35 NFE", (35,),
        lambda: CascadePlan([_heun_full(35, EDM_RANGE, -1)], name="cifar10-edm-35"),
    ),
    Preset(
        "ffhq64-4stage", "LowDiff FFHQ 64x64, levels 8/16/32/64, EDM Heun", (22, 23, 23, 39),
        lambda: _lowdiff([_heun_truncated(40, 22, EDM_RANGE, -4), _heun_truncated(40, 23, CONDITIONED_RANGE, -3),
                          _heun_truncated(40, 23, CONDITIONED_RANGE, -2), _heun_full(39, CONDITIONED_RANGE, -1)],
                         "ffhq64-4stage"),
    ),
    Preset(
        "ffhq64-2stage", "LowDiff FFHQ 64x64, levels 32/64 (79-NFE low schedule truncated, Table 12)", (49, 39),
        lambda: _lowdiff([_heun_truncated(40, 49, EDM_RANGE, -2), _heun_full(39, CONDITIONED_RANGE, -1)], "ffhq64-2stage"),
    ),
    Preset(
        "ffhq64-edm-79", "EDM baseline at 64x64: 40 Heun steps, 79 NFE", (79,),
        lambda: CascadePlan([_heun_full(79, EDM_RANGE, -1)], name="ffhq64-edm-79"),
    ),
    Preset(
        "mnist-3stage", "LowDiff on the shipped MNIST model, levels 8/16/32: the CIFAR-10 split of Table 1", (18, 13, 17),
        lambda: replace(PRESETS["cifar10-3stage"].build(), name="mnist-3stage"),
    ),
    Preset(
        "mnist-2stage", "LowDiff 16/32 on the shipped mnist-lowdiff-2level model: the CIFAR-10 2-stage split", (19, 17),
        lambda: replace(PRESETS["cifar10-2stage"].build(), name="mnist-2stage"),
    ),
    Preset(
        "mnist-c2f", "C2F-DM on the shipped mnist-c2f model: mnist-2stage's 16x16 stage, then its x0 estimate upsampled "
        f"and re-noised at sigma {MNIST_C2F_SWITCH} (the PCA-rank switch), 17 Heun NFE at 32x32", (19, 17),
        lambda: CascadePlan([_heun_truncated(18, 19, EDM_RANGE, -2),
                             replace(_heun_full(17, (0.002, MNIST_C2F_SWITCH), -1), transition=Renoise())], name="mnist-c2f"),
    ),
    Preset(
        "mnist-continue", "the same 16x16 stage continued exactly on the 32x32 grid (Continue: sigma doubles), "
        "17 Heun NFE at 32x32, on the shipped mnist-c2f model", (19, 17),
        lambda: _continue_2stage("mnist-continue"),
    ),
    *(
        Preset(
            f"mnist-base-{nfe}", f"EDM baseline on the shipped MNIST models at 32x32: {(nfe + 1) // 2} Heun steps, {nfe} NFE", (nfe,),
            partial(_edm_baseline, nfe),
        )
        for nfe in (35, 19, 11)
    ),
    Preset(
        "mnist-fast", "the cascade on the shipped mnist-fast model (its top level is mnist-base): mnist-base-dpmpp2m-5's "
        "schedule with its first step at 16x16 (sigma halved), handed over exactly (Continue) with DPM++ 2M's history", (1, 4),
        lambda: _continue_split(karras_sigmas(5, *EDM_RANGE).double(), [1], "dpmpp_2m", "mnist-fast"),
    ),
    Preset(
        "mnist-base-dpmpp2m-5", "the strongest single-resolution baseline on mnist-base found by `lowdiff-sched search` "
        "(docs/benchmarks.md): DPM++ 2M, 5 Karras steps over (0.002, 80), 5 NFE", (5,),
        partial(_dpmpp2m, 5, "mnist-base"),
    ),
    Preset(
        "emoji-base-35", "EDM's sampler on the shipped 64x64 emoji-base: 18 Heun steps, 35 NFE", (35,),
        partial(_edm_baseline, 35, "emoji-base"),
    ),
    Preset(
        "emoji-fast", "the cascade on the shipped emoji-fast model (its top level is emoji-base): DPM++ 2M on 6 Karras "
        "steps, the first 2 at 16x16 (sigmas / 4), the 3rd at 32x32 (sigmas / 2), the last 3 at 64x64, handed over "
        "exactly (Continue) with the multistep history", (2, 1, 3),
        lambda: _continue_split(karras_sigmas(6, *EDM_RANGE).double(), [2, 3], "dpmpp_2m", "emoji-fast"),
    ),
    Preset(
        "emoji-base-dpmpp2m-5", "the strongest single-resolution baseline on emoji-base at emoji-fast's quality, found by "
        "`lowdiff-sched search` (docs/benchmarks.md): DPM++ 2M, 5 Karras steps over (0.002, 80), 5 NFE", (5,),
        partial(_dpmpp2m, 5, "emoji-base"),
    ),
    Preset(
        "imagenet256-dit-b1", "LowDiff LightningDiT-B/1, latent levels 8/16, Euler, shift 0.3", (45, 50),
        lambda: _lowdiff([_euler_flow(100, 45, -2), _euler_flow(50, 50, -1)], "imagenet256-dit-b1"),
    ),
    Preset(
        "imagenet256-dit-b1-baseline-100", "LightningDiT-B/1 baseline at 16x16 latents: 100 Euler steps", (100,),
        lambda: CascadePlan([_euler_flow(100, 100, -1)], name="imagenet256-dit-b1-baseline-100"),
    ),
    Preset(
        "imagenet256-dit-xl1", "LowDiff LightningDiT-XL/1, latent levels 8/16, Euler, shift 0.3", (45, 100),
        lambda: _lowdiff([_euler_flow(100, 45, -2), _euler_flow(100, 100, -1)], "imagenet256-dit-xl1"),
    ),
    Preset(
        "imagenet256-dit-xl1-baseline-250", "LightningDiT-XL/1 baseline at 16x16 latents: 250 Euler steps", (250,),
        lambda: CascadePlan([_euler_flow(250, 250, -1)], name="imagenet256-dit-xl1-baseline-250"),
    ),
]
PRESETS: dict[str, Preset] = {p.name: p for p in _PRESETS}


def names() -> list[str]:
    """All preset names."""
    return list(PRESETS)


def info(name: str) -> Preset:
    """The preset's description and paper NFE, without building it."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def get(name: str) -> CascadePlan:
    """A fresh CascadePlan for a preset name."""
    return info(name).build()


def load_plan(spec: str | Path) -> CascadePlan:
    """A preset name, or the path of a plan JSON file written by `CascadePlan.to_json`."""
    if isinstance(spec, str) and spec in PRESETS:
        return get(spec)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"plan {str(spec)!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read plan file {str(path)!r}: {err}") from None
    try:
        return CascadePlan.from_json(text)
    except ValueError as err:
        raise ValueError(f"invalid plan file {str(path)!r}: {err}") from None


def markdown_table() -> str:
    """docs/presets.md's table: each preset's NFE per stage next to the paper's."""
    from .plan import pixel_ratios
    from .protocol import Level

    rows = [
        "| preset | levels (from top) | sampler | NFE per stage | paper | difference | effective NFE* |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, preset in PRESETS.items():
        plan = preset.build()
        nfe = plan.nfe()
        span = max(-s.level for s in plan.stages)
        levels = [Level((2**i, 2**i), 1) for i in range(span)]
        diff = ", ".join(
            f"stage {i}: {ours - paper:+d}" for i, (ours, paper) in enumerate(zip(nfe, preset.paper_nfe)) if ours != paper
        )
        samplers = "/".join(sorted({str(s.sampler) for s in plan.stages}))
        rows.append(
            f"| `{name}` | {', '.join(str(s.level) for s in plan.stages)} | {samplers} | "
            f"{' + '.join(map(str, nfe))} = {sum(nfe)} | {' + '.join(map(str, preset.paper_nfe))} | {diff or 'none'} | "
            f"{plan.effective_nfe(pixel_ratios(plan, levels))} |"
        )
    return "\n".join(rows)
