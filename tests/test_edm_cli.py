"""The EDM user story end to end through the CLI: an EDM-format pickle of a tiny SongUNet
loads (no code executed), is retrofitted, fine-tuned on CPU for a few steps, and sampled
with a paper preset; `info` reports the retrofit's overhead."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from lowdiff_sched.adapters.edm.snapshots import load_edm
from lowdiff_sched.adapters.edm.lowdiff import LowDiffUNet
from lowdiff_sched.runs import load_run
from lowdiff_sched.adapters.edm.networks import NETWORK_CLASSES, VPPrecond
from lowdiff_sched.cli.app import app

from edm_fixtures import build_network, snapshot, write_edm_pickle

runner = CliRunner()
TINY = dict(model_channels=16, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)


def edm_pickle(tmp_path):
    torch.manual_seed(0)
    net = build_network(VPPrecond, NETWORK_CLASSES.values(), img_resolution=16, img_channels=3, **TINY)
    return write_edm_pickle(tmp_path / "network-snapshot-000100.pkl", snapshot(net), NETWORK_CLASSES.values())


def image_folder(tmp_path, n: int = 8):
    folder = tmp_path / "data"
    folder.mkdir()
    gen = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(gen.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"img{i:03d}.png")
    return folder


def test_retrofit_train_sample_and_info(tmp_path):
    pkl, data, run = edm_pickle(tmp_path), image_folder(tmp_path), tmp_path / "run"
    result = runner.invoke(app, ["train", "--init", str(pkl), "--data", str(data), "--levels", "4,8,16", "--out", str(run),
                                 "--batch", "4", "--steps", "3", "--checkpoint-every", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (run / "model.json").is_file() and sorted(p.name for p in run.glob("checkpoint-*.pt"))
    spec = json.loads((run / "model.json").read_text())
    assert spec["levels"] == [4, 8, 16] and spec["backbone"] == "edm" and spec["network"]["class_name"] == "VPPrecond"

    # the trained model is the loaded network retrofitted, with fine-tuned weights
    trained = load_run(run)
    fresh = LowDiffUNet.from_edm(load_edm(pkl), (4, 8, 16))
    assert trained.state_dict().keys() == fresh.state_dict().keys()
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), fresh.state_dict().values()))

    out = tmp_path / "samples"
    result = runner.invoke(app, ["sample", "--model", str(run), "--plan", "cifar10-3stage", "--seeds", "0-3", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    samples = np.load(out / "samples.npz")["samples"]
    assert samples.shape == (4, 3, 16, 16) and np.isfinite(samples).all()

    result = runner.invoke(app, ["info", str(pkl), "--levels", "4,8,16"])
    assert result.exit_code == 0, result.output
    overhead = LowDiffUNet.from_edm(load_edm(pkl), (4, 8, 16)).parameter_overhead
    assert f"+{overhead:,} parameters" in result.stdout and "VPPrecond(SongUNet)" in result.stdout
    assert "retrofit" in runner.invoke(app, ["info", str(run)]).stdout


def test_training_refuses_a_different_model_in_the_same_run(tmp_path):
    pkl, data, run = edm_pickle(tmp_path), image_folder(tmp_path), tmp_path / "run"
    args = ["train", "--init", str(pkl), "--data", str(data), "--out", str(run), "--batch", "4", "--steps", "1", "--no-progress"]
    assert runner.invoke(app, [*args, "--levels", "4,8,16"]).exit_code == 0
    result = runner.invoke(app, [*args, "--levels", "8,16"])
    assert result.exit_code == 2 and "different model" in result.stderr


def test_bad_inputs_are_one_line_errors(tmp_path):
    pkl, data = edm_pickle(tmp_path), image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    cases = [
        (["train", "--init", str(tmp_path / "missing.pkl"), "--data", str(data)], "missing.pkl"),
        (["train", "--init", str(pkl), "--data", str(tmp_path / "empty"), "--levels", "4,8,16", "--out", str(tmp_path / "r")], "empty"),
        (["train", "--init", str(pkl), "--data", str(data), "--levels", "6,16", "--out", str(tmp_path / "r2")], "resolutions"),
        (["train", "--init", str(pkl), "--data", str(data), "--levels", "a,b"], "--levels"),
        (["sample", "--model", str(tmp_path / "nowhere")], "unknown model"),
        (["info", str(data)], "not a lowdiff-sched training run"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output
