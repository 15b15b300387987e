"""Trained models on disk, whatever the backbone: a training run (model.json beside the
checkpoints) and an exported model (a model spec .json beside .safetensors weights).

model.json says which adapter built the model ("format"); each adapter turns its own spec
into an untrained model, and the weights come from a checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODEL_SPEC = "model.json"

#: The most parameters an architecture read from a file (model.json, a checkpoint's init
#: arguments) may ask for: 2**32 float32 weights are 16 GiB, before gradients and Adam's state.
#: Past it, building would only end in an allocation failure or the OOM killer.
MAX_PARAMETERS = 2**32


def spec_of(model: nn.Module) -> dict[str, Any]:
    """The JSON model spec of a trainable cascade (EDM or DiT adapter)."""
    from .adapters.dit.cascade import _FlowCascade
    from .adapters.dit.weights import dit_model_spec
    from .adapters.edm.lowdiff import edm_model_spec

    return dit_model_spec(model) if isinstance(model, _FlowCascade) else edm_model_spec(model)  # type: ignore[arg-type]


def build_from_spec(spec: Any, where: str | Path | None = None) -> nn.Module:
    """The untrained model a spec describes, by its format. The architecture is checked
    before anything is built; with `where` (the spec's file), errors name it."""
    from .adapters.dit.weights import SPEC_FORMAT as DIT_FORMAT
    from .adapters.dit.weights import dit_from_spec
    from .adapters.edm.lowdiff import edm_from_spec

    try:
        if isinstance(spec, dict) and spec.get("format") == DIT_FORMAT:
            return dit_from_spec(spec)
        return edm_from_spec(spec)
    except ValueError as err:
        if where is None:
            raise
        raise ValueError(f"model spec {str(where)!r}: {err}") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r} is not valid JSON: {err}") from None


def load_run(path: str | Path) -> nn.Module:
    """A trained model from a training run folder (its latest checkpoint) or from one
    checkpoint file inside it, with the EMA weights, in eval mode."""
    from .training.state import latest_checkpoint, load_weights

    path = Path(path)
    run = path if path.is_dir() else path.parent
    spec_file = run / MODEL_SPEC
    if not spec_file.is_file():
        raise ValueError(f"{str(run)!r} is not a lowdiff-sched training run (no {MODEL_SPEC})")
    checkpoint = path if path.is_file() else latest_checkpoint(run)
    if checkpoint is None:
        raise ValueError(f"training run {str(run)!r} has no checkpoint yet")
    return load_weights(build_from_spec(_read_json(spec_file), spec_file), checkpoint, "ema").eval()


def export_run(run: str | Path, out: str | Path, *, dtype: torch.dtype = torch.float16) -> tuple[Path, Path]:
    """Write a run's EMA model as `out`.json (its model spec) and `out`.safetensors (weights in
    `dtype`), the form in which models ship with the package; returns both paths."""
    from safetensors.torch import save_file

    from .outputs import atomic_path

    run = Path(run)
    model = load_run(run)
    spec = _read_json((run if run.is_dir() else run.parent) / MODEL_SPEC)
    out = Path(out)
    spec_path, weights_path = out.with_suffix(".json"), out.with_suffix(".safetensors")
    state = {k: v.detach().to(dtype if v.is_floating_point() else v.dtype).contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights_path) as tmp:
        save_file(state, str(tmp))
    with atomic_path(spec_path) as tmp:
        tmp.write_text(json.dumps(spec, indent=2) + "\n")
    return spec_path, weights_path


def load_exported(path: str | Path) -> nn.Module:
    """A model written by `export_run` (give either file or their common stem), float32, eval mode."""
    from safetensors.torch import load_file

    path = Path(path)
    spec_path, weights_path = path.with_suffix(".json"), path.with_suffix(".safetensors")
    for p in (spec_path, weights_path):
        if not p.is_file():
            raise ValueError(f"exported model {str(path)!r} needs {p.name} beside it; not found")
    model = build_from_spec(_read_json(spec_path), spec_path)
    state = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in load_file(str(weights_path)).items()}
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)
