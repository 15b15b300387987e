"""TrainRecipe: a training run as data. JSON round trip, one precedence rule (library
defaults < the file < the command line, every override reported), build() giving what
`lowdiff-sched train` built before the recipe existed, and Python training equal to the CLI's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lowdiff_sched.cli.app import app
from lowdiff_sched.runs import spec_of
from lowdiff_sched.training import TrainConfig, TrainRecipe, latest_checkpoint, load_checkpoint

runner = CliRunner()
TINY_EDM = {"img_resolution": 8, "img_channels": 1, "model_type": "SongUNet", "model_channels": 16, "channel_mult": [1, 2],
            "num_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
# What `train` gave a fresh tiny network before TrainRecipe (the config of the old CLI, field by field).
OLD_CLI_CONFIG = {
    "steps": 2, "batch": 4, "lr": 0.001, "ema_halflife_kimg": 500.0, "ema_rampup_ratio": 0.05, "lr_rampup_kimg": 2,
    "grad_clip": None, "mixed_precision": "no", "checkpoint_every": 0, "keep_checkpoints": 2, "seed": 0, "loss": "edm",
    "label_dim": 0, "levels": None, "log_every": 50, "log": "jsonl", "workers": 0, "alternate_levels": False,
    "distill": False, "loss_kwargs": None,
}


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def recipe_file(tmp_path, images, **changes):
    data = {"description": "tiny", "init": {"class_name": "EDMPrecond", "init_kwargs": TINY_EDM}, "data": str(images),
            "levels": [4, 8], "out": str(tmp_path / "run"), "batch": 4, "steps": 2, "checkpoint_every": 0,
            "train": {"lr_rampup_kimg": 2}, **changes}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(data))
    return path


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- data in, data out -------------------------------------------------------------------------


def test_json_round_trip_and_the_file_shortcuts(tmp_path, images):
    recipe = TrainRecipe.read(recipe_file(tmp_path, images, method="c2f", ema=250, seed=3))
    assert recipe.train == {"batch": 4, "steps": 2, "checkpoint_every": 0, "ema_halflife_kimg": 250, "seed": 3, "lr_rampup_kimg": 2}
    assert recipe.levels == [4, 8] and recipe.method == "c2f" and recipe.description == "tiny"
    assert TrainRecipe.from_json(recipe.to_json()) == recipe
    assert "ema" not in recipe.to_dict() and recipe.to_dict()["train"]["ema_halflife_kimg"] == 250  # one canonical form
    dit = TrainRecipe(model="dit-s1", data=tmp_path / "latents.npz", levels="8,16", latent_stats=tmp_path / "stats.pt")
    assert dit.levels == [8, 16] and dit.data == str(tmp_path / "latents.npz")
    assert TrainRecipe.from_json(dit.to_json()) == dit
    assert TrainRecipe().to_dict() == {}


@pytest.mark.parametrize("data, names", [
    ({"init": "x", "data": "mnist", "lerning_rate": 1, "stepz": 2}, ["'lerning_rate'", "'stepz'"]),
    ({"train": {"lr": 0.1, "stepz": 2}}, ["'stepz'"]),
    ({"train": {"label_dim": 10}}, ["label_dim", "derived"]),
    ({"steps": 10, "train": {"steps": 20}}, ["steps", "10", "20"]),
    ({"levels": "a,b"}, ["TrainRecipe.levels"]),
    ({"method": "fast"}, ["TrainRecipe.method", "fast"]),
    ({"model": "dit-q9"}, ["TrainRecipe.model", "dit-s1"]),
    ({"train": {"steps": -1}}, ["TrainConfig.steps"]),
    ({"init": {"class_name": "EDMPrecond"}}, ["TrainRecipe.init", "init_kwargs"]),
    ({"train": 3}, ['"train"']),
])
def test_bad_recipes_are_one_line_errors_naming_the_field(data, names):
    with pytest.raises(ValueError) as info:
        TrainRecipe.from_dict(data)
    message = str(info.value)
    assert "\n" not in message and all(name in message for name in names), message


def test_a_file_error_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"init": "x", "lerning_rate": 1}')
    with pytest.raises(ValueError, match=r"bad\.json: unknown keys \['lerning_rate'\]"):
        TrainRecipe.read(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        TrainRecipe.read(path)


# ---- precedence: library defaults < the file < the command line -----------------------------------


def test_options_not_given_keep_the_file_and_given_ones_win_with_a_note(tmp_path, images):
    recipe = TrainRecipe.read(recipe_file(tmp_path, images))
    same, notes = recipe.with_options(init=None, steps=None, levels=None, lr=None, log=None)
    assert same == recipe and notes == []
    changed, notes = recipe.with_options(steps=10, levels=[8], lr=0.002, out=tmp_path / "elsewhere", batch=4)
    assert changed.train["steps"] == 10 and changed.levels == [8] and changed.train["lr"] == 0.002
    assert changed.out == str(tmp_path / "elsewhere") and changed.train["lr_rampup_kimg"] == 2
    assert notes == [  # lr was not in the file (a default) and batch is the file's own: no note
        "--steps 10 overrides the config file's 2",
        "--levels 8 overrides the config file's 4,8",
        f"--out {tmp_path / 'elsewhere'} overrides the config file's {tmp_path / 'run'}",
    ]


def test_an_option_error_names_the_option():
    with pytest.raises(ValueError, match=r"^--log: .*'bogus'"):
        TrainRecipe().with_options(log="bogus")
    with pytest.raises(ValueError, match=r"^--steps: TrainConfig\.steps"):
        TrainRecipe().with_options(steps=-3)
    with pytest.raises(ValueError, match=r"unknown train options \['stepz'\]"):
        TrainRecipe().with_options(stepz=3)


def test_the_file_train_section_is_not_overridden_by_cli_defaults(tmp_path, images):
    """Before TrainRecipe, `train` put its own defaults (steps 1000, checkpoint_every 500 ...)
    over a file's "train" section; now only options the user gives replace the file's values."""
    path = recipe_file(tmp_path, images, batch=None, steps=None, checkpoint_every=None,
                       train={"steps": 3, "batch": 2, "checkpoint_every": 2, "lr": 0.002, "log_every": 1})
    payload = {k: v for k, v in json.loads(path.read_text()).items() if v is not None}
    path.write_text(json.dumps(payload))
    result = runner.invoke(app, ["train", "--config", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "overrides" not in result.stderr
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert (saved["steps"], saved["batch"], saved["checkpoint_every"], saved["lr"]) == (3, 2, 2, 0.002)

    result = runner.invoke(app, ["train", "--config", str(path), "--steps", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "lowdiff-sched: note: --steps 4 overrides the config file's 3" in result.stderr
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["steps"] == 4


def test_defaults_are_trainconfigs():
    """One default per field: what neither the file nor the command line sets is TrainConfig's."""
    assert TrainConfig().checkpoint_every == 1000 and (TrainConfig().steps, TrainConfig().batch) == (1000, 64)
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "300", "TERMINAL_WIDTH": "300"})
    assert "[1000]" in " ".join(result.stdout.split()) and "[500]" in result.stdout  # checkpoint_every, EMA half-life


# ---- build(): what the CLI built -------------------------------------------------------------------


def test_build_a_fresh_edm_network_as_the_cli_did(tmp_path, images):
    from lowdiff_sched.adapters.edm.lowdiff import LowDiffUNet, build_network

    recipe = TrainRecipe.read(recipe_file(tmp_path, images))
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    cascade, dataset, config = recipe.build()
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched
    assert config.to_dict() == OLD_CLI_CONFIG and len(dataset) == 8

    torch.manual_seed(0)  # the run's seed: a fresh network is built from it
    expected = LowDiffUNet.from_edm(build_network("EDMPrecond", TINY_EDM), (4, 8))
    assert spec_of(cascade) == spec_of(expected)
    assert same_weights(cascade.net.state_dict(), expected.net.state_dict())
    again, _, _ = recipe.build()
    assert same_weights(cascade.state_dict(), again.state_dict())  # the retrofit's new layers too: a function of the seed

    distill, _, config = TrainRecipe.from_dict({**recipe.to_dict(), "method": "distill"}).build()
    assert config.distill and not config.alternate_levels and distill.top_frozen
    c2f, _, config = TrainRecipe.from_dict({**recipe.to_dict(), "method": "c2f"}).build()
    with pytest.raises(ValueError, match=r"distill needs a level below the network's own, got levels \[8\]"):
        TrainRecipe.from_dict({**recipe.to_dict(), "method": "distill", "levels": [8]}).build()
    assert config.alternate_levels and type(c2f).__name__ == "C2FUNet"


def test_build_a_fresh_dit_as_the_cli_did(tmp_path):
    from safetensors.numpy import save_file

    from lowdiff_sched.adapters.dit.cascade import LowDiffDiT
    from lowdiff_sched.adapters.dit.networks import LightningDiT
    from lowdiff_sched.adapters.dit.sizes import size_config

    g = np.random.default_rng(0)
    save_file({"latents": g.standard_normal((4, 32, 16, 16)).astype(np.float32), "labels": np.arange(4) % 4},
              str(tmp_path / "latents.safetensors"))
    recipe = TrainRecipe(model="dit-s1", data=str(tmp_path / "latents.safetensors"), train={"steps": 1, "batch": 4})
    cascade, dataset, config = recipe.build()
    want = {**OLD_CLI_CONFIG, "steps": 1, "lr_rampup_kimg": 0.0, "checkpoint_every": 1000, "loss": "flow", "label_dim": 1000}
    assert config.to_dict() == want  # checkpoint_every: TrainConfig's 1000 (the CLI's own 500 before)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        expected = LowDiffDiT(LightningDiT(size_config("dit-s1")), (8, 16))
    assert spec_of(cascade) == spec_of(expected) and same_weights(cascade.state_dict(), expected.state_dict())
    assert not cascade.net.pos_embed.requires_grad and len(dataset) == 4


def test_build_checks_what_a_run_needs(tmp_path, images):
    with pytest.raises(ValueError, match="--init is required"):
        TrainRecipe(data=str(images)).build()
    with pytest.raises(ValueError, match="--data is required"):
        TrainRecipe(model="dit-s1").build()
    with pytest.raises(ValueError, match="--latent-stats is for latent"):
        TrainRecipe(init="mnist-base", data=str(images), latent_stats="stats.pt").build()


# ---- training from Python is training from the command line ----------------------------------------


def test_training_a_recipe_from_python_equals_the_cli(tmp_path, images):
    path = recipe_file(tmp_path, images, seed=5)
    result = runner.invoke(app, ["train", "--config", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output

    torch.manual_seed(99)  # whatever the caller's RNG holds
    recipe, _ = TrainRecipe.read(path).with_options(out=tmp_path / "python")
    done = recipe.run(progress=False)
    assert done.out_dir == tmp_path / "python" and done.config.steps == 2
    cli, py = (load_checkpoint(latest_checkpoint(d)) for d in (tmp_path / "run", tmp_path / "python"))
    assert cli["step"] == py["step"] == 2
    assert same_weights(cli["model"], py["model"]) and same_weights(cli["ema"], py["ema"])
    assert (tmp_path / "run" / "model.json").read_text() == (tmp_path / "python" / "model.json").read_text()
    assert same_weights(done.model.state_dict(), py["model"])


def test_a_run_folder_of_an_older_spec_version_resumes_and_another_model_is_refused(tmp_path, images):
    from test_runs import version_1

    path = recipe_file(tmp_path, images)
    recipe = TrainRecipe.read(path)
    recipe.with_options(steps=1)[0].run(progress=False)
    spec_file = tmp_path / "run" / "model.json"
    spec_file.write_text(json.dumps(version_1(json.loads(spec_file.read_text()))))  # as an older lowdiff-sched wrote it
    done = recipe.run(progress=False)
    assert load_checkpoint(latest_checkpoint(done.out_dir))["step"] == 2
    with pytest.raises(ValueError, match="holds a run of a different model"):
        recipe.with_options(levels=[8])[0].run(progress=False)


def test_a_run_that_fails_before_its_first_checkpoint_does_not_block_the_corrected_one(tmp_path, images):
    """A network of 3 channels on 1-channel images fails once training starts; its folder is
    left as it was (no model.json claiming a run), and the corrected config then trains
    into the same --out (it used to say the folder "holds a run of a different model")."""
    bad = recipe_file(tmp_path, images, init={"class_name": "EDMPrecond", "init_kwargs": {**TINY_EDM, "img_channels": 3}})
    result = runner.invoke(app, ["train", "--config", str(bad), "--no-progress"])
    assert result.exit_code == 2 and "dataset images have shape (1, 8, 8)" in result.stderr, result.output
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.json").write_text(json.dumps({"format": "stale, from a run that never saved a step"}))
    good = recipe_file(tmp_path, images)
    result = runner.invoke(app, ["train", "--config", str(good), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert latest_checkpoint(tmp_path / "run") is not None
