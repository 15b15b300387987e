"""The real-data demo: the bundled MNIST split, the shipped classifier and models, the
class-label interface of `sample`, `eval`, and training from a committed config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lowdiff_sched import presets
from lowdiff_sched.adapters.edm.lowdiff import EDMCascade, LowDiffUNet
from lowdiff_sched.runs import export_run, load_exported, load_run
from lowdiff_sched.classifier import heldout_accuracy, load_classifier
from lowdiff_sched.cli.app import app
from lowdiff_sched.datasets import dataset
from lowdiff_sched.datasets.mnist import load_mnist, split_indices
from lowdiff_sched.evaluate import append_csv, evaluate
from lowdiff_sched.judges import DigitJudge
from lowdiff_sched.metrics import frechet_distance
from lowdiff_sched.models import load_model
from lowdiff_sched.labels import seed_labels
from lowdiff_sched.sampling import sample_cascade
from lowdiff_sched.labels import one_hot
from lowdiff_sched.weights import HERE

runner = CliRunner()
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


# ---- data -------------------------------------------------------------------------------------


def test_split_is_fixed_stratified_and_disjoint():
    train, held = split_indices("train"), split_indices("heldout")
    assert len(train) == 4500 and len(held) == 500
    assert not set(train) & set(held) and sorted({*train, *held}) == list(range(5000))
    _, labels = load_mnist("all")
    assert np.bincount(labels[train].numpy()).tolist() == [450] * 10
    assert np.bincount(labels[held].numpy()).tolist() == [50] * 10
    # the bundled file is sorted by class: each class's last 50 are held out
    assert held[:50].tolist() == list(range(450, 500))
    assert np.array_equal(split_indices("train"), train)  # deterministic


def test_images_are_padded_and_scaled():
    images, labels = load_mnist("heldout")
    assert images.shape == (500, 1, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.min() == -1 and images.max() == 1
    border = torch.cat([images[..., :2, :].flatten(), images[..., -2:, :].flatten(), images[..., :, :2].flatten(), images[..., :, -2:].flatten()])
    assert (border == -1).all()  # the 2-pixel zero border
    ds = dataset("mnist")
    image, label = ds[0]
    assert len(ds) == 4500 and image.shape == (1, 32, 32) and label == 0 and ds.label_dim == 10
    with pytest.raises(ValueError, match="split"):
        dataset("mnist:test")
    with pytest.raises(ValueError, match="unknown dataset"):
        dataset("cifar")


# ---- seed -> class --------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=30), st.lists(st.integers(0, 9), min_size=1, max_size=10))
def test_seed_labels_depend_on_the_seed_only(seeds, labels):
    got = seed_labels(seeds, 10, labels)
    assert got == [labels[s % len(labels)] for s in seeds]
    assert seed_labels(seeds[::-1], 10, labels) == got[::-1]  # order and company do not matter


def test_seed_labels_errors():
    assert seed_labels(range(12), 10) == [*range(10), 0, 1]
    with pytest.raises(ValueError, match="class label 10 is out of range"):
        seed_labels([0], 10, [3, 10])
    with pytest.raises(ValueError, match="unconditional"):
        seed_labels([0], 0)


# ---- the shipped classifier -------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def test_shipped_classifier_accuracy_and_features(classifier):
    assert heldout_accuracy(classifier) >= 0.97
    # FD-MNIST separates real digits from the same digits with shuffled pixels
    ref = DigitJudge(classifier).reference
    held, _ = load_mnist("heldout")
    gen = torch.Generator().manual_seed(0)
    shuffled = held.flatten(1)[:, torch.randperm(32 * 32, generator=gen)].view_as(held)
    with torch.no_grad():
        fd_real = frechet_distance(classifier.features(held), ref)
        fd_shuffled = frechet_distance(classifier.features(shuffled), ref)
    assert fd_real * 20 < fd_shuffled


# ---- the shipped models -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lowdiff():
    return load_model("mnist-lowdiff")


def test_shipped_models_load_strictly(lowdiff):
    from safetensors.torch import load_file

    base = load_model("mnist-base")
    assert isinstance(lowdiff, LowDiffUNet) and lowdiff.level_sizes == (8, 16, 32) and lowdiff.label_dim == 10
    assert isinstance(base, EDMCascade) and base.label_dim == 10
    for name, model in (("mnist-lowdiff", lowdiff), ("mnist-base", base)):
        stored = load_file(str(HERE / f"{name}.safetensors"))
        assert stored.keys() == model.state_dict().keys()
        assert (HERE / f"{name}.safetensors").stat().st_size <= 10e6
    # the retrofit shares the baseline's architecture
    assert {k for k in lowdiff.state_dict() if k.startswith("net.")} == set(base.state_dict())
    two = load_model("mnist-lowdiff-2level")
    assert isinstance(two, LowDiffUNet) and two.level_sizes == (16, 32)
    assert (HERE / "mnist-lowdiff-2level.safetensors").stat().st_size <= 10e6


def test_shipped_lowdiff_draws_the_digits_it_is_asked_for(lowdiff, classifier):
    """20 digits, 2 per class, through the 3-stage cascade: the classifier agrees >= 18 times."""
    result = evaluate(lowdiff, presets.get("mnist-3stage"), seeds=range(20), batch=20, judge=DigitJudge(classifier), model_name="mnist-lowdiff")
    assert round(result.metrics["accuracy"] * result.n) >= 18, result.summary()
    assert result.nfe == sum(presets.get("mnist-3stage").nfe()) and result.effective_nfe < result.nfe


def test_shipped_2level_lowdiff_draws_the_digits_it_is_asked_for(classifier):
    """The same check for the 16/32 model under the 2-stage plan (19 of 20 when shipped)."""
    model = load_model("mnist-lowdiff-2level")
    result = evaluate(model, presets.get("mnist-2stage"), seeds=range(20), batch=20, judge=DigitJudge(classifier), model_name="mnist-lowdiff-2level")
    assert round(result.metrics["accuracy"] * result.n) >= 18, result.summary()


def test_shipped_fast_model_is_mnist_base_on_top_and_draws_the_digits_asked_for(classifier):
    """mnist-fast's top level is mnist-base bit for bit (so mnist-base's plans are its own top
    level's baseline); its preset is a two-level Continue cascade that draws the class asked for."""
    from lowdiff_sched.adapters.edm.stack import LevelStack
    from lowdiff_sched.transitions import Continue

    fast, base = load_model("mnist-fast"), load_model("mnist-base")
    assert isinstance(fast, LevelStack) and fast.level_sizes == (16, 32) and fast.label_dim == 10
    assert fast.nets[1].state_dict().keys() == base.net.state_dict().keys()
    assert all(torch.equal(v, base.net.state_dict()[k]) for k, v in fast.nets[1].state_dict().items())
    assert (HERE / "mnist-fast.safetensors").stat().st_size <= 10e6
    plan = presets.get("mnist-fast").validate(fast)
    assert [s.level for s in plan.stages] == [-2, -1] and isinstance(plan.stages[1].transition, Continue)
    result = evaluate(fast, plan, seeds=range(20), batch=20, judge=DigitJudge(classifier), model_name="mnist-fast")
    assert round(result.metrics["accuracy"] * result.n) >= 18, result.summary()


def test_class_labels_reach_the_network(lowdiff):
    """Same seeds, different classes: different digits (the labels are not ignored)."""
    plan = presets.get("mnist-3stage")
    a = sample_cascade(lowdiff, plan, seeds=[0, 1], extra_args={"class_labels": one_hot(torch.tensor([3, 3]), 10)})
    b = sample_cascade(lowdiff, plan, seeds=[0, 1], extra_args={"class_labels": one_hot(torch.tensor([7, 7]), 10)})
    assert (a - b).abs().mean() > 0.1


# ---- CLI ------------------------------------------------------------------------------------------


def test_sample_with_class_labels_writes_labels_and_a_class_grid(tmp_path):
    out = tmp_path / "digits"
    result = run("sample", "--model", "mnist-lowdiff", "--plan", "mnist-3stage", "--class-labels", "0-4", "--seeds", "0-9",
                 "--batch", "4", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    data = np.load(out / "samples.npz")
    assert data["samples"].shape == (10, 1, 32, 32) and data["seeds"].tolist() == list(range(10))
    assert data["labels"].tolist() == [0, 1, 2, 3, 4] * 2
    from PIL import Image

    assert Image.open(out / "grid.png").size == (5 * 33 + 1, 2 * 33 + 1)  # one column per class


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "mnist-lowdiff", "--class-labels", "10"], "class label 10 is out of range"),
        (["--model", "mnist-lowdiff", "--class-labels", "-1"], "non-negative"),
        (["--model", "gaussian-field", "--plan", "cifar10-3stage", "--class-labels", "0-9"], "unconditional"),
    ],
)
def test_bad_class_labels_exit_2(tmp_path, args, message):
    result = run("sample", *args, "--seeds", "0", "--out", tmp_path, "--no-progress")
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_eval_prints_and_appends_csv(tmp_path):
    table = tmp_path / "table.csv"
    for _ in range(2):
        result = run("eval", "--model", "mnist-base", "--plan", "mnist-base-11", "--n", "10", "--batch", "10", "--csv", table)
        assert result.exit_code == 0, result.output
        assert "fd " in result.stdout and "accuracy " in result.stdout and "NFE 11" in result.stdout
    lines = table.read_text().splitlines()
    assert len(lines) == 3 and lines[0] == "model,plan,n,fd,accuracy,seconds_per_64,nfe,effective_nfe"
    oracle = run("eval", "--model", "gaussian-field", "--plan", "cifar10-3stage", "--n", "4", "--no-progress")
    assert oracle.exit_code == 0 and "fd " in oracle.stdout and "accuracy" not in oracle.stdout  # the exact FD, no classes


def test_append_csv_is_rectangular(tmp_path):
    from lowdiff_sched.evaluate import Evaluation

    row = Evaluation("m", "p", 2, {"fd": 1.0, "accuracy": 0.5}, 0.1, 11, 11)
    append_csv(tmp_path / "t.csv", row)
    append_csv(tmp_path / "t.csv", row)
    assert len({len(line.split(",")) for line in (tmp_path / "t.csv").read_text().splitlines()}) == 1


# ---- training from committed configs, and export --------------------------------------------------


def tiny_config(tmp_path, **changes):
    config = json.loads((CONFIGS / "mnist-base.json").read_text())
    config["init"]["init_kwargs"].update(model_channels=16, attn_resolutions=[], dropout=0.0)
    config.update(out=str(tmp_path / "base"), steps=2, batch=4, checkpoint_every=0, **changes)
    path = tmp_path / "base.json"
    path.write_text(json.dumps(config))
    return path


def test_committed_configs_are_valid():
    """Every committed config is a TrainRecipe (read, not trained), and writes back to the same recipe."""
    from lowdiff_sched.training import TrainConfig, TrainRecipe

    paths = sorted(CONFIGS.glob("*.json"))
    assert len(paths) >= 5
    for path in paths:
        config = json.loads(path.read_text())
        recipe = TrainRecipe.read(path)
        assert recipe.init == config["init"] and recipe.data == config["data"] and recipe.out == config["out"], path
        assert recipe.train["steps"] == config["steps"] and recipe.train["batch"] == config["batch"], path
        assert {k: recipe.train[k] for k in config["train"]} == config["train"], path
        assert TrainRecipe.from_json(recipe.to_json()) == recipe, path
        TrainConfig.from_dict(recipe.train)


def test_train_from_config_then_retrofit_the_run_and_export(tmp_path):
    config = tiny_config(tmp_path)
    result = run("train", "--config", config, "--no-progress")
    assert result.exit_code == 0, result.output
    base = load_run(tmp_path / "base")
    assert isinstance(base, EDMCascade)  # one level at the network's resolution: the network itself
    spec = json.loads((tmp_path / "base" / "model.json").read_text())
    assert spec["backbone"] == "edm" and spec["method"] == "none" and spec["levels"] == [32]

    # command-line options win over the config; a run folder is a valid --init
    result = run("train", "--config", config, "--init", tmp_path / "base", "--levels", "8,16,32", "--out", tmp_path / "ld",
                 "--steps", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    ld = load_run(tmp_path / "ld")
    assert isinstance(ld, LowDiffUNet) and ld.level_sizes == (8, 16, 32)
    assert json.loads((tmp_path / "ld" / "train_config.json").read_text())["steps"] == 1

    # export round trip: fp32 exactly, fp16 to half precision
    for dtype, tol in ((torch.float32, 0.0), (torch.float16, 1e-2)):
        export_run(tmp_path / "ld", tmp_path / "exported", dtype=dtype)
        back = load_exported(tmp_path / "exported.safetensors")
        x, sigma = torch.randn(2, 1, 8, 8), torch.full((2,), 1.5)
        labels = one_hot(torch.tensor([1, 2]), 10)
        with torch.no_grad():
            want, got = (m.denoise(x, sigma, level=0, class_labels=labels) for m in (ld, back))
        assert torch.allclose(want, got, atol=tol, rtol=tol)


def test_train_config_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"init": "x", "data": "mnist", "lerning_rate": 1}))
    result = run("train", "--config", bad)
    assert result.exit_code == 2 and "unknown keys ['lerning_rate']" in result.stderr
    result = run("train", "--data", "mnist")
    assert result.exit_code == 2 and "--init is required" in result.stderr
    config = tiny_config(tmp_path)
    payload = json.loads(config.read_text())
    payload["init"]["init_kwargs"]["no_such_kwarg"] = 1
    config.write_text(json.dumps(payload))
    result = run("train", "--config", config, "--no-progress")
    assert result.exit_code == 2 and "no_such_kwarg" in result.stderr
