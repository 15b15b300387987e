"""One record per backbone (a family of networks: EDM UNets, LightningDiTs, ...), holding
everything backbone-specific, so the model format, training recipes, named models and the
CLI hold no per-backbone branch.

A backbone is a `Backbone` subclass instance found through the entry-point group
`lowdiff_sched.backbones` (this package lists its own in pyproject.toml; another package
adds its backbone the same way), or added at run time with `register_backbone`.
docs/backbones.md shows a whole one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple, Sequence, cast

from torch import nn

if TYPE_CHECKING:
    import torch

ENTRY_POINTS = "lowdiff_sched.backbones"
DEFAULT = "edm"  # a recipe that names no backbone, architecture or claimed init trains an EDM network

#: The most parameters an architecture read from a file (model.json, a checkpoint's init
#: arguments) may ask for: 2**32 float32 weights are 16 GiB, before gradients and Adam's state.
#: Past it, building would only end in an allocation failure or the OOM killer.
MAX_PARAMETERS = 2**32


class SpecParts(NamedTuple):
    """A model spec's backbone-specific part: the network's architecture (the backbone's own
    JSON data), the level sizes low -> high, the method that made the cascade from the
    network ("none": the network itself, one level) and the method's options."""

    network: dict[str, Any]
    levels: list[int]
    method: str
    options: dict[str, Any]


class Backbone:
    """The base record: a subclass overrides what its backbone supports; the rest says so.

    Model format (`runs`): `classes` are the cascade types it writes; `describe` turns one
    into SpecParts and `build` makes the untrained cascade back, checking the architecture
    before allocating; `upgrade` reads a version-1 spec whose format was `legacy_format`.
    Training (`training.recipe`): `start` gives the network to begin from, `cascade_of` the
    cascade a method makes of it at `levels` (`default_levels` when none are given), `loss`
    its loss, `dataset` its data. Users: `models` are its named models, `inspect` a cascade
    of a raw checkpoint file for `lowdiff-sched info`, `decoding` the decoder of a latent
    backbone's samples.
    """

    name: str = ""
    classes: tuple[type, ...] = ()
    legacy_format: str = ""
    latent: bool = False  # samples are latents that a decoder (a VAE) turns into images
    methods: tuple[str, ...] = ()  # cascade methods `cascade_of` makes, besides "none"
    architectures: tuple[str, ...] = ()  # names of fresh networks it builds (`train --model NAME`)

    # ---- the model format ------------------------------------------------------------------
    def describe(self, model: nn.Module) -> SpecParts:
        raise self._unsupported("describe models")

    def build(self, parts: SpecParts) -> nn.Module:
        raise self._unsupported("build models from a spec")

    def upgrade(self, spec: dict[str, Any]) -> SpecParts:
        raise self._unsupported("read version-1 specs")

    def network(self, model: nn.Module) -> nn.Module:
        """The wrapped network of one of its cascades: what a retrofit adds parameters to."""
        return cast(nn.Module, model.net)

    def summary(self, model: nn.Module) -> str:
        """The network as `lowdiff-sched info` names it."""
        return type(self.network(model)).__name__

    # ---- training ------------------------------------------------------------------------
    def claims(self, init: object) -> bool:
        """Whether a recipe's `init` is evidently this backbone's (e.g. a "diffusers:" path)."""
        return False

    def check_fresh(self, init: dict[str, Any]) -> None:
        """Check a fresh network's description (a recipe's `init` given as a JSON object)."""

    def start(self, init: object, seed: int, architecture: str | None = None) -> nn.Module:
        """The network a run starts from: `init` (a file, a run, a model name or the backbone's
        own description of a fresh network) or, with no `init`, a fresh `architecture`,
        initialised from `seed`."""
        raise self._unsupported("train")

    def default_levels(self, net: nn.Module) -> list[int]:
        raise self._unsupported("train")

    def cascade_of(self, net: nn.Module, levels: Sequence[int], method: str) -> nn.Module:
        raise self._unsupported("train")

    def loss(self, cascade: nn.Module) -> str:
        """The name of its training loss (`training.losses.make_loss`)."""
        raise self._unsupported("train")

    def loss_kwargs(self, cascade: nn.Module) -> dict[str, Any]:
        """That loss's settings for this network (a DDPM schedule's betas), unless a run sets its own."""
        return {}

    def dataset(self, data: str, cascade: nn.Module, latent_stats: str | None = None) -> Any:
        """The training data `data` names, as a torch Dataset of (x, labels) items."""
        raise self._unsupported("train")

    def label_dim(self, cascade: nn.Module, dataset: Any) -> int:
        """Classes the run trains with (0: unconditional)."""
        return int(getattr(cascade, "label_dim", 0))

    # ---- for users -----------------------------------------------------------------------
    def models(self) -> Iterable[Any]:
        """Its named models, as `models.ModelSpec`s."""
        return ()

    def model_named(self, name: str) -> Any:
        """A `models.ModelSpec` for a name it recognises that is not in the table (e.g. a
        "diffusers:DIR" folder), else None."""
        return None

    def inspect(self, path: Path, levels: Sequence[int] | None) -> nn.Module:
        raise self._unsupported("read raw checkpoint files")

    def decoding(self, channels: int, latent_stats: Path | None, decoder: Path | None, device: "torch.device") -> Any:
        raise self._unsupported("decode latents")

    def _unsupported(self, what: str) -> ValueError:
        return ValueError(f"backbone {self.name} does not {what}")


_REGISTERED: dict[str, Backbone] = {}
_LOADED = False


def register_backbone(backbone: Backbone) -> Backbone:
    """Add a backbone to the table (the entry points are read first, so a name is never taken twice)."""
    table = backbones()
    if not isinstance(backbone, Backbone) or not backbone.name:
        raise ValueError(f"a backbone is a named Backbone instance, got {backbone!r:.80}")
    if backbone.name in table:
        raise ValueError(f"backbone {backbone.name!r} is already registered")
    table[backbone.name] = backbone
    return backbone


def backbones() -> dict[str, Backbone]:
    """Every registered backbone by name, the entry points loaded on first use."""
    global _LOADED
    if not _LOADED:
        from importlib.metadata import entry_points

        found = list(entry_points(group=ENTRY_POINTS))
        if not found:
            raise RuntimeError(f"no backbones are registered (entry-point group {ENTRY_POINTS}): lowdiff-sched "
                               "is not installed; install it with pip install -e .")
        for point in sorted(found, key=lambda p: p.name):
            backbone = point.load()
            if not isinstance(backbone, Backbone) or backbone.name != point.name:
                raise RuntimeError(f"entry point {point.name} = {point.value} is not a Backbone named {point.name!r}")
            _REGISTERED.setdefault(point.name, backbone)
        _LOADED = True
    return _REGISTERED


def backbone(name: str) -> Backbone:
    table = backbones()
    if name not in table:
        raise ValueError(f"unknown backbone {name!r}; registered: {', '.join(sorted(table))}")
    return table[name]


def backbone_of(model: object) -> Backbone | None:
    """The backbone whose format writes `model`'s class, if any."""
    return next((b for b in backbones().values() if type(model) in b.classes), None)


def architectures() -> dict[str, Backbone]:
    """Every fresh-network name (`train --model`) and the backbone that builds it."""
    return {arch: b for b in backbones().values() for arch in b.architectures}
