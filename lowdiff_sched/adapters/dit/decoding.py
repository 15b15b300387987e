"""How a DiT's samples become VA-VAE latents and images: the latent statistics the network
was trained on and, optionally, the VAE decoder; loaded and checked before any sampling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .vae import load_vae_decoder
from .weights import denormalize, load_latent_stats


@dataclass(frozen=True)
class LatentDecoding:
    """How a latent model's samples become the VAE's latents and images: the latent
    statistics (the network works on (z - mean) / std) and, optionally, the VAE decoder."""

    stats: tuple[Tensor, Tensor] | None
    decoder: Any = None

    def to_vae(self, x: Tensor) -> Tensor:
        return denormalize(x, self.stats) if self.stats is not None else x

    @torch.no_grad()
    def images(self, x: Tensor) -> Tensor:
        """Decoded images in [-1, 1] of a batch of samples (on the CPU)."""
        if self.decoder is None:
            raise ValueError("decoding latents to images needs --vae (and --latent-stats)")
        device = next(self.decoder.parameters()).device
        return self.decoder.decode(self.to_vae(x).to(device)).cpu()


def load_latent_decoding(channels: int, stats_path: str | Path | None, vae_path: str | Path | None,
                         device: str | torch.device = "cpu") -> LatentDecoding:
    """The latent statistics and VAE decoder of a latent model making `channels`-channel
    latents, loaded and checked before any sampling."""
    if vae_path is not None and stats_path is None:
        raise ValueError("--vae needs --latent-stats: the network works on normalised latents, the VAE on its own")
    stats = load_latent_stats(stats_path, channels) if stats_path is not None else None
    decoder = None
    if vae_path is not None:
        decoder = load_vae_decoder(vae_path, device=device)
        if decoder.config.embed_dim != channels:
            raise ValueError(f"--vae {vae_path} decodes {decoder.config.embed_dim}-channel latents; the model makes {channels}")
    return LatentDecoding(stats, decoder)
