"""Argument handling shared by the EDM cascades' `denoise` (LowDiffUNet, C2FUNet); the
level checks every adapter shares live in `lowdiff_sched.protocol`."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn



def label_rows(net: nn.Module, class_labels: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
    """The one-hot rows a class-conditional EDM network takes (zeros when none are given)."""
    if not net.label_dim:
        return None
    if class_labels is None:
        return torch.zeros([batch, net.label_dim], device=device)
    return class_labels.to(torch.float32).reshape(-1, net.label_dim)


def check_retrofit(net: nn.Module, levels: Sequence[int], who: str) -> tuple[nn.Module, tuple[int, ...], int]:
    """(the SongUNet, the levels as ints, the image channels) of a retrofit of `net`, after
    checking that `net` is an EDM precond network around a SongUNet and that the levels
    increase and end at its resolution."""
    unet = getattr(net, "model", None)
    if unet is None or type(unet).__name__ != "SongUNet":
        raise ValueError(f"{who} needs an EDM precond network around a SongUNet, got {type(net).__name__}")
    img_res = int(net.img_resolution)
    sizes = tuple(int(r) for r in levels)
    if not sizes or list(sizes) != sorted(set(sizes)) or sizes[-1] != img_res:
        raise ValueError(f"levels must increase and end at the network's resolution {img_res}, got {sizes}")
    return unet, sizes, int(net.img_channels)


def check_level_sizes(unet: nn.Module, sizes: Sequence[int]) -> None:
    """Every level size must halve evenly as often as the SongUNet's encoder does, so the
    network runs on that level's input unchanged."""
    depth = sum(1 for name in unet.enc if name.endswith("_down") and "aux" not in name)
    for r in sizes:
        if r % (1 << depth):
            raise ValueError(f"level {r}: the UNet halves its input {depth} times, so sizes must be multiples of {1 << depth}")
