"""The backbone face: the table filled from the entry points, the records' parts the recipe,
the CLI and the model format rely on, and the sample/eval jobs as library calls equal to
the commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lowdiff_sched import backbones as table
from lowdiff_sched.backbones import Backbone, backbone, backbone_of, backbones, register_backbone
from lowdiff_sched.cli.app import app
from lowdiff_sched.training import TrainRecipe

runner = CliRunner()
TINY_EDM = {"img_resolution": 16, "img_channels": 1, "model_type": "SongUNet", "model_channels": 16, "channel_mult": [1, 2, 2],
            "num_blocks": 1, "attn_resolutions": [], "dropout": 0.0}


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_the_entry_points_register_the_packages_backbones_and_their_models():
    from lowdiff_sched.models import model_names

    assert set(backbones()) == {"analytic", "diffusers", "dit", "edm"}
    assert {"mnist-base", "mnist-fast", "dit-b1", "gaussian-field"} <= set(model_names())
    assert backbone("dit").architectures == ("dit-b1", "dit-xl1", "dit-s1") and backbone("dit").latent


def test_registering_checks_the_record(monkeypatch):
    monkeypatch.setattr(table, "_REGISTERED", dict(backbones()))
    with pytest.raises(ValueError, match="backbone 'edm' is already registered"):
        register_backbone(type("Again", (Backbone,), {"name": "edm"})())
    with pytest.raises(ValueError, match="a named Backbone instance"):
        register_backbone(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown backbone 'nope'; registered: analytic, diffusers, dit, edm"):
        backbone("nope")
    plain = register_backbone(type("Plain", (Backbone,), {"name": "plain"})())
    with pytest.raises(ValueError, match="backbone plain does not train"):
        plain.start(None, 0)
    assert backbone("plain") is plain


def test_the_recipe_asks_the_backbone(images):
    assert TrainRecipe(model="dit-s1").backbone_record().name == "dit"
    assert TrainRecipe(init={"class_name": "EDMPrecond", "init_kwargs": TINY_EDM}).backbone_record().name == "edm"
    with pytest.raises(ValueError, match="TrainRecipe.backbone|unknown backbone 'nope'"):
        TrainRecipe(backbone="nope")
    with pytest.raises(ValueError, match="--method distill: backbone dit trains lowdiff, c2f"):
        TrainRecipe(model="dit-s1", data="x", method="distill").check()
    with pytest.raises(ValueError, match=r"TrainRecipe.init: a fresh DiT is a named size"):
        TrainRecipe(backbone="dit", init={"class_name": "x", "init_kwargs": {}})
    with pytest.raises(ValueError, match="--latent-stats is for latent training .* backbone edm trains on images"):
        TrainRecipe(init="x.pkl", data="y", latent_stats="s.pt").check()
    # no levels given: the backbone's default, a quarter, half and all of the network's 16x16
    cascade, _, config = TrainRecipe(init={"class_name": "EDMPrecond", "init_kwargs": TINY_EDM}, data=str(images)).build()
    assert [lv.size[0] for lv in cascade.levels] == [4, 8, 16] and config.loss == "edm"
    assert backbone_of(cascade) is backbone("edm")


def test_an_edm_run_cannot_start_from_another_backbones_run(tmp_path):
    from lowdiff_sched.adapters.dit.networks import LightningDiT
    from lowdiff_sched.adapters.dit.sizes import size_config
    from lowdiff_sched.adapters.dit.weights import dit_cascade_of
    from lowdiff_sched.checkpoints import save_checkpoint
    from lowdiff_sched.runs import MODEL_SPEC, spec_of

    cascade = dit_cascade_of(LightningDiT(size_config("dit-s1", depth=1, hidden_size=32, num_heads=2)), [8, 16])
    run = tmp_path / "dit-run"
    run.mkdir()
    (run / MODEL_SPEC).write_text(json.dumps(spec_of(cascade)))
    save_checkpoint(run, {"format": "lowdiff-sched-train/1", "step": 1, "ema": cascade.state_dict(), "model": cascade.state_dict()})
    with pytest.raises(ValueError, match="is a run of another backbone, not an EDM network"):
        backbone("edm").start(str(run), 0)


def test_latent_decoding_belongs_to_latent_backbones():
    from lowdiff_sched.generate import latent_decoding
    from lowdiff_sched.models import load_model

    with pytest.raises(ValueError, match="GaussianFieldCascade is not a latent model of a registered backbone"):
        latent_decoding(load_model("gaussian-field"), None, None)


def test_sample_model_is_what_the_sample_command_runs(tmp_path):
    from lowdiff_sched.generate import sample_model

    done = sample_model("gaussian-field", "cifar10-3stage", range(3), tmp_path / "lib", batch=2)
    assert done.is_main and done.world == 1 and done.plan.name == "cifar10-3stage" and done.seconds > 0
    result = runner.invoke(app, ["sample", "--model", "gaussian-field", "--plan", "cifar10-3stage", "--seeds", "0-2",
                                 "--batch", "2", "--out", str(tmp_path / "cli"), "--no-progress"])
    assert result.exit_code == 0, result.output
    lib, cli = np.load(tmp_path / "lib" / "samples.npz"), np.load(tmp_path / "cli" / "samples.npz")
    assert np.array_equal(lib["samples"], cli["samples"]) and np.array_equal(lib["seeds"], [0, 1, 2])
    with pytest.raises(ValueError, match="class_labels: model gaussian-field is unconditional"):
        sample_model("gaussian-field", None, [0], tmp_path / "labels", labels=[1])
    assert not (tmp_path / "labels").exists() or not any((tmp_path / "labels").iterdir())


def test_evaluate_model_is_what_the_eval_command_runs(tmp_path):
    from lowdiff_sched.evaluate import evaluate_model

    result = evaluate_model("gaussian-field", "cifar10-3stage", range(4), batch=2)
    done = runner.invoke(app, ["eval", "--model", "gaussian-field", "--plan", "cifar10-3stage", "--n", "4", "--batch", "2",
                               "--json", str(tmp_path / "e.json"), "--no-progress"])
    assert done.exit_code == 0, done.output
    written = json.loads((tmp_path / "e.json").read_text())
    assert {k: written[k] for k in result.metrics} == pytest.approx(result.metrics)
    assert result.n == 4 and result.plan == "cifar10-3stage" and torch.isfinite(torch.tensor(list(result.metrics.values()))).all()
