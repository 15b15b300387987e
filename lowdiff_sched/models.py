"""Named models for the CLI and for users: one `sample` command, many backbones.

Each entry builds a ResolutionCascade. Every backbone brings its own (`Backbone.models`);
a user adds more with `register_model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, cast

import torch

from .backbones import backbones
from .plan import CascadePlan
from .protocol import ResolutionCascade


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    build: Callable[..., ResolutionCascade]  # build(device=..., **options)
    value_range: tuple[float, float] = (-1.0, 1.0)  # data range, for writing images
    default_plan: str = ""
    latent: bool = False  # a latent model: built from --ckpt, samples are latents (decoded with a VAE)
    single_level_plan: str = ""  # the default plan when the loaded checkpoint has one level only
    judge: Callable[[ResolutionCascade], Any] | None = None  # the model's quality measure (`judges`), if it has one
    # how a one-level checkpoint becomes a cascade: a command with {name}, {ckpt} and {levels}
    fine_tune: str = ""
    inspect: Callable[[], ResolutionCascade] | None = None  # the cascade without weights, for `info` (default: build it)

    def plan_for(self, cascade: ResolutionCascade) -> str:
        """The default plan for a loaded model ("" if none)."""
        if len(cascade.levels) == 1 and self.single_level_plan:
            return self.single_level_plan
        return self.default_plan

    def check_plan(self, cascade: ResolutionCascade, plan: CascadePlan, ckpt: str = "CKPT") -> CascadePlan:
        """`plan.validate(cascade)`; a cascade plan on a one-level checkpoint is told the way out."""
        try:
            return plan.validate(cascade)
        except ValueError:
            if len(cascade.levels) > 1 or len(plan.stages) == 1 or not self.fine_tune:
                raise
        size = cascade.levels[0].size[-1]
        levels = ",".join(str(size >> k) for k in reversed(range(len(plan.stages))))
        baseline = f", or sample it with its single-resolution plan --plan {self.single_level_plan}" if self.single_level_plan else ""
        raise ValueError(
            f"{f'plan {plan.name}' if plan.name else 'the plan'} runs {len(plan.stages)} levels, but {ckpt} holds the unmodified network "
            f"(one level, {size}x{size}); fine-tune it for levels {levels} first: "
            f"{self.fine_tune.format(name=self.name, ckpt=ckpt, levels=levels)}{baseline}"
        )


_MODELS: dict[str, ModelSpec] = {}
_LOADED = False


def _registry() -> dict[str, ModelSpec]:
    """Every named model: each backbone's own (`Backbone.models`), then those registered here."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for backbone in backbones().values():
            for spec in backbone.models():
                _add(spec)
    return _MODELS


def _add(spec: ModelSpec) -> ModelSpec:
    if spec.name in _MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    _MODELS[spec.name] = spec
    return spec


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a named model (after the backbones' own, whose names it may not take)."""
    _registry()
    return _add(spec)


def model_names() -> list[str]:
    return list(_registry())


def named_spec(name: str) -> ModelSpec | None:
    """The model a name stands for: a registered one, or one a backbone recognises (e.g.
    "diffusers:DIR"); None for anything else (a file or a run)."""
    if name in _registry():
        return _MODELS[name]
    return next((spec for b in backbones().values() if (spec := b.model_named(name)) is not None), None)


def model_spec(name: str) -> ModelSpec:
    """A registered model or one a backbone recognises (`named_spec`), a model written by
    `lowdiff-sched export` (its .json, its .safetensors or their common stem), or a training
    run folder / checkpoint written by `lowdiff-sched train`."""
    named = named_spec(name)
    if named is not None:
        return named
    exported = exported_stem(Path(name))
    if exported is not None:
        return ModelSpec(name, f"exported model {exported}", _exported_model(exported), latent=_is_latent_spec_file(exported.with_suffix(".json")))
    if Path(name).exists():
        return ModelSpec(name, f"trained model from {name}", _trained_run(name), latent=_is_latent_run(Path(name)))
    raise ValueError(f"unknown model {name!r}: neither a registered model ({', '.join(_MODELS)}), an exported model "
                     "(NAME.json beside NAME.safetensors) nor a training run path")


def exported_stem(path: Path) -> Path | None:
    """The stem of an exported model (NAME.json beside NAME.safetensors) that `path` names, if it is one."""
    stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    if path.is_dir() or not stem.name:
        return None
    both = (Path(f"{stem}.json"), Path(f"{stem}.safetensors"))
    return stem if all(p.is_file() for p in both) else None


def _exported_model(stem: Path) -> Callable[..., ResolutionCascade]:
    def build(device: torch.device, **options: Any) -> ResolutionCascade:
        from .runs import load_exported

        if options:
            raise ValueError(f"{stem} is an exported model: it takes no {', '.join(sorted(options))} (its weights are its own)")
        return cast(ResolutionCascade, load_exported(Path(f"{stem}.json")).to(device))

    return build


def load_model(name: str, device: str | torch.device = "cpu", **options: Any) -> ResolutionCascade:
    """Build a registered model, or load a trained run, on `device`."""
    return model_spec(name).build(device=torch.device(device), **options)


def load_for_plan(
    name: str, plan: str | None, device: str | torch.device = "cpu", ckpt: str | Path | None = None
) -> tuple[ResolutionCascade, CascadePlan]:
    """Model `name` on `device` and the plan to run it with: `plan` (a preset name or a plan
    file), else the model's default for what was loaded; checked against each other, with
    errors that name --plan."""
    from .presets import load_plan

    spec = model_spec(name)
    cascade = load_model(name, device=device, **({"ckpt": ckpt} if ckpt is not None else {}))
    label = plan if plan is not None else spec.plan_for(cascade)
    if not label:
        raise ValueError(f"--plan is required for model {name} (it has no default plan)")
    cascade_plan = load_plan(label)
    try:
        spec.check_plan(cascade, cascade_plan, str(ckpt or name))
    except ValueError as err:
        raise ValueError(f"--plan {label}: {err}") from None
    return cascade, cascade_plan


def _trained_run(path: str) -> Callable[..., ResolutionCascade]:
    def build(device: torch.device, **options: Any) -> ResolutionCascade:
        from .runs import load_run

        if options:
            raise ValueError(f"{path} is a training run: it takes no {', '.join(sorted(options))} (its weights are its own)")
        return cast(ResolutionCascade, load_run(path).to(device))

    return build


def _is_latent_run(path: Path) -> bool:
    """Whether a training run (folder, or a checkpoint in one) holds a latent (DiT) model."""
    from .runs import MODEL_SPEC

    return _is_latent_spec_file((path if path.is_dir() else path.parent) / MODEL_SPEC)


def _is_latent_spec_file(spec: Path) -> bool:
    import json

    from .runs import is_latent_spec

    try:
        return is_latent_spec(json.loads(spec.read_text()))
    except (OSError, ValueError):
        return False


def shipped(name: str) -> Callable[..., ResolutionCascade]:
    """The builder of a model whose weights ship in the package (lowdiff_sched/weights/NAME.*)."""

    def build(device: torch.device, **options: Any) -> ResolutionCascade:
        from .runs import load_exported
        from .weights import weight_path

        if options:
            raise ValueError(f"{name} ships with its weights: it takes no {', '.join(sorted(options))}")
        return cast(ResolutionCascade, load_exported(weight_path(f"{name}.safetensors")).to(device))

    return build
