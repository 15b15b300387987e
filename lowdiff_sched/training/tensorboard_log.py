"""TensorBoard scalars of a training run (`TrainConfig.log="tensorboard"`), written with torch's
own SummaryWriter. The tensorboard package is an optional extra, imported only when asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"  # under the run folder, next to log.jsonl
INSTALL_HINT = "pip install 'lowdiff-sched[tensorboard]'"


def summary_writer_class() -> type:
    """torch.utils.tensorboard.SummaryWriter, or a one-line ValueError saying how to get it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError(f"TensorBoard logging (--log tensorboard) needs the tensorboard package: {INSTALL_HINT}") from None
    return SummaryWriter


def open_writer(out_dir: Path, resumed_step: int) -> Any:
    """A SummaryWriter appending a new event file to out_dir/tensorboard.

    Its first event tells TensorBoard to hide the steps after `resumed_step` logged by an
    earlier run of the folder (one killed after logging them but before checkpointing them),
    as log.jsonl drops their records, so every step shows once.
    """
    return summary_writer_class()(str(out_dir / TENSORBOARD_DIR), purge_step=resumed_step + 1)
