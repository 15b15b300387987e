"""Training LowDiff cascades: EDM's losses applied per level (losses), a data-parallel
training loop with EMA, atomic checkpoints and exact resume (loop, config, ema, batches,
seeds, interrupt), and a whole run as data, from the starting network to the TrainConfig
(recipe). Datasets, checkpoint files and class labels live below it (`datasets`,
`checkpoints`, `labels`); they are re-exported here for training scripts."""

from __future__ import annotations

from ..checkpoints import latest_checkpoint, load_checkpoint, load_weights
from ..datasets.images import ImageDataset
from ..labels import one_hot
from .config import TrainConfig
from .loop import train
from .losses import EDMLoss, FlowLoss, LevelNoise, VELoss, VPLoss, draw_multires_noise, make_loss, msf_loss, multires_loss
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
