"""Which torch devices this machine has, and checking a device name before any work uses it."""

from __future__ import annotations

import torch


def available_devices() -> list[str]:
    """Device names this process can compute on: cpu, then cuda:0.. and mps when present."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def check_device(name: str, option: str = "--device") -> torch.device:
    """`name` as a torch.device if this machine has it; else a one-line ValueError naming
    `option` and the devices there are (torch would fail later, deep inside a model load)."""
    here = available_devices()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"{option} {name!r} is not a torch device name; available here: {', '.join(here)}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.index is None and count or device.index is not None and device.index < count:
            return device
        why = "no CUDA device is available" if not count else f"there are {count} CUDA devices (cuda:0 to cuda:{count - 1})"
        raise ValueError(f"{option} {name!r}: {why}; available here: {', '.join(here)}")
    if device.type == "mps" and "mps" in here:
        return device
    raise ValueError(f"{option} {name!r}: this machine has no {device.type} device; available here: {', '.join(here)}")
