"""The emoji dataset builder on tiny package tarballs made here (no npm, no network)."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from typer.testing import CliRunner

from lowdiff_sched.cli.app import app
from lowdiff_sched.datasets import emoji
from lowdiff_sched.training import ImageDataset

COLOURS = {"1f600": (250, 200, 0), "1f44d": (200, 120, 60), "1f44d-1f3fb": (240, 210, 180), "1f34e": (220, 20, 30),
           "1f3fb": (240, 210, 180), "1f1e6-1f1e8": (0, 0, 200)}
# A few entries in emoji.json's form: a smiley, a thumbs-up with one skin-tone variant (only
# Google's artwork of it exists), food, a skin-tone swatch (category Component) and a flag.
EMOJI_JSON = [
    {"unified": "1F600", "image": "1f600.png", "category": "Smileys & Emotion", "has_img_google": True, "has_img_twitter": True},
    {"unified": "1F44D", "image": "1f44d.png", "category": "People & Body", "has_img_google": True, "has_img_twitter": True,
     "skin_variations": {"1F3FB": {"unified": "1F44D-1F3FB", "image": "1f44d-1f3fb.png", "has_img_google": True, "has_img_twitter": False}}},
    {"unified": "1F34E", "image": "1f34e.png", "category": "Food & Drink", "has_img_google": True, "has_img_twitter": True},
    {"unified": "1F3FB", "image": "1f3fb.png", "category": "Component", "has_img_google": True, "has_img_twitter": True},
    {"unified": "1F1E6-1F1E8", "image": "1f1e6-1f1e8.png", "category": "Flags", "has_img_google": True, "has_img_twitter": True},
]


def _png(code: str, style: str) -> bytes:
    """An RGBA image: transparent left half, opaque colour on the right (darker for twitter)."""
    pixels = np.zeros((64, 64, 4), np.uint8)
    pixels[:, 32:, :3] = np.array(COLOURS[code]) // (2 if style == "twitter" else 1)
    pixels[:, 32:, 3] = 255
    out = io.BytesIO()
    PIL.Image.fromarray(pixels, "RGBA").save(out, format="PNG")
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_tarballs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True)
    paths = {}
    for style in emoji.STYLES:
        path = folder / emoji.tarball_name(style)
        with tarfile.open(path, "w:gz") as tar:
            if style == "google":
                _add(tar, "package/emoji.json", json.dumps(EMOJI_JSON).encode())
            for entry in EMOJI_JSON:
                for v in [entry, *entry.get("skin_variations", {}).values()]:
                    if v[f"has_img_{style}"]:
                        _add(tar, f"package/img/{style}/64/{v['image']}", _png(v["image"][:-4], style))
                        _add(tar, f"package/img/{style}/32/{v['image']}", b"not read")
        paths[style] = path
    return paths


@pytest.fixture
def tarballs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    paths = make_tarballs(tmp_path / "npm")
    for style, path in paths.items():  # the fixtures are the "pinned" packages for these tests
        monkeypatch.setitem(emoji.INTEGRITY, style, emoji.npm_integrity(path))
    return paths


def _everything(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_build_writes_labelled_splits_by_emoji(tarballs: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    # put the thumbs-up (and so its skin-tone variant) on the held-out side, the rest in train
    monkeypatch.setattr(emoji, "split_of", lambda base: "heldout" if base == "1f44d" else "train")
    summary = emoji.build_emoji_dataset(tarballs, tmp_path / "out")
    train, heldout = (ImageDataset(tmp_path / "out" / emoji.SPLIT_FILES[s]) for s in ("train", "heldout"))
    assert sorted(heldout.names) == ["google/1f44d-1f3fb.png", "google/1f44d.png", "twitter/1f44d.png"]
    assert sorted(train.names) == sorted(f"{s}/{c}.png" for s in emoji.STYLES for c in ("1f600", "1f34e", "1f1e6-1f1e8"))
    labels = dict(zip(train.names, train.labels))
    assert labels["google/1f600.png"] == emoji.CATEGORIES.index("Smileys & Emotion") == 0
    assert labels["twitter/1f34e.png"] == emoji.CATEGORIES.index("Food & Drink")
    assert labels["google/1f1e6-1f1e8.png"] == emoji.CATEGORIES.index("Flags") == 8
    assert set(heldout.labels) == {emoji.CATEGORIES.index("People & Body")}
    assert summary["heldout"]["images"] == 3 and summary["train"]["per_class"]["Flags"] == 2
    assert train.shape == (3, 64, 64)
    # alpha flattened onto white: the transparent half is white, the opaque half keeps its colour
    image, _ = train[train.names.index("google/1f34e.png")]
    assert bool((image[:, :, :32] == 1).all())
    rgb = (image[:, :, 32:].permute(1, 2, 0) + 1) * 127.5
    assert np.allclose(rgb.numpy(), COLOURS["1f34e"], atol=1e-3)
    with zipfile.ZipFile(tmp_path / "out" / emoji.SPLIT_FILES["train"]) as z:
        meta = json.loads(z.read("dataset.json"))
        text = z.read("ATTRIBUTION.txt").decode()
    assert meta["classes"] == list(emoji.CATEGORIES)
    assert "Apache License 2.0" in text and "CC-BY-4.0" in text


def test_build_is_byte_identical_when_repeated(tarballs: dict[str, Path], tmp_path: Path) -> None:
    emoji.build_emoji_dataset(tarballs, tmp_path / "a")
    emoji.build_emoji_dataset(tarballs, tmp_path / "b")
    assert _everything(tmp_path / "a") == _everything(tmp_path / "b")


def test_split_holds_out_an_eighth_and_is_a_function_of_the_base_emoji() -> None:
    codes = [f"{i:05x}" for i in range(0x1f000, 0x1f000 + 4000)]
    held = [c for c in codes if emoji.split_of(c) == "heldout"]
    assert 0.10 < len(held) / len(codes) < 0.15
    assert [emoji.split_of(c) for c in codes] == [emoji.split_of(c) for c in codes]


def test_catalogue_drops_components_and_missing_artwork() -> None:
    google = {img.image for img in emoji.catalogue(EMOJI_JSON, "google")}
    twitter = {img.image for img in emoji.catalogue(EMOJI_JSON, "twitter")}
    assert "1f3fb.png" not in google | twitter
    assert "1f44d-1f3fb.png" in google and "1f44d-1f3fb.png" not in twitter
    with pytest.raises(ValueError, match="unknown category 'Emoji Art'"):
        emoji.catalogue([{"unified": "1F600", "image": "x.png", "category": "Emoji Art"}], "google")


def test_pinned_integrity_matches_npm_format(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    # sha512("abc") in npm's base64 form
    assert emoji.npm_integrity(path) == (
        "sha512-3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw==")
    assert all(v.startswith("sha512-") and len(v) == 95 for v in emoji.INTEGRITY.values())


def test_cli_builds_from_a_tarball_folder_without_npm(tarballs, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = CliRunner().invoke(app, ["data", "emoji", "--out", str(tmp_path / "out"), "--tarballs", str(tarballs["google"].parent)])
    assert result.exit_code == 0, result.output
    assert "emoji-train.zip: " in result.stdout and "emoji-heldout.zip: " in result.stdout
    assert sorted(os.listdir(tmp_path / "out")) == ["emoji-heldout.zip", "emoji-train.zip"]


def _fake_npm(folder: Path, source: Path) -> Path:
    """An `npm` that 'packs' by copying the fixture tarballs into --pack-destination."""
    folder.mkdir()
    script = folder / "npm"
    script.write_text(
        "#!/bin/sh\n"
        'echo "$@" >> "$0.calls"\n'
        'dest=""; prev=""\n'
        'for a in "$@"; do [ "$prev" = "--pack-destination" ] && dest="$a"; prev="$a"; done\n'
        f'{shutil.which("cp")} "{source}"/*.tgz "$dest"/\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_cli_fetches_with_npm_pack(tarballs, tmp_path: Path, monkeypatch) -> None:
    npm = _fake_npm(tmp_path / "bin", tarballs["google"].parent)
    monkeypatch.setenv("PATH", str(npm.parent))
    result = CliRunner().invoke(app, ["data", "emoji", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    call = (npm.parent / "npm.calls").read_text().split()
    assert call[:3] == ["pack", "emoji-datasource-google@16.0.0", "emoji-datasource-twitter@16.0.0"]
    assert (tmp_path / "out" / "emoji-train.zip").is_file()


def _one_line_error(result, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lowdiff-sched: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]
    assert result.stdout == ""


def test_cli_without_npm_is_one_line_and_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = CliRunner().invoke(app, ["data", "emoji", "--out", str(tmp_path / "out")])
    _one_line_error(result, "npm", "not installed", "install Node.js")
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_tampered_tarball_and_writes_nothing(tarballs, tmp_path: Path, monkeypatch) -> None:
    path = tarballs["twitter"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = CliRunner().invoke(app, ["data", "emoji", "--out", str(tmp_path / "out"), "--tarballs", str(path.parent)])
    _one_line_error(result, "emoji-datasource-twitter-16.0.0.tgz", "is not emoji-datasource-twitter@16.0.0", "integrity")
    assert not (tmp_path / "out").exists()


def test_cli_npm_failure_is_one_line(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "npm").write_text("#!/bin/sh\necho 'npm error code E404' >&2\necho 'npm error 404 Not Found' >&2\nexit 1\n")
    (folder / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", str(folder))
    result = CliRunner().invoke(app, ["data", "emoji", "--out", str(tmp_path / "out")])
    _one_line_error(result, "npm pack", "E404")
    assert not (tmp_path / "out").exists()


def test_named_emoji_dataset_reads_the_built_folder(tarballs, tmp_path: Path, monkeypatch) -> None:
    from lowdiff_sched.datasets import EMOJI_DIR_VARIABLE, dataset

    monkeypatch.setenv(EMOJI_DIR_VARIABLE, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="the emoji dataset is not built.*lowdiff-sched data emoji"):
        dataset("emoji:train")
    emoji.build_emoji_dataset(tarballs, tmp_path / "built")
    monkeypatch.setenv(EMOJI_DIR_VARIABLE, str(tmp_path / "built"))
    images = dataset("emoji")
    assert images.label_dim <= len(emoji.CATEGORIES) and images[0][0].shape == (3, 64, 64)
    with pytest.raises(ValueError, match="emoji split must be one of"):
        dataset("emoji:test")


def test_npm_that_hangs_is_one_line(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "npm").write_text("#!/bin/sh\nexec sleep 30\n")
    (folder / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:/usr/bin:/bin")
    monkeypatch.setattr(emoji, "NPM_TIMEOUT", 1)
    result = CliRunner().invoke(app, ["data", "emoji", "--out", str(tmp_path / "out")])
    _one_line_error(result, "did not finish in 1 s", "registry reachable")
    assert not (tmp_path / "out").exists()
