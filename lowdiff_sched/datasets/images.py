"""Image datasets in EDM's format: a folder or .zip of images (searched recursively), with
optional class labels in a root `dataset.json` {"labels": [["dir/name.png", class_id], ...]}
as EDM's dataset_tool writes it (or {"labels": null}). A plain image folder works too."""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor

from ..errors import first_line

LABELS_FILE = "dataset.json"
CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
# What reading one damaged file can raise: PIL's errors (OSError, SyntaxError, EOFError, its
# DecompressionBombError), zipfile's for a damaged member (BadZipFile: a bad CRC or header)
# and zlib's for a damaged deflated one.
_READ_ERRORS: tuple[type[BaseException], ...] = (OSError, SyntaxError, EOFError, zipfile.BadZipFile, zlib.error)


def _image_extensions() -> set[str]:
    import PIL.Image

    PIL.Image.init()
    return {ext.lower() for ext in PIL.Image.registered_extensions()}


class ImageDataset(torch.utils.data.Dataset):
    """Images as float tensors [C, H, W] in [-1, 1], with int class ids (-1 when unlabelled).

    Files are ordered by their sorted relative path ('/'-separated), so the order is the same
    for a folder and its zip. Every header is checked when the dataset opens, so a bad file
    fails at once rather than hours into training.
    """

    def __init__(self, path: str | os.PathLike[str], *, cache: bool = False) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            self._zip_path = None
            files = {p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()}
        elif self.path.is_file() and self.path.suffix.lower() == ".zip":
            self._zip_path = self.path
            try:
                with zipfile.ZipFile(self.path) as z:
                    files = {name for name in z.namelist() if not name.endswith("/")}
            except (zipfile.BadZipFile, OSError, EOFError) as err:
                raise ValueError(f"dataset {str(self.path)!r} is not a readable zip archive: {_reason(err)}") from None
        elif self.path.exists():
            raise ValueError(f"dataset {str(self.path)!r} must be a folder or a .zip file")
        else:
            raise ValueError(f"dataset {str(self.path)!r} does not exist")
        self._zip: zipfile.ZipFile | None = None
        extensions = _image_extensions()
        self.names: list[str] = sorted(f for f in files if os.path.splitext(f)[1].lower() in extensions)
        if not self.names:
            raise ValueError(f"dataset {str(self.path)!r} holds no image files")
        self.shape: tuple[int, int, int] = self._check_shapes()
        self.labels: list[int] | None = self._read_labels() if LABELS_FILE in files else None
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    # -- what the dataset holds ------------------------------------------------------------

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    @property
    def label_dim(self) -> int:
        """One more than the largest class id (EDM's convention), 0 without labels."""
        return max(self.labels) + 1 if self.labels else 0

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        pixels = self._cache.get(index) if self._cache is not None else None
        if pixels is None:
            pixels = self._decode(self.names[index])
            if self._cache is not None:
                self._cache[index] = pixels
        image = torch.from_numpy(pixels).permute(2, 0, 1).to(torch.float32) / 127.5 - 1
        return image, (self.labels[index] if self.labels is not None else -1)

    # -- reading files -----------------------------------------------------------------------

    def _open(self, name: str) -> IO[bytes]:
        if self._zip_path is None:
            return open(self.path / name, "rb")
        if self._zip is None:
            self._zip = zipfile.ZipFile(self._zip_path)
        return self._zip.open(name, "r")

    def _header(self, name: str) -> tuple[int, int, int]:
        """(C, H, W) of one file from its header, without decoding the pixels."""
        import PIL.Image

        try:
            with self._open(name) as f, PIL.Image.open(f) as img:
                mode, (w, h) = img.mode, img.size
                if mode == "P":
                    mode = "RGBA" if "transparency" in img.info else "RGB"
        except _READ_ERRORS + (PIL.Image.DecompressionBombError,) as err:
            raise ValueError(f"{name!r} in dataset {str(self.path)!r} is not a readable image: {_reason(err)}") from None
        if mode not in CHANNELS:
            raise ValueError(f"{name!r} in dataset {str(self.path)!r} has image mode {mode!r}; supported: {sorted(CHANNELS)} (8 bits per channel)")
        return CHANNELS[mode], h, w

    def _check_shapes(self) -> tuple[int, int, int]:
        first = self._header(self.names[0])
        for name in self.names[1:]:
            shape = self._header(name)
            if shape != first:
                raise ValueError(
                    f"dataset {str(self.path)!r} mixes image shapes: {self.names[0]!r} is {_describe(first)}, "
                    f"{name!r} is {_describe(shape)}"
                )
        return first

    def _decode(self, name: str) -> np.ndarray:
        """[H, W, C] uint8 pixels of one file (only headers are checked when the dataset opens,
        so damaged pixel data shows here, as a one-line error naming the file)."""
        import PIL.Image

        try:
            with self._open(name) as f, PIL.Image.open(f) as img:
                if img.mode == "P":
                    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                pixels = np.array(img, dtype=np.uint8)
        except _READ_ERRORS + (PIL.Image.DecompressionBombError,) as err:
            raise ValueError(f"{name!r} in dataset {str(self.path)!r} is corrupt: {_reason(err)}") from None
        return pixels[:, :, None] if pixels.ndim == 2 else pixels

    def _read_labels(self) -> list[int] | None:
        where = f"{LABELS_FILE} in dataset {str(self.path)!r}"
        try:
            with self._open(LABELS_FILE) as f:
                data: Any = json.load(f)
        except _READ_ERRORS + (ValueError,) as err:
            raise ValueError(f"{where} is not valid JSON: {_reason(err)}") from None
        if not isinstance(data, dict) or "labels" not in data:
            raise ValueError(f'{where} must be an object with a "labels" entry')
        entries = data["labels"]
        if entries is None:
            return None
        if not isinstance(entries, list) or not all(isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) for e in entries):
            raise ValueError(f'{where}: "labels" must be a list of [relative_path, class_id] pairs')
        labels: dict[str, int] = {}
        for name, label in entries:
            if isinstance(label, bool) or not isinstance(label, int) or label < 0:
                raise ValueError(f"{where}: the label of {name!r} must be a non-negative int class id, got {label!r}")
            labels[name.replace("\\", "/")] = label
        missing = sorted(set(labels) - set(self.names))
        if missing:
            raise ValueError(f"{where} labels files that are not images of the dataset: {_some(missing)}")
        unlabelled = [name for name in self.names if name not in labels]
        if unlabelled:
            raise ValueError(f"{where} has no label for {_some(unlabelled)}")
        return [labels[name] for name in self.names]

    # -- pickling for DataLoader workers: each process opens its own zip handle --------------

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__, _zip=None)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None


def _reason(err: BaseException) -> str:
    """One line from a read error; PIL's messages end in the repr of the file object, which
    says nothing the error's own text does not."""
    text = first_line(err)
    return text.split(" <", 1)[0] if text.endswith(">") else text


def _describe(shape: tuple[int, int, int]) -> str:
    c, h, w = shape
    return f"{h}x{w} with {c} channel{'s' if c != 1 else ''}"


def _some(names: list[str], k: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:k])
    return shown + (f" and {len(names) - k} more" if len(names) > k else "")
