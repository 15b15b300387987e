"""Named models for the CLI and for users: one `sample` command, many backbones.

Each entry builds a ResolutionCascade; adapters register theirs with `register_model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

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


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    _MODELS[spec.name] = spec
    return spec


def model_names() -> list[str]:
    return list(_MODELS)


def model_spec(name: str) -> ModelSpec:
    """A registered model, a model written by `lowdiff-sched export` (its .json, its
    .safetensors or their common stem), or a training run folder / checkpoint written by
    `lowdiff-sched train`."""
    if name in _MODELS:
        return _MODELS[name]
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
        return load_exported(Path(f"{stem}.json")).to(device)

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
        return load_run(path).to(device)

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


def _gaussian_field(device: torch.device, **options: Any) -> ResolutionCascade:
    from .adapters.analytic import GaussianFieldCascade

    return GaussianFieldCascade(**{"levels": (8, 16, 32), "channels": 3, **options})


def _digit_judge(cascade: ResolutionCascade) -> Any:
    from .judges import DigitJudge

    return DigitJudge()


def _oracle_judge(cascade: ResolutionCascade) -> Any:
    from .judges import OracleJudge

    return OracleJudge(cascade)


def _shipped(name: str) -> Callable[..., ResolutionCascade]:
    def build(device: torch.device, **options: Any) -> ResolutionCascade:
        from .runs import load_exported
        from .weights import weight_path

        return load_exported(weight_path(f"{name}.safetensors")).to(device)

    return build


register_model(
    ModelSpec(
        "mnist-lowdiff",
        "LowDiff on real MNIST digits: mnist-base retrofitted at 8/16/32 and fine-tuned (shipped weights, 10 classes)",
        _shipped("mnist-lowdiff"),
        default_plan="mnist-3stage",
        judge=_digit_judge,
    )
)
register_model(
    ModelSpec(
        "mnist-lowdiff-2level",
        "LowDiff on real MNIST digits with two levels: mnist-base retrofitted at 16/32 and fine-tuned (shipped weights, 10 classes)",
        _shipped("mnist-lowdiff-2level"),
        default_plan="mnist-2stage",
        judge=_digit_judge,
    )
)
register_model(
    ModelSpec(
        "mnist-c2f",
        "C2F-DM on real MNIST digits: mnist-base with a resolution label, fine-tuned at 16/32 in alternate steps (shipped weights, 10 classes)",
        _shipped("mnist-c2f"),
        default_plan="mnist-c2f",
        judge=_digit_judge,
    )
)
register_model(
    ModelSpec(
        "mnist-fast",
        "a LevelStack on real MNIST digits: mnist-base, unchanged, on top and a copy of it at 16x16 distilled from "
        "mnist-base's own predictions for a Continue hand-over (shipped weights, 10 classes)",
        _shipped("mnist-fast"),
        default_plan="mnist-fast",
        judge=_digit_judge,
    )
)
register_model(
    ModelSpec(
        "mnist-base",
        "single-resolution 32x32 baseline on real MNIST digits, the SongUNet mnist-lowdiff starts from (shipped weights, 10 classes)",
        _shipped("mnist-base"),
        default_plan="mnist-base-35",
        judge=_digit_judge,
    )
)
NO_DIT_WEIGHTS = (
    "no weights ship with lowdiff-sched for {name}: pass --ckpt PATH, a LightningDiT checkpoint "
    "(hustvl/LightningDiT's released B/1 or XL/1 .pt, or a LowDiff/C2F fine-tune saved by lowdiff-sched), "
    "or train one: lowdiff-sched train --model {name} --data LATENTS ..."
)


def _dit(name: str) -> Callable[..., ResolutionCascade]:
    def build(device: torch.device, ckpt: str | Path | None = None, **options: Any) -> ResolutionCascade:
        from .adapters.dit.weights import load_dit
        from .adapters.dit.sizes import size_config

        if ckpt is None:
            raise ValueError(NO_DIT_WEIGHTS.format(name=name))
        return load_dit(ckpt, size_config(name, **options), name).to(device)

    return build


for _name, _about, _plans in (
    ("dit-b1", "LightningDiT-B/1 (130M) on 16x16x32 VA-VAE latents, 1000 ImageNet classes", ("imagenet256-dit-b1", "imagenet256-dit-b1-baseline-100")),
    ("dit-xl1", "LightningDiT-XL/1 (675M) on 16x16x32 VA-VAE latents, 1000 ImageNet classes", ("imagenet256-dit-xl1", "imagenet256-dit-xl1-baseline-250")),
    ("dit-s1", "a small LightningDiT (1.4M; depth 4, width 128) on 16x16x32 latents, for tests and smoke runs", ("imagenet256-dit-b1", "imagenet256-dit-b1-baseline-100")),
):
    register_model(ModelSpec(
        _name, f"{_about}; needs --ckpt (a plain checkpoint runs the baseline plan, a LowDiff one the cascade)",
        _dit(_name), default_plan=_plans[0], latent=True, single_level_plan=_plans[1],
        fine_tune="lowdiff-sched train --model {name} --init {ckpt} --data LATENTS --levels {levels} --out runs/{name}-lowdiff",
    ))

register_model(
    ModelSpec(
        "gaussian-field",
        "exact Gaussian random-field oracle, levels 8/16/32, 3 channels (no weights; exact denoisers)",
        _gaussian_field,
        default_plan="cifar10-3stage",
        judge=_oracle_judge,
    )
)
