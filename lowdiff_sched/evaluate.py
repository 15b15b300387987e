"""Quality and cost of a model under a plan, in one call: sample one image per seed, batch by
batch, score each batch's features with a judge (`judges.Judge`) as it is made, and report
the judge's metrics with the sampling time and the plan's NFE.

The judge is the model's own (FD-MNIST and class accuracy for the MNIST models, FD-emoji, KID,
the pyramid SWD bands and accuracy for the emoji models, the exact FD for the Gaussian
oracle) or `inception.InceptionJudge` (FID, IS, KID, precision/recall) against reference
statistics. Only features are kept, never the images. Under torchrun the
batches are dealt over the processes as `sample` deals them and the features gathered in
batch order, so N processes give the numbers one process gives. A class-conditional
model's seed s gets class s mod the class count (`labels.seed_labels`).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .cost import flop_ratios
from .generate import deal_batches, sample_batch
from .judges import DigitJudge, Judge
from .labels import seed_labels
from .plan import CascadePlan
from .processes import Processes, gather_objects
from .protocol import ResolutionCascade, label_dim_of


@dataclass(frozen=True)
class Evaluation:
    model: str
    plan: str
    n: int
    metrics: dict[str, float]
    seconds_per_64: float
    nfe: int
    effective_nfe: int
    judge: str = field(default="", compare=False)

    def row(self) -> dict[str, object]:
        """One CSV row: model, plan, n, the metrics in the judge's order, then the cost."""
        return {"model": self.model, "plan": self.plan, "n": self.n, **self.metrics,
                "seconds_per_64": self.seconds_per_64, "nfe": self.nfe, "effective_nfe": self.effective_nfe}

    def to_json(self) -> str:
        """Strict JSON: a value that is not a finite number (a metric that could not be
        computed) is null, never the bare NaN that strict parsers reject."""
        row = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in self.row().items()}
        return json.dumps({**row, "judge": self.judge}, indent=2, allow_nan=False) + "\n"

    def summary(self) -> str:
        shown = ", ".join(f"{k} {_fmt(k, v)}" for k, v in self.metrics.items())
        return (
            f"{self.model} / {self.plan}: {shown}, {self.seconds_per_64:.2f} s per 64 samples, "
            f"NFE {self.nfe}, effective NFE {self.effective_nfe} (n={self.n})"
        )


def _fmt(name: str, value: float) -> str:
    return f"{value:.1%}" if name in ("accuracy", "precision", "recall") else f"{value:.5g}"


def columns(metrics: Sequence[str]) -> list[str]:
    """The CSV header of an evaluation reporting `metrics`."""
    return ["model", "plan", "n", *metrics, "seconds_per_64", "nfe", "effective_nfe"]


def judge_for(spec: Any, cascade: ResolutionCascade, reference: Any = None, inception_weights: str | Path | None = None,
              n: int = 2, device: torch.device | str = "cpu") -> Judge:
    """The judge `eval` scores a registered model (`models.ModelSpec`) with: the Inception
    metrics against `reference` (`inception.ReferenceStats`) when given, checked against the
    model's image size and the sample count `n`; else the model's own judge."""
    if reference is not None:
        from .inception import InceptionJudge, load_inception

        judge = InceptionJudge(reference, load_inception(inception_weights, device), spec.value_range)
        judge.check_count(n)
        if not spec.latent:
            judge.check_size(cascade.levels[-1].size)
        return judge
    if spec.judge is None:
        raise ValueError(f"--ref is required for model {spec.name} (it has no judge of its own); make one with: "
                         f"lowdiff-sched ref-stats DATA --out STATS.npz")
    return spec.judge(cascade)


@torch.no_grad()
def evaluate(
    cascade: ResolutionCascade,
    plan: CascadePlan,
    *,
    seeds: Sequence[int],
    batch: int = 64,
    judge: Judge | None = None,
    decode: Callable[[Tensor], Tensor] | None = None,
    extra_args: dict[str, Any] | None = None,
    model_name: str = "",
    device: torch.device | str = "cpu",
    procs: Processes | None = None,
    progress: bool = False,
) -> Evaluation | None:
    """Sample one image per seed with `plan`, in batches of `batch`, and score them with
    `judge` (default: the digit judge, for the MNIST models). `decode` maps a batch of
    samples to images (a latent model's VAE). Under torchrun (`procs`) every process samples
    its share; rank 0 returns the Evaluation, the others None."""
    procs = procs or Processes()
    judge = judge if judge is not None else DigitJudge()
    if batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch}")
    seeds = list(seeds)
    if len(seeds) < 2:
        raise ValueError("evaluate needs at least 2 seeds (a covariance needs 2 samples)")
    plan.validate(cascade)
    label_dim = label_dim_of(cascade)
    labels = seed_labels(seeds, label_dim) if label_dim else None
    if isinstance(judge, DigitJudge) and (label_dim != 10 or tuple(cascade.levels[-1].shape) != (1, 32, 32)):
        raise ValueError("the digit judge needs a 10-class model of 32x32 single-channel digits (an MNIST model)")
    mine = deal_batches(seeds, labels, batch, procs)
    parts: list[tuple[int, Tensor]] = []
    seconds = 0.0
    with tqdm(total=len(seeds), disable=not (progress and procs.is_main), unit="sample", desc="evaluating") as bar:
        for b in mine:
            started = time.perf_counter()
            x = sample_batch(cascade, plan, b, device, extra_args)
            seconds += time.perf_counter() - started
            images = decode(x) if decode is not None else x
            parts.append((b.index, judge.features(images)))
            bar.update(len(b.seeds) * procs.world)
    gathered = gather_objects((parts, seconds), procs)
    if not procs.is_main:
        return None
    ordered = sorted((p for part, _ in gathered for p in part), key=lambda p: p[0])
    features = torch.cat([f for _, f in ordered])
    metrics = judge.metrics(features, torch.as_tensor(labels) if labels is not None else None)
    total_seconds = sum(s for _, s in gathered)
    return Evaluation(
        model=model_name,
        plan=plan.name or "",
        n=len(seeds),
        metrics={k: metrics[k] for k in judge.lower_is_better if k in metrics},
        seconds_per_64=total_seconds / len(seeds) * 64,
        nfe=sum(plan.nfe()),
        effective_nfe=plan.effective_nfe(flop_ratios(cascade, plan)),
        judge=type(judge).__name__,
    )


def evaluate_model(
    model: str, plan: str | None, seeds: Sequence[int], *, batch: int = 64, reference: Any = None,
    inception_weights: str | Path | None = None, ckpt: str | Path | None = None, latent_stats: str | Path | None = None,
    decoder: str | Path | None = None, csv: str | Path | None = None, device: str = "cpu", progress: bool = False,
) -> Evaluation | None:
    """`evaluate` for model `model` (a registered name, a training run or an exported model)
    under `plan` (a preset or plan file; None: the model's default), judged by its own judge
    or, with `reference` (`inception.ReferenceStats`), the Inception metrics; a latent model's
    samples are decoded by `decoder`. With `csv`, that file's columns are checked against the
    judge's before sampling. Under torchrun every process calls it; rank 0 gets the
    Evaluation, the others None. What `lowdiff-sched eval` runs."""
    from .devices import check_device
    from .generate import latent_decoding
    from .models import load_for_plan, model_spec
    from .processes import join_processes

    spec = model_spec(model)
    procs = join_processes(check_device(device))
    try:
        run_device = procs.device(device)
        cascade, cascade_plan = load_for_plan(model, plan, run_device, ckpt)
        decoding = latent_decoding(cascade, latent_stats, decoder, run_device) if spec.latent else None
        seeds = list(seeds)
        judge = judge_for(spec, cascade, reference, inception_weights, len(seeds), run_device)
        if csv is not None:
            check_csv(csv, columns(list(judge.lower_is_better)))
        return evaluate(
            cascade, cascade_plan, seeds=seeds, batch=batch, judge=judge, decode=decoding.images if decoding is not None else None,
            model_name=model, device=run_device, procs=procs, progress=progress,
        )
    finally:
        procs.close()


def check_csv(path: str | Path, header: Sequence[str], option: str = "--csv") -> Path:
    """Before any work: rows with `header` can be appended to `path` (missing, empty, or a CSV
    with that header)."""
    from .outputs import check_new_file

    path = check_new_file(path, option)
    if path.is_file() and path.stat().st_size:
        try:
            with open(path, newline="") as f:
                found = next(csv.reader(f), [])
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise ValueError(f"{option} {str(path)!r} is not a readable CSV file: {err}") from None
        if found != list(header):
            raise ValueError(
                f"{option} {str(path)!r} has other columns ({','.join(found)[:80]}) than this evaluation writes "
                f"({','.join(header)}); choose a new file"
            )
    return path


def append_csv(path: str | Path, evaluation: Evaluation) -> None:
    """Append one row (with a header if the file is new or empty)."""
    header = list(evaluation.row())
    path = check_csv(path, header)
    path.parent.mkdir(parents=True, exist_ok=True)  # checked creatable before the work
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        if new:
            writer.writeheader()
        writer.writerow(evaluation.row())
