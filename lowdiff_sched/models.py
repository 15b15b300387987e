"""Named models for the CLI and for users: one `sample` command, many backbones.

Each entry builds a ResolutionCascade; adapters register theirs with `register_model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .protocol import ResolutionCascade


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    build: Callable[..., ResolutionCascade]  # build(device=..., **options)
    value_range: tuple[float, float] = (-1.0, 1.0)  # data range, for writing images
    default_plan: str = ""


_MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    _MODELS[spec.name] = spec
    return spec


def model_names() -> list[str]:
    return list(_MODELS)


def model_spec(name: str) -> ModelSpec:
    """A registered model, or a training run folder / checkpoint written by `lowdiff-sched train`."""
    if name in _MODELS:
        return _MODELS[name]
    if Path(name).exists():
        return ModelSpec(name, f"trained LowDiff model from {name}", _trained_run(name))
    raise ValueError(f"unknown model {name!r}: neither a registered model ({', '.join(_MODELS)}) nor a training run path")


def load_model(name: str, device: str | torch.device = "cpu", **options: Any) -> ResolutionCascade:
    """Build a registered model, or load a trained run, on `device`."""
    return model_spec(name).build(device=torch.device(device), **options)


def _trained_run(path: str) -> Callable[..., ResolutionCascade]:
    def build(device: torch.device, **options: Any) -> ResolutionCascade:
        from .adapters.edm.lowdiff import load_run

        return load_run(path).to(device)

    return build


def _gaussian_field(device: torch.device, **options: Any) -> ResolutionCascade:
    from .adapters.analytic import GaussianFieldCascade

    return GaussianFieldCascade(**{"levels": (8, 16, 32), "channels": 3, **options})


def _shipped(name: str) -> Callable[..., ResolutionCascade]:
    def build(device: torch.device, **options: Any) -> ResolutionCascade:
        from .adapters.edm.lowdiff import load_exported
        from .weights import weight_path

        return load_exported(weight_path(f"{name}.safetensors")).to(device)

    return build


register_model(
    ModelSpec(
        "mnist-lowdiff",
        "LowDiff on real MNIST digits: mnist-base retrofitted at 8/16/32 and fine-tuned (shipped weights, 10 classes)",
        _shipped("mnist-lowdiff"),
        default_plan="mnist-3stage",
    )
)
register_model(
    ModelSpec(
        "mnist-base",
        "single-resolution 32x32 baseline on real MNIST digits, the SongUNet mnist-lowdiff starts from (shipped weights, 10 classes)",
        _shipped("mnist-base"),
        default_plan="mnist-base-35",
    )
)
register_model(
    ModelSpec(
        "gaussian-field",
        "exact Gaussian random-field oracle, levels 8/16/32, 3 channels (no weights; exact denoisers)",
        _gaussian_field,
        default_plan="cifar10-3stage",
    )
)
