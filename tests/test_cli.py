"""The `lowdiff-sched` command: outputs, round trips through files, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lowdiff_sched import presets
from lowdiff_sched.cli.app import app, parse_int_ranges
from lowdiff_sched.outputs import to_uint8

runner = CliRunner()
# A cheap plan for the oracle's 8/16/32 levels: few steps, so the CLI tests stay fast.
SMALL_PLAN = {
    "version": 1,
    "name": "small",
    "stages": [
        {"level": -2, "sigmas": [80.0, 20.0, 5.0], "sampler": "heun"},
        {"level": -1, "sigmas": [50.0, 5.0, 0.5, 0.0], "sampler": "euler", "transition": {"type": "condition", "mode": "nearest"}},
    ],
}


@pytest.fixture
def small_plan(tmp_path):
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL_PLAN))
    return path


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_sample_writes_pngs_grid_and_npz(tmp_path, small_plan):
    out = tmp_path / "out"
    result = run("sample", "--model", "gaussian-field", "--plan", small_plan, "--seeds", "3,0-2", "--batch", "3", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "4 samples" in result.stdout and str(out) in result.stdout
    data = np.load(out / "samples.npz")
    assert data["samples"].shape == (4, 3, 32, 32) and data["seeds"].tolist() == [3, 0, 1, 2]
    assert sorted(p.name for p in out.glob("*.png")) == ["000000.png", "000001.png", "000002.png", "000003.png", "grid.png"]
    import torch

    png = np.asarray(Image.open(out / "000003.png"))
    assert np.array_equal(png, to_uint8(torch.from_numpy(data["samples"][:1]))[0])
    assert not list(out.glob("*.tmp*"))  # no temporary files left behind
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((out / "grid.png").stat().st_mode) == 0o666 & ~mask

    # batch size does not change any sample
    again = tmp_path / "again"
    assert run("sample", "--model", "gaussian-field", "--plan", small_plan, "--seeds", "0-3", "--batch", "1", "--out", again, "--no-progress").exit_code == 0
    by_seed = dict(zip(data["seeds"].tolist(), data["samples"]))
    other = np.load(again / "samples.npz")
    for seed, sample in zip(other["seeds"].tolist(), other["samples"]):
        np.testing.assert_allclose(sample, by_seed[seed], rtol=0, atol=1e-6)


def test_plan_prints_table_and_writes_plot_and_json(tmp_path):
    plot, plan_json = tmp_path / "plan.png", tmp_path / "plan.json"
    result = run("plan", "cifar10-3stage", "--plot", plot, "--json", plan_json)
    assert result.exit_code == 0, result.output
    assert "total NFE 47, effective NFE 22" in result.stdout
    assert "heun" in result.stdout and "condition(nearest)" in result.stdout
    assert Image.open(plot).format == "PNG"
    assert presets.load_plan(str(plan_json)) == presets.get("cifar10-3stage")
    sized = run("plan", "ffhq64-4stage", "--sizes", "8,16,32,64", "--latency-ratios", "0.1,0.2,0.4")
    assert "64x64" in sized.stdout and "effective NFE 55" in sized.stdout  # ceil(2.2 + 4.4 + 8.8) + 39


def test_presets_and_models_list():
    listing = run("presets").stdout
    for name in presets.names():
        assert name in listing
    assert "gaussian-field" in run("models").stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["sample", "--plan", "no-such-plan"], "neither a preset"),
        (["sample", "--seeds", "5-2"], "range '5-2' is empty"),
        (["sample", "--seeds", "a,b"], "not a list of ints"),
        (["sample", "--model", "nope"], "unknown model 'nope'"),
        (["sample", "--batch", "0"], "--batch must be a positive int"),
        (["plan", "nope"], "neither a preset"),
        (["plan", "cifar10-3stage", "--latency-ratios", "x"], "not a comma-separated list"),
        (["plan", "cifar10-3stage", "--sizes", "8,16"], "--sizes needs at least 3"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_bad_plan_files_and_out_dirs(tmp_path, small_plan):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = run("plan", broken)
    assert result.exit_code == 2 and "invalid plan file" in result.stderr
    bad_stage = tmp_path / "bad.json"
    bad_stage.write_text(json.dumps({**SMALL_PLAN, "stages": [{**SMALL_PLAN["stages"][0], "sigmas": [1.0, 2.0, 0.0]}]}))
    result = run("plan", bad_stage)
    assert result.exit_code == 2 and "stage 0" in result.stderr and "strictly decreasing" in result.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("sample", "--model", "gaussian-field", "--plan", small_plan, "--seeds", "0", "--out", blocker / "sub")
    assert result.exit_code == 2 and "not writable" in result.stderr


def test_help_shows_examples():
    for command in ("sample", "plan", "presets", "models", "train", "info", "eval", "export", "tune-steps"):
        result = run(command, "--help")
        assert result.exit_code == 0 and "Example" in result.stdout


def test_parse_int_ranges():
    assert parse_int_ranges("0-3,7,9-10") == [0, 1, 2, 3, 7, 9, 10]
    with pytest.raises(ValueError, match="non-negative|not a list"):
        parse_int_ranges("-4")


def test_module_entry_point_and_fast_import():
    result = subprocess.run([sys.executable, "-m", "lowdiff_sched.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "sample" in result.stdout
    probe = "import sys, lowdiff_sched; print('k_diffusion' in sys.modules, 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["False", "False"]


def test_help_keeps_the_bracketed_defaults():
    """Rich would read "[the model's default plan]" as markup and drop it: the help shows it."""
    def shown(command: str) -> str:
        return " ".join(run(command, "--help").stdout.replace("\u2502", " ").split())  # without the panel's borders

    assert "[the model's default plan]" in shown("sample") and "[all classes]" in shown("sample")
    assert "[runs/lowdiff]" in shown("train")
