"""Damaged, hostile and oversized files (issue 14): each one is a one-line ValueError naming
the file, and at the command line one stderr line with exit code 2, never a traceback.

Covered: corrupt dataset zips, temporary files left by a killed run, legacy (non-zip)
torch files, refused weights-only loads (nothing runs, and no advice to load unsafely), and
model.json architectures too large or malformed to build."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lowdiff_sched.adapters.dit.cascade import DiTCascade
from lowdiff_sched.adapters.dit.weights import dit_cascade_of, load_dit, load_latent_stats, read_state_dict, save_dit
from lowdiff_sched.adapters.dit.networks import DiTConfig, LightningDiT
from lowdiff_sched.adapters.dit.vae import load_vae_decoder
from lowdiff_sched.adapters.edm.snapshots import CheckpointError, load_edm, save_checkpoint
from lowdiff_sched.adapters.edm.lowdiff import build_network, cascade_of
from lowdiff_sched.cli.app import app
from lowdiff_sched.runs import MODEL_SPEC, load_run, spec_of
from lowdiff_sched.checkpoints import load_checkpoint
from lowdiff_sched.checkpoints import save_checkpoint as save_run_checkpoint

runner = CliRunner()
TINY_EDM = dict(img_resolution=8, img_channels=1, model_channels=16, channel_mult=[1, 2], num_blocks=1,
                attn_resolutions=[4], dropout=0.0)
TINY_DIT = DiTConfig(input_size=4, patch_size=1, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=3)
UNSAFE_ADVICE = ("weights_only set to False", "weights_only` set to `False", "weights_only=False", "Re-running")


class CallOnLoad:
    """Pickles as a call `func(*args)`, the way a malicious `__reduce__` does."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


class Opaque:
    """A plain class instance: weights_only refuses it as a global not on its allowlist."""


def one_line_error(result, *names: str) -> str:
    """The CLI's error line, checked: exit code 2, one stderr line naming `names`, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lowdiff-sched: error: "), result.stderr
    assert "Traceback" not in result.output, result.output
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def assert_one_line(err: BaseException, *names: str) -> str:
    message = str(err)
    assert "\n" not in message, message
    for name in names:
        assert name in message, (name, message)
    return message


def legacy_copy(src: Path, dest: Path) -> Path:
    """`src` (a torch file) re-saved in torch.save's legacy, non-zip format."""
    torch.save(torch.load(src, weights_only=True), dest, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(dest)
    return dest


def assert_same_tensors(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            assert_same_tensors(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tensors(x, y)
    else:
        assert a == b


# -- tiny models, runs and datasets ---------------------------------------------------------------


def edm_run(folder: Path) -> Path:
    """A training run folder of a tiny LowDiff EDM cascade: model.json and one checkpoint."""
    torch.manual_seed(0)
    cascade = cascade_of(build_network("VPPrecond", dict(TINY_EDM)), [4, 8])
    return write_run(folder, cascade)


def dit_run(folder: Path) -> Path:
    torch.manual_seed(0)
    return write_run(folder, dit_cascade_of(LightningDiT(TINY_DIT), [2, 4]))


def write_run(folder: Path, cascade: torch.nn.Module) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_SPEC).write_text(json.dumps(spec_of(cascade), indent=2))
    state = {k: v.detach().clone() for k, v in cascade.state_dict().items()}
    save_run_checkpoint(folder, {"step": 1, "model": state, "ema": state, "optimizer": {}, "config": {}, "world_size": 1})
    return folder


def image_folder(folder: Path, n: int = 8, size: int = 8) -> Path:
    folder.mkdir(parents=True)
    gen = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(gen.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / f"img{i:03d}.png")
    return folder


def zip_of(folder: Path, dest: Path, damage: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(dest, "w") as z:
        for p in sorted(folder.iterdir()):
            z.writestr(p.name, (damage or {}).get(p.name, p.read_bytes()))
    return dest


def train_config(tmp_path: Path, **extra) -> Path:
    """A --config for a fresh tiny VPPrecond trained at its own 8x8 (no retrofit)."""
    path = tmp_path / "train.json"
    config = {"init": {"class_name": "VPPrecond", "init_kwargs": TINY_EDM}, "levels": [8], "batch": 4,
              "steps": 2, "checkpoint_every": 1, "seed": 0, **extra}
    path.write_text(json.dumps(config))
    return path


# -- item 3: corrupt dataset zips -------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["random", "half"])
def test_train_on_a_corrupt_zip_is_one_line_before_any_output(tmp_path, damage):
    good = zip_of(image_folder(tmp_path / "images"), tmp_path / "good.zip").read_bytes()
    bad = tmp_path / "bad.zip"
    bad.write_bytes(np.random.default_rng(1).bytes(3000) if damage == "random" else good[: len(good) // 2])
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(train_config(tmp_path)), "--data", str(bad), "--out", str(out), "--no-progress"])
    one_line_error(result, str(bad), "not a readable zip archive")
    assert not out.exists()


def test_train_on_a_zip_with_a_corrupt_image_names_the_image(tmp_path):
    folder = image_folder(tmp_path / "images")
    png = (folder / "img005.png").read_bytes()
    at = png.find(b"IDAT") + 8
    broken_pixels = png[:at] + bytes(8) + png[at + 8:]
    for name, damage in {"garbage": b"not a png at all", "pixels": broken_pixels}.items():
        data = zip_of(folder, tmp_path / f"{name}.zip", {"img005.png": damage})
        result = runner.invoke(app, ["train", "--config", str(train_config(tmp_path)), "--data", str(data),
                                     "--out", str(tmp_path / f"run-{name}"), "--no-progress"])
        one_line_error(result, "img005.png", str(data))


# -- item 5: temporary files of a killed run ----------------------------------------------------------


def test_train_resumed_after_a_kill_removes_its_temporary_files(tmp_path):
    data, out, config = image_folder(tmp_path / "images"), tmp_path / "run", train_config(tmp_path)
    args = ["train", "--config", str(config), "--data", str(data), "--out", str(out), "--no-progress"]
    assert runner.invoke(app, args).exit_code == 0
    left = [".checkpoint-00000003.pt.k1ll3d_x.tmp.pt", ".log.jsonl.abcd1234.tmp.jsonl", ".model.json.zz9_0000.tmp.json",
            ".train_config.json.q_q_q_q_.tmp.json"]
    for name in left:
        (out / name).write_bytes(b"half a file")
    result = runner.invoke(app, [*args, "--steps", "4"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert load_checkpoint(out / "checkpoint-00000004.pt")["step"] == 4


# -- item 9: legacy (non-zip) torch files -----------------------------------------------------------


def test_legacy_run_checkpoint_loads_identically(tmp_path):
    run = edm_run(tmp_path / "run")
    zipped = run / "checkpoint-00000001.pt"
    legacy = legacy_copy(zipped, tmp_path / "legacy.pt")
    assert_same_tensors(load_checkpoint(legacy), load_checkpoint(zipped))
    reference = load_run(run).state_dict()
    legacy.replace(zipped)
    assert_same_tensors(load_run(run).state_dict(), reference)
    assert_same_tensors(load_run(zipped).state_dict(), reference)


def test_legacy_edm_checkpoint_loads_identically(tmp_path):
    torch.manual_seed(0)
    net = build_network("VPPrecond", dict(TINY_EDM))
    zipped = save_checkpoint(net, tmp_path / "net.pt")
    legacy = legacy_copy(zipped, tmp_path / "legacy.pt")
    assert_same_tensors(load_edm(legacy).state_dict(), load_edm(zipped).state_dict())
    assert load_edm(legacy).init_kwargs == load_edm(zipped).init_kwargs


def test_legacy_edm_checkpoint_at_the_command_line(tmp_path):
    torch.manual_seed(0)
    legacy = legacy_copy(save_checkpoint(build_network("VPPrecond", dict(TINY_EDM)), tmp_path / "net.pt"), tmp_path / "legacy.pt")
    result = runner.invoke(app, ["info", str(legacy), "--levels", "4,8"])
    assert result.exit_code == 0, result.output
    assert "VPPrecond(SongUNet)" in result.stdout


def test_a_training_checkpoint_given_as_an_edm_checkpoint_says_what_it_is(tmp_path):
    checkpoint = edm_run(tmp_path / "run") / "checkpoint-00000001.pt"
    for path in (checkpoint, legacy_copy(checkpoint, tmp_path / "legacy.pt")):
        with pytest.raises(CheckpointError, match="training checkpoint") as info:
            load_edm(path)
        assert_one_line(info.value, str(path))


def test_legacy_dit_checkpoint_and_latent_stats_load_identically(tmp_path):
    torch.manual_seed(0)
    zipped = save_dit(tmp_path / "dit.pt", DiTCascade(LightningDiT(TINY_DIT)), TINY_DIT)
    legacy = legacy_copy(zipped, tmp_path / "dit-legacy.pt")
    assert_same_tensors(read_state_dict(legacy), read_state_dict(zipped))
    assert_same_tensors(load_dit(legacy, TINY_DIT).state_dict(), load_dit(zipped, TINY_DIT).state_dict())

    torch.save({"mean": torch.randn(1, 4, 1, 1), "std": torch.rand(1, 4, 1, 1) + 0.5}, tmp_path / "stats.pt")
    legacy = legacy_copy(tmp_path / "stats.pt", tmp_path / "stats-legacy.pt")
    assert_same_tensors(load_latent_stats(legacy, 4), load_latent_stats(tmp_path / "stats.pt", 4))


# -- item 11: refused weights-only loads --------------------------------------------------------------


def hostile_files(tmp_path: Path, marker: Path, payload=None) -> dict[str, Path]:
    """Each loader's file with `payload` inside (default: an os.system call), zip and legacy format."""
    payload = CallOnLoad(os.system, f"touch {marker}") if payload is None else payload
    contents = {
        "edm": {"format": "lowdiff-sched/edm", "version": 1, "x": payload},
        "run": {"format": "lowdiff-sched-train/1", "step": 1, "x": payload},
        "dit": {"ema": {"w": torch.zeros(1)}, "x": payload},
        "stats": {"mean": torch.zeros(1, 4, 1, 1), "std": payload},
        "vae": {"state_dict": {"decoder.conv_in.weight": torch.zeros(1)}, "x": payload},
    }
    files = {}
    for name, obj in contents.items():
        files[name] = tmp_path / f"{name}.pt"
        torch.save(obj, files[name])
        files[f"{name}-legacy"] = tmp_path / f"{name}-legacy.pt"
        torch.save(obj, files[f"{name}-legacy"], _use_new_zipfile_serialization=False)
    return files


LOADERS = {
    "edm": load_edm,
    "run": load_checkpoint,
    "dit": lambda path: load_dit(path, TINY_DIT),
    "stats": lambda path: load_latent_stats(path, 4),
    "vae": load_vae_decoder,
}


@pytest.mark.parametrize("payload", ["os.system", "class"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_refused_files_run_nothing_and_never_suggest_an_unsafe_load(tmp_path, kind, legacy, payload):
    marker = tmp_path / "pwned"
    files = hostile_files(tmp_path, marker, Opaque() if payload == "class" else None)
    path = files[f"{kind}-legacy" if legacy else kind]
    with pytest.raises(ValueError) as info:
        LOADERS[kind](path)
    message = assert_one_line(info.value, str(path), "Opaque" if payload == "class" else "system")
    assert not any(advice in message for advice in UNSAFE_ADVICE), message
    assert not marker.exists()


def test_refused_files_at_the_command_line(tmp_path):
    marker = tmp_path / "pwned"
    files = hostile_files(tmp_path, marker)
    run = edm_run(tmp_path / "run")
    files["run"].replace(run / "checkpoint-00000002.pt")
    for args, path in [(["info", str(files["edm-legacy"])], files["edm-legacy"]),
                       (["sample", "--model", str(run), "--seeds", "0", "--out", str(tmp_path / "s")], run / "checkpoint-00000002.pt")]:
        line = one_line_error(runner.invoke(app, args), str(path))
        assert not any(advice in line for advice in UNSAFE_ADVICE), line
    assert not marker.exists()


# -- item 10: architectures validated before they are built --------------------------------------------


BAD_CHANNELS = [1e9, 10**9, "64", -4, True, 0]


@pytest.mark.parametrize("value", BAD_CHANNELS, ids=repr)
def test_load_run_validates_model_json_before_building(tmp_path, value):
    run = edm_run(tmp_path / "run")
    spec = json.loads((run / MODEL_SPEC).read_text())
    spec["network"]["init_kwargs"]["model_channels"] = value
    (run / MODEL_SPEC).write_text(json.dumps(spec))
    with pytest.raises(ValueError) as info:
        load_run(run)
    assert_one_line(info.value, "model_channels", repr(value), str(run / MODEL_SPEC))


@pytest.mark.parametrize("field, value", [("channel_mult", [1, "2"]), ("channel_mult", []), ("num_blocks", 10**6),
                                          ("img_channels", 2.5), ("attn_resolutions", 4), ("resample_filter", [1] * 10**5)])
def test_other_architecture_fields_are_checked(tmp_path, field, value):
    with pytest.raises(ValueError) as info:
        build_network("VPPrecond", {**TINY_EDM, field: value})
    assert_one_line(info.value, field)


def test_real_architectures_still_build():
    from lowdiff_sched.adapters.edm.networks import DATASET_CONFIGS, UNET_CONFIGS

    with torch.device("meta"):
        for arch in UNET_CONFIGS:
            for dataset, overrides in DATASET_CONFIGS.items():
                res = int(dataset.split("-")[1].split("x")[0])
                build_network("VPPrecond", {"img_resolution": res, "img_channels": 3, **UNET_CONFIGS[arch], **overrides})


def test_sample_with_an_oversized_model_json_is_one_line(tmp_path):
    run = edm_run(tmp_path / "run")
    spec = json.loads((run / MODEL_SPEC).read_text())
    spec["network"]["init_kwargs"]["model_channels"] = 1e9
    (run / MODEL_SPEC).write_text(json.dumps(spec))
    result = runner.invoke(app, ["sample", "--model", str(run), "--seeds", "0", "--out", str(tmp_path / "s"), "--no-progress"])
    one_line_error(result, "model_channels", str(run / MODEL_SPEC))


def test_an_edm_checkpoint_with_an_oversized_architecture_is_refused(tmp_path):
    torch.manual_seed(0)
    path = save_checkpoint(build_network("VPPrecond", dict(TINY_EDM)), tmp_path / "net.pt",
                           init_kwargs={**TINY_EDM, "model_channels": 10**9})
    with pytest.raises(CheckpointError) as info:
        load_edm(path)
    assert_one_line(info.value, "model_channels", str(path))


@pytest.mark.parametrize("field, value", [("hidden_size", 2**20), ("depth", 10**6), ("mlp_ratio", 1e12), ("hidden_size", 1e9),
                                          ("input_size", 2**20)])
def test_dit_model_json_is_validated_before_building(tmp_path, field, value):
    run = dit_run(tmp_path / "run")
    spec = json.loads((run / MODEL_SPEC).read_text())
    spec["network"][field] = value
    (run / MODEL_SPEC).write_text(json.dumps(spec))
    with pytest.raises(ValueError) as info:
        load_run(run)
    assert_one_line(info.value, field, str(run / MODEL_SPEC))


@pytest.mark.parametrize("change", [{"network": None}, {"levels": "4,8"}, {"network": {"class_name": "VPPrecond"}},
                                    {"backbone": "unet"}, {"method": "retrofit"}, {"version": 3}, {"extra": 1}])
def test_malformed_model_json_is_one_line(tmp_path, change):
    run = edm_run(tmp_path / "run")
    spec = {**json.loads((run / MODEL_SPEC).read_text()), **change}
    (run / MODEL_SPEC).write_text(json.dumps(spec))
    with pytest.raises(ValueError) as info:
        load_run(run)
    assert_one_line(info.value, str(run / MODEL_SPEC))
