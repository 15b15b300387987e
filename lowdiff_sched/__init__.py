"""lowdiff-sched: cascaded multi-resolution sampling for existing diffusion models.

Public names are imported lazily, so `import lowdiff_sched` stays fast and never pulls in
k-diffusion (whose import loads torchvision, clip, kornia ...) until a sampler runs.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Level": "protocol",
    "ResolutionCascade": "protocol",
    "stage_denoiser": "protocol",
    "StagePlan": "plan",
    "CascadePlan": "plan",
    "pixel_ratios": "plan",
    "Transition": "transitions",
    "Condition": "transitions",
    "Renoise": "transitions",
    "Continue": "transitions",
    "Residual": "transitions",
    "StageOutput": "transitions",
    "sample_cascade": "sampling",
    "cascade_sampler": "sampling",
    "karras_sigmas": "schedules",
    "truncate_steps": "schedules",
    "truncate_at_sigma": "schedules",
    "shift_sigmas": "schedules",
    "flow_time_to_sigma": "schedules",
    "sigma_to_flow_time": "schedules",
    "flow_sigmas": "schedules",
    "frechet_distance": "metrics",
}
__all__ = [*_EXPORTS, "presets"]  # noqa: PLE0604  (the names are the keys of _EXPORTS)


def __getattr__(name: str) -> Any:
    if name == "presets":
        return importlib.import_module(".presets", __name__)
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
