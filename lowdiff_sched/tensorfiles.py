"""Reading files of tensors without executing code: `.safetensors`, or torch files (zip or
legacy format) through `torch.load(weights_only=True)` only. Every failure is a one-line
ValueError naming the file.

`load_weights_only` is the one place a torch file is unpickled; its errors carry torch's
reason in one line, minus torch's advice to retry with weights_only=False (that would run
whatever code the file holds)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

# torch.save's legacy (non-zip) format opens with this number pickled on its own.
_LEGACY_HEADS = tuple(pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=p) for p in range(2, pickle.HIGHEST_PROTOCOL + 1))
_ZIP_HEAD = b"PK\x03\x04"
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+)")


class WeightsOnlyError(ValueError):
    """torch.load(weights_only=True) failed: `reason` is one line; `refused_global` names the
    global the file asked for (something a plain unpickle would import or call), if that was why."""

    def __init__(self, reason: str, refused_global: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.refused_global = reason, refused_global


class UnsafeFileError(ValueError):
    """A file that asks to import or call something when unpickled: not damaged but made so,
    and refused outright (never skipped in favour of an older file)."""


def is_torch_file(head: bytes) -> bool:
    """Whether a file starting with `head` (its first 32 bytes will do) was written by
    torch.save, in the zip format or the legacy one."""
    return head.startswith(_ZIP_HEAD) or any(head.startswith(h) for h in _LEGACY_HEADS)


def _reason(exc: BaseException) -> str:
    """One line of why torch.load failed: the unpickler's own message when torch wrapped it,
    never the wrapper's advice to load with weights_only=False, nor the docs link."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.rsplit("WeightsUnpickler error:", 1)[1]
    for line in text.splitlines():
        line = line.strip().removeprefix("Weights only load failed.").strip()
        if not line or "weights_only" in line or line.startswith("Check the documentation of torch.load"):
            continue
        return line.split(" Please use `torch.serialization.add_safe_globals", 1)[0]
    return type(exc).__name__


def load_weights_only(source: Any) -> Any:
    """`torch.load(source, weights_only=True)` onto the CPU; any failure is a WeightsOnlyError
    (torch, pickle and zip raise many types for damaged bytes, all meaning the same to a user)."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        found = _REFUSED_GLOBAL.search(str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
        raise WeightsOnlyError(_reason(exc), found.group(1) if found else None) from None


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
            raise ValueError(f"{what} {str(path)!r} is not a readable safetensors file ({_reason(exc)})") from None
    with open(path, "rb") as f:
        head = f.read(32)
    if not head:
        raise ValueError(f"{what} {str(path)!r} is empty")
    if not is_torch_file(head):
        raise ValueError(f"{what} {str(path)!r} is neither a torch file nor a .safetensors file (it starts with {head[:12]!r})")
    try:
        return load_weights_only(path)
    except WeightsOnlyError as err:
        kind = UnsafeFileError if err.refused_global is not None else ValueError
        raise kind(
            f"{what} {str(path)!r} is not a plain tensor checkpoint (torch.load(weights_only=True) refused it: {err.reason})"
        ) from None
