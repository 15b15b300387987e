"""Training LowDiff cascades: EDM's losses applied per level (losses), EDM-format image
datasets (data), a data-parallel training loop with EMA, atomic checkpoints and exact
resume (loop, config, state, ema, batches, seeds, distributed, interrupt), and a whole run
as data, from the starting network to the TrainConfig (recipe)."""

from __future__ import annotations

from .state import latest_checkpoint, load_checkpoint, load_weights
from .config import TrainConfig
from .data import ImageDataset, one_hot
from .losses import EDMLoss, FlowLoss, LevelNoise, VELoss, VPLoss, draw_multires_noise, make_loss, msf_loss, multires_loss
from .loop import train
from .recipe import TrainedRun, TrainRecipe

__all__ = [
    "EDMLoss",
    "FlowLoss",
    "ImageDataset",
    "LevelNoise",
    "TrainConfig",
    "TrainRecipe",
    "TrainedRun",
    "VELoss",
    "VPLoss",
    "draw_multires_noise",
    "latest_checkpoint",
    "load_checkpoint",
    "load_weights",
    "make_loss",
    "msf_loss",
    "multires_loss",
    "one_hot",
    "train",
]
