"""Fuzzing `sample` and `plan` with generated plan files and option strings: every run ends
with exit 0 and its files, or exit 2 and one stderr line and no files; never a traceback."""

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


def check(result, out: Path, existed: bool) -> None:  # type: ignore[no-untyped-def]
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 2), result.output
    event(f"exit {result.exit_code}" + (": " + re.sub(r"'/tmp/[^']*'", "PATH", result.stderr)[22:60] if result.exit_code else ""))
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lowdiff-sched: error: "), result.stderr
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
