"""`TrainRecipe`: a whole training run as JSON-able data (the network to start from, the
data, the levels, the method and the TrainConfig fields), built into (cascade, dataset,
TrainConfig) and trained. `lowdiff-sched train` only parses options into one; a library
user trains from Python with the same object."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import torch
from torch import nn

from ..backbones import Backbone
from .config import TrainConfig
from .seeds import RETROFIT, derive_seed

if TYPE_CHECKING:
    from ..protocol import ResolutionCascade

DEFAULT_OUT = "runs/lowdiff"
DEFAULT_METHOD = "lowdiff"
# Top-level keys (and `train` options) that stand for TrainConfig fields, as the configs write them.
SHORTCUTS = {"batch": "batch", "steps": "steps", "lr": "lr", "ema": "ema_halflife_kimg", "loss": "loss",
             "checkpoint_every": "checkpoint_every", "seed": "seed", "mixed_precision": "mixed_precision", "log": "log"}
# TrainConfig fields that build() derives from the network, the data and the method.
DERIVED = ("label_dim", "alternate_levels", "distill")


class TrainedRun(NamedTuple):
    """What `TrainRecipe.run` returns: the trained (non-EMA) cascade, its config and run folder."""

    model: nn.Module
    config: TrainConfig
    out_dir: Path


@dataclass(frozen=True)
class TrainRecipe:
    """A training run as data: what `lowdiff-sched train --config FILE` reads.

    `backbone` names the backbone that trains (`backbones.Backbone`); without it, the one that
    builds the architecture `model` names (a DiT size: dit-s1, dit-b1, dit-xl1), else one that
    claims `init` ("diffusers:DIR"), else EDM. Everything backbone-specific is its record's:
    what `init` may be (EDM: a pickle or lowdiff-sched checkpoint, a training run's EMA network,
    a shipped model name such as "mnist-base", or {"class_name", "init_kwargs"} for a fresh
    network seeded with the run's seed; DiT: a LightningDiT checkpoint or run, or nothing for a
    fresh `model`; diffusers: a save_pretrained folder), what `data` is (images: an EDM dataset,
    folder or zip of PNGs, or a named one such as "mnist:train"; latents, normalised with
    `latent_stats`), the default `levels` (sizes low -> high), the `method`s (lowdiff, c2f,
    distill) and the loss. `out` is the run folder. `train` holds TrainConfig fields; a file may
    also give batch, steps, lr, ema (ema_halflife_kimg), loss, checkpoint_every, seed,
    mixed_precision and log at its top level. label_dim, alternate_levels and distill are not
    set here: build() derives them.
    None (or a field missing from `train`) means the library default, TrainConfig's for training.

    Precedence, one rule: library defaults < the file < the command line. `with_options` applies
    the options a user gave (None: not given, so the file's value stays, "train" section
    included) and returns a note for each one that replaces a value the file set.
    """

    init: str | dict[str, Any] | None = None
    data: str | None = None
    model: str | None = None
    backbone: str | None = None
    levels: list[int] | None = None
    method: str | None = None
    latent_stats: str | None = None
    out: str | None = None
    train: dict[str, Any] = field(default_factory=dict)
    description: str | None = None

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> ValueError:
            return ValueError(f"TrainRecipe.{name} must be {want}, got {getattr(self, name)!r:.200}")

        for name in ("data", "latent_stats", "out"):
            value = getattr(self, name)
            if isinstance(value, Path):
                object.__setattr__(self, name, str(value))
            elif value is not None and (not isinstance(value, str) or not value):
                raise bad(name, "a path")
        if isinstance(self.init, Path):
            object.__setattr__(self, "init", str(self.init))
        if self.init is not None and not isinstance(self.init, (str, dict)):
            raise bad("init", 'a path, a model name or {"class_name": ..., "init_kwargs": {...}}')
        if self.model is not None:
            from ..backbones import architectures

            if self.model not in architectures():
                raise bad("model", f"a named architecture ({', '.join(architectures())})")
        if self.backbone is not None:
            from ..backbones import backbone

            backbone(self.backbone)  # an unknown name lists the registered ones
        if isinstance(self.init, dict):
            try:
                object.__setattr__(self, "init", json.loads(json.dumps(self.init)))  # a copy, plain JSON
                self.backbone_record().check_fresh(self.init)
            except (TypeError, ValueError) as err:
                raise ValueError(f"TrainRecipe.init: {err}") from None
        if self.levels is not None:
            levels = self.levels
            if isinstance(levels, str):  # "8,16,32", as on the command line
                try:
                    levels = [int(v) for v in levels.split(",")]
                except ValueError:
                    raise bad("levels", "a list of sizes like [8, 16, 32]") from None
            if not isinstance(levels, (list, tuple)) or not levels or not all(
                isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in levels
            ):
                raise bad("levels", "a list of sizes like [8, 16, 32]")
            object.__setattr__(self, "levels", list(levels))
        if self.method is not None:
            from ..backbones import backbones

            methods = sorted({m for b in backbones().values() for m in b.methods})
            if self.method not in methods:
                raise bad("method", f"one of {', '.join(methods)}")
        if self.description is not None and not isinstance(self.description, str):
            raise bad("description", "a string")
        if not isinstance(self.train, dict):
            raise bad("train", "an object of TrainConfig fields")
        object.__setattr__(self, "train", dict(self.train))
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(self.train) - known)
        if unknown:
            raise ValueError(f"TrainRecipe.train: unknown TrainConfig fields {unknown}; known: {sorted(known - set(DERIVED))}")
        derived = [k for k in DERIVED if k in self.train]
        if derived:
            raise ValueError(f"TrainRecipe.train: {derived} are derived from the network, data and method; remove them")
        checked = dict(self.train)
        if "loss" not in checked:  # loss_kwargs are checked against the backbone's loss in build()
            checked.pop("loss_kwargs", None)
        TrainConfig.from_dict(checked)  # bad values fail here, naming the TrainConfig field

    # ---- data in, data out ---------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainRecipe":
        """A recipe from a config file's object; top-level TrainConfig shortcuts (SHORTCUTS) go into `train`."""
        if not isinstance(data, dict):
            raise ValueError(f"a train recipe must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names - set(SHORTCUTS))
        if unknown:
            raise ValueError(f"unknown keys {unknown}; known: {sorted(names | set(SHORTCUTS))}")
        train = data.get("train", {})
        if not isinstance(train, dict):
            raise ValueError('"train" must be an object of TrainConfig fields')
        train = dict(train)
        for key, name in SHORTCUTS.items():
            if key not in data:
                continue
            if name in train and train[name] != data[key]:
                raise ValueError(f'{name} is set twice: "{key}": {data[key]!r} and "train": {{"{name}": {train[name]!r}}}')
            train[name] = data[key]
        return cls(**{k: v for k, v in data.items() if k in names and k != "train"}, train=train)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON data, every TrainConfig field under "train"; unset fields left out."""
        return {k: v for k, v in asdict(self).items() if v is not None and not (k == "train" and not v)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TrainRecipe":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not valid JSON: {err}") from None
        return cls.from_dict(data)

    @classmethod
    def read(cls, path: str | Path) -> "TrainRecipe":
        """The recipe in a JSON file (e.g. configs/mnist-base.json); errors name the file."""
        try:
            return cls.from_json(Path(path).read_text())
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    # ---- the one precedence rule ---------------------------------------------------------

    def with_options(self, source: str = "the config file", **options: Any) -> tuple["TrainRecipe", list[str]]:
        """This recipe with the options a user gave (None: not given) in place of its values,
        and a note per option that replaces a value it set ("--steps 10 overrides the config
        file's 2000"). Options are the fields and SHORTCUTS; a bad value's error names it."""
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"unknown train options {unknown}; known: {sorted(OPTIONS)}")
        recipe, notes = self, []
        for key, value in options.items():
            if value is None:
                continue
            flag = "--" + key.replace("_", "-")
            try:
                if key in SHORTCUTS:
                    before = recipe.train.get(SHORTCUTS[key])
                    recipe = replace(recipe, train={**recipe.train, SHORTCUTS[key]: value})
                    after = recipe.train[SHORTCUTS[key]]
                else:
                    before = getattr(recipe, key)
                    recipe = replace(recipe, **{key: value})
                    after = getattr(recipe, key)
            except ValueError as err:
                raise ValueError(f"{flag}: {err}") from None
            if before is not None and before != after:
                notes.append(f"{flag} {_shown(after)} overrides {source}'s {_shown(before)}")
        return recipe, notes

    # ---- building and training -------------------------------------------------------------

    @property
    def out_dir(self) -> Path:
        return Path(self.out if self.out is not None else DEFAULT_OUT)

    def backbone_record(self) -> Backbone:
        """The backbone this run trains: `backbone` if given, else the one that builds the
        architecture `model` names, else one that claims `init` (e.g. a "diffusers:" folder),
        else EDM's."""
        from ..backbones import DEFAULT, architectures, backbone, backbones

        if self.backbone is not None:
            return backbone(self.backbone)
        if self.model is not None:
            return architectures()[self.model]
        return next((b for b in backbones().values() if b.claims(self.init)), None) or backbone(DEFAULT)

    def check(self) -> Backbone:
        """The fields a run needs, given (a file may leave some to the command line); its backbone."""
        record = self.backbone_record()
        for key in ("init", "data") if self.model is None else ("data",):
            if getattr(self, key) is None:
                raise ValueError(f"--{key} is required (on the command line or in --config)")
        if self.latent_stats is not None and not record.latent:
            raise ValueError(f"--latent-stats is for latent training (a DiT --model); backbone {record.name} trains on images")
        method = self.method or DEFAULT_METHOD
        if method not in record.methods:
            raise ValueError(f"--method {method}: backbone {record.name} trains {', '.join(record.methods) or 'no cascades'}")
        if self.model is not None and self.model not in record.architectures:
            raise ValueError(f"--model {self.model} is not an architecture of backbone {record.name}")
        return record

    def build(self) -> tuple[nn.Module, torch.utils.data.Dataset, TrainConfig]:
        """(cascade, dataset, TrainConfig) to hand to `train`. The network starts from `init`
        (a fresh one seeded with the run's seed, as are the layers a retrofit adds, so the
        result does not depend on the caller's RNG, which is left as it was); label_dim, the
        loss (the backbone's own unless set), alternate_levels (c2f) and distill come from the
        network, the data and the method. Everything backbone-specific is its `Backbone`'s."""
        record = self.check()
        method = self.method or DEFAULT_METHOD
        seed = int(self.train.get("seed", _default("seed")))
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stays as it was
            net = record.start(self.init, seed, self.model)
            torch.manual_seed(derive_seed(seed, RETROFIT))
            cascade = record.cascade_of(net, self.levels or record.default_levels(net), method)
        dataset = record.dataset(str(self.data), cascade, self.latent_stats)
        own: dict[str, Any] = {}
        if "loss" not in self.train:  # the backbone's own loss, with its settings under the run's
            own = {"loss": record.loss(cascade),
                   "loss_kwargs": {**record.loss_kwargs(cascade), **(self.train.get("loss_kwargs") or {})} or None}
        config = TrainConfig.from_dict({
            **self.train, **own, "label_dim": record.label_dim(cascade, dataset),
            "alternate_levels": method == "c2f" and len(cast("ResolutionCascade", cascade).levels) > 1, "distill": method == "distill",
        })
        return cascade, dataset, config

    def run(self, *, progress: bool = True, device: str | torch.device | None = None) -> TrainedRun:
        """Build, write the run folder's model.json (refusing a folder that holds another
        model's run) and train; an existing run in `out` resumes. Ctrl-C saves the last step
        and re-raises KeyboardInterrupt. A folder without a checkpoint holds no run: a run
        that fails before its first checkpoint takes its model.json (and the folders it
        made, if empty) away again, so the corrected command starts afresh there."""
        from ..checkpoints import latest_checkpoint
        from ..outputs import atomic_path, ensure_writable_dir
        from ..runs import MODEL_SPEC, same_model, spec_of
        from .loop import train
        from .tensorboard_log import summary_writer_class

        self.check()
        if self.train.get("log") == "tensorboard":
            summary_writer_class()  # without the package, fail before loading or writing anything
        cascade, dataset, config = self.build()
        spec = spec_of(cascade)
        made = [p for p in (self.out_dir, *self.out_dir.parents) if not p.exists()]
        out_dir = ensure_writable_dir(self.out_dir)
        spec_file = out_dir / MODEL_SPEC
        is_run = latest_checkpoint(out_dir) is not None
        if is_run and spec_file.exists() and not same_model(json.loads(spec_file.read_text()), spec):  # a spec of any version
            raise ValueError(f"{out_dir} holds a run of a different model (see {spec_file}); choose another --out")
        with atomic_path(spec_file) as tmp:
            tmp.write_text(json.dumps(spec, indent=2))
        try:
            model = train(cascade, dataset, config, out_dir, progress=progress, device=device)
        except BaseException:
            if latest_checkpoint(out_dir) is None:
                spec_file.unlink(missing_ok=True)
                for folder in made:
                    if folder.is_dir() and not any(folder.iterdir()):
                        folder.rmdir()
            raise
        return TrainedRun(model, config, out_dir)


OPTIONS = ("init", "data", "model", "backbone", "levels", "method", "latent_stats", "out", *SHORTCUTS)


def _default(name: str) -> Any:
    return next(f.default for f in fields(TrainConfig) if f.name == name)


def _shown(value: Any) -> str:
    """A value as a note shows it: sizes as on the command line, objects as short JSON."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return str(value)
