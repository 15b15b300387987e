"""Sliced Wasserstein distance of Laplacian-pyramid patches: a quality measure that sees
lost fine detail.

From "Progressive Growing of GANs for Improved Quality, Stability, and Variation" (Karras et
al., 2018, Sec. 5 and App. D): each image is split into a Laplacian pyramid, 7x7 patches
are taken at random places in every band, and per band the patch sets of generated and
real images are compared with the sliced Wasserstein distance (the 1-D Wasserstein-1
distance along random unit directions, averaged). The finest band holds exactly what a
blurred or coarse image lacks, so its distance rises where a classifier's features barely
move. Here the patches are normalised by the reference's per-channel statistics, so a shift
of colour or contrast counts too, and the reference keeps only its quantiles along each
direction, which makes comparing a new sample set one projection and one sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

PATCH = 7
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16


def _blur(x: Tensor) -> Tensor:
    """The separable 5-tap binomial filter, per channel, with reflected borders."""
    c = x.shape[1]
    k = _BINOMIAL.to(x)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="reflect"), k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(F.pad(x, (0, 0, 2, 2), mode="reflect"), k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def pyr_down(x: Tensor) -> Tensor:
    return _blur(x)[:, :, ::2, ::2]


def pyr_up(x: Tensor) -> Tensor:
    up = torch.zeros(*x.shape[:2], 2 * x.shape[2], 2 * x.shape[3], dtype=x.dtype, device=x.device)
    up[:, :, ::2, ::2] = x
    return _blur(up) * 4


def laplacian_pyramid(x: Tensor, bands: int) -> list[Tensor]:
    """`bands` images, finest first: band-pass details at full, 1/2, ... resolution, the last
    band the low-pass remainder. Their pyr_up sum rebuilds x exactly."""
    out = []
    for _ in range(bands - 1):
        low = pyr_down(x)
        out.append(x - pyr_up(low))
        x = low
    return [*out, x]


def patch_descriptors(images: Tensor, bands: int, per_image: int, seed: int = 0) -> list[Tensor]:
    """Per band, `per_image` 7x7 patches of every image at random places ([N, per_image, C*49]).
    The places depend only on the seed and an image's position in the batch."""
    images = images.to(torch.float32)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for band in laplacian_pyramid(images, bands):
        n, c, h, w = band.shape
        if h < PATCH or w < PATCH:
            raise ValueError(f"a {h}x{w} pyramid band is smaller than the {PATCH}x{PATCH} patches; use fewer bands")
        patches = F.unfold(band, PATCH)  # [N, C*49, places]
        places = torch.randint(patches.shape[-1], (n, per_image), generator=generator).to(band.device)
        out.append(patches.gather(2, places.unsqueeze(1).expand(n, patches.shape[1], per_image)).transpose(1, 2))
    return out


@dataclass
class SWDReference:
    """What a sample set is compared with, per band: the reference patches' channel mean and
    std (to normalise by), and the quantiles of the normalised reference patches along each
    of the shared unit directions."""

    mean: Tensor  # [bands, C*49]
    std: Tensor  # [bands, C*49]
    directions: Tensor  # [C*49, D], unit columns
    quantiles: Tensor  # [bands, K, D]

    @classmethod
    def of(cls, descriptors: list[Tensor], directions: int = 128, points: int = 64, seed: int = 0) -> "SWDReference":
        """The reference of real images' `patch_descriptors`."""
        flat = [d.reshape(-1, d.shape[-1]).double() for d in descriptors]
        dim = flat[0].shape[1]
        generator = torch.Generator().manual_seed(seed)
        dirs = torch.randn(dim, directions, generator=generator, dtype=torch.float64)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        mean = torch.stack([f.mean(0) for f in flat])
        std = torch.stack([f.std(0) for f in flat]).clamp_min(1e-8)
        ref = cls(mean, std, dirs, torch.empty(0))
        ref.quantiles = torch.stack([ref._quantiles(f, b, points) for b, f in enumerate(flat)])
        return ref

    def _quantiles(self, flat: Tensor, band: int, points: int) -> Tensor:
        """Quantiles at (k + 1/2) / points of the normalised patches along every direction."""
        projected = ((flat.double().cpu() - self.mean[band]) / self.std[band]) @ self.directions
        ordered = np.sort(projected.T.numpy(), axis=1)  # [D, N]: numpy sorts rows about 5x faster than torch here
        index = ((np.arange(points) + 0.5) / points * ordered.shape[1]).astype(np.int64).clip(max=ordered.shape[1] - 1)
        return torch.from_numpy(np.ascontiguousarray(ordered[:, index].T))

    def distances(self, descriptors: list[Tensor]) -> list[float]:
        """Per band, the sliced Wasserstein-1 distance of a sample set's patches to the
        reference's (mean over directions of the mean absolute quantile difference), x 1e3."""
        if len(descriptors) != self.quantiles.shape[0]:
            raise ValueError(f"expected {self.quantiles.shape[0]} bands of patches, got {len(descriptors)}")
        points = self.quantiles.shape[1]
        out = []
        for band, d in enumerate(descriptors):
            q = self._quantiles(d.reshape(-1, d.shape[-1]), band, points)
            out.append(float((q - self.quantiles[band]).abs().mean()) * 1e3)
        return out

    def state_dict(self) -> dict[str, Tensor]:
        return {"mean": self.mean, "std": self.std, "directions": self.directions, "quantiles": self.quantiles}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> "SWDReference":
        return cls(*(state[k].double() for k in ("mean", "std", "directions", "quantiles")))
