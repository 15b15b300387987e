"""Fuzzing `sample`, `plan`, `search`, `eval`, `ref-stats` and `train --config` with generated
plan and recipe files and option strings: every run ends with exit 0 and its files, or exit 2,
one stderr line and nothing written or changed; never a traceback."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lowdiff_sched.cli.app import app
from lowdiff_sched.samplers import SAMPLER_NAMES

runner = CliRunner()

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(-3, 100),
    st.sampled_from([80.0, 20.0, 5.0, 1.0, 0.5, 0.0]),
)
json_leaf = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=6))
json_any = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)), max_leaves=6)


def sometimes(draw: st.DrawFn, valid: st.SearchStrategy, wild: st.SearchStrategy, p_wild: int = 12) -> object:
    """Mostly `valid` (so runs get past the first check), one time in `p_wild` `wild`."""
    return draw(wild if draw(st.integers(1, p_wild)) == p_wild else valid)  # hypothesis favours small ints


@st.composite
def schedules(draw: st.DrawFn, last: bool) -> list[float]:
    """A decreasing schedule, ending at 0 for the last stage and above it before."""
    values = sorted(draw(st.lists(st.floats(0.05, 80.0), min_size=1 if last else 2, max_size=3, unique=True)), reverse=True)
    return values + [0.0] if last else values


@st.composite
def stages(draw: st.DrawFn, index: int, n: int) -> object:
    stage: dict[str, object] = {
        "level": sometimes(draw, st.just(index - n), st.one_of(st.integers(-4, 3), json_leaf)),
        "sigmas": sometimes(draw, schedules(index == n - 1), st.one_of(json_any, st.lists(numbers, max_size=4))),
    }
    if draw(st.booleans()):
        stage["sampler"] = sometimes(draw, st.sampled_from(["euler", "heun", "dpmpp_2m", "euler_ancestral", "lms"]),
                                     st.one_of(st.sampled_from(SAMPLER_NAMES), json_leaf))
    if draw(st.integers(1, 6)) == 6:
        keys = st.sampled_from(["s_churn", "s_noise", "eta", "order", "solver_type", "r", "nonsense"])
        stage["sampler_kwargs"] = sometimes(draw, st.dictionaries(keys, json_leaf, max_size=2), json_leaf, 3)
    if index:
        transition: dict[str, object] = {"type": sometimes(draw, st.sampled_from(["condition", "continue", "renoise"]),
                                                           st.one_of(st.just("residual"), json_leaf))}
        if draw(st.integers(1, 4)) == 4:
            transition[draw(st.sampled_from(["mode", "rtol", "history", "x"]))] = draw(json_leaf)
        stage["transition"] = sometimes(draw, st.just(transition), json_leaf, 8)
    if draw(st.integers(1, 12)) == 12:
        stage[draw(st.sampled_from(["dtype", "denoiser_kwargs", "extra"]))] = draw(json_any)
    return stage


@st.composite
def plans(draw: st.DrawFn) -> object:
    if draw(st.integers(1, 20)) == 20:
        return draw(json_any)
    n = draw(st.integers(1, 3))
    plan: dict[str, object] = {"stages": [draw(stages(i, n)) for i in range(n)]}
    if draw(st.booleans()):
        plan["version"] = sometimes(draw, st.just(1), json_leaf)
    if draw(st.booleans()):
        plan["name"] = sometimes(draw, st.text(max_size=8), json_leaf)
    return plan


wild_ints = st.one_of(st.sampled_from(["1,1", "-1", "3-1", "0-99999999999", "", "a", "0-", "1e3", "10"]),
                      st.text(alphabet="012-, x", max_size=4))  # small: a valid range is sampled
int_lists = st.one_of(st.sampled_from(["0", "0-2", "2,0", "5"]), st.sampled_from(["0", "0-2"]), wild_ints)


def check_exit(result) -> None:  # type: ignore[no-untyped-def]
    """Exit 0, or exit 2 with one stderr line; never a traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 2), result.output
    event(f"exit {result.exit_code}" + (": " + re.sub(r"'/tmp/[^']*'", "PATH", result.stderr)[22:60] if result.exit_code else ""))
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lowdiff-sched: error: "), result.stderr


def check(result, out: Path, existed: bool) -> None:  # type: ignore[no-untyped-def]
    check_exit(result)
    if result.exit_code == 2:
        assert out.exists() == existed and not (existed and any(out.iterdir())), "a refused run left files"
    assert not list(out.parent.rglob("*.tmp*")), "temporary files left behind"


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans(), seeds=int_lists, batch=st.one_of(st.integers(1, 3), st.integers(1, 3), st.integers(-1, 4)),
       labels=st.one_of(st.none(), st.none(), st.none(), int_lists),
       existing_out=st.booleans())
def test_sample_fuzz(plan, seeds, batch, labels, existing_out):
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "plan.json", Path(tmp) / "out"
        path.write_text(json.dumps(plan))
        if existing_out:
            out.mkdir()
        args = ["sample", "--model", "gaussian-field", "--plan", str(path), "--seeds", seeds, "--batch", str(batch),
                "--out", str(out), "--no-progress", *(["--class-labels", labels] if labels is not None else [])]
        result = runner.invoke(app, args)
        check(result, out, existing_out)
        if result.exit_code == 0:
            written = sorted(p.name for p in out.iterdir())
            pngs = [n for n in written if n[0].isdigit()]
            assert written == sorted([*pngs, "grid.png", "samples.npz"]) and len(pngs) == len(set(pngs)) > 0


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans(), sizes=st.one_of(st.none(), st.sampled_from(["8,16,32", "4,8", "0,1", "x", "16"]), st.text(max_size=6)),
       ratios=st.one_of(st.none(), st.sampled_from(["0.25", "0.1,0.3", "-1", "nan", "1,1,1"]), st.text(max_size=6)),
       write=st.booleans())
def test_plan_fuzz(plan, sizes, ratios, write):
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "plan.json", Path(tmp) / "out"
        path.write_text(json.dumps(plan))
        args = ["plan", str(path), *(["--sizes", sizes] if sizes is not None else []),
                *(["--latency-ratios", ratios] if ratios is not None else []),
                *(["--json", str(out / "copy.json")] if write else [])]
        result = runner.invoke(app, args)
        check(result, out, False)
        if result.exit_code == 0 and write:
            assert json.loads((out / "copy.json").read_text())["stages"]


# ---- search, eval, ref-stats and train --config (issue 21) -----------------------------------------------


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def check_unchanged_on_refusal(result, root: Path, before: dict[str, bytes]) -> None:  # type: ignore[no-untyped-def]
    """Exit 0, or exit 2 with one stderr line and every file under `root` as it was."""
    check_exit(result)
    if result.exit_code == 2:
        assert snapshot(root) == before, "a refused run wrote or changed files"
    assert not list(root.rglob("*.tmp*")), "temporary files left behind"


def option(draw: st.DrawFn, name: str, valid: st.SearchStrategy, wild: st.SearchStrategy = st.text(max_size=5)) -> list[str]:
    """[], or [name, value] with a mostly valid value."""
    if draw(st.integers(1, 3)) == 1:
        return []
    return [name, str(sometimes(draw, valid, wild, 8))]


@st.composite
def search_options(draw: st.DrawFn) -> list[str]:
    return [
        *option(draw, "--nfe", st.sampled_from(["2-3", "3-3", "2"]), st.sampled_from(["0-2", "3-1", "x", "-1"])),
        *option(draw, "--samplers", st.sampled_from(["euler", "dpmpp_2m", "euler,heun"]), st.sampled_from(["", "nope", "dpm_fast"])),
        *option(draw, "--cascade-samplers", st.sampled_from(["euler", "dpmpp_2m"]), st.sampled_from(["", "nope"])),
        *option(draw, "--cascade-steps", st.integers(2, 3), st.integers(-1, 1)),
        *option(draw, "--stages", st.integers(2, 3), st.integers(-1, 5)),
        *option(draw, "--rhos", st.sampled_from(["7", "5,7"]), st.sampled_from(["0", "-1", "nan", "x"])),
        *option(draw, "--sigma-mins", st.sampled_from(["0.002", "0.02"]), st.sampled_from(["0", "100", "x"])),
        *option(draw, "--n-calib", st.integers(2, 3), st.integers(-1, 1)),
        *option(draw, "--seed", st.integers(0, 3), st.integers(-3, -1)),
        *option(draw, "--bootstrap", st.integers(0, 2), st.integers(-2, -1)),
        *option(draw, "--target", st.sampled_from(["fd<=1e9", "rmse<=10"]), st.sampled_from(["fd=3", "nope<=1", "fd<=x"])),
        *option(draw, "--budget-minutes", st.sampled_from(["5"]), st.sampled_from(["0", "-1", "nan", "1e-9"])),
        *option(draw, "--cost", st.just("latency"), st.sampled_from(["flops", "time"])),
    ]


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(options=search_options(), existing=st.sampled_from([None, "empty", "junk-settings", "folder-candidates"]))
def test_search_fuzz(options, existing):
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp), Path(tmp) / "out"
        if existing is not None:
            out.mkdir()
        if existing == "junk-settings":
            (out / "search.json").write_text("{not json")
        if existing == "folder-candidates":
            (out / "candidates.jsonl").mkdir()
        before = snapshot(root)
        args = ["search", "--model", "gaussian-field", "--n-judge", "2", "--batch", "2", "--n-calib", "2", "--nfe", "2-2",
                "--samplers", "euler", "--cascade-samplers", "euler", "--cascade-steps", "2", "--bootstrap", "0",
                *options, "--out", str(out)]
        result = runner.invoke(app, args)
        if result.exit_code == 1:  # an unmet --target or a budget that measured nothing: said on stderr
            assert "Traceback" not in result.output and result.stderr.strip()
            return
        check_unchanged_on_refusal(result, root, before)
        if result.exit_code == 0:
            assert {"search.json", "candidates.jsonl", "front.md", "results.csv"} <= {p.name for p in out.iterdir()}


reference_files = st.sampled_from(["none", "none", "none", "junk", "npy", "nan", "small", "string"])


@st.composite
def eval_numbers(draw: st.DrawFn) -> tuple[object, object, object]:
    return (sometimes(draw, st.integers(4, 6), st.integers(-1, 3), 6), sometimes(draw, st.integers(2, 4), st.integers(-1, 0), 6),
            sometimes(draw, st.integers(0, 5), st.sampled_from([-1, 2**32, 2**32 - 2]), 6))


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(numbers=eval_numbers(), plan=st.one_of(st.sampled_from(["cifar10-3stage", "cifar10-edm-35"]), plans()),
       ref=reference_files, outputs=st.sampled_from(["none", "json", "csv", "json-in-file", "csv-other-columns"]))
def test_eval_fuzz(numbers, plan, ref, outputs):
    n, batch, seed_start = numbers
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if isinstance(plan, str):
            plan_arg = plan
        else:
            (root / "plan.json").write_text(json.dumps(plan))
            plan_arg = str(root / "plan.json")
        ref_args: list[str] = []
        if ref != "none":
            path = root / ("ref.npy" if ref == "npy" else "ref.npz")
            if ref == "junk":
                path.write_bytes(b"junk")
            elif ref == "npy":
                np.save(path, np.zeros(4))
            else:
                mu = np.zeros(2048) if ref != "small" else np.zeros(3)
                sigma = np.eye(len(mu))
                arrays = {"mu": mu.astype(str) if ref == "string" else mu, "sigma": sigma,
                          **({"features": np.full((3, 2048), np.nan)} if ref == "nan" else {})}
                np.savez(path, **arrays)
            ref_args = ["--ref", str(path), "--inception-weights", str(root / "no-weights.pth")]
        if outputs == "json-in-file":
            (root / "file").write_text("")
        if outputs == "csv-other-columns":
            (root / "r.csv").write_text("a,b\n1,2\n")
        out_args = {"none": [], "json": ["--json", str(root / "r.json")], "csv": ["--csv", str(root / "r.csv")],
                    "json-in-file": ["--json", str(root / "file" / "r.json")], "csv-other-columns": ["--csv", str(root / "r.csv")]}[outputs]
        before = snapshot(root)
        args = ["eval", "--model", "gaussian-field", "--plan", plan_arg, "--n", str(n), "--batch", str(batch),
                "--seed-start", str(seed_start), "--no-progress", *ref_args, *out_args]
        result = runner.invoke(app, args)
        check_unchanged_on_refusal(result, root, before)
        if result.exit_code == 0 and outputs == "json":
            json.loads((root / "r.json").read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.sampled_from(["mnist:heldout", "folder", "missing", "junk-zip", "mnist:nope"]),
       n=st.one_of(st.integers(2, 4), st.integers(-1, 1)), batch=st.one_of(st.integers(1, 3), st.integers(-1, 0)),
       weights=st.sampled_from(["random", "missing", "junk"]), out=st.sampled_from(["new", "in-file", "folder"]),
       keep=st.booleans())
def test_ref_stats_fuzz(random_inception_weights, data, n, batch, weights, out, keep):
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data_arg = data
        if data == "folder":
            (root / "images").mkdir()
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / "images" / f"{i}.png")
            data_arg = str(root / "images")
        elif data == "missing":
            data_arg = str(root / "nope.zip")
        elif data == "junk-zip":
            (root / "d.zip").write_bytes(b"PK junk")
            data_arg = str(root / "d.zip")
        weights_arg = {"random": str(random_inception_weights), "missing": str(root / "w.pth"), "junk": str(root / "junk.pth")}[weights]
        (root / "junk.pth").write_bytes(b"hello")
        (root / "file").write_text("")
        (root / "dir.npz").mkdir()
        out_arg = {"new": str(root / "s.npz"), "in-file": str(root / "file" / "s.npz"), "folder": str(root / "dir.npz")}[out]
        before = snapshot(root)
        args = ["ref-stats", data_arg, "--out", out_arg, "--inception-weights", weights_arg, "--batch", str(batch), "--no-progress",
                "--n", str(n), *(["--keep-features"] if keep else [])]  # a few images: Inception is slow on a CPU
        result = runner.invoke(app, args)
        check_unchanged_on_refusal(result, root, before)
        if result.exit_code == 0:
            import numpy as np

            with np.load(out_arg) as stats:
                assert stats["mu"].shape == (2048,) and ("features" in stats.files) == keep


TINY_NET = {"img_resolution": 8, "img_channels": 1, "model_type": "SongUNet", "model_channels": 16, "channel_mult": [1, 2],
            "num_blocks": 1, "attn_resolutions": [], "dropout": 0.0}


@st.composite
def recipes(draw: st.DrawFn) -> object:
    if draw(st.integers(1, 15)) == 15:
        return draw(json_any)
    recipe: dict[str, object] = {
        "init": sometimes(draw, st.just({"class_name": "EDMPrecond", "init_kwargs": TINY_NET}),
                          st.one_of(json_leaf, st.just({"class_name": "EDMPrecond", "init_kwargs": {**TINY_NET, "img_channels": 3}}),
                                    st.just({"class_name": "Nope", "init_kwargs": {}}))),
        "levels": sometimes(draw, st.sampled_from([[4, 8], [8]]), st.one_of(json_leaf, st.just([8, 4]), st.just([3, 8]))),
        "batch": sometimes(draw, st.integers(1, 4), json_leaf),
        "steps": sometimes(draw, st.integers(1, 2), json_leaf),
        "checkpoint_every": sometimes(draw, st.integers(0, 1), json_leaf),
    }
    if draw(st.booleans()):
        recipe["method"] = sometimes(draw, st.sampled_from(["lowdiff", "c2f", "distill"]), json_leaf)
    if draw(st.integers(1, 4)) == 4:
        recipe["train"] = sometimes(draw, st.dictionaries(st.sampled_from(["lr_rampup_kimg", "log_every", "grad_clip", "nope"]),
                                                          json_leaf, max_size=2), json_leaf, 3)
    if draw(st.integers(1, 8)) == 8:
        recipe[draw(st.sampled_from(["lr", "ema", "seed", "loss", "extra"]))] = draw(json_leaf)
    return recipe


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(recipe=recipes(), data=st.sampled_from(["images", "missing"]), existing=st.sampled_from([None, "empty", "other-run"]))
def test_train_config_fuzz(recipe, data, existing):
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp), Path(tmp) / "run"
        (root / "images").mkdir()
        rng = np.random.default_rng(0)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        if isinstance(recipe, dict):
            recipe = {**recipe, "data": str(root / data), "out": str(out)}
        (root / "recipe.json").write_text(json.dumps(recipe))
        if existing is not None:
            out.mkdir()
        if existing == "other-run":
            (out / "model.json").write_text(json.dumps({"format": "lowdiff-sched/model", "version": 2}))
            (out / "checkpoint-00000001.pt").write_bytes(b"not a checkpoint")
        before = snapshot(root)
        result = runner.invoke(app, ["train", "--config", str(root / "recipe.json"), "--no-progress"])
        check_unchanged_on_refusal(result, root, before)
        if result.exit_code == 0:
            assert (out / "model.json").is_file() and list(out.glob("checkpoint-*.pt"))
