"""`TrainRecipe`: a whole training run as JSON-able data (the network to start from, the
data, the levels, the method and the TrainConfig fields), built into (cascade, dataset,
TrainConfig) and trained. `lowdiff-sched train` only parses options into one; a library
user trains from Python with the same object."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from .config import TrainConfig
from .seeds import RETROFIT, derive_seed

DEFAULT_OUT = "runs/lowdiff"
DEFAULT_METHOD = "lowdiff"
METHODS = ("lowdiff", "c2f", "distill")
DEFAULT_EDM_LEVELS = (8, 16, 32)
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

    `init` is the network to start from: an EDM pickle or lowdiff-sched checkpoint, a training
    run (its EMA network), a shipped model name (e.g. "mnist-base"), or {"class_name",
    "init_kwargs"} for a fresh EDM network seeded with the run's seed. With `model` (a DiT size:
    dit-s1, dit-b1, dit-xl1) a LightningDiT trains on latents, fresh or from the checkpoint or
    run in `init`. `data` is an EDM dataset (folder/zip of PNGs) or a named one ("mnist:train"),
    or with `model` a latent file normalised with `latent_stats`. `levels` are the sizes low ->
    high (default: EDM 8,16,32; DiT half and full latent size), `method` lowdiff, c2f or distill,
    `out` the run folder. `train` holds TrainConfig fields; a file may also give batch, steps,
    lr, ema (ema_halflife_kimg), loss, checkpoint_every, seed, mixed_precision and log at its top
    level. label_dim, alternate_levels and distill are not set here: build() derives them.
    None (or a field missing from `train`) means the library default, TrainConfig's for training.

    Precedence, one rule: library defaults < the file < the command line. `with_options` applies
    the options a user gave (None: not given, so the file's value stays, "train" section
    included) and returns a note for each one that replaces a value the file set.
    """

    init: str | dict[str, Any] | None = None
    data: str | None = None
    model: str | None = None
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
        if isinstance(self.init, dict):
            if set(self.init) != {"class_name", "init_kwargs"} or not isinstance(self.init["init_kwargs"], dict):
                raise ValueError(f'TrainRecipe.init: a fresh network is {{"class_name": ..., "init_kwargs": {{...}}}}, got keys {sorted(self.init)}')
            object.__setattr__(self, "init", json.loads(json.dumps(self.init)))  # a copy, plain JSON
        if self.model is not None:
            from ..adapters.dit.sizes import SIZES

            if self.model not in SIZES:
                raise bad("model", f"a DiT size ({', '.join(SIZES)})")
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
        if self.method is not None and self.method not in METHODS:
            raise bad("method", f"one of {', '.join(METHODS)}")
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

    def check(self) -> None:
        """The fields a run needs, given (a file may leave some to the command line)."""
        for key in ("init", "data") if self.model is None else ("data",):
            if getattr(self, key) is None:
                raise ValueError(f"--{key} is required (on the command line or in --config)")
        if self.model is None and self.latent_stats is not None:
            raise ValueError("--latent-stats is for latent (DiT) training, with --model")

    def build(self) -> tuple[nn.Module, torch.utils.data.Dataset, TrainConfig]:
        """(cascade, dataset, TrainConfig) to hand to `train`. The network starts from `init`
        (a fresh one seeded with the run's seed, as are the layers a retrofit adds, so the
        result does not depend on the caller's RNG, which is left as it was); label_dim, the
        loss (the backbone's own unless set), alternate_levels (c2f) and distill come from the
        network, the data and the method."""
        self.check()
        method = self.method or DEFAULT_METHOD
        seed = int(self.train.get("seed", _default("seed")))
        if self.model is not None:
            from ..adapters.dit.weights import dit_cascade_of, load_latent_stats
            from .latents import LatentDataset

            with torch.random.fork_rng(devices=[]):  # the caller's RNG stays as it was
                net = load_dit_init(self.model, self.init, seed)
                size = net.config.input_size
                torch.manual_seed(derive_seed(seed, RETROFIT))
                cascade = dit_cascade_of(net, self.levels or [size // 2, size], method)
            stats = load_latent_stats(self.latent_stats, net.config.in_channels) if self.latent_stats else None
            dataset: torch.utils.data.Dataset = LatentDataset(self.data, stats)  # type: ignore[arg-type]
            label_dim = int(cascade.label_dim) if dataset.has_labels else 0  # unlabelled latents train the null class
            loss = "flow"
        else:
            from ..adapters.edm.lowdiff import backbone_loss, cascade_of
            from ..adapters.edm.stack import LevelStack
            from ..datasets import dataset as named_dataset
            from ..datasets import is_named
            from .data import ImageDataset

            with torch.random.fork_rng(devices=[]):  # the caller's RNG stays as it was
                net = load_edm_init(self.init, seed)
                torch.manual_seed(derive_seed(seed, RETROFIT))
                cascade = cascade_of(net, self.levels or list(DEFAULT_EDM_LEVELS), method=method)
            if method == "distill":
                if not isinstance(cascade, LevelStack):
                    raise ValueError(f"TrainRecipe.method distill needs a level below the network's own, got levels {self.levels}")
                cascade.freeze_top()  # the original network is the lower levels' teacher
            dataset = named_dataset(str(self.data)) if is_named(str(self.data)) else ImageDataset(self.data)
            label_dim = int(cascade.label_dim)
            loss = backbone_loss(cascade)
        config = TrainConfig.from_dict({
            "loss": loss, **self.train, "label_dim": label_dim,
            "alternate_levels": method == "c2f" and len(cascade.levels) > 1, "distill": method == "distill",
        })
        return cascade, dataset, config

    def run(self, *, progress: bool = True, device: str | torch.device | None = None) -> TrainedRun:
        """Build, write the run folder's model.json (refusing a folder that holds another
        model's run) and train; an existing run in `out` resumes. Ctrl-C saves the last step
        and re-raises KeyboardInterrupt. A folder without a checkpoint holds no run: a run
        that fails before its first checkpoint takes its model.json (and the folders it
        made, if empty) away again, so the corrected command starts afresh there."""
        from ..outputs import atomic_path, ensure_writable_dir
        from ..runs import MODEL_SPEC, same_model, spec_of
        from .loop import train
        from .state import latest_checkpoint
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


OPTIONS = ("init", "data", "model", "levels", "method", "latent_stats", "out", *SHORTCUTS)


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


def load_edm_init(init: object, seed: int) -> nn.Module:
    """The EDM network to start from: a fresh one ({"class_name", "init_kwargs"}, seeded), a
    shipped model's network (e.g. mnist-base), the EMA network of a training run, or an EDM
    pickle / lowdiff-sched checkpoint."""
    from ..adapters.edm.lowdiff import build_network, is_edm_precond
    from ..adapters.edm.snapshots import load_edm
    from ..models import load_model, model_names
    from ..runs import MODEL_SPEC, load_run

    if isinstance(init, dict):
        if set(init) != {"class_name", "init_kwargs"}:
            raise ValueError(f'init: a fresh network is {{"class_name": ..., "init_kwargs": {{...}}}}, got keys {sorted(init)}')
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
        return load_run(path).net
    return load_edm(path)


def load_dit_init(name: str, init: object, seed: int) -> nn.Module:
    """The LightningDiT to start from: size `name` fresh (seeded) without `init`, else the
    network of a LightningDiT checkpoint or of a training run; `pos_embed` stays fixed."""
    from ..adapters.dit.networks import LightningDiT
    from ..adapters.dit.sizes import size_config
    from ..adapters.dit.weights import load_dit
    from ..runs import MODEL_SPEC, load_run

    config = size_config(name)
    if init is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = LightningDiT(config)
    else:
        path = Path(str(init))
        model = load_run(path) if path.is_dir() and (path / MODEL_SPEC).is_file() else load_dit(path, config, name)
        net = model.net.train().requires_grad_(True)
    net.pos_embed.requires_grad_(False)  # a fixed sin-cos table, as in LightningDiT
    return net
