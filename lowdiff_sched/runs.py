"""Trained models on disk, whatever the backbone: a training run (model.json beside the
checkpoints) and an exported model (a model spec .json beside .safetensors weights).

model.json says which backbone built the model; the backbone turns its own part of the spec
into an untrained model, and the weights come from a checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from .backbones import Backbone, SpecParts, backbone_of, backbones
from .errors import first_line

if TYPE_CHECKING:
    from .protocol import ResolutionCascade

MODEL_SPEC = "model.json"

# ---- model specs -------------------------------------------------------------------------
# One format for every backbone: {"format": SPEC_FORMAT, "version": SPEC_VERSION,
# "backbone": "edm" | "dit" | ..., "network": the backbone's architecture (its own JSON data),
# "levels": [sizes, low -> high], "method": how the cascade was made from the network ("none":
# the network itself, one level; the backbone checks its own), "options": the method's settings}.
# Each backbone (`backbones.Backbone`) turns its cascades into that data and back.

SPEC_FORMAT = "lowdiff-sched/model"
SPEC_VERSION = 2


def spec_of(model: nn.Module) -> dict[str, Any]:
    """The JSON model spec of a trainable cascade of any registered backbone."""
    backbone = backbone_of(model)
    if backbone is None:
        raise ValueError(f"no registered backbone writes {type(model).__name__}")
    parts = backbone.describe(model)
    return {"format": SPEC_FORMAT, "version": SPEC_VERSION, "backbone": backbone.name, "network": parts.network,
            "levels": [int(r) for r in parts.levels], "method": parts.method, "options": parts.options}


def read_spec(spec: Any) -> tuple[Backbone, SpecParts]:
    """A spec's backbone and its parts (network, levels, method, options), version 1 upgraded."""
    table = backbones()
    if not isinstance(spec, dict):
        raise ValueError(f"a model spec must be a JSON object, got {type(spec).__name__}")
    if spec.get("format") != SPEC_FORMAT:
        for legacy in table.values():
            if legacy.legacy_format and spec.get("format") == legacy.legacy_format and spec.get("version") == 1:
                return legacy, legacy.upgrade(spec)
        raise ValueError(f"not a lowdiff-sched model spec (format {spec.get('format')!r:.80}, version {spec.get('version')!r:.20})")
    if spec.get("version") != SPEC_VERSION:
        raise ValueError(f"model spec version {spec.get('version')!r:.20} is not {SPEC_VERSION}, the one this library reads")
    unknown = sorted(set(spec) - {"format", "version", "backbone", "network", "levels", "method", "options"})
    if unknown:
        raise ValueError(f"unknown model spec fields {unknown}")
    name = spec.get("backbone")
    backbone = table.get(name) if isinstance(name, str) else None
    if backbone is None or not backbone.classes:
        raise ValueError(f'"backbone" must be one of {sorted(k for k, b in table.items() if b.classes)}, got {name!r:.80}')
    levels, method, options = spec.get("levels"), spec.get("method"), spec.get("options", {})
    if not isinstance(levels, list) or not levels or not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in levels):
        raise ValueError(f'"levels" must be a non-empty list of positive ints, got {levels!r:.200}')
    if not isinstance(method, str) or not method:
        raise ValueError(f'"method" must be a name, got {method!r:.80}')
    if not isinstance(options, dict):
        raise ValueError(f'"options" must be an object, got {options!r:.80}')
    if not isinstance(spec.get("network"), dict):
        raise ValueError(f'"network" must be an object, got {spec.get("network")!r:.80}')
    return backbone, SpecParts(spec["network"], levels, method, options)


def model_summary(model: ResolutionCascade) -> list[str]:
    """What `lowdiff-sched info` prints: the backbone network and its size, the levels, and
    what the retrofit adds (parameters outside the backbone's network) for the method the spec names."""
    from .protocol import label_dim_of

    backbone = backbone_of(model)
    unit = " latents" if backbone is not None and backbone.latent else ""
    sizes = ", ".join(f"{lv.size[0]}x{lv.size[1]}" + (f"x{lv.channels}" if unit else "") for lv in model.levels)
    classes = label_dim_of(model)
    lines = [f"levels     {sizes}{unit}" + (f", {classes} classes" if classes else "")]
    if backbone is None:
        return lines
    module = cast(nn.Module, model)  # of one of the backbone's classes, all modules
    method = backbone.describe(module).method
    base = sum(p.numel() for p in backbone.network(module).parameters())
    added = sum(p.numel() for p in module.parameters()) - base
    lines.insert(0, f"backbone   {backbone.summary(module)}, {base:,} parameters")
    if method == "none":
        lines.append("retrofit   none: the network itself, one level")
    else:
        lines.append(f"retrofit   +{added:,} parameters (+{added / base:.3%}) for {type(model).__name__} (method {method}): "
                     f"{base / 1e6:.2f}M -> {(base + added) / 1e6:.2f}M")
    return lines


def same_model(a: Any, b: Any) -> bool:
    """Whether two specs (of any version) describe the same architecture."""
    (backbone_a, parts_a), (backbone_b, parts_b) = read_spec(a), read_spec(b)
    return backbone_a is backbone_b and parts_a == parts_b


def is_latent_spec(spec: Any) -> bool:
    """Whether a spec's backbone makes latents (a VAE decodes them)."""
    return read_spec(spec)[0].latent


def build_from_spec(spec: Any, where: str | Path | None = None) -> nn.Module:
    """The untrained model a spec describes (any version), built by its backbone.
    The architecture is checked before anything is built; with `where` (the spec's file),
    errors name it."""
    try:
        backbone, parts = read_spec(spec)
        return backbone.build(parts)
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
    from .checkpoints import load_checkpoint, newest_readable_checkpoint

    path = Path(path)
    run = path if path.is_dir() else path.parent
    spec_file = run / MODEL_SPEC
    if not spec_file.is_file():
        raise ValueError(f"{str(run)!r} is not a lowdiff-sched training run (no {MODEL_SPEC})")
    found = (path, load_checkpoint(path)) if path.is_file() else newest_readable_checkpoint(run)
    if found is None:
        raise ValueError(f"training run {str(run)!r} has no checkpoint yet")
    model = build_from_spec(_read_json(spec_file), spec_file)
    model.load_state_dict(found[1]["ema"])
    return model.eval()


def export_run(run: str | Path, out: str | Path, *, dtype: torch.dtype = torch.float16) -> tuple[Path, Path]:
    """Write a run's EMA model as `out`.json (its model spec) and `out`.safetensors (weights in
    `dtype`), the form in which models ship with the package; returns both paths."""
    from safetensors.torch import save_file

    from .outputs import atomic_path

    model = load_run(run)
    spec = spec_of(model)  # the current format, whichever version the run wrote
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
    try:
        weights = load_file(str(weights_path))
    except Exception as err:  # safetensors' SafetensorError (a cut or damaged file), or an OSError
        raise ValueError(f"{str(weights_path)!r} is not a readable safetensors file: {first_line(err)}") from None
    state = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in weights.items()}
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)
