"""C2F-DM's "1DM-label" retrofit of an EDM network ("Coarse-to-Fine Diffusion Models with Time Step Sequence Redistribution", Sec. III-A).

One network serves every resolution: a SongUNet is convolutional, so it runs unchanged on a
16x16 input. A resolution label, embedded and added to the noise embedding, tells it which
resolution it is denoising. Fine-tuning alternates low- and high-resolution batches
(TrainConfig.alternate_levels), each level trained unconditionally on the downsampled data;
sampling hands over with `Renoise` (upsample the clean low-resolution estimate, re-noise).
The label embedding starts at zero, so right after the retrofit every level is the original
network, run at that level's size.
"""

from __future__ import annotations

from typing import Any, Sequence, cast

import torch
from torch import Tensor, nn

from ...protocol import Level, check_level_input, level_one_hot
from .inputs import EDMNetCascade, check_retrofit, label_rows
from .networks import _Precond


class C2FUNet(EDMNetCascade):
    """An EDM precond network with a resolution-label embedding, as a ResolutionCascade whose
    levels are unconditional (each denoises its own resolution from scratch)."""

    conditions_on_lower_level = False  # multires_loss trains each level on its own data only
    net: _Precond

    def __init__(self, net: nn.Module, levels: Sequence[int]) -> None:
        super().__init__()
        unet, levels, channels = check_retrofit(net, levels, "C2FUNet", whole_unet=True)
        self.net = cast(_Precond, net)  # check_retrofit found its SongUNet
        self.level_sizes = levels
        self.levels = tuple(Level((r, r), channels) for r in levels)
        self.level_embed = nn.Linear(len(levels), unet.map_layer0.in_features, bias=False)
        nn.init.zeros_(self.level_embed.weight)

    @classmethod
    def from_edm(cls, net: nn.Module, levels: Sequence[int] = (16, 32)) -> "C2FUNet":
        return cls(net, levels)

    @property
    def parameter_overhead(self) -> int:
        return self.level_embed.weight.numel()

    def denoise(
        self, x: Tensor, sigma: Tensor, *, level: int, cond: Tensor | None = None, cond_sigma: Tensor | float | None = None,
        class_labels: Tensor | None = None, augment_labels: Tensor | None = None, **extra: Any,
    ) -> Tensor:
        """D(x; sigma) at `level` with the backbone's own preconditioning and the level's label."""
        level = check_level_input(self.levels, level, x)
        if cond is not None:
            raise ValueError("C2F levels are unconditional (they start from a re-noised upsampled estimate): cond must be None")
        net, unet = self.net, self.net.model
        x = x.to(torch.float32)
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(batch)
        c_skip, c_out, c_in, c_noise = net.scalings(sigma.view(-1, 1, 1, 1))
        labels = label_rows(net, class_labels, batch, x.device)
        extra_emb = self.level_embed(level_one_hot(len(self.levels), level, x.device))
        emb = unet.embedding(c_noise.flatten(), labels, augment_labels, extra=extra_emb)
        _, F_x = unet.walk(x * c_in, emb)
        if F_x is None:
            raise ValueError("the SongUNet's decoder has no output conv (no '_aux_conv' entry in dec)")
        return c_skip * x + c_out * F_x.to(torch.float32)
