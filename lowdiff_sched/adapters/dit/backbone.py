"""The DiT backbone's record: LightningDiTs on VA-VAE latents, their model spec, the named
sizes a run can start fresh from, the latent data they train on, and the VAE decoding of
their samples."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Iterable, Sequence, cast

import torch
from torch import nn

from ...backbones import Backbone, SpecParts
from .cascade import C2FDiT, DiTCascade, LowDiffDiT
from .networks import DiTConfig, LightningDiT
from .sizes import SIZES, meta_cascade, size_config
from .weights import check_dit_size, dit_cascade_of, load_dit

NO_WEIGHTS = (
    "no weights ship with lowdiff-sched for {name}: pass --ckpt PATH, a LightningDiT checkpoint "
    "(hustvl/LightningDiT's released B/1 or XL/1 .pt, or a LowDiff/C2F fine-tune saved by lowdiff-sched), "
    "or train one: lowdiff-sched train --model {name} --data LATENTS ..."
)


class DiTBackbone(Backbone):
    name = "dit"
    classes = (DiTCascade, LowDiffDiT, C2FDiT)
    legacy_format = "lowdiff-sched/lowdiff-dit"
    latent = True
    methods = ("lowdiff", "c2f")
    architectures = tuple(SIZES)

    # ---- the model spec: the LightningDiT config ------------------------------------------
    def describe(self, model: nn.Module) -> SpecParts:
        method = {DiTCascade: "none", LowDiffDiT: "lowdiff", C2FDiT: "c2f"}[type(model)]
        cascade = cast("DiTCascade | LowDiffDiT | C2FDiT", model)
        return SpecParts(cascade.net.config.to_dict(), [lv.size[0] for lv in cascade.levels], method, {})

    def build(self, parts: SpecParts) -> nn.Module:
        """The untrained DiT cascade, once its config is checked to build (`check_dit_size`)."""
        network, levels, method, options = parts
        if method not in ("none", *self.methods) or options:
            raise ValueError(f'a DiT spec\'s "method" is none, lowdiff or c2f with no "options", got {method!r:.40} and {options!r:.80}')
        config = DiTConfig.from_dict(network)
        check_dit_size(config, levels)
        return dit_cascade_of(LightningDiT(config), levels, method)

    def upgrade(self, spec: dict[str, Any]) -> SpecParts:
        """A version-1 DiT spec ("lowdiff-sched/lowdiff-dit": config, levels, method)."""
        if not isinstance(spec.get("config"), dict) or not isinstance(spec.get("levels"), list):
            raise ValueError('a version-1 DiT spec needs "config" and "levels"')
        return SpecParts(spec["config"], spec["levels"], spec.get("method"), {})  # type: ignore[arg-type]

    def summary(self, model: nn.Module) -> str:
        c = cast("DiTCascade | LowDiffDiT | C2FDiT", model).net.config
        return f"LightningDiT (depth {c.depth}, width {c.hidden_size}, {c.num_heads} heads, patch {c.patch_size}), loss flow"

    # ---- training ------------------------------------------------------------------------
    def check_fresh(self, init: dict[str, Any]) -> None:
        raise ValueError(f"a fresh DiT is a named size (--model {' | '.join(SIZES)}), not an object")

    def start(self, init: object, seed: int, architecture: str | None = None) -> nn.Module:
        """Size `architecture` fresh (seeded) without `init`, else the network of a LightningDiT
        checkpoint or of a training run; `pos_embed` stays fixed."""
        from ...runs import MODEL_SPEC, load_run

        if architecture is None:
            raise ValueError(f"a DiT run needs its size: --model {' | '.join(SIZES)}")
        config = size_config(architecture)
        if init is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                net = LightningDiT(config)
        else:
            path = Path(str(init))
            model = load_run(path) if path.is_dir() and (path / MODEL_SPEC).is_file() else load_dit(path, config, architecture)
            net = cast(LightningDiT, model.net).train().requires_grad_(True)
        net.pos_embed.requires_grad_(False)  # a fixed sin-cos table, as in LightningDiT
        return net

    def default_levels(self, net: nn.Module) -> list[int]:
        size = int(cast(LightningDiT, net).config.input_size)
        return [size // 2, size]

    def cascade_of(self, net: nn.Module, levels: Sequence[int], method: str) -> nn.Module:
        return dit_cascade_of(cast(LightningDiT, net), list(levels), method)

    def loss(self, cascade: nn.Module) -> str:
        return "flow"

    def dataset(self, data: str, cascade: nn.Module, latent_stats: str | None = None) -> Any:
        """Latents (.safetensors/.npz: latents [N, C, H, W], labels), normalised with `latent_stats`."""
        from ...datasets.latents import LatentDataset
        from .weights import load_latent_stats

        dit = cast("DiTCascade | LowDiffDiT | C2FDiT", cascade)
        stats = load_latent_stats(latent_stats, dit.net.config.in_channels) if latent_stats else None
        return LatentDataset(data, stats)

    def label_dim(self, cascade: nn.Module, dataset: Any) -> int:
        return int(cast("DiTCascade | LowDiffDiT | C2FDiT", cascade).label_dim) if dataset.has_labels else 0  # unlabelled latents train the null class

    # ---- for users -----------------------------------------------------------------------
    def decoding(self, channels: int, latent_stats: Path | None, decoder: Path | None, device: torch.device) -> Any:
        from .decoding import load_latent_decoding

        return load_latent_decoding(channels, latent_stats, decoder, device)

    def models(self) -> Iterable[Any]:
        from ...models import ModelSpec

        def weights_from(name: str) -> Any:
            def build(device: torch.device, ckpt: str | Path | None = None, **options: Any) -> nn.Module:
                if ckpt is None:
                    raise ValueError(NO_WEIGHTS.format(name=name))
                return load_dit(ckpt, size_config(name, **options), name).to(device)

            return build

        for name, about, plans in (
            ("dit-b1", "LightningDiT-B/1 (130M) on 16x16x32 VA-VAE latents, 1000 ImageNet classes", ("imagenet256-dit-b1", "imagenet256-dit-b1-baseline-100")),
            ("dit-xl1", "LightningDiT-XL/1 (675M) on 16x16x32 VA-VAE latents, 1000 ImageNet classes", ("imagenet256-dit-xl1", "imagenet256-dit-xl1-baseline-250")),
            ("dit-s1", "a small LightningDiT (1.4M; depth 4, width 128) on 16x16x32 latents, for tests and smoke runs", ("imagenet256-dit-b1", "imagenet256-dit-b1-baseline-100")),
        ):
            yield ModelSpec(
                name, f"{about}; needs --ckpt (a plain checkpoint runs the baseline plan, a LowDiff one the cascade)",
                weights_from(name), default_plan=plans[0], latent=True, single_level_plan=plans[1],
                fine_tune="lowdiff-sched train --model {name} --init {ckpt} --data LATENTS --levels {levels} --out runs/{name}-lowdiff",
                inspect=partial(meta_cascade, name),
            )


DIT = DiTBackbone()
