"""Emoji artwork at 64x64: a real colour image set for the three-level cascades.

The images come from two npm packages of the emoji-data project, pinned by version and by
their sha512 integrity: Noto Emoji artwork (`emoji-datasource-google`, Apache-2.0) and
Twemoji artwork (`emoji-datasource-twitter`, CC-BY-4.0), 64x64 RGBA PNGs under
`img/<set>/64/`. The Google package's `emoji.json` gives every emoji its category, which is
the class label. `build_emoji_dataset` composites each image's alpha onto a white
background and writes two datasets in EDM's zip layout (PNGs + dataset.json), which
`lowdiff-sched train --data` reads:

- `emoji-train.zip` and `emoji-heldout.zip`, split by emoji: an emoji, its skin-tone
  variants and both artwork sets of each go to the same side (a hash of the base emoji's
  code point sequence decides), so evaluation never sees a training image or a recoloured
  copy of one;
- nine classes, the Unicode categories in Unicode's order; the five "Component" images
  (skin-tone swatches and hair parts, not pictures of anything) are left out.

`fetch_emoji_packages` gets the tarballs with `npm pack`; `build_emoji_dataset` checks their
integrity before it reads them and writes nothing when a check fails.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

STYLES = ("google", "twitter")
VERSION = "16.0.0"
# npm's dist.integrity of each pinned tarball (the registry's sha512, base64).
INTEGRITY = {
    "google": "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
    "twitter": "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
}
CATEGORIES = (
    "Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
    "Activities", "Objects", "Symbols", "Flags",
)
LEFT_OUT = ("Component",)
SIZE = 64
BACKGROUND = (255, 255, 255)
HELDOUT_EIGHTHS = 1  # 1/8 of the base emoji are held out
SPLIT_FILES = {"train": "emoji-train.zip", "heldout": "emoji-heldout.zip"}
NPM_TIMEOUT = 600  # seconds: the two tarballs are 136 MB
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
ATTRIBUTION = """\
Emoji artwork at 64x64, composited onto white by lowdiff-sched from the npm packages
emoji-datasource-google@{version} and emoji-datasource-twitter@{version} (emoji-data by
Cal Henderson, MIT licence; https://github.com/iamcal/emoji-data).

google/*.png: Noto Emoji artwork, Copyright Google Inc., Apache License 2.0
  (https://github.com/googlefonts/noto-emoji/blob/main/LICENSE).
twitter/*.png: Twemoji artwork, Copyright Twitter, Inc. and other contributors,
  Creative Commons Attribution 4.0 International (CC-BY-4.0)
  (https://creativecommons.org/licenses/by/4.0/; https://github.com/jdecked/twemoji).
The images are the packages' own 64x64 files; only their transparency was flattened onto
a white background.
"""


def package_name(style: str) -> str:
    return f"emoji-datasource-{style}"


def tarball_name(style: str) -> str:
    """The file name `npm pack` gives the pinned package of one artwork set."""
    return f"{package_name(style)}-{VERSION}.tgz"


@dataclass(frozen=True)
class EmojiImage:
    """One image to take from a tarball: its emoji's split key, its class, its file."""

    base: str  # the base emoji's code points: skin-tone variants share it
    label: int
    image: str  # file name under img/<style>/64/
    style: str


def npm_integrity(path: Path) -> str:
    """The sha512 integrity string npm records for a file."""
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def check_tarballs(tarballs: Mapping[str, Path], integrity: Mapping[str, str] = INTEGRITY) -> None:
    """Every artwork set has a tarball whose integrity is the pinned one; else one line."""
    for style in STYLES:
        path = tarballs.get(style)
        if path is None:
            raise ValueError(f"no tarball for the {style} artwork ({tarball_name(style)})")
        if not Path(path).is_file():
            raise ValueError(f"{str(path)!r} does not exist")
        got = npm_integrity(Path(path))
        if got != integrity[style]:
            raise ValueError(
                f"{str(path)!r} is not {package_name(style)}@{VERSION}: its sha512 integrity is {got[:23]}..., "
                f"the pinned one {integrity[style][:23]}...; delete it and fetch again"
            )


def fetch_emoji_packages(dest: Path) -> dict[str, Path]:
    """`npm pack` both pinned packages into `dest` (a file already there is reused) and
    return their paths; integrity is checked by `build_emoji_dataset`."""
    paths = {style: dest / tarball_name(style) for style in STYLES}
    wanted = [f"{package_name(s)}@{VERSION}" for s in STYLES if not paths[s].is_file()]
    if wanted:
        npm = shutil.which("npm")
        if npm is None:
            raise ValueError("the emoji artwork is fetched with npm, which is not installed: install Node.js and npm "
                             "(e.g. apt-get install npm), or pass a folder holding the tarballs with --tarballs")
        dest.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run([npm, "pack", *wanted, "--pack-destination", str(dest), "--silent"],
                                  capture_output=True, text=True, timeout=NPM_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise ValueError(f"npm pack {' '.join(wanted)} did not finish in {NPM_TIMEOUT} s; is the npm registry reachable?") from None
        if done.returncode != 0:
            reason = next((line for line in done.stderr.splitlines() if line.strip()), f"exit code {done.returncode}")
            raise ValueError(f"npm pack {' '.join(wanted)} failed: {reason.strip()}")
    return paths


def catalogue(emoji_json: list[dict], style: str) -> list[EmojiImage]:
    """The images of one artwork set that the dataset keeps, in emoji.json's order: every
    emoji of a kept category that has this set's artwork, and each of its skin-tone variants."""
    images = []
    for entry in emoji_json:
        category = entry.get("category")
        if category in LEFT_OUT:
            continue
        if category not in CATEGORIES:
            raise ValueError(f"emoji.json: {entry.get('unified')!r} has an unknown category {category!r}")
        label, base = CATEGORIES.index(category), entry["unified"].lower()
        variants = [entry, *entry.get("skin_variations", {}).values()]
        images += [EmojiImage(base, label, v["image"], style) for v in variants if v.get(f"has_img_{style}")]
    return images


def split_of(base: str) -> str:
    """'heldout' for 1/8 of the base emoji, chosen by a hash of their code points; else 'train'."""
    return "heldout" if hashlib.sha256(base.encode()).digest()[0] < 256 * HELDOUT_EIGHTHS // 8 else "train"


def composite(png: bytes) -> bytes:
    """An RGBA emoji flattened onto the white background, as an RGB PNG."""
    import PIL.Image

    with PIL.Image.open(io.BytesIO(png)) as img:
        rgba = img.convert("RGBA")
    if rgba.size != (SIZE, SIZE):
        raise ValueError(f"expected {SIZE}x{SIZE} artwork, got {rgba.size[0]}x{rgba.size[1]}")
    flat = PIL.Image.new("RGBA", rgba.size, BACKGROUND + (255,))
    flat.alpha_composite(rgba)
    out = io.BytesIO()
    flat.convert("RGB").save(out, format="PNG", optimize=True)
    return out.getvalue()


def _members(tarball: Path, style: str) -> Iterator[tuple[str, bytes]]:
    """(file name, bytes) of the 64x64 images in one package tarball."""
    prefix = f"package/img/{style}/{SIZE}/"
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.startswith(prefix) and member.name.endswith(".png"):
                f = tar.extractfile(member)
                if f is not None:
                    yield member.name[len(prefix):], f.read()


def _emoji_json(tarball: Path) -> list[dict]:
    with tarfile.open(tarball, "r:gz") as tar:
        try:
            f = tar.extractfile("package/emoji.json")
        except KeyError:
            f = None
        if f is None:
            raise ValueError(f"{str(tarball)!r} holds no package/emoji.json")
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"package/emoji.json in {str(tarball)!r} is not a list of emoji")
    return data


def build_emoji_dataset(
    tarballs: Mapping[str, Path], out: Path, *, integrity: Mapping[str, str] = INTEGRITY
) -> dict[str, dict]:
    """Write `out/emoji-train.zip` and `out/emoji-heldout.zip` from the two package tarballs
    (checked against `integrity` first) and return a summary per split: image count and
    count per class. Each zip is written whole or not at all."""
    from ..outputs import atomic_path

    check_tarballs(tarballs, integrity)
    emoji_json = _emoji_json(Path(tarballs["google"]))
    files: dict[str, list[tuple[str, bytes, int]]] = {split: [] for split in SPLIT_FILES}
    for style in STYLES:
        wanted = {img.image: img for img in catalogue(emoji_json, style)}
        found = 0
        for name, png in _members(Path(tarballs[style]), style):
            img = wanted.get(name)
            if img is None:
                continue
            try:
                flat = composite(png)
            except (OSError, ValueError, SyntaxError) as err:
                raise ValueError(f"img/{style}/{SIZE}/{name} in {str(tarballs[style])!r}: {err}") from None
            files[split_of(img.base)].append((f"{style}/{name}", flat, img.label))
            found += 1
        if found != len(wanted):
            raise ValueError(f"{str(tarballs[style])!r} lacks {len(wanted) - found} of the {len(wanted)} images emoji.json lists")
    summary = {}
    for split, entries in files.items():
        entries.sort()
        labels = [[name, label] for name, _, label in entries]
        meta = {"labels": labels, "classes": list(CATEGORIES), "split": split,
                "source": [f"{package_name(s)}@{VERSION}" for s in STYLES]}
        with atomic_path(out / SPLIT_FILES[split]) as tmp:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
                members = [*((name, png) for name, png, _ in entries), ("dataset.json", json.dumps(meta).encode()),
                           ("ATTRIBUTION.txt", ATTRIBUTION.format(version=VERSION).encode())]
                for name, data in members:
                    z.writestr(zipfile.ZipInfo(name, date_time=ZIP_TIME), data)  # the same bytes on every build
        summary[split] = {"file": str(out / SPLIT_FILES[split]), "images": len(entries),
                          "per_class": {c: sum(1 for *_, label in entries if label == i) for i, c in enumerate(CATEGORIES)}}
    return summary
