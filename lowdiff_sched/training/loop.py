"""`train`: LowDiff multi-resolution training of any ResolutionCascade module, on one process
or many (torchrun), with EMA, checkpoints, exact resume and Ctrl-C handling."""

from __future__ import annotations

import copy
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence, cast

import torch
from torch import Tensor, nn

from ..checkpoints import latest_checkpoint, newest_readable_checkpoint, remove_stale_temporaries, save_checkpoint
from ..labels import one_hot
from ..outputs import atomic_path, ensure_writable_dir
from ..processes import Processes, average_gradients, broadcast_parameters, default_device, join_processes, sum_over_ranks
from ..protocol import ResolutionCascade
from ..runs import MODEL_SPEC
from .batches import StepBatches
from .config import TrainConfig, resume_conflicts
from .ema import ema_beta, ema_halflife, update_ema
from .interrupt import DeferredInterrupt
from .losses import distill_loss, draw_multires_noise, make_loss, multires_loss, trained_level_ids
from .seeds import LOSS_NOISE, MODEL_RNG, derive_seed
from .tensorboard_log import open_writer, summary_writer_class

__all__ = ["TrainConfig", "train"]

LOG_FILE = "log.jsonl"
CONFIG_FILE = "train_config.json"


def collate(items: Sequence[Any]) -> tuple[Tensor, Tensor]:
    """Stack (image, class id) items, or bare images (class id -1), into a batch."""
    if isinstance(items[0], Tensor):
        return torch.stack(list(items)), torch.full((len(items),), -1, dtype=torch.long)
    images, labels = zip(*items)
    return torch.stack(images), torch.as_tensor(labels, dtype=torch.long)


def train(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    resume: bool = True,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Train `model` on `dataset` with LowDiff's loss; return the trained (non-EMA) model.

    Checkpoints (with the EMA weights) go to out_dir; with `resume`, a run continues from the
    latest one there, step for step as if never stopped. Under torchrun each process trains on
    its share of every global batch and rank 0 writes the files. Ctrl-C finishes the current
    step, saves a checkpoint and re-raises KeyboardInterrupt. The dataset yields (image, class
    id) pairs (as ImageDataset does) or bare images, at the top level's shape.

    Randomness is reseeded every step from (config.seed, step), torch's global RNG included
    (for the model's own draws, e.g. dropout; the caller's RNG state is restored afterwards),
    so resuming needs no saved RNG state and the data and loss noise do not depend on the
    number of processes. Resuming under torchrun
    reads the checkpoint on every rank: out_dir must be on a file system they share.
    With config.log="tensorboard", rank 0 also writes TensorBoard scalars to out_dir/tensorboard.
    """
    if not isinstance(model, nn.Module) or not isinstance(model, ResolutionCascade):
        raise ValueError(f"model must be a torch.nn.Module implementing ResolutionCascade, got {type(model).__name__}")
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    if config.log == "tensorboard":
        summary_writer_class()  # without the package, fail before any work or file
    device = torch.device(device) if device is not None else default_device()
    _check_dataset(model, dataset, config)
    trained_level_ids(model.levels, config.levels, config.distill)
    procs = join_processes(device)
    try:
        if config.batch % procs.world:
            raise ValueError(f"TrainConfig.batch={config.batch} does not split evenly over {procs.world} processes")
        # The per-step reseeding of torch's global RNG stays inside: the caller's RNG is untouched.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return _Run(model, dataset, config, Path(out_dir), procs, device).run(progress=progress, resume=resume)
    finally:
        procs.close()


def _check_dataset(model: nn.Module, dataset: Any, config: TrainConfig) -> None:
    try:
        size = len(dataset)
    except TypeError:
        raise ValueError(f"dataset must have a length, got {type(dataset).__name__}") from None
    if size == 0:
        raise ValueError("dataset is empty")
    item = dataset[0]
    image = item if isinstance(item, Tensor) else item[0]
    top = cast(ResolutionCascade, model).levels[-1]
    if tuple(image.shape) != top.shape:
        raise ValueError(f"dataset images have shape {tuple(image.shape)}, the model's top level is {top.shape}")
    if config.label_dim and not getattr(dataset, "has_labels", not isinstance(item, Tensor)):
        raise ValueError(f"TrainConfig.label_dim={config.label_dim} but the dataset has no labels")
    dataset_dim = getattr(dataset, "label_dim", 0)
    if config.label_dim and dataset_dim > config.label_dim:
        raise ValueError(f"dataset has class ids up to {dataset_dim - 1}, beyond TrainConfig.label_dim={config.label_dim}")


class _Run:
    """One call of `train`: the state that changes step by step, and the steps themselves."""

    def __init__(self, model: nn.Module, dataset: Any, config: TrainConfig, out_dir: Path, procs: Processes, device: torch.device) -> None:
        self.model, self.dataset, self.config, self.procs, self.device = model, dataset, config, procs, device
        self.out_dir = ensure_writable_dir(out_dir)
        self.model.to(device).train()
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
        self.loss_fn = make_loss(config.loss, **(config.loss_kwargs or {}))
        self.level_ids = trained_level_ids(self.cascade.levels, config.levels, config.distill)
        self.noise_generator = torch.Generator(device=device)
        self.step = 0
        self.saved_step: int | None = None
        self.ema: nn.Module
        self.step_scalars: dict[str, float] = {}  # the last update's learning rate and EMA, for the log

    @property
    def cascade(self) -> ResolutionCascade:
        """The model, a cascade."""
        return cast(ResolutionCascade, self.model)

    # -- state ---------------------------------------------------------------------------------

    def restore(self, resume: bool) -> None:
        """Continue from the latest checkpoint in out_dir, or start (every rank from rank 0's weights).
        Either way, what a killed run left in out_dir goes first: its temporary files, and the
        log records of steps after the state it continues from."""
        if latest_checkpoint(self.out_dir) is not None and not resume:
            raise ValueError(f"out_dir {str(self.out_dir)!r} already holds checkpoints; resume from them or use another out_dir")
        if self.procs.is_main:
            remove_stale_temporaries(self.out_dir, (LOG_FILE, CONFIG_FILE, MODEL_SPEC))
        found = newest_readable_checkpoint(self.out_dir, on_skip=None if self.procs.is_main else (lambda reason: None))
        if found is None:
            if self.procs.is_main:
                _forget_log_after(self.out_dir / LOG_FILE, 0)
            broadcast_parameters(self.model, self.procs)
            self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
            return
        path, state = found  # on the CPU; load_state_dict copies onto the model's device
        if int(state["step"]) > self.config.steps:
            raise ValueError(f"the run in {str(self.out_dir)!r} is already past {self.config.steps} steps (its latest "
                             f"checkpoint is at step {int(state['step'])}); nothing to do: ask for more steps to continue it")
        conflicts = resume_conflicts(state["config"], self.config)
        if conflicts:
            changes = ", ".join(f"{k}: {state['config'].get(k)!r} -> {getattr(self.config, k)!r}" for k in conflicts)
            raise ValueError(f"cannot resume from {str(path)!r}: the config changed ({changes}); use another out_dir or resume=False")
        self.model.load_state_dict(state["model"])
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = self.saved_step = int(state["step"])
        if self.procs.is_main:
            _forget_log_after(self.out_dir / LOG_FILE, self.step)

    def save(self) -> None:
        """Checkpoint the state after `self.step` completed steps (rank 0 writes it)."""
        if self.procs.is_main and self.saved_step != self.step:
            state = {
                "step": self.step,
                "images_seen": self.step * self.config.batch,
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "config": self.config.to_dict(),
                "world_size": self.procs.world,
            }
            save_checkpoint(self.out_dir, state, keep=self.config.keep_checkpoints)
        self.saved_step = self.step

    # -- one step --------------------------------------------------------------------------------

    def _reseed(self) -> None:
        """Every random stream of this step, derived from (seed, step): nothing carries over."""
        seed = self.config.seed
        self.noise_generator.manual_seed(derive_seed(seed, LOSS_NOISE, self.step))
        torch.manual_seed(derive_seed(seed, MODEL_RNG, self.step, self.procs.rank))

    def compute_gradients(self, images: Tensor, labels: Tensor) -> Tensor:
        """Loss and averaged gradients of this process's share of the step's global batch."""
        cfg = self.config
        self._reseed()
        images = images.to(self.device, torch.float32)
        class_labels = one_hot(labels, cfg.label_dim).to(self.device) if cfg.label_dim else None
        # Every rank draws the whole global batch's noise and keeps its rows, so the result
        # does not depend on the number of processes.
        share = cfg.batch // self.procs.world
        rows = (self.procs.rank * share, (self.procs.rank + 1) * share)
        levels = self.step_levels()
        noise = draw_multires_noise(self.cascade.levels, cfg.batch, self.loss_fn, generator=self.noise_generator, levels=levels,
                                    device=self.device, distill=cfg.distill)
        noise = {i: z.rows(*rows) for i, z in noise.items()}
        self.optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.mixed_precision == "bf16" else nullcontext()
        with autocast:
            loss = distill_loss if cfg.distill else multires_loss
            total, per_level = loss(self.cascade, images, self.loss_fn, class_labels=class_labels, levels=levels, noise=noise)
        total.backward()
        average_gradients(self.model, self.procs)
        nan = total.new_tensor(float("nan"))  # levels not trained this step (alternate_levels)
        return torch.stack([per_level.get(i, nan).float() for i in self.level_ids])

    def step_levels(self) -> list[int]:
        """The levels this step trains: all of config.levels, or one in turn (alternate_levels)."""
        ids = self.level_ids
        return [ids[self.step % len(ids)]] if self.config.alternate_levels else ids

    def update(self) -> None:
        """Clip, step the optimizer and the EMA (EDM's schedule for lr ramp-up and EMA decay)."""
        cfg = self.config
        params = [p for p in self.model.parameters() if p.grad is not None]
        for p in params:
            torch.nan_to_num(cast(Tensor, p.grad), nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        seen = self.step * cfg.batch
        ramp = min((seen + cfg.batch) / (cfg.lr_rampup_kimg * 1000), 1.0) if cfg.lr_rampup_kimg > 0 else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * ramp
        self.optimizer.step()
        beta = ema_beta(seen, cfg.batch, cfg.ema_halflife_kimg, cfg.ema_rampup_ratio)
        update_ema(self.ema, self.model, beta)
        self.step_scalars = {"train/lr": cfg.lr * ramp, "train/ema_beta": beta,
                             "train/ema_halflife_kimg": ema_halflife(seen, cfg.ema_halflife_kimg, cfg.ema_rampup_ratio) / 1000}

    # -- the loop -------------------------------------------------------------------------------

    def run(self, *, progress: bool, resume: bool) -> nn.Module:
        cfg = self.config
        self.restore(resume)
        if self.procs.is_main:
            with atomic_path(self.out_dir / CONFIG_FILE) as tmp:
                tmp.write_text(cfg.to_json() + "\n")
        sampler = StepBatches(len(self.dataset), cfg.batch, cfg.seed, start=self.step, stop=cfg.steps, rank=self.procs.rank, world=self.procs.world)
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, num_workers=cfg.workers, collate_fn=collate)
        levels = self.level_ids
        log = _LossLog(self.out_dir / LOG_FILE, levels, cfg.steps, self.step, batch=cfg.batch, show=progress and self.procs.is_main,
                       write=self.procs.is_main, tensorboard=cfg.log == "tensorboard")
        phase = "compute"
        try:
            with DeferredInterrupt() as interrupt:
                for images, labels in loader:
                    losses = self.compute_gradients(images, labels)
                    phase = "update"
                    self.update()
                    self.step += 1
                    phase = "compute"
                    stop_and_losses = sum_over_ranks(torch.cat([losses.new_tensor([float(interrupt.requested)]), losses]), self.procs)
                    log.add(self.step, stop_and_losses[1:] / self.procs.world, flush=self.step % cfg.log_every == 0 or self.step == cfg.steps,
                            scalars=self.step_scalars)
                    if stop_and_losses[0] > 0:
                        raise KeyboardInterrupt
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                        phase = "save"
                        self.save()
                        phase = "compute"
            phase = "save"
            self.save()
        except KeyboardInterrupt:
            log.close()
            if phase == "compute":  # the model holds exactly `self.step` completed steps
                self.save()
                log.message(f"interrupted: checkpoint of step {self.step} in {self.out_dir}")
            raise
        finally:
            log.close()
        if self.procs.active:
            torch.distributed.barrier()
        return self.model


def _forget_log_after(path: Path, step: int) -> None:
    """Drop log records of steps after `step` (logged by a run that then died before saving
    them), and a last record cut short by a kill mid-write."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            if number == len(lines) and not line.endswith("\n"):
                continue  # torn: the process died while appending it
            raise ValueError(f"training log {str(path)!r}: line {number} is not a JSON record") from None
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        with atomic_path(path) as tmp:
            tmp.write_text("".join(kept))


class _LossLog:
    """Per-level losses averaged over each logging window: a tqdm bar and log.jsonl (rank 0),
    and with `tensorboard` the same losses, the step's other scalars and the window's images
    per second as TensorBoard scalars (rank 0), at the optimizer step."""

    def __init__(self, path: Path, levels: list[int], total: int, initial: int, *, batch: int, show: bool, write: bool,
                 tensorboard: bool = False) -> None:
        self.path, self.levels, self.write, self.batch = path, levels, write, batch
        self.sum: Tensor | None = None
        self.count: Tensor | int = 0
        self.bar = None
        self.writer = open_writer(path.parent, initial) if tensorboard and write else None
        self.window_start, self.window_steps = time.perf_counter(), 0
        if show:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # no bar without tqdm; the log file still records everything
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def add(self, step: int, losses: Tensor, *, flush: bool, scalars: dict[str, float] | None = None) -> None:
        """Add one step's per-level losses (NaN for a level the step did not train); `scalars`
        (e.g. the learning rate) go to TensorBoard as they are at a flush."""
        self.window_steps += 1
        losses = losses.detach().double()
        seen = (~losses.isnan()).double()
        self.sum = losses.nan_to_num(0.0) if self.sum is None else self.sum + losses.nan_to_num(0.0)
        self.count = seen if isinstance(self.count, int) else self.count + seen
        if self.bar is not None:
            self.bar.update(1)
        if flush:
            means = (self.sum / self.count).tolist()  # NaN: a level not trained since the last flush
            self.sum, self.count = None, 0
            per_level = {str(i): m for i, m in zip(self.levels, means) if m == m}
            if self.bar is not None:
                self.bar.set_postfix({f"L{i}": f"{m:.4g}" for i, m in per_level.items()}, refresh=False)
            total = math.fsum(per_level.values())
            if self.write:
                record = {"step": step, "loss": total, "levels": per_level}
                with open(self.path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            if self.writer is not None:
                now = time.perf_counter()
                speed = self.window_steps * self.batch / max(now - self.window_start, 1e-9)
                values = {"loss/total": total, **{f"loss/level_{i}": m for i, m in per_level.items()}, **(scalars or {}),
                          "train/images_per_sec": speed}
                for tag, value in values.items():
                    self.writer.add_scalar(tag, value, step)
                self.writer.flush()  # readable while training, and nothing lost to a kill
            self.window_start, self.window_steps = time.perf_counter(), 0

    def message(self, text: str) -> None:
        if self.write:
            (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
