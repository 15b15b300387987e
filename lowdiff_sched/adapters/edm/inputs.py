"""What the EDM cascades share: their base class, the class-label rows their `denoise` takes
and the checks of a retrofit's levels; the level checks every adapter shares live in
`lowdiff_sched.protocol`."""

from __future__ import annotations

from typing import Sequence, cast

import torch
from torch import Tensor, nn

from ...protocol import CascadeDefaults, check_level_sizes
from .networks import SongUNet, _Precond


class EDMNetCascade(nn.Module, CascadeDefaults):
    """A cascade around an EDM precond network `net` (the top level's), whose classes it takes."""

    @property
    def label_dim(self) -> int:  # type: ignore[override]  # CascadeDefaults' class default, read-only here
        """Number of classes the network is conditioned on (0: unconditional)."""
        return int(cast(_Precond, self.net).label_dim)


def label_rows(net: _Precond, class_labels: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
    """The one-hot rows a class-conditional EDM network takes (zeros when none are given)."""
    if not net.label_dim:
        return None
    if class_labels is None:
        return torch.zeros([batch, net.label_dim], device=device)
    if not isinstance(class_labels, Tensor) or tuple(class_labels.shape) != (batch, net.label_dim):
        shape = tuple(class_labels.shape) if isinstance(class_labels, Tensor) else type(class_labels).__name__
        raise ValueError(
            f"class_labels must be one row of {net.label_dim} class weights per sample, shape [{batch}, {net.label_dim}], "
            f"got {shape}; class ids become rows with labels.class_label_args(ids, {net.label_dim})"
        )
    return class_labels.to(torch.float32)


def check_retrofit(
    net: nn.Module, levels: Sequence[int], who: str, *, whole_unet: bool = False
) -> tuple[SongUNet, tuple[int, ...], int]:
    """(the SongUNet, the levels as ints, the image channels) of a retrofit of `net`, after
    checking that `net` is an EDM precond network around a SongUNet and that the levels
    increase and end at its resolution. With `whole_unet` (every level runs the whole
    network, as in C2F-DM and LevelStack) each size must also halve evenly as often as the
    SongUNet's encoder does."""
    unet = getattr(net, "model", None)
    if unet is None or type(unet).__name__ != "SongUNet":
        raise ValueError(f"{who} needs an EDM precond network around a SongUNet, got {type(net).__name__}")
    precond = cast(_Precond, net)  # a network around a SongUNet: one of EDM's preconds
    depth = sum(1 for name in unet.enc if name.endswith("_down") and "aux" not in name) if whole_unet else 0
    sizes = check_level_sizes(levels, int(precond.img_resolution), multiple=1 << depth)
    return unet, sizes, int(precond.img_channels)
