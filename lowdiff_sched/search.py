"""Plan search: the cheapest plan at each quality, over single-resolution samplers and the
cascades a model supports. C2F-DM's timestep redistribution (TRD) tunes the sigmas of one
plan against a long reference plan; this generalises it to the choice of plan itself.

Two passes over the candidates of a `SearchSpace` (`plan_space`), cheapest first:
1. cost (per-sample seconds from measured per-level call latency, or FLOPs) and the RMSE of
   the candidate's samples to the reference plan's on `n_calib` calibration seeds. Single-
   resolution plans and `Continue` cascades start from the reference's own noise (Continue
   couples the stage noises), so for deterministic samplers this is their discretisation
   and hand-over error, comparable across both (`Candidate.coupled`);
2. with a judge (`judges`: FD and class accuracy for the MNIST models, the exact FD for the
   Gaussian oracle), each family's RMSE front (or every candidate, `judge_all`) is scored on
   `n_judge` held-out seeds, with bootstrap intervals.
The Pareto front is cost against the judge's primary metric (RMSE without a judge). Every
result is appended to `candidates.jsonl` in `out_dir` as it is measured, so a stopped search
resumes where it was; `budget_seconds` bounds a run. Results depend only on the seeds.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import json
import math
import operator
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, cast

import torch

from .judges import Judge, Score, class_labels_of, score
from .labels import seed_label_args
from .outputs import atomic_path, ensure_writable_dir
from .plan import CascadePlan, StagePlan
from .plan_space import Candidate, SearchSpace, candidates
from .protocol import ResolutionCascade, label_dim_of
from .sampling import sample_cascade
from .schedules import karras_sigmas

CANDIDATES_FILE = "candidates.jsonl"
SETTINGS_FILE = "search.json"
SINGLE_FAMILIES = ("single", "stochastic", "reference")  # the rest are cascades
JUDGE_SEED_OFFSET = 1_000_000  # held-out seeds start here (plus `seed`), far from the calibration seeds
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


@dataclass
class PlanResult:
    """One candidate as measured: cost per sample, RMSE to the reference, judge scores."""

    name: str
    family: str
    coupled: bool
    plan: dict[str, Any]
    nfe: list[int]
    levels: list[int]
    cost: float
    rmse: float | None = None
    scores: dict[str, Score] = field(default_factory=dict)

    def metric(self, name: str) -> float | None:
        if name == "rmse":
            return self.rmse
        s = self.scores.get(name)
        return None if s is None else s.value

    def cascade_plan(self) -> CascadePlan:
        return CascadePlan.from_dict(self.plan)

    def to_record(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "coupled": self.coupled, "plan": self.plan, "nfe": self.nfe,
                "levels": self.levels, "cost": self.cost, "rmse": self.rmse,
                "scores": {k: v.to_dict() for k, v in self.scores.items()}}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> "PlanResult":
        scores = {k: Score(v["value"], v["lo"], v["hi"]) for k, v in data.get("scores", {}).items()}
        return cls(data["name"], data["family"], bool(data["coupled"]), data["plan"], list(data["nfe"]),
                   list(data["levels"]), float(data["cost"]), data.get("rmse"), scores)


def pareto_front(results: Sequence[PlanResult], metric: str, lower_is_better: bool = True) -> list[PlanResult]:
    """The results no other result beats on both cost and `metric`, cheapest first."""
    sign = 1.0 if lower_is_better else -1.0
    measured = (r for r in results if r.metric(metric) is not None and math.isfinite(r.metric(metric)))  # type: ignore[arg-type]
    scored = sorted(measured, key=lambda r: (r.cost, sign * r.metric(metric), r.name))  # type: ignore[operator]
    front: list[PlanResult] = []
    for r in scored:
        if not front or sign * r.metric(metric) < sign * front[-1].metric(metric):  # type: ignore[operator]
            front.append(r)
    return front


_TARGET = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*(\S+)\s*$")


def parse_target(text: str, metrics: Sequence[str] | None = None) -> list[tuple[str, str, float]]:
    """'fd<=25,accuracy>=0.9' -> [("fd", "<=", 25.0), ("accuracy", ">=", 0.9)]; with
    `metrics`, every name must be one of them."""
    out = []
    for part in text.split(","):
        match = _TARGET.match(part)
        if match is None:
            raise ValueError(f"target {part.strip()!r}: write METRIC<=VALUE or METRIC>=VALUE, e.g. fd<=25,accuracy>=0.9")
        name, op, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"target {part.strip()!r}: {value!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"target {part.strip()!r}: the value must be finite")
        if metrics is not None and name not in metrics:
            raise ValueError(f"target {part.strip()!r}: no metric {name!r}; this search measures {', '.join(metrics)}")
        out.append((name, op, number))
    return out


def cheapest(results: Sequence[PlanResult], target: Sequence[tuple[str, str, float]]) -> PlanResult | None:
    """The cheapest result meeting every (metric, op, value) of `target` (None if none does);
    among equally cheap ones, the best on the target's first metric."""
    def ok(r: PlanResult) -> bool:
        return all((value := r.metric(m)) is not None and _OPS[op](value, v) for m, op, v in target)

    name, op, _ = target[0]
    sign = 1.0 if op in ("<=", "<") else -1.0
    return min((r for r in results if ok(r)), key=lambda r: (r.cost, sign * r.metric(name), r.name), default=None)  # type: ignore[operator]


def default_reference(cascade: ResolutionCascade, space: SearchSpace, steps: int = 32) -> CascadePlan:
    """Heun on a long Karras schedule at the top level (2 steps - 1 evaluations)."""
    sigmas = karras_sigmas(steps, min(space.sigma_mins), space.sigma_max)
    return CascadePlan([StagePlan(len(cascade.levels) - 1, sigmas, "heun")], name=f"reference-heun-{steps}")


@dataclass
class SearchResult:
    results: list[PlanResult]
    primary: str  # the metric the front is built on
    lower_is_better: bool
    cost_unit: str
    reference: str

    @property
    def front(self) -> list[PlanResult]:
        return pareto_front(self.results, self.primary, self.lower_is_better)

    def family_fronts(self) -> dict[str, list[PlanResult]]:
        """The front of single-resolution plans and the front of cascades, separately."""
        single = [r for r in self.results if r.family in SINGLE_FAMILIES]
        cascade = [r for r in self.results if r.family not in SINGLE_FAMILIES]
        return {"single resolution": pareto_front(single, self.primary, self.lower_is_better),
                "cascade": pareto_front(cascade, self.primary, self.lower_is_better)}

    def table(self, rows: Sequence[PlanResult] | None = None) -> str:
        """A markdown table of `rows` (default: the front)."""
        rows = self.front if rows is None else rows
        metrics = sorted({m for r in rows for m in r.scores}, key=lambda m: (m != self.primary, m))
        head = ["plan", "family", "NFE per stage", f"cost ({self.cost_unit}/sample)", "RMSE to reference", *metrics]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [f"`{r.name}`", r.family, " + ".join(map(str, r.nfe)), f"{r.cost:.4g}",
                     "-" if r.rmse is None else f"{r.rmse:.4f}"]
            for m in metrics:
                s = r.scores.get(m)
                cells.append("-" if s is None else f"{s.value:.4g} [{s.lo:.4g}, {s.hi:.4g}]")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def csv(self) -> str:
        metrics = sorted({m for r in self.results for m in r.scores})
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["name", "family", "nfe", "cost", "rmse", *(f"{m}{s}" for m in metrics for s in ("", "_lo", "_hi")), "on_front"])
        front = {r.name for r in self.front}
        for r in sorted(self.results, key=lambda r: (r.cost, r.name)):
            scores = [x for m in metrics for x in ((r.scores[m].value, r.scores[m].lo, r.scores[m].hi) if m in r.scores else ("", "", ""))]
            writer.writerow([r.name, r.family, "+".join(map(str, r.nfe)), r.cost, "" if r.rmse is None else r.rmse, *scores, r.name in front])
        return buf.getvalue()

    def plot(self, path: str | Path, title: str = "") -> None:
        """front.png: every judged plan and each family's front, cost against the primary metric."""
        from .plots import plot_fronts

        families = {}
        for label, front in self.family_fronts().items():
            members = [r for r in self.results if (r.family in SINGLE_FAMILIES) == (label == "single resolution")]
            points = [(r.cost, value) for r in members if (value := r.metric(self.primary)) is not None]
            families[label] = (points, [(r.name, r.cost, value) for r in front if (value := r.metric(self.primary)) is not None])
        plot_fronts(families, path, metric=self.primary, cost_unit=self.cost_unit, lower_is_better=self.lower_is_better,
                    title=title)

    def write(self, out_dir: str | Path, title: str = "") -> list[Path]:
        """front.md, results.csv, front.png (with matplotlib) and one JSON per front plan in plans/."""
        out = ensure_writable_dir(Path(out_dir))
        written = []
        for name, text in (("front.md", self.table() + "\n"), ("results.csv", self.csv())):
            with atomic_path(out / name) as tmp:
                tmp.write_text(text)
            written.append(out / name)
        plans = ensure_writable_dir(out / "plans")
        for r in self.front:
            with atomic_path(plans / f"{r.name}.json") as tmp:
                tmp.write_text(json.dumps(r.plan, indent=2) + "\n")
            written.append(plans / f"{r.name}.json")
        try:
            self.plot(out / "front.png", title)
            written.append(out / "front.png")
        except ValueError:  # no matplotlib: the table and CSV hold everything
            pass
        return written


class _Store:
    """candidates.jsonl: every measurement appended as made; the last record of a name wins."""

    def __init__(self, out_dir: Path | None) -> None:
        self.path = None if out_dir is None else out_dir / CANDIDATES_FILE
        self.records: dict[str, PlanResult] = {}
        if self.path is not None and self.path.is_file():
            text = self.path.read_text()
            if text and not text.endswith("\n"):  # a last record cut short by a kill: dropped, measured again
                text = text[: text.rfind("\n") + 1]
                with open(self.path, "r+") as f:
                    f.truncate(len(text.encode()))
            for line in text.splitlines():
                if line.strip():
                    try:
                        r = PlanResult.from_record(json.loads(line))
                    except (ValueError, KeyError, TypeError):
                        continue  # a damaged line: measured again
                    self.records[r.name] = r

    def put(self, result: PlanResult) -> None:
        self.records[result.name] = result
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(result.to_record()) + "\n")


def model_fingerprint(cascade: ResolutionCascade) -> str:
    """A hash of what decides a model's samples: its levels and, for a torch module, every
    tensor of its state dict (else its plain settings: numbers, strings, tuples of them)."""
    digest = hashlib.sha256(repr([(lv.size, lv.channels) for lv in cascade.levels]).encode())
    state = getattr(cascade, "state_dict", None)
    if callable(state):
        for name, tensor in sorted(state().items()):
            digest.update(name.encode())
            digest.update(str(tensor.dtype).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    else:
        plain = {k: v for k, v in sorted(vars(cascade).items()) if isinstance(v, (int, float, str, bool, tuple))}
        digest.update(repr(plain).encode())
    return digest.hexdigest()


def check_search_folder(out_dir: str | Path, model: str, fingerprint: str) -> None:
    """A search folder that holds a search of another model (other weights) is refused, before
    anything of it (its level costs, its measurements) is used."""
    for filename in (SETTINGS_FILE, CANDIDATES_FILE):
        if (Path(out_dir) / filename).exists() and not (Path(out_dir) / filename).is_file():
            raise ValueError(f"{Path(out_dir) / filename} is not a file, so {out_dir} holds no search; use another output folder")
    path = Path(out_dir) / SETTINGS_FILE
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
        theirs = saved.get("model")
    except (ValueError, AttributeError):
        raise ValueError(f"{path} is not a search's settings file; use another output folder") from None
    if not isinstance(theirs, dict) or theirs.get("fingerprint") != fingerprint:
        name = theirs.get("name") if isinstance(theirs, dict) else None
        if not isinstance(name, str) or not name:
            what = "another model"
        elif name == model:
            what = f"{name} with other weights"
        else:
            what = name
        raise ValueError(f"{out_dir} holds a search of {what}, not of {model}; use another output folder")


def _check_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    path = out_dir / SETTINGS_FILE
    if path.is_file():
        saved = json.loads(path.read_text())  # its model was checked by check_search_folder
        changed = sorted(k for k in set(saved) | set(settings) if k != "model" and saved.get(k) != settings.get(k))
        if changed:
            raise ValueError(f"{out_dir} holds a search with other settings ({', '.join(changed)} differ); use another output folder")
    else:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(settings, indent=2) + "\n")


def saved_level_costs(out_dir: str | Path) -> list[float] | None:
    """The per-level costs a search in `out_dir` was started with (None if there is none), so a
    resumed search compares plans on the costs its first measurements used."""
    path = Path(out_dir) / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        costs = json.loads(path.read_text())["level_costs"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is not a search's settings file; use another output folder") from None
    return [float(c) for c in costs]


def check_counts(n_calib: int, n_judge: int, batch_size: int, seed: int = 0, bootstrap: int = 0) -> None:
    """The numbers of a search: sample counts each an int of at least 2 (a spread needs two
    samples), the first seed and the bootstrap resamples ints of at least 0."""
    for name, value, least in (("n_calib", n_calib, 2), ("n_judge", n_judge, 2), ("batch_size", batch_size, 2),
                               ("seed", seed, 0), ("bootstrap", bootstrap, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")


def check_reference(reference: CascadePlan, cascade: ResolutionCascade) -> CascadePlan:
    """The reference plan of a search, validated: a single-resolution plan at the top level."""
    reference = reference.validate(cascade)
    n_levels = len(cascade.levels)
    if reference.level_indices(n_levels)[-1] != n_levels - 1 or len(reference.stages) != 1:
        raise ValueError(f"the reference must be a single-resolution plan at the top level, got {reference.name or 'a plan'} "
                         f"with {len(reference.stages)} stage(s)")
    return reference


def plan_cost(plan: CascadePlan, level_costs: Sequence[float], n_levels: int) -> float:
    """Per-sample cost: sum over stages of NFE times the cost of one call at the stage's level."""
    return sum(nfe * level_costs[i] for nfe, i in zip(plan.nfe(), plan.level_indices(n_levels)))


def search_plans(
    cascade: ResolutionCascade,
    level_costs: Sequence[float],
    *,
    space: SearchSpace | None = None,
    judge: Judge | None = None,
    reference: CascadePlan | None = None,
    n_calib: int = 32,
    n_judge: int = 500,
    seed: int = 0,
    budget_seconds: float | None = None,
    batch_size: int = 64,
    judge_all: bool = False,
    judge_also: Sequence[str] = (),
    bootstrap: int = 200,
    cost_unit: str = "s",
    out_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: Callable[[str], None] | None = None,
    model: str = "the model",
) -> SearchResult:
    """Measure the candidates of `space` on `cascade` and return every result and the front.

    `level_costs[i]` is the cost of one model call per sample at level i (seconds from
    `cost.seconds_per_call` divided by its batch, or FLOPs). Calibration seeds are
    seed .. seed + n_calib - 1, held-out seeds start at seed + 1,000,000. With `out_dir`, a
    search of the same model (`model` names it, `model_fingerprint` identifies its weights)
    with the same settings resumes from what it measured before; `budget_seconds` stops
    measuring (first pass, then judging) once spent, and what was measured is returned.
    `judge_also` (shell-style patterns on plan names) adds plans to the judged ones: a
    family's RMSE front favours plans with many top-level steps, since those dominate the
    distance to the reference, while the judge may prefer ones that move more steps down.
    """
    space = space or SearchSpace()
    n_levels = len(cascade.levels)
    if len(level_costs) != n_levels or not all(c > 0 and math.isfinite(c) for c in level_costs):
        raise ValueError(f"level_costs needs one positive cost per level ({n_levels}), got {list(level_costs)}")
    check_counts(n_calib, n_judge, batch_size, seed, bootstrap)
    reference = check_reference(reference or default_reference(cascade, space), cascade)
    fingerprint = model_fingerprint(cascade)
    if out_dir is not None:
        check_search_folder(out_dir, model, fingerprint)  # before the folder is made or anything of it read
    out = None if out_dir is None else ensure_writable_dir(Path(out_dir))
    settings = {"space": space.to_dict(), "reference": reference.to_dict(), "n_calib": n_calib, "n_judge": n_judge,
                "seed": seed, "level_costs": [float(c) for c in level_costs], "cost_unit": cost_unit,
                "judge": type(judge).__name__ if judge is not None else None, "bootstrap": bootstrap,
                "model": {"name": model, "fingerprint": fingerprint}}
    if out is not None:
        _check_settings(out, settings)
    store = _Store(out)
    say = progress or (lambda text: None)
    deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
    label_dim = label_dim_of(cascade)

    def run(plan: CascadePlan, seeds: list[int]) -> torch.Tensor:
        extra = seed_label_args(seeds, label_dim, device or "cpu")
        with torch.no_grad():
            samples = sample_cascade(cascade, plan, seeds=seeds, batch_size=batch_size, extra_args=extra, disable=True, device=device)
            return cast(torch.Tensor, samples).double().cpu()

    calib = list(range(seed, seed + n_calib))
    targets: list[torch.Tensor] = []  # the reference's calibration samples, made when first needed

    def rmse_of(plan: CascadePlan) -> float:
        if not targets:
            targets.append(run(reference, calib))
        value = float((run(plan, calib) - targets[0]).square().mean().sqrt())
        return value if math.isfinite(value) else float("inf")
    pool: list[Candidate] = [Candidate(reference, "reference", True)]
    for c in candidates(space, cascade):
        try:
            c.plan.validate(cascade)
        except ValueError:
            continue
        pool.append(c)
    unmatched = [p for p in judge_also if not any(fnmatch.fnmatchcase(c.name, p) for c in pool)]
    if unmatched:
        raise ValueError(f"judge_also: {unmatched} match(es) no candidate of this search (names look like "
                         f"{pool[-1].name!r})")
    cost = {c.name: plan_cost(c.plan, level_costs, n_levels) for c in pool}
    pool.sort(key=lambda c: (cost[c.name], c.name))
    reserve = 0.4 if judge is not None else 0.0  # share of the budget kept for judging
    say(f"{len(pool)} candidates; reference {reference.name} ({sum(reference.nfe())} NFE) on {n_calib} calibration seeds")

    for c in pool:
        if c.name in store.records and store.records[c.name].rmse is not None:
            continue
        if deadline is not None and time.monotonic() > deadline - reserve * budget_seconds:  # type: ignore[operator]
            say("budget spent on the first pass; judging what was measured")
            break
        store.put(PlanResult(c.name, c.family, c.coupled, c.plan.to_dict(), c.plan.nfe(),
                             c.plan.level_indices(n_levels), cost[c.name], rmse_of(c.plan)))

    measured = [store.records[c.name] for c in pool if c.name in store.records]
    if judge is not None:
        held_out = list(range(seed + JUDGE_SEED_OFFSET, seed + JUDGE_SEED_OFFSET + n_judge))
        labels = class_labels_of(held_out, label_dim)
        if judge_all:
            chosen = measured
        else:
            by_family: dict[str, list[PlanResult]] = {}
            for r in measured:
                by_family.setdefault(r.family, []).append(r)
            chosen = [r for rs in by_family.values() for r in pareto_front(rs, "rmse")]
            names = {r.name for r in chosen}
            chosen += [r for r in measured if r.name not in names and any(fnmatch.fnmatchcase(r.name, p) for p in judge_also)]
        for r in sorted(chosen, key=lambda r: (r.cost, r.name)):
            if r.scores:
                continue
            if deadline is not None and time.monotonic() > deadline:
                say("budget spent; the front is built from what was judged")
                break
            r.scores = score(judge, run(r.cascade_plan(), held_out), labels, reps=bootstrap, seed=seed)
            store.put(r)
        measured = [store.records[c.name] for c in pool if c.name in store.records]
    primary = judge.primary if judge is not None else "rmse"
    lower = judge.lower_is_better[primary] if judge is not None else True
    return SearchResult(measured, primary, lower, cost_unit, reference.name)
