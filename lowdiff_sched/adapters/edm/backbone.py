"""The EDM backbone's record: EDM's precond networks (VPPrecond, VEPrecond, EDMPrecond around a
SongUNet or DhariwalUNet), their model spec, how a run starts from one and which cascades
the methods make of it, the image data they train on, and the shipped models built on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence, cast

import torch
from torch import nn

from ...backbones import Backbone, SpecParts
from .c2f import C2FUNet
from .lowdiff import METHODS, EDMCascade, LowDiffUNet, backbone_loss, build_network, cascade_of, is_edm_precond
from .networks import _Precond
from .stack import LevelStack


class EDMBackbone(Backbone):
    name = "edm"
    classes = (EDMCascade, LowDiffUNet, C2FUNet, LevelStack)
    legacy_format = "lowdiff-sched/lowdiff-edm"
    methods = ("lowdiff", "c2f", "distill")

    # ---- the model spec: {"class_name", "init_kwargs"} of the precond network ----------------
    def describe(self, model: nn.Module) -> SpecParts:
        init_kwargs = getattr(model.net, "init_kwargs", None)
        if init_kwargs is None:
            raise ValueError("the backbone's init kwargs are unknown: load it with load_edm, which records them")
        network = {"class_name": type(model.net).__name__, "init_kwargs": init_kwargs}
        if isinstance(model, EDMCascade):
            return SpecParts(network, [int(model.net.img_resolution)], "none", {})
        method = "c2f" if isinstance(model, C2FUNet) else "distill" if isinstance(model, LevelStack) else "lowdiff"
        options = {"cond": model.cond_mode, "embed_cond_sigma": model.embed_cond_sigma} if method == "lowdiff" else {}
        return SpecParts(network, list(cast("tuple[int, ...]", model.level_sizes)), method, options)

    def build(self, parts: SpecParts) -> nn.Module:
        network, levels, method, options = parts
        if set(network) != {"class_name", "init_kwargs"}:
            raise ValueError(f'"network" must be {{"class_name": ..., "init_kwargs": {{...}}}}, got {network!r:.200}')
        if method not in METHODS:
            raise ValueError(f'"method" of an EDM model must be one of {METHODS}, got {method!r:.80}')
        expected = {"cond", "embed_cond_sigma"} if method == "lowdiff" else set()
        if set(options) != expected:
            raise ValueError(f'"options" of method {method!r} must be {sorted(expected)}, got {sorted(options)}')
        net = build_network(network["class_name"], network["init_kwargs"])
        if method == "none" and levels != [int(net.img_resolution)]:
            raise ValueError(f'method "none" runs the network at its own resolution {net.img_resolution}, got levels {levels}')
        return cascade_of(net, levels, options.get("cond", "nearest"), options.get("embed_cond_sigma", True), method)

    def upgrade(self, spec: dict[str, Any]) -> SpecParts:
        """A version-1 EDM spec ("lowdiff-sched/lowdiff-edm"; one level was "retrofit": false)."""
        network, levels = spec.get("backbone"), spec.get("levels")
        if not isinstance(network, dict) or not isinstance(levels, list):
            raise ValueError('a version-1 EDM spec needs "backbone" and "levels"')
        if spec.get("retrofit", True) is False:
            return SpecParts(network, levels, "none", {})
        method = spec.get("method", "lowdiff")
        if method == "lowdiff":
            missing = [k for k in ("cond", "embed_cond_sigma") if k not in spec]
            if missing:
                raise ValueError(f"a LowDiff model spec needs {' and '.join(map(repr, missing))}")
            return SpecParts(network, levels, method, {"cond": spec["cond"], "embed_cond_sigma": spec["embed_cond_sigma"]})
        return SpecParts(network, levels, method, {})

    def summary(self, model: nn.Module) -> str:
        cascade = cast("LowDiffUNet | EDMCascade | C2FUNet | LevelStack", model)
        return f"{type(cascade.net).__name__}({type(cascade.net.model).__name__}), loss {backbone_loss(cascade)}"

    # ---- training ------------------------------------------------------------------------
    def check_fresh(self, init: dict[str, Any]) -> None:
        if set(init) != {"class_name", "init_kwargs"} or not isinstance(init["init_kwargs"], dict):
            raise ValueError(f'a fresh network is {{"class_name": ..., "init_kwargs": {{...}}}}, got keys {sorted(init)}')

    def start(self, init: object, seed: int, architecture: str | None = None) -> nn.Module:
        """A fresh network ({"class_name", "init_kwargs"}, seeded), a shipped model's network
        (e.g. mnist-base), the EMA network of a training run, or an EDM pickle / lowdiff-sched
        checkpoint."""
        from ...models import load_model, model_names
        from ...runs import MODEL_SPEC, load_run
        from .snapshots import load_edm

        if architecture is not None:
            raise ValueError(f"backbone edm has no named architectures (got {architecture!r}); give init")
        if isinstance(init, dict):
            self.check_fresh(init)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return build_network(init["class_name"], init["init_kwargs"])
        if isinstance(init, str) and init in model_names() and not Path(init).exists():
            net = getattr(load_model(init), "net", None)
            if not is_edm_precond(net):
                raise ValueError(f"init: {init} is not an EDM network")
            return net.train().requires_grad_(True)
        path = Path(str(init))
        if path.is_dir() and (path / MODEL_SPEC).is_file():
            net = getattr(load_run(path), "net", None)
            if not is_edm_precond(net):
                raise ValueError(f"init: {path} is a run of another backbone, not an EDM network")
            return net
        return load_edm(path)

    def default_levels(self, net: nn.Module) -> list[int]:
        """Three levels, each half the next, up to the network's own resolution (8, 16, 32 for a 32x32 net)."""
        top = int(cast(_Precond, net).img_resolution)
        return [top // 4, top // 2, top]

    def cascade_of(self, net: nn.Module, levels: Sequence[int], method: str) -> nn.Module:
        cascade = cascade_of(net, levels, method=method)
        if method == "distill":
            if not isinstance(cascade, LevelStack):
                raise ValueError(f"method distill needs a level below the network's own, got levels {list(levels)}")
            cascade.freeze_top()  # the original network is the lower levels' teacher
        return cascade

    def loss(self, cascade: nn.Module) -> str:
        return backbone_loss(cast("LowDiffUNet | EDMCascade | C2FUNet | LevelStack", cascade))

    def dataset(self, data: str, cascade: nn.Module, latent_stats: str | None = None) -> Any:
        """An EDM dataset (folder or zip of PNGs, dataset.json labels) or a named one (mnist:train)."""
        from ...datasets import image_dataset

        return image_dataset(data)

    # ---- for users -----------------------------------------------------------------------
    def inspect(self, path: Path, levels: Sequence[int] | None) -> nn.Module:
        """The LowDiff retrofit of an EDM pickle or checkpoint, at `levels` (default three)."""
        from .snapshots import load_edm

        net = load_edm(path)
        return LowDiffUNet.from_edm(net, levels if levels is not None else self.default_levels(net))

    def models(self) -> Iterable[Any]:
        from ...models import ModelSpec, shipped

        def digits(cascade: Any) -> Any:
            from ...judges import DigitJudge

            return DigitJudge()

        for name, plan, about in (
            ("mnist-lowdiff", "mnist-3stage",
             "LowDiff on real MNIST digits: mnist-base retrofitted at 8/16/32 and fine-tuned (shipped weights, 10 classes)"),
            ("mnist-lowdiff-2level", "mnist-2stage",
             "LowDiff on real MNIST digits with two levels: mnist-base retrofitted at 16/32 and fine-tuned (shipped weights, 10 classes)"),
            ("mnist-c2f", "mnist-c2f",
             "C2F-DM on real MNIST digits: mnist-base with a resolution label, fine-tuned at 16/32 in alternate steps (shipped weights, 10 classes)"),
            ("mnist-fast", "mnist-fast",
             "a LevelStack on real MNIST digits: mnist-base, unchanged, on top and a copy of it at 16x16 distilled from "
             "mnist-base's own predictions for a Continue hand-over (shipped weights, 10 classes)"),
            ("mnist-base", "mnist-base-35",
             "single-resolution 32x32 baseline on real MNIST digits, the SongUNet mnist-lowdiff starts from (shipped weights, 10 classes)"),
        ):
            yield ModelSpec(name, about, shipped(name), default_plan=plan, judge=digits)

        def emoji(cascade: Any) -> Any:
            from ...judges import EmojiJudge

            return EmojiJudge()

        for name, plan, about in (
            ("emoji-fast", "emoji-fast",
             "a LevelStack on 64x64 emoji (Noto and Twemoji artwork): emoji-base, unchanged, on top and copies of it at "
             "16x16 and 32x32 distilled from emoji-base's own predictions for Continue hand-overs (shipped weights, 9 categories)"),
            ("emoji-base", "emoji-base-35",
             "single-resolution 64x64 SongUNet trained from scratch on emoji artwork (Noto and Twemoji, 9 Unicode "
             "categories; shipped weights)"),
        ):
            yield ModelSpec(name, about, shipped(name), default_plan=plan, judge=emoji)


EDM = EDMBackbone()
