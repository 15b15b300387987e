"""Writing samples to disk: PNGs, grids and .npz files, each written atomically
(temporary file + rename) so an interrupted run never leaves a half-written file."""

from __future__ import annotations

import fcntl
import math
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (making its folder if needed); on success it
    replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give what open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# The temporary names of our atomic writers, for a target name matching {names}:
# atomic_path's ".{name}.{random}.tmp{suffix}" and the ".{name}.{hex}.tmp" of older EDM checkpoint writes.
_TEMPORARY = r"^\.(?:{names})\.[A-Za-z0-9_]+\.tmp(?:\.[A-Za-z0-9]+)?$"


def remove_stale_temporaries(folder: str | Path, names: str = ".+") -> list[Path]:
    """Delete the temporary files our atomic writers leave in `folder` when a process is
    killed mid-write, for targets whose names match the regex `names`; nothing else is
    touched. Call it only while no other process writes there. Returns what was deleted."""
    folder, pattern = Path(folder), re.compile(_TEMPORARY.format(names=names))
    removed = []
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if pattern.match(p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _try_a_file(folder: Path) -> None:
    """Create and drop a file in `folder`: permissions are not the whole story (a read-only
    file system, a full disk, /proc); OSError if it cannot be done."""
    with tempfile.TemporaryFile(dir=folder):
        pass


def ensure_writable_dir(path: str | Path) -> Path:
    """Create `path` if needed and check that files can be written there (before any long run)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        _try_a_file(path)
    except OSError as err:
        raise ValueError(f"output directory {str(path)!r} is not writable: {err.strerror or err}") from None
    return path


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_creatable(path: Path, option: str, folder: bool = False) -> None:
    """The folders `path` (a file, or with `folder` a folder) needs can be made: its nearest
    existing ancestor is a writable folder."""
    base = _nearest_existing(path if folder else path.parent)
    if not base.is_dir():
        raise ValueError(f"{option} {str(path)!r} is not writable: {str(base)!r} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {str(path)!r} is not writable: no write permission in {str(base)!r}")
    try:
        _try_a_file(base)
    except OSError as err:
        raise ValueError(f"{option} {str(path)!r} is not writable: cannot create a file in {str(base)!r} ({err.strerror or err})") from None


def check_new_file(path: str | Path, option: str) -> Path:
    """Before any work: `path` names a file this process can create or replace (nothing is created)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a folder; give a file name")
    _check_creatable(path, option)
    return path


LOCK_NAME = ".lowdiff-sched.lock"  # held (flock) by the run writing into a folder


def check_out_dir(path: str | Path, option: str = "--out", overwrite: bool = False) -> Path:
    """Before any work: `path` is a folder a run may fill (nothing is created). It must be
    missing or empty, so two runs never mix their files; with `overwrite` it may hold a
    previous run, whose files `claim_out_dir` removes."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a file, not a folder")
    _check_creatable(path, option, folder=True)
    if path.is_dir():
        entries = sorted(e.name for e in path.iterdir() if e.name != LOCK_NAME)
        if entries and not overwrite:
            raise ValueError(
                f"{option} {str(path)!r} is not empty ({len(entries)} entries, e.g. {entries[0]}); "
                f"choose a new folder, or pass --overwrite to replace the run written there"
            )
    return path


@contextmanager
def claim_out_dir(path: str | Path, owned: Sequence[str], overwrite: bool = False, option: str = "--out") -> Iterator[Path]:
    """Make `path` and hold its lock while a run writes there; with `overwrite`, first delete
    the files a previous run left (names matching the glob patterns `owned`, and our
    temporary files). Folders this call made are removed again if the run fails before
    writing anything into it."""
    path = Path(path)
    made = [p for p in (path, *path.parents) if not p.exists()]  # the folders this call creates
    ensure_writable_dir(path)
    lock_path = path / LOCK_NAME
    lock = open(lock_path, "a")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{option} {str(path)!r}: another run is writing there (it holds {LOCK_NAME})") from None
        if overwrite:
            remove_stale_temporaries(path)
            for pattern in owned:
                for old in path.glob(pattern):
                    if old.is_file():
                        old.unlink()
        try:
            yield path
        except BaseException:
            if made and {e.name for e in path.iterdir()} <= {LOCK_NAME}:
                lock_path.unlink(missing_ok=True)
                for folder in made:
                    folder.rmdir()
            raise
        lock_path.unlink(missing_ok=True)
    finally:
        lock.close()


def to_uint8(images: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """[B, C, H, W] floats in `value_range` -> [B, H, W, C] uint8 (C = 1 or 3; other counts show channel 0)."""
    lo, hi = value_range
    x = ((images.detach().float().cpu() - lo) / (hi - lo) * 255).round().clamp(0, 255).to(torch.uint8)
    if x.shape[1] not in (1, 3):
        x = x[:, :1]
    return x.permute(0, 2, 3, 1).numpy()


def grid(images: np.ndarray, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile [B, H, W, C] uint8 images into one [rows*(H+pad)+pad, ...] image, row by row."""
    b, h, w, c = images.shape
    ncol = ncol or math.ceil(math.sqrt(b))
    nrow = math.ceil(b / ncol)
    out = np.zeros((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncol)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = img
    return out


def save_png(image: np.ndarray, path: str | Path) -> None:
    """Write one [H, W, C] uint8 image as PNG, atomically."""
    from PIL import Image

    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def save_torch(obj: object, path: str | Path) -> None:
    """torch.save, atomically, and on disk before it replaces `path`: a checkpoint that
    replaces (or outlives) an older one must survive a crash."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """np.savez, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def save_samples(
    out_dir: str | Path,
    samples: Tensor,
    seeds: Sequence[int],
    value_range: tuple[float, float] = (-1.0, 1.0),
    labels: Sequence[int] | None = None,
    ncol: int | None = None,
) -> dict[str, Path]:
    """One {seed:06d}.png per sample, grid.png and samples.npz (samples, seeds[, labels])."""
    out_dir = ensure_writable_dir(out_dir)
    images = to_uint8(samples, value_range)
    for seed, img in zip(seeds, images):
        save_png(img, out_dir / f"{seed:06d}.png")
    save_png(grid(images, ncol), out_dir / "grid.png")
    arrays = {"samples": samples.detach().float().cpu().numpy(), "seeds": np.asarray(seeds, dtype=np.int64)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    save_npz(out_dir / "samples.npz", **arrays)
    return {"grid": out_dir / "grid.png", "npz": out_dir / "samples.npz"}
