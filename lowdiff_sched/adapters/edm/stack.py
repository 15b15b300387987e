"""A stack of EDM networks, one per level, the top one the original: the cascade behind an
exact `Continue` hand-over.

`LevelStack.from_edm(net, levels=(16, 32))` keeps `net` as the top level, untouched, and adds
a copy of it for each lower level (a SongUNet is convolutional, so the copy runs on the
smaller input as it is). Every level is unconditional. The lower levels are trained by
distillation (`training.distill_loss`): level i learns the top level's own x0 prediction,
mean-pooled to its size, so a plan that walks the first steps of a trajectory at low
resolution and hands over with `Continue` meets the trajectory the top level would have
walked. The top level stays the original network, so the single-resolution baseline is the
same model.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence, cast

from torch import Tensor, nn

from ...protocol import Level, check_level_input
from .inputs import EDMNetCascade, check_retrofit, label_rows
from .networks import _Precond


class LevelStack(EDMNetCascade):
    """One EDM precond network per level (`nets[-1]` is the original), as a ResolutionCascade
    whose levels are unconditional."""

    conditions_on_lower_level = False

    def __init__(self, nets: Sequence[nn.Module], levels: Sequence[int]) -> None:
        super().__init__()
        nets = cast("list[_Precond]", list(nets))
        _, sizes, channels = check_retrofit(nets[-1], levels, "LevelStack", whole_unet=True)
        if len(nets) != len(sizes):
            raise ValueError(f"LevelStack needs one network per level ({len(sizes)}), got {len(nets)}")
        for r, net in zip(sizes, nets):
            if int(net.img_channels) != channels or int(net.label_dim) != int(nets[-1].label_dim):
                raise ValueError(f"level {r}: its network must take {channels}-channel images and the top network's classes")
        self.nets = nn.ModuleList(nets)
        self.level_sizes = sizes
        self.levels = tuple(Level((r, r), channels) for r in sizes)
        self.top_frozen = False

    @classmethod
    def from_edm(cls, net: nn.Module, levels: Sequence[int] = (16, 32)) -> "LevelStack":
        """`net` as the top level and a copy of it, to be fine-tuned, for each lower level."""
        return cls([*(copy.deepcopy(net) for _ in list(levels)[:-1]), net], levels)

    @property
    def net(self) -> nn.Module:
        """The top level's network: the original."""
        return self.nets[-1]

    @property
    def parameter_overhead(self) -> int:
        return sum(p.numel() for net in self.nets[:-1] for p in net.parameters())

    def freeze_top(self) -> "LevelStack":
        """Keep the top network as it is while the lower ones train: no gradients, and always
        in eval mode (no dropout), since it is their teacher."""
        self.nets[-1].requires_grad_(False).eval()
        self.top_frozen = True
        return self

    def train(self, mode: bool = True) -> "LevelStack":
        super().train(mode)
        if self.top_frozen:
            self.nets[-1].eval()
        return self

    def denoise(
        self, x: Tensor, sigma: Tensor, *, level: int, cond: Tensor | None = None, cond_sigma: Tensor | float | None = None,
        class_labels: Tensor | None = None, **extra: Any,
    ) -> Tensor:
        """D(x; sigma) of the level's own network (float32, EDM's preconditioning)."""
        level = check_level_input(self.levels, level, x)
        if cond is not None:
            raise ValueError("LevelStack levels are unconditional (they continue a trajectory or restart from noise): cond must be None")
        net = cast(_Precond, self.nets[level])
        return net(x, sigma, class_labels=label_rows(net, class_labels, x.shape[0], x.device))
