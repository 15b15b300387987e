"""A sampling job: seeds split into batches, batches split over torchrun processes, each
batch's outputs written as soon as it is done, and the summary files (grid, .npz) written
by rank 0 from every rank's results.

Batches are cut from the whole seed list before they are dealt out (batch k to rank
k mod world, as EDM's generate.py does), and every sample depends on its seed only, so a
job on N processes writes exactly the files a one-process job writes.
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, cast

import numpy as np
import torch
from torch import Tensor

from .labels import class_label_args
from .outputs import atomic_path, grid, save_png, save_samples, to_uint8
from .plan import CascadePlan
from .processes import Processes, gather_objects
from .protocol import ResolutionCascade, label_dim_of
from .sampling import sample_cascade

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
    rows = sorted((r for part in parts for r in part), key=lambda r: r[0])
    seeds = [s for r in rows for s in r[1]]
    labels = None if rows[0][2] is None else [c for r in rows for c in cast("list[int]", r[2])]  # all labelled, or none
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
    rows = sorted((r for part in parts for r in part), key=lambda r: r[0])
    pixels = np.concatenate([r[2] for r in rows])[:GRID_MAX]
    if not len(pixels):
        return None
    path = out_dir / "grid.png"
    save_png(grid(pixels, ncol), path)
    return path


def latent_decoding(cascade: ResolutionCascade, latent_stats: str | Path | None, decoder: str | Path | None,
                    device: str | torch.device = "cpu") -> Any:
    """How a latent model's samples become its decoder's latents and images (its backbone's
    `decoding`: for a DiT, the latent statistics and the VA-VAE), loaded before any sampling."""
    from .backbones import backbone_of

    backbone = backbone_of(cascade)
    if backbone is None or not backbone.latent:
        raise ValueError(f"{type(cascade).__name__} is not a latent model of a registered backbone: it has no decoder")
    return backbone.decoding(cascade.levels[-1].channels, None if latent_stats is None else Path(latent_stats),
                             None if decoder is None else Path(decoder), torch.device(device))


class SampleJob:
    """A sampling job into a folder once its inputs are checked (what `lowdiff-sched sample`
    runs): this process's batches, sampled with a progress bar, and their files."""

    def __init__(self, cascade: ResolutionCascade, plan: CascadePlan, out: Path, device: str | torch.device, procs: Processes,
                 extra: dict[str, Any] | None = None, progress: bool = False) -> None:
        self.cascade, self.plan, self.out, self.device, self.procs, self.extra = cascade, plan, out, device, procs, extra
        self.progress = progress

    def _batches(self, seeds: list[int], labels: list[int] | None, batch: int):
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

    def latents(self, seeds: list[int], labels: list[int] | None, batch: int, decoding: Any) -> str:
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


@dataclass(frozen=True)
class SampleRun:
    """What `sample_model` did: the plan it ran, the seconds sampling took, what it wrote, and
    on how many processes (`is_main`: this one is rank 0, the one that reports)."""

    plan: CascadePlan
    seconds: float
    written: str
    world: int
    is_main: bool


def sample_model(
    model: str, plan: str | None, seeds: Sequence[int], out: str | Path, *, labels: Sequence[int] | None = None,
    batch: int = 16, device: str = "cpu", overwrite: bool = False, ckpt: str | Path | None = None,
    latent_stats: str | Path | None = None, decoder: str | Path | None = None, extra: dict[str, Any] | None = None,
    progress: bool = False, labels_name: str = "class_labels",
) -> SampleRun:
    """Sample model `model` (a registered name, a training run or an exported model) with
    `plan` (a preset or plan file; None: the model's default) into the folder `out`: one
    sample per seed, seed s of a class-conditional model drawn for class labels[s mod
    len(labels)] (default: every class). Under torchrun every process calls it and the
    batches are dealt over them. Image models write PNGs, grid.png and samples.npz; latent
    models their latents, and with a `decoder` the decoded PNGs. What `lowdiff-sched sample`
    runs; errors name `labels_name` for the labels."""
    from .devices import check_device
    from .labels import seed_labels
    from .models import load_for_plan, model_spec
    from .outputs import check_out_dir, claim_out_dir
    from .presets import load_plan
    from .processes import join_processes
    from .sampling import check_seeds

    seed_list = check_seeds(seeds)
    if len(set(seed_list)) != len(seed_list):
        raise ValueError("seeds must not repeat (each names one sample and its files)")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    spec = model_spec(model)
    if plan is not None:
        load_plan(plan)  # a bad plan file is found before the model is loaded
    out = Path(out)
    check_out_dir(out, "out", overwrite)
    procs = join_processes(check_device(device))
    try:
        run_device = procs.device(device)
        cascade, cascade_plan = load_for_plan(model, plan, run_device, ckpt)
        label_dim = label_dim_of(cascade)
        if not label_dim and labels is not None:
            raise ValueError(f"{labels_name}: model {model} is unconditional (it takes no class labels)")
        try:
            seed_classes = seed_labels(seed_list, label_dim, labels) if label_dim else None
        except ValueError as err:
            raise ValueError(f"{labels_name}: {err} (model {model})") from None
        job = SampleJob(cascade, cascade_plan, out, run_device, procs, extra, progress and procs.is_main)
        decoding = latent_decoding(cascade, latent_stats, decoder, run_device) if spec.latent else None
        with claim_out_dir(out, SAMPLE_FILES, overwrite) if procs.is_main else nullcontext(out):
            gather_objects(None, procs)  # the other ranks write only once rank 0 holds the folder
            started = time.perf_counter()
            if decoding is not None:
                written = job.latents(seed_list, seed_classes, batch, decoding)
            else:
                ncol = len(labels) if labels and len(labels) <= 16 else None
                written = job.pixels(seed_list, seed_classes, batch, spec.value_range, ncol)
            seconds = time.perf_counter() - started
    finally:
        procs.close()
    return SampleRun(cascade_plan, seconds, written, procs.world if procs.active else 1, procs.is_main)
