"""Latent datasets for DiT training: one .safetensors or .npz file holding `latents`
[N, C, H, W] (VAE latents) and optionally `labels` [N] (class ids)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"latent dataset {str(path)!r} is not a readable safetensors file: {err}") from None
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError) as err:
            raise ValueError(f"latent dataset {str(path)!r} is not a readable .npz file: {err}") from None
    raise ValueError(f"latent dataset {str(path)!r} must be a .safetensors or .npz file")


class LatentDataset(torch.utils.data.Dataset):
    """(latent [C, H, W] float32, class id) pairs, class id -1 without labels. With `stats`
    (mean, std), latents are normalised to the network's space (z - mean) / std."""

    def __init__(self, path: str | os.PathLike[str], stats: tuple[Tensor, Tensor] | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"latent dataset {str(self.path)!r} does not exist")
        arrays = _read_arrays(self.path)
        if "latents" not in arrays:
            raise ValueError(f"latent dataset {str(self.path)!r} has no 'latents' array (found {sorted(arrays)})")
        latents = torch.from_numpy(np.asarray(arrays["latents"])).float()
        if latents.ndim != 4 or latents.shape[0] == 0:
            raise ValueError(f"latent dataset {str(self.path)!r}: 'latents' must be [N, C, H, W] with N > 0, got {tuple(latents.shape)}")
        if not torch.isfinite(latents).all():
            raise ValueError(f"latent dataset {str(self.path)!r}: 'latents' contains NaN or inf")
        if stats is not None:
            mean, std = stats
            if mean.shape[1] != latents.shape[1]:
                raise ValueError(f"latent stats have {mean.shape[1]} channels, the dataset's latents {latents.shape[1]}")
            latents = (latents - mean) / std
        self.latents = latents
        self.labels: Tensor | None = None
        if "labels" in arrays:
            labels = np.asarray(arrays["labels"])
            if labels.shape != (latents.shape[0],) or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
                raise ValueError(f"latent dataset {str(self.path)!r}: 'labels' must be {latents.shape[0]} non-negative int class ids, got {labels.shape} {labels.dtype}")
            self.labels = torch.from_numpy(labels.astype(np.int64))

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    @property
    def label_dim(self) -> int:
        """One more than the largest class id, 0 without labels."""
        return int(self.labels.max()) + 1 if self.labels is not None else 0

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.latents[index], int(self.labels[index]) if self.labels is not None else -1
