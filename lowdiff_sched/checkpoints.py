"""Training checkpoints: `checkpoint-{step:08d}.pt` files in the run folder.

A checkpoint is a plain dict of tensors and containers (loadable with
torch.load(weights_only=True)): format, step, images_seen, model and ema state dicts,
optimizer state dict, config (a dict) and world_size. Writes are atomic (temporary file +
os.replace), so a crash while saving leaves the previous checkpoint intact. No RNG state is
stored because none is carried between steps: each step reseeds from (seed, step), see seeds.py.

A process killed mid-write (kill -9, power cut) leaves its hidden temporary file behind;
`remove_stale_temporaries` clears those when a run starts or resumes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from . import outputs
from .errors import first_line
from .tensorfiles import UnsafeFileError, load_tensor_file

FORMAT = "lowdiff-sched-train/1"
NAME = re.compile(r"^checkpoint-(\d{8})\.pt$")


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / f"checkpoint-{step:08d}.pt"


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in out_dir, oldest first (temporary files excluded)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = ((NAME.match(p.name), p) for p in out_dir.iterdir())
    return sorted((int(m.group(1)), p) for m, p in found if m)


def remove_stale_temporaries(out_dir: str | Path, names: Iterable[str] = ()) -> list[Path]:
    """Delete the temporary files our atomic writers leave in out_dir when killed mid-write:
    those of checkpoints and of the files `names` (e.g. "log.jsonl"); nothing else is touched.
    Call it only while no other process writes to out_dir. Returns what was deleted."""
    return outputs.remove_stale_temporaries(out_dir, "|".join([NAME.pattern[1:-1], *map(re.escape, names)]))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def newest_readable_checkpoint(
    out_dir: str | Path, on_skip: Callable[[str], None] | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in out_dir that loads, with its state (None: there is none). A
    newer one that does not load (cut short by a full disk or a copy, damaged) is skipped,
    and `on_skip` (default: a note on stderr) is told which file and why; if none loads, a
    ValueError lists them. A file that asks to run code is refused, never skipped."""
    found = list_checkpoints(out_dir)
    skipped = []
    for _, path in reversed(found):
        try:
            return path, load_checkpoint(path)
        except UnsafeFileError:
            raise
        except ValueError as err:
            reason = f"skipped {path.name}, which does not load: {first_line(err)}"
            skipped.append(reason)
            if on_skip is not None:
                on_skip(reason)
            else:
                print(f"lowdiff-sched: note: {reason}", file=sys.stderr)
    if found:
        raise ValueError(f"no checkpoint in {str(out_dir)!r} loads: " + "; ".join(skipped))
    return None


def save_checkpoint(out_dir: str | Path, state: dict[str, Any], *, keep: int | None = None) -> Path:
    """Write `state` (which holds "step") atomically; then drop all but the newest `keep`."""
    path = checkpoint_path(out_dir, int(state["step"]))
    outputs.save_torch({"format": FORMAT, **state}, path)  # on disk before older ones are pruned
    if keep is not None:
        for _, old in list_checkpoints(out_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's dict on the CPU, loaded without executing code (weights_only)."""
    path = Path(path)
    state = load_tensor_file(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a lowdiff-sched training checkpoint")
    return state


def load_weights(model: torch.nn.Module, path: str | Path, which: str = "ema") -> torch.nn.Module:
    """Load a checkpoint's EMA (or "model") weights into `model`, for sampling or fine-tuning."""
    if which not in ("ema", "model"):
        raise ValueError(f'which must be "ema" or "model", got {which!r}')
    model.load_state_dict(load_checkpoint(path)[which])
    return model

