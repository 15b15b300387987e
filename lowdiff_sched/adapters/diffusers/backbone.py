"""The diffusers backbone's record: models named "diffusers:DIR", read from a local
`save_pretrained` folder with the hub forced offline, so nothing is ever downloaded; their
model spec; and LowDiff fine-tuning of a UNet2DModel or a DiTTransformer2DModel on its own
DDPM loss (a learned variance, the second half of a DiT's output, is left as it is).

DIR is either a model folder (config.json beside the weights) with the scheduler's
scheduler_config.json beside it, or a pipeline folder (model_index.json) whose "unet" or
"transformer" and "scheduler" subfolders hold them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ...backbones import Backbone, SpecParts
from .cascade import KINDS, DiffusersCascade, scheduler_parts
from .lowdiff import LowDiffDiT2D, LowDiffUNet2D

PREFIX = "diffusers:"
PIXEL_KINDS = ("unet",)  # the kinds `lowdiff-sched sample` writes images of; latent ones are sampled from Python


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable JSON file: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def locate(folder: str | Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(model folder, model config, scheduler config) of a save_pretrained folder, checked
    before any weights are read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{PREFIX}{folder}: no such folder (a diffusers save_pretrained folder)")
    model_dir, scheduler_file = folder, folder / "scheduler_config.json"
    if (folder / "model_index.json").is_file():
        index = _read_json(folder / "model_index.json")
        part = next((name for name in ("unet", "transformer") if name in index), None)
        if part is None:
            raise ValueError(f"{PREFIX}{folder}: the pipeline {index.get('_class_name', '?')} has no unet or transformer to sample")
        model_dir, scheduler_file = folder / part, folder / "scheduler" / "scheduler_config.json"
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{PREFIX}{folder}: no config.json in {model_dir}: not a diffusers model folder")
    model_config = _read_json(model_dir / "config.json")
    name = model_config.get("_class_name")
    if name not in KINDS:
        raise ValueError(f"{PREFIX}{folder}: {name} is not supported; supported diffusers models: {', '.join(KINDS)}")
    if not scheduler_file.is_file():
        raise ValueError(f"{PREFIX}{folder}: no scheduler config ({scheduler_file}): the model's noise schedule is unknown; "
                         "save the scheduler beside it (scheduler.save_pretrained)")
    return model_dir, model_config, _read_json(scheduler_file)


def load_diffusers(folder: str | Path, levels: list[int] | None = None) -> DiffusersCascade:
    """The cascade of the model in a local save_pretrained folder (offline, float32, eval mode)."""
    model_dir, model_config, scheduler_config = locate(folder)
    os.environ["HF_HUB_OFFLINE"] = "1"  # a folder that names a hub file must fail, never download
    import diffusers

    cls = getattr(diffusers, model_config["_class_name"])
    try:
        net = cls.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as err:
        reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ValueError(f"{PREFIX}{folder}: its weights do not load: {reason}") from None
    return DiffusersCascade(net.eval().requires_grad_(False), scheduler_config, levels)


def plain_config(config: Any) -> dict[str, Any]:
    """A model's diffusers config as plain JSON: its fields, without the entries diffusers adds
    when saving (class name, version, defaults used, source path)."""
    data = json.loads(json.dumps(dict(config), default=list))
    return {k: v for k, v in data.items() if not k.startswith("_")}


def build_model(class_name: str, config: dict[str, Any]) -> nn.Module:
    """An untrained diffusers model of `class_name` from its config, its size checked on the
    meta device (no memory) before it is built."""
    from ...backbones import MAX_PARAMETERS

    if class_name not in KINDS:
        raise ValueError(f"{class_name} is not supported; supported diffusers models: {', '.join(KINDS)}")
    import diffusers

    cls = getattr(diffusers, class_name)
    fields = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        with torch.device("meta"):
            count = sum(p.numel() for p in cls.from_config(fields).parameters())
    except (TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise ValueError(f"the config of {class_name} does not build: {err}") from None
    if count > MAX_PARAMETERS:
        raise ValueError(f"{class_name} config asks for {count:.3g} parameters, more than the {MAX_PARAMETERS:.3g} a file may ask for")
    return cls.from_config(fields)


def retrofit(net: nn.Module, scheduler: Any, levels: Sequence[int]) -> nn.Module:
    """The LowDiff retrofit of a UNet2DModel or a DiTTransformer2DModel."""
    kinds = {"UNet2DModel": LowDiffUNet2D, "DiTTransformer2DModel": LowDiffDiT2D}
    if type(net).__name__ not in kinds:
        raise ValueError(f"LowDiff retrofits {' and '.join(kinds)}, not {type(net).__name__}")
    return kinds[type(net).__name__](net, scheduler, levels)


class DiffusersBackbone(Backbone):
    name = "diffusers"
    classes = (DiffusersCascade, LowDiffUNet2D, LowDiffDiT2D)
    methods = ("lowdiff",)

    # ---- the model spec: the diffusers model's class and config, and its scheduler's config ----
    def describe(self, model: Any) -> SpecParts:
        network = {"class_name": type(model.net).__name__, "config": plain_config(model.net.config),
                   "scheduler": json.loads(json.dumps(model.scheduler_config, default=list))}
        levels = [lv.size[0] for lv in model.levels]
        method = "lowdiff" if isinstance(model, (LowDiffUNet2D, LowDiffDiT2D)) else "none" if len(levels) == 1 else "shared"
        return SpecParts(network, levels, method, {})

    def build(self, parts: SpecParts) -> nn.Module:
        network, levels, method, options = parts
        if set(network) != {"class_name", "config", "scheduler"} or not all(isinstance(network[k], dict) for k in ("config", "scheduler")):
            raise ValueError(f'"network" of a diffusers model must be {{"class_name", "config": {{...}}, "scheduler": {{...}}}}, got {network!r:.200}')
        if method not in ("none", "shared", "lowdiff") or options:
            raise ValueError(f'"method" of a diffusers model is none, shared or lowdiff with no "options", got {method!r:.40}')
        net = build_model(str(network["class_name"]), network["config"])
        if method == "lowdiff":
            return retrofit(net, network["scheduler"], levels)
        return DiffusersCascade(net, network["scheduler"], levels)

    def summary(self, model: Any) -> str:
        _, config = scheduler_parts(model.scheduler_config)
        return f"{type(model.net).__name__} ({config.get('prediction_type', 'flow') if not model.flow else 'flow'} prediction)"

    # ---- training: a LowDiff retrofit of a UNet2DModel or a DiT, on its own DDPM loss --------
    def claims(self, init: object) -> bool:
        return isinstance(init, str) and init.startswith(PREFIX)

    def start(self, init: object, seed: int, architecture: str | None = None) -> nn.Module:
        """The one-level cascade of a "diffusers:DIR" folder or of a diffusers run's network."""
        from ...runs import MODEL_SPEC, load_run

        if architecture is not None or not isinstance(init, str):
            raise ValueError(f"a diffusers run starts from {PREFIX}DIR (a save_pretrained folder) or a diffusers run folder")
        if init.startswith(PREFIX):
            cascade = load_diffusers(init[len(PREFIX):])
        else:
            path = Path(init)
            if not (path.is_dir() and (path / MODEL_SPEC).is_file()):
                raise ValueError(f"init: {init} is neither {PREFIX}DIR nor a training run folder")
            run = load_run(path)
            if not isinstance(run, DiffusersCascade):
                raise ValueError(f"init: {path} is a run of another backbone, not a diffusers model")
            cascade = DiffusersCascade(run.net, run.scheduler_config)
        cascade.net.train().requires_grad_(True)
        return cascade

    def default_levels(self, net: Any) -> list[int]:
        top = net.levels[-1].size[0]
        return [top // 2, top]

    def cascade_of(self, net: Any, levels: Sequence[int], method: str) -> nn.Module:
        if [int(r) for r in levels] == [net.levels[-1].size[0]]:
            return net  # the network itself, fine-tuned as it is
        if method != "lowdiff":
            raise ValueError(f"method {method!r}: diffusers models are retrofitted with lowdiff only")
        return retrofit(net.net, net.scheduler_config, levels)

    def loss(self, cascade: Any) -> str:
        if cascade.flow:
            raise ValueError("training flow-matching diffusers models is not supported")
        return "ddpm"

    def loss_kwargs(self, cascade: Any) -> dict[str, Any]:
        """The model's own schedule and prediction target (`training.losses.DDPMLoss`)."""
        c = cascade.scheduler_config
        if c.get("trained_betas") is not None or c.get("rescale_betas_zero_snr"):
            raise ValueError("training on trained_betas or zero-terminal-SNR schedules is not supported")
        return {"beta_schedule": c.get("beta_schedule", "linear"), "beta_start": float(c.get("beta_start", 0.0001)),
                "beta_end": float(c.get("beta_end", 0.02)), "num_train_timesteps": int(c.get("num_train_timesteps", 1000)),
                "prediction_type": c.get("prediction_type", "epsilon")}

    def dataset(self, data: str, cascade: nn.Module, latent_stats: str | None = None) -> Any:
        """Latents (.safetensors / .npz: latents [N, C, H, W], labels), as a latent DiT trains on,
        else an EDM-layout dataset (folder or zip of PNGs, dataset.json labels) or a named one."""
        from ...datasets import image_dataset
        from ...datasets.latents import LatentDataset

        if Path(data).suffix in (".safetensors", ".npz"):
            return LatentDataset(data, None)
        return image_dataset(data)

    # ---- for users -----------------------------------------------------------------------
    def model_named(self, name: str) -> Any:
        if not name.startswith(PREFIX):
            return None
        from ...models import ModelSpec

        folder = name[len(PREFIX):]
        model_config = locate(folder)[1]
        if KINDS[model_config["_class_name"]] not in PIXEL_KINDS:
            raise ValueError(f"{name} holds a latent model ({model_config['_class_name']}); the command line samples "
                             "pixel-space UNet2DModel folders: sample it from Python with from_diffusers")

        def build(device: torch.device, **options: Any) -> DiffusersCascade:
            if options:
                raise ValueError(f"{name} is a diffusers folder: it takes no {', '.join(sorted(options))}")
            return load_diffusers(folder).to(device)

        return ModelSpec(name, f"the diffusers model in {folder}", build)


DIFFUSERS = DiffusersBackbone()
