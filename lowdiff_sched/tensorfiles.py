"""Reading files of tensors without executing code: `.safetensors`, or torch files through
`torch.load(weights_only=True)` only. Every failure is a one-line ValueError naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _first_line(exc: BaseException) -> str:
    """A short reason from `exc` (torch's weights_only message is many lines; keep its core)."""
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("WeightsUnpickler error:"):
            return line[len("WeightsUnpickler error:"):].strip()
    return (text.splitlines()[0].strip() if text else "") or type(exc).__name__


def load_tensor_file(path: str | Path, what: str = "file") -> Any:
    """The contents of a .safetensors file (a dict of tensors) or of a torch file holding only
    tensors and plain containers; `what` names the file in errors ("checkpoint", ...)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what} {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} is not a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises several types for a corrupt file
            raise ValueError(f"{what} {str(path)!r} is not a readable safetensors file ({_first_line(exc)})") from None
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and EOF errors all mean the same to a user
        raise ValueError(
            f"{what} {str(path)!r} is not a plain tensor checkpoint (torch.load(weights_only=True) refused it: {_first_line(exc)})"
        ) from None
