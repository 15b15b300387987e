"""Weights that ship inside the package (safetensors), found by file name."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def weight_path(name: str) -> Path:
    """The shipped file `name`; a clear error if this installation lacks it."""
    path = HERE / name
    if not path.is_file():
        raise ValueError(f"shipped weights {name!r} are missing from {HERE}; reinstall lowdiff-sched")
    return path
