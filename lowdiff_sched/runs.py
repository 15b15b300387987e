"""Trained models on disk, whatever the backbone: a training run (model.json beside the
checkpoints) and an exported model (a model spec .json beside .safetensors weights).

model.json says which adapter built the model ("format"); each adapter turns its own spec
into an untrained model, and the weights come from a checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import first_line

MODEL_SPEC = "model.json"

#: The most parameters an architecture read from a file (model.json, a checkpoint's init
#: arguments) may ask for: 2**32 float32 weights are 16 GiB, before gradients and Adam's state.
#: Past it, building would only end in an allocation failure or the OOM killer.
MAX_PARAMETERS = 2**32


# ---- model specs -------------------------------------------------------------------------
# One format for every backbone: {"format": SPEC_FORMAT, "version": SPEC_VERSION,
# "backbone": "edm" | "dit" | ..., "network": the backbone's architecture (its own JSON data),
# "levels": [sizes, low -> high], "method": how the cascade was made from the network ("none":
# the network itself, one level; the adapter checks its own), "options": the method's settings}.
# Each adapter registers a ModelFormat: how its cascades become that data and back.

SPEC_FORMAT = "lowdiff-sched/model"
SPEC_VERSION = 2


@dataclass(frozen=True)
class ModelFormat:
    """A backbone adapter's side of the model spec.

    `describe(model)` gives (network, levels, method, options) of one of `classes`;
    `build(network, levels, method, options)` makes the untrained cascade, checking the
    architecture before allocating it; `upgrade(spec)` turns a version-1 spec with format
    `legacy_format` into the same four values, so older runs and shipped models still load."""

    backbone: str
    classes: tuple[type, ...]
    describe: Callable[[nn.Module], tuple[dict[str, Any], list[int], str, dict[str, Any]]]
    build: Callable[[dict[str, Any], list[int], str, dict[str, Any]], nn.Module]
    legacy_format: str = ""
    upgrade: Callable[[dict[str, Any]], tuple[dict[str, Any], list[int], str, dict[str, Any]]] | None = None
    latent: bool = False  # its samples are latents (decoded with a VAE)
    describe_backbone: Callable[[nn.Module], str] = lambda model: type(model.net).__name__  # for `info`


_FORMATS: dict[str, ModelFormat] = {}


def register_format(fmt: ModelFormat) -> ModelFormat:
    """Add an adapter's ModelFormat to the table specs are read and written with."""
    if fmt.backbone in _FORMATS:
        raise ValueError(f"backbone {fmt.backbone!r} already has a model format")
    _FORMATS[fmt.backbone] = fmt
    return fmt


def _formats() -> dict[str, ModelFormat]:
    from . import adapters  # noqa: F401  importing the adapters registers their formats

    return _FORMATS


def _format_of(model: nn.Module) -> ModelFormat | None:
    """The registered format that writes `model`'s class, if any."""
    return next((fmt for fmt in _formats().values() if type(model) in fmt.classes), None)


def spec_of(model: nn.Module) -> dict[str, Any]:
    """The JSON model spec of a trainable cascade of any registered backbone."""
    fmt = _format_of(model)
    if fmt is None:
        raise ValueError(f"no registered model format writes {type(model).__name__}")
    network, levels, method, options = fmt.describe(model)
    return {"format": SPEC_FORMAT, "version": SPEC_VERSION, "backbone": fmt.backbone, "network": network,
            "levels": [int(r) for r in levels], "method": method, "options": options}


def read_spec(spec: Any) -> tuple[ModelFormat, dict[str, Any], list[int], str, dict[str, Any]]:
    """A spec's format and its (network, levels, method, options), version 1 upgraded."""
    formats = _formats()
    if not isinstance(spec, dict):
        raise ValueError(f"a model spec must be a JSON object, got {type(spec).__name__}")
    if spec.get("format") != SPEC_FORMAT:
        for fmt in formats.values():
            if fmt.upgrade is not None and spec.get("format") == fmt.legacy_format and spec.get("version") == 1:
                return (fmt, *fmt.upgrade(spec))
        raise ValueError(f"not a lowdiff-sched model spec (format {spec.get('format')!r:.80}, version {spec.get('version')!r:.20})")
    if spec.get("version") != SPEC_VERSION:
        raise ValueError(f"model spec version {spec.get('version')!r:.20} is not {SPEC_VERSION}, the one this library reads")
    unknown = sorted(set(spec) - {"format", "version", "backbone", "network", "levels", "method", "options"})
    if unknown:
        raise ValueError(f"unknown model spec fields {unknown}")
    fmt = formats.get(spec.get("backbone"))  # type: ignore[arg-type]
    if fmt is None:
        raise ValueError(f'"backbone" must be one of {sorted(formats)}, got {spec.get("backbone")!r:.80}')
    levels, method, options = spec.get("levels"), spec.get("method"), spec.get("options", {})
    if not isinstance(levels, list) or not levels or not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in levels):
        raise ValueError(f'"levels" must be a non-empty list of positive ints, got {levels!r:.200}')
    if not isinstance(method, str) or not method:
        raise ValueError(f'"method" must be a name, got {method!r:.80}')
    if not isinstance(options, dict):
        raise ValueError(f'"options" must be an object, got {options!r:.80}')
    if not isinstance(spec.get("network"), dict):
        raise ValueError(f'"network" must be an object, got {spec.get("network")!r:.80}')
    return fmt, spec["network"], levels, method, options


def model_summary(model: nn.Module) -> list[str]:
    """What `lowdiff-sched info` prints: the backbone network and its size, the levels, and
    what the retrofit adds (parameters outside `model.net`) for the method the spec names."""
    from .protocol import label_dim_of

    fmt = _format_of(model)
    unit = " latents" if fmt is not None and fmt.latent else ""
    sizes = ", ".join(f"{lv.size[0]}x{lv.size[1]}" + (f"x{lv.channels}" if unit else "") for lv in model.levels)
    classes = label_dim_of(model)
    lines = [f"levels     {sizes}{unit}" + (f", {classes} classes" if classes else "")]
    if fmt is None:
        return lines
    method = fmt.describe(model)[2]
    base = sum(p.numel() for p in model.net.parameters())
    added = sum(p.numel() for p in model.parameters()) - base
    lines.insert(0, f"backbone   {fmt.describe_backbone(model)}, {base:,} parameters")
    if method == "none":
        lines.append("retrofit   none: the network itself, one level")
    else:
        lines.append(f"retrofit   +{added:,} parameters (+{added / base:.3%}) for {type(model).__name__} (method {method}): "
                     f"{base / 1e6:.2f}M -> {(base + added) / 1e6:.2f}M")
    return lines


def same_model(a: Any, b: Any) -> bool:
    """Whether two specs (of any version) describe the same architecture."""
    return read_spec(a)[1:] == read_spec(b)[1:]


def is_latent_spec(spec: Any) -> bool:
    """Whether a spec's backbone makes latents (a VAE decodes them)."""
    return read_spec(spec)[0].latent


def build_from_spec(spec: Any, where: str | Path | None = None) -> nn.Module:
    """The untrained model a spec describes (any version), built by its backbone's format.
    The architecture is checked before anything is built; with `where` (the spec's file),
    errors name it."""
    try:
        fmt, network, levels, method, options = read_spec(spec)
        return fmt.build(network, levels, method, options)
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
    from .training.state import load_checkpoint, newest_readable_checkpoint

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
