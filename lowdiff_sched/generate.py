"""A sampling job: seeds split into batches, batches split over torchrun processes, each
batch's outputs written as soon as it is done, and the summary files (grid, .npz) written
by rank 0 from every rank's results.

Batches are cut from the whole seed list before they are dealt out (batch k to rank
k mod world, as EDM's generate.py does), and every sample depends on its seed only, so a
job on N processes writes exactly the files a one-process job writes.
"""

from __future__ import annotations

import sys

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .outputs import atomic_path, grid, save_png, save_samples, to_uint8
from .plan import CascadePlan
from .protocol import ResolutionCascade, label_dim_of
from .sampling import class_label_args, sample_cascade
from .training.distributed import Processes, gather_objects

GRID_MAX = 64  # latent models: grid.png shows the first seeds only (decoded images are large)
# What a sampling job writes: {seed:06d}.png, grid.png, samples.npz, latents-{first}-{last}.safetensors
SAMPLE_FILES = ("[0-9][0-9][0-9][0-9][0-9][0-9]*.png", "grid.png", "samples.npz", "latents-*.safetensors")


@dataclass(frozen=True)
class Batch:
    index: int
    seeds: list[int]
    labels: list[int] | None


def deal_batches(seeds: Sequence[int], labels: Sequence[int] | None, batch: int, procs: Processes) -> list[Batch]:
    """This rank's share of the job: batches k = rank, rank + world, ... of the seed list."""
    if len(set(seeds)) != len(seeds):
        raise ValueError("seeds must not repeat (each seed names one sample and its files)")
    cut = [Batch(k, list(seeds[lo : lo + batch]), None if labels is None else list(labels[lo : lo + batch]))
           for k, lo in enumerate(range(0, len(seeds), batch))]
    return cut[procs.rank :: procs.world]


def sample_batch(cascade: ResolutionCascade, plan: CascadePlan, b: Batch, device: str | torch.device,
                 extra: dict[str, Any] | None = None, callback: Callable[[dict[str, Any]], None] | None = None) -> Tensor:
    """One batch of samples (float32, on the CPU)."""
    args = dict(extra or {})
    if b.labels is not None:
        args.update(class_label_args(b.labels, label_dim_of(cascade), device))
    with torch.no_grad():
        x = sample_cascade(cascade, plan, seeds=b.seeds, batch_size=len(b.seeds), device=device, disable=True,
                           extra_args=args or None, callback=callback)
    return x.float().cpu()  # type: ignore[union-attr]


def write_latents(out_dir: Path, b: Batch, latents: Tensor, space: str) -> Path:
    """latents-{first seed}-{last seed}.safetensors: `latents`, `seeds` (and `labels`), with
    metadata saying whether the latents are the VAE's ("vae") or the network's ("model")."""
    from safetensors.torch import save_file

    tensors = {"latents": latents.contiguous(), "seeds": torch.tensor(b.seeds, dtype=torch.int64)}
    if b.labels is not None:
        tensors["labels"] = torch.tensor(b.labels, dtype=torch.int64)
    path = out_dir / f"latents-{b.seeds[0]:06d}-{b.seeds[-1]:06d}.safetensors"
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"space": space})
    return path


def finish_pixels(out_dir: Path, mine: list[tuple[Batch, Tensor]], procs: Processes, value_range: tuple[float, float],
                  ncol: int | None) -> dict[str, Path] | None:
    """Gather every rank's samples; rank 0 writes the PNGs, grid.png and samples.npz."""
    parts = gather_objects([(b.index, b.seeds, b.labels, x) for b, x in mine], procs)
    if not procs.is_main:
        return None
    rows = sorted((r for part in parts for r in part), key=lambda r: r[0])  # type: ignore[attr-defined]
    seeds = [s for r in rows for s in r[1]]
    labels = None if rows[0][2] is None else [c for r in rows for c in r[2]]
    samples = torch.cat([r[3] for r in rows])
    return save_samples(out_dir, samples, seeds, value_range, labels=labels, ncol=ncol)


def write_images(out_dir: Path, b: Batch, images: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """One {seed:06d}.png per decoded image; returns the uint8 images [B, H, W, C]."""
    pixels = to_uint8(images, value_range)
    for seed, img in zip(b.seeds, pixels):
        save_png(img, out_dir / f"{seed:06d}.png")
    return pixels


def finish_grid(out_dir: Path, mine: list[tuple[int, list[int], np.ndarray]], procs: Processes, ncol: int | None) -> Path | None:
    """Rank 0 writes grid.png of the first GRID_MAX seeds' decoded images from every rank."""
    parts = gather_objects(mine, procs)
    if not procs.is_main:
        return None
    rows = sorted((r for part in parts for r in part), key=lambda r: r[0])  # type: ignore[attr-defined]
    pixels = np.concatenate([r[2] for r in rows])[:GRID_MAX]
    if not len(pixels):
        return None
    path = out_dir / "grid.png"
    save_png(grid(pixels, ncol), path)
    return path


@dataclass(frozen=True)
class LatentDecoding:
    """How a latent model's samples become the VAE's latents and images: the latent
    statistics (the network works on (z - mean) / std) and, optionally, the VAE decoder."""

    stats: tuple[Tensor, Tensor] | None
    decoder: Any = None

    def to_vae(self, x: Tensor) -> Tensor:
        from .adapters.dit.weights import denormalize

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
    from .adapters.dit.weights import load_latent_stats

    if vae_path is not None and stats_path is None:
        raise ValueError("--vae needs --latent-stats: the network works on normalised latents, the VAE on its own")
    stats = load_latent_stats(stats_path, channels) if stats_path is not None else None
    decoder = None
    if vae_path is not None:
        from .adapters.dit.vae import load_vae_decoder

        decoder = load_vae_decoder(vae_path, device=device)
        if decoder.config.embed_dim != channels:
            raise ValueError(f"--vae {vae_path} decodes {decoder.config.embed_dim}-channel latents; the model makes {channels}")
    return LatentDecoding(stats, decoder)


class SampleJob:
    """A sampling job into a folder once its inputs are checked (what `lowdiff-sched sample`
    runs): this process's batches, sampled with a progress bar, and their files."""

    def __init__(self, cascade: ResolutionCascade, plan: CascadePlan, out: Path, device: str | torch.device, procs: Processes,
                 extra: dict[str, Any] | None = None, progress: bool = False) -> None:
        self.cascade, self.plan, self.out, self.device, self.procs, self.extra = cascade, plan, out, device, procs, extra
        self.progress = progress

    def _batches(self, seeds: list[int], labels: list[int] | None, batch: int):  # type: ignore[no-untyped-def]
        from tqdm.auto import tqdm

        mine = deal_batches(seeds, labels, batch, self.procs)
        steps = sum(stage.steps for stage in self.plan.stages) * len(mine)
        with tqdm(total=steps, disable=not self.progress, unit="step", desc="sampling", file=sys.stderr) as bar:
            for b in mine:
                yield b, sample_batch(self.cascade, self.plan, b, self.device, self.extra, callback=lambda info: bar.update(1))

    def pixels(self, seeds: list[int], labels: list[int] | None, batch: int, value_range: tuple[float, float],
               ncol: int | None) -> str:
        """Sample image models: PNGs per seed, grid.png and samples.npz (rank 0 writes)."""
        written = finish_pixels(self.out, list(self._batches(seeds, labels, batch)), self.procs, value_range, ncol)
        return f"{len(seeds)} PNGs, {written['grid'].name} and {written['npz'].name}" if written else ""

    def latents(self, seeds: list[int], labels: list[int] | None, batch: int, decoding: LatentDecoding) -> str:
        """Sample latent models: a latents file per batch, and with a VAE the PNGs and grid.png."""
        shown = []
        decoder = decoding.decoder
        for b, x in self._batches(seeds, labels, batch):
            write_latents(self.out, b, decoding.to_vae(x), "vae" if decoding.stats is not None else "model")
            if decoder is not None:
                pixels = write_images(self.out, b, decoding.images(x))
                if b.index * batch < GRID_MAX:
                    shown.append((b.index, b.seeds, pixels))
        grid_path = finish_grid(self.out, shown, self.procs, None) if decoder is not None else None
        text = f"{-(-len(seeds) // batch)} latents-*.safetensors files"  # one per batch, over all ranks
        if decoder is not None:
            text += f", {len(seeds)} PNGs" + (f" and {grid_path.name}" if grid_path else "")
        return text
