"""Bad input at the command line is refused before any work: exit code 2, one stderr line
that names the offending option, and no file created, changed or left behind. Output
folders are never mixed between runs."""

from __future__ import annotations

import fcntl
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from lowdiff_sched.cli.app import app

runner = CliRunner()
TINY = {  # two cheap stages on the oracle's 16 and 32 levels
    "version": 1,
    "name": "tiny",
    "stages": [
        {"level": -2, "sigmas": [80.0, 10.0, 2.0], "sampler": "euler"},
        {"level": -1, "sigmas": [20.0, 1.0, 0.0], "sampler": "euler", "transition": {"type": "condition", "mode": "nearest"}},
    ],
}


def run(*args: object):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [str(a) for a in args])


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root` with a hash of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def assert_refused(result, *needles: str) -> str:  # type: ignore[no-untyped-def]
    """Exit 2 with exactly one stderr line, naming each of `needles`; nothing on stdout."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lowdiff-sched: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert result.stdout == ""
    return lines[0]


@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def write_plan(path: Path, **stage_fields: object) -> Path:
    """TINY with the first stage's fields replaced."""
    path.write_text(json.dumps({**TINY, "stages": [{**TINY["stages"][0], **stage_fields}, TINY["stages"][1]]}))
    return path


# ---- output paths are checked before the work (item 1) ---------------------------------------------


def test_eval_checks_the_csv_before_sampling(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    before = snapshot(tmp_path)
    result = run("eval", "--model", "mnist-base", "--plan", "mnist-base-dpmpp2m-5", "--n", "2", "--batch", "2", "--csv", blocker / "r.csv")
    assert_refused(result, "--csv", "not writable")
    assert snapshot(tmp_path) == before


def test_eval_checks_json_on_a_file_system_that_takes_no_files(tmp_path):
    """Root passes every permission check, so a folder nothing can be written into (here
    /proc) used to be found only after the whole eval: creating a file is tried first."""
    result = run("eval", "--model", "mnist-base", "--plan", "mnist-base-dpmpp2m-5", "--n", "2", "--batch", "2", "--json", "/proc/r.json")
    assert_refused(result, "--json", "not writable", "cannot create a file in '/proc'")


def test_eval_refuses_a_csv_with_other_columns(tmp_path):
    other = tmp_path / "r.csv"
    other.write_text("a,b\n1,2\n")
    result = run("eval", "--model", "mnist-base", "--plan", "mnist-base-dpmpp2m-5", "--n", "2", "--batch", "2", "--csv", other)
    assert_refused(result, "--csv", "other columns")
    assert other.read_text() == "a,b\n1,2\n"


def test_eval_appends_to_its_own_csv_in_a_new_folder(tmp_path):
    csv = tmp_path / "new" / "r.csv"
    for _ in range(2):
        result = run("eval", "--model", "mnist-base", "--plan", "mnist-base-dpmpp2m-5", "--n", "2", "--batch", "2", "--csv", csv)
        assert result.exit_code == 0, result.output
    lines = csv.read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("model,plan,n,fd,accuracy")


def test_tune_steps_checks_out_before_the_search(tmp_path, plan_file):
    blocker = tmp_path / "file"
    blocker.write_text("")
    before = snapshot(tmp_path)
    result = run("tune-steps", "--model", "gaussian-field", "--plan", plan_file, "--reference", plan_file,
                 "--out", blocker / "tuned.json", "--n-calib", "2")
    assert_refused(result, "--out", "not writable")
    assert snapshot(tmp_path) == before


# ---- devices (item 2) ----------------------------------------------------------------------------


# devices this machine lacks: CUDA itself where there is none, an index past the last GPU where there is
BAD_DEVICES = ["tpu9", "cuda:x", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"])


@pytest.mark.parametrize("device", BAD_DEVICES)
@pytest.mark.parametrize("command", [
    ["sample", "--model", "mnist-base", "--out", "OUT"],
    ["eval", "--model", "mnist-base", "--plan", "mnist-base-dpmpp2m-5", "--n", "2"],
    ["tune-steps", "--model", "gaussian-field", "--plan", "PLAN", "--reference", "PLAN", "--out", "OUT/t.json"],
    ["search", "--model", "gaussian-field", "--out", "OUT"],
])
def test_a_device_this_machine_lacks_is_one_line(tmp_path, plan_file, command, device):
    swap = {"OUT": str(tmp_path / "out"), "PLAN": str(plan_file), "OUT/t.json": str(tmp_path / "out" / "t.json")}
    result = run(*[swap.get(a, a) for a in command], "--device", device)
    line = assert_refused(result, "--device", repr(device))
    assert "available here: cpu" in line
    assert not (tmp_path / "out").exists()


# ---- seed and label ranges (item 4) ------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--seeds", "--class-labels"])
def test_huge_ranges_are_refused_before_they_are_expanded(tmp_path, option):
    result = run("sample", "--model", "mnist-base", option, "0-99999999999", "--out", tmp_path / "out")
    assert_refused(result, option, "100,000,000,000 values")
    assert not (tmp_path / "out").exists()


def test_a_seed_past_2_to_the_32_is_refused(tmp_path):
    """Seeds draw as seed mod 2**32 (EDM's convention): 4294967296 would silently be seed 0."""
    result = run("sample", "--model", "mnist-base", "--seeds", "4294967296", "--out", tmp_path / "out")
    assert_refused(result, "seeds must be below 2**32")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("form", [".json", ".safetensors", ""])
def test_an_exported_model_samples_by_either_file_or_its_stem(tmp_path, form):
    """What `export` writes (NAME.json beside NAME.safetensors, as the shipped weights are) is
    a model for sample and info, named by either file or the stem."""
    from lowdiff_sched.weights import weight_path

    stem = str(weight_path("mnist-base.json"))[: -len(".json")]
    result = run("sample", "--model", stem + form, "--plan", "mnist-base-dpmpp2m-5", "--seeds", "0-1", "--out", tmp_path / "out",
                 "--no-progress")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "000001.png").is_file()
    info = run("info", stem + form)
    assert info.exit_code == 0 and "parameters" in info.stdout.lower(), info.output


# ---- one run per output folder (item 6) ---------------------------------------------------------------


def sample_digits(out: Path, seeds: str, *extra: str):  # type: ignore[no-untyped-def]
    return run("sample", "--model", "mnist-base", "--plan", "mnist-base-dpmpp2m-5", "--seeds", seeds, "--out", out, "--no-progress", *extra)


def test_a_used_out_folder_is_refused_and_overwrite_replaces_the_run(tmp_path):
    out = tmp_path / "d"
    assert sample_digits(out, "0-5").exit_code == 0
    (out / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    assert_refused(sample_digits(out, "0-1"), "--out", "not empty", "--overwrite")
    assert snapshot(tmp_path) == before
    result = sample_digits(out, "0-1", "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "grid.png", "notes.txt", "samples.npz"]
    assert np.load(out / "samples.npz")["seeds"].tolist() == [0, 1]


def test_a_folder_another_run_writes_to_is_refused(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    with open(out / ".lowdiff-sched.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running `sample` holds
        assert_refused(sample_digits(out, "0", "--overwrite"), "--out", "another run")
    assert sample_digits(out, "0", "--overwrite").exit_code == 0  # a dead run's lock file does not block
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "grid.png", "samples.npz"]


# ---- plans are checked when loaded (item 7) ----------------------------------------------------------


@pytest.mark.parametrize("kwargs, needles", [
    ({"s_churn": "lots"}, ["stage 0", "s_churn", "must be a number"]),
    ({"nonsense": 3}, ["stage 0", "takes no 'nonsense'"]),
    ({"s_noise": -1.0}, ["stage 0", "s_noise", "non-negative"]),
])
def test_bad_sampler_kwargs_are_named_with_their_stage(tmp_path, kwargs, needles):
    path = write_plan(tmp_path / "bad.json", sampler_kwargs=kwargs)
    assert_refused(run("plan", path), *needles)
    assert_refused(run("sample", "--model", "gaussian-field", "--plan", path, "--out", tmp_path / "out"), *needles)
    assert not (tmp_path / "out").exists()


# ---- errors found with the model loaded leave no --out behind (items 8, 14) ------------------------------


def bad_plans(tmp_path: Path) -> dict[str, Path]:
    outside = write_plan(tmp_path / "outside.json", level=-4)
    cont = tmp_path / "continue.json"  # Continue at 16 -> 32 must start at 2 x the previous stage's last sigma
    cont.write_text(json.dumps({**TINY, "stages": [TINY["stages"][0], {**TINY["stages"][1], "transition": {"type": "continue"}}]}))
    return {"outside": outside, "continue": cont}


@pytest.mark.parametrize("case, args, needles", [
    ("labels", ["--model", "mnist-base", "--class-labels", "11"], ["--class-labels", "out of range"]),
    ("level", ["--model", "gaussian-field", "--plan", "outside"], ["--plan", "level -4 is outside"]),
    ("continue", ["--model", "gaussian-field", "--plan", "continue"], ["--plan", "continue"]),
    ("run", ["--model", "EMPTY"], ["EMPTY"]),
])
def test_errors_found_after_loading_the_model_create_nothing(tmp_path, case, args, needles):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    swap = {**{k: str(v) for k, v in bad_plans(tmp_path).items()}, "EMPTY": str(empty)}
    result = run("sample", *[swap.get(a, a) for a in args], "--out", tmp_path / "new" / "out", "--no-progress")
    assert_refused(result, *[swap.get(n, n) for n in needles])
    assert not (tmp_path / "new").exists()


def test_a_cascade_plan_on_a_plain_dit_checkpoint_says_how_to_fine_tune(tmp_path):
    from lowdiff_sched.adapters.dit.weights import save_dit
    from lowdiff_sched.adapters.dit.networks import LightningDiT
    from lowdiff_sched.adapters.dit.sizes import size_config

    config = size_config("dit-s1")
    save_dit(tmp_path / "plain.pt", LightningDiT(config), config)
    result = run("sample", "--model", "dit-s1", "--ckpt", tmp_path / "plain.pt", "--plan", "imagenet256-dit-b1", "--out", tmp_path / "out")
    assert_refused(result, "--plan imagenet256-dit-b1", "holds the unmodified network", "levels 8,16",
                   f"lowdiff-sched train --model dit-s1 --init {tmp_path / 'plain.pt'} --data LATENTS --levels 8,16",
                   "--plan imagenet256-dit-b1-baseline-100")
    assert not (tmp_path / "out").exists()


# ---- --batch (item 12) ---------------------------------------------------------------------------------


def test_batch_changes_no_image_and_the_help_says_what_may_differ(tmp_path):
    for batch in (1, 3):
        assert sample_digits(tmp_path / str(batch), "0-5", "--batch", str(batch)).exit_code == 0
    pngs = sorted(p.name for p in (tmp_path / "1").glob("0*.png"))
    assert len(pngs) == 6 and all((tmp_path / "1" / n).read_bytes() == (tmp_path / "3" / n).read_bytes() for n in pngs)
    a, b = (np.load(tmp_path / str(batch) / "samples.npz")["samples"] for batch in (1, 3))
    assert np.abs(a - b).max() <= 1e-5
    batch_help = next(p.help for p in typer.main.get_command(app).commands["sample"].params if p.name == "batch")
    assert "do not depend on it" not in batch_help and "samples.npz may differ" in batch_help
