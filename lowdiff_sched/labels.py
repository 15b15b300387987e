"""Class labels as the networks take them: one-hot rows from class ids, and each seed's
class, so a seed draws the same class whatever else is sampled with it."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def one_hot(labels: Tensor, label_dim: int) -> Tensor:
    """Class ids [B] -> one-hot float rows [B, label_dim], as EDM's networks take them."""
    if labels.ndim != 1:
        raise ValueError(f"labels must be class ids of shape [B], got {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= label_dim):
        raise ValueError(f"class ids must lie in [0, {label_dim}) for label_dim={label_dim}, got {labels.min().item()}..{labels.max().item()}")
    return torch.nn.functional.one_hot(labels.long(), label_dim).to(torch.float32)


def seed_labels(seeds: Sequence[int], label_dim: int, labels: Sequence[int] | None = None) -> list[int]:
    """The class id of each seed: `labels[seed % len(labels)]`, so a seed always gets the same
    class whatever else is sampled with it (default labels: every class, 0..label_dim-1)."""
    if label_dim <= 0:
        raise ValueError("the model is unconditional (no class labels); drop the class labels")
    labels = list(range(label_dim)) if labels is None else [int(c) for c in labels]
    if not labels:
        raise ValueError("class labels are empty")
    bad = [c for c in labels if not 0 <= c < label_dim]
    if bad:
        raise ValueError(f"class label {bad[0]} is out of range: the model has {label_dim} classes, 0-{label_dim - 1}")
    return [labels[s % len(labels)] for s in seeds]


def class_label_args(labels: Sequence[int], label_dim: int, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """`extra_args` carrying class ids as the one-hot rows EDM-style networks take."""
    return {"class_labels": one_hot(torch.as_tensor(list(labels), dtype=torch.long), label_dim).to(device)}


def seed_label_args(seeds: Sequence[int], label_dim: int, device: str | torch.device = "cpu") -> dict[str, Tensor] | None:
    """`extra_args` giving each seed its class (`seed_labels`); None for an unconditional model."""
    return class_label_args(seed_labels(seeds, label_dim), label_dim, device) if label_dim else None


def class_ids(class_labels: Tensor | None, batch: int, num_classes: int, device: torch.device) -> Tensor:
    """Class ids [B] from ids or one-hot rows [B, num_classes] (as `labels.class_label_args`
    makes them); None means the null class (unconditional)."""
    if class_labels is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    labels = torch.as_tensor(class_labels, device=device)
    if labels.ndim == 2:
        if labels.shape[1] != num_classes or not ((labels == 0) | (labels == 1)).all() or not (labels.sum(1) == 1).all():
            raise ValueError(f"class_labels given as rows must be one-hot [B, {num_classes}], got shape {tuple(labels.shape)}")
        labels = labels.argmax(1)
    if labels.ndim != 1 or labels.shape[0] != batch or labels.is_floating_point():
        raise ValueError(f"class_labels must be int class ids [{batch}] or one-hot rows, got {tuple(labels.shape)} {labels.dtype}")
    if ((labels < 0) | (labels > num_classes)).any():
        raise ValueError(f"class ids must lie in [0, {num_classes}] ({num_classes} is the null class), got {labels.tolist()}")
    return labels.long()
