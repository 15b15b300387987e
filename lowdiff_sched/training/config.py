"""`TrainConfig`: everything that decides a training run's result, as plain JSON-able data."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from .losses import LOSSES, make_loss

PRECISIONS = ("no", "bf16")
LOGS = ("jsonl", "tensorboard")
# Fields a resumed run may change without changing the result of the steps already taken.
RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every", "keep_checkpoints", "log_every", "log", "workers"})


@dataclass(frozen=True)
class TrainConfig:
    """A training run. `batch` is the GLOBAL batch, split evenly over processes. These defaults
    are the only ones: TrainRecipe and `lowdiff-sched train` use them for what is not given.

    EMA follows EDM: its decay per step is 0.5 ** (batch / halflife_images), with a half-life
    of `ema_halflife_kimg` thousand images, ramped up as `ema_rampup_ratio` * images seen so far
    (None: no ramp-up). The learning rate ramps linearly over `lr_rampup_kimg` (0: none).
    `grad_clip` is a max global gradient norm (None: no clipping). `levels` restricts the loss
    to some cascade levels (None: all); `alternate_levels` trains one of them per step, in turn
    (C2F-DM's alternating low/high batches). `distill` trains the lower levels of a
    `LevelStack` on the top level's predictions (`distill_loss`) instead of on the data.
    `loss_kwargs` override the loss's hyper-parameters (e.g. {"P_mean": 0.5} for EDM's).
    Checkpoints are written every `checkpoint_every` steps (0: only at the end), and the
    newest `keep_checkpoints` are kept. Every `log_every` steps the mean losses go to log.jsonl;
    `log="tensorboard"` also writes TensorBoard scalars to out_dir/tensorboard (total and
    per-level loss, learning rate, EMA decay and half-life, images per second), which needs
    the tensorboard package (the `tensorboard` extra).
    """

    steps: int = 1000
    batch: int = 64
    lr: float = 1e-3
    ema_halflife_kimg: float = 500.0
    ema_rampup_ratio: float | None = 0.05
    lr_rampup_kimg: float = 0.0
    grad_clip: float | None = None
    mixed_precision: str = "no"
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    seed: int = 0
    loss: str = "edm"
    label_dim: int = 0
    levels: list[int] | None = None
    log_every: int = 50
    log: str = "jsonl"
    workers: int = 0
    alternate_levels: bool = False
    distill: bool = False
    loss_kwargs: dict[str, float | str] | None = None

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> ValueError:
            return ValueError(f"TrainConfig.{name} must be {want}, got {getattr(self, name)!r}")

        for name, lo in (("steps", 0), ("batch", 1), ("checkpoint_every", 0), ("keep_checkpoints", 1),
                         ("seed", 0), ("label_dim", 0), ("log_every", 1), ("workers", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise bad(name, f"an int >= {lo}")
        for name in ("lr", "ema_halflife_kimg", "lr_rampup_kimg"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or (name == "lr" and value == 0):
                raise bad(name, "a positive number" if name == "lr" else "a number >= 0")
        for name in ("ema_rampup_ratio", "grad_clip"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
                raise bad(name, "None or a positive number")
        for name in ("alternate_levels", "distill"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "a bool")
        if self.loss_kwargs is not None:
            if not isinstance(self.loss_kwargs, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float, str)) and not isinstance(v, bool) for k, v in self.loss_kwargs.items()
            ):
                raise bad("loss_kwargs", "None or an object of numbers (and names, e.g. DDPM's beta_schedule)")
            try:
                make_loss(self.loss, **self.loss_kwargs)  # unknown names and bad values fail here, not at step 0
            except ValueError as err:
                raise ValueError(f"TrainConfig.loss_kwargs: {err}") from None
        if self.mixed_precision not in PRECISIONS:
            raise bad("mixed_precision", f"one of {PRECISIONS}")
        if self.log not in LOGS:
            raise bad("log", f"one of {LOGS}")
        if self.loss not in LOSSES:
            raise bad("loss", f"one of {sorted(LOSSES)}")
        if self.levels is not None:
            if not isinstance(self.levels, (list, tuple)) or not self.levels or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.levels
            ):
                raise bad("levels", "None or a non-empty list of level indices")
            object.__setattr__(self, "levels", list(self.levels))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {unknown}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls.from_dict(json.loads(text))


def resume_conflicts(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """Fields whose change would make a resumed run differ from an uninterrupted one."""
    now = config.to_dict()
    # a field added after the run was saved counts as its default
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    return sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != now[k])
