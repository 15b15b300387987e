"""Quality and cost of a class-conditional MNIST model under a plan, in one call.

FD-MNIST is the Frechet distance between the digit classifier's 128-D features of the
generated digits and of the bundled train split; class accuracy is the share of digits
generated for class c that the classifier calls c. Seed s gets class s mod 10
(`sampling.seed_labels`), so n consecutive seeds cover the classes evenly.
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import torch

from .classifier import DigitClassifier
from .cost import flop_ratios
from .judges import DigitJudge
from .plan import CascadePlan
from .protocol import ResolutionCascade
from .sampling import class_label_args, sample_cascade, seed_labels


@dataclass(frozen=True)
class Evaluation:
    model: str
    plan: str
    n: int
    fd_mnist: float
    class_accuracy: float
    seconds_per_64: float
    nfe: int
    effective_nfe: int

    def row(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.model} / {self.plan}: FD-MNIST {self.fd_mnist:.2f}, class accuracy {self.class_accuracy:.1%}, "
            f"{self.seconds_per_64:.2f} s per 64 samples, NFE {self.nfe}, effective NFE {self.effective_nfe} (n={self.n})"
        )


def reference_stats(classifier: DigitClassifier) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of the classifier's features over the bundled train digits."""
    return DigitJudge(classifier).reference


@torch.no_grad()
def evaluate(
    cascade: ResolutionCascade,
    plan: CascadePlan,
    *,
    seeds: Sequence[int],
    batch: int = 64,
    classifier: DigitClassifier | None = None,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    model_name: str = "",
    device: torch.device | str = "cpu",
) -> Evaluation:
    """Sample one digit per seed with `plan`, in batches of `batch`, and score them."""
    label_dim = int(getattr(cascade, "label_dim", 0))
    if label_dim != 10 or tuple(cascade.levels[-1].shape) != (1, 32, 32):
        raise ValueError("evaluate needs a 10-class model of 32x32 single-channel digits (an MNIST model)")
    if batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch}")
    seeds = list(seeds)
    if len(seeds) < 2:
        raise ValueError("evaluate needs at least 2 seeds (a covariance needs 2 samples)")
    judge = DigitJudge(classifier, reference)
    labels = seed_labels(seeds, label_dim)
    onehot = class_label_args(labels, label_dim, device)["class_labels"]
    plan.validate(cascade)
    samples, seconds = [], 0.0
    for lo in range(0, len(seeds), batch):
        started = time.perf_counter()
        samples.append(sample_cascade(
            cascade, plan, seeds=seeds[lo:lo + batch], device=device, disable=True,
            extra_args={"class_labels": onehot[lo:lo + batch]},
        ).cpu())
        seconds += time.perf_counter() - started
    metrics = judge.metrics(judge.features(torch.cat(samples)), torch.as_tensor(labels))
    return Evaluation(
        model=model_name,
        plan=plan.name or "",
        n=len(seeds),
        fd_mnist=metrics["fd"],
        class_accuracy=metrics["accuracy"],
        seconds_per_64=seconds / len(seeds) * 64,
        nfe=sum(plan.nfe()),
        effective_nfe=plan.effective_nfe(flop_ratios(cascade, plan)),
    )


COLUMNS = [f.name for f in fields(Evaluation)]


def check_csv(path: str | Path, option: str = "csv") -> Path:
    """Before any work: rows can be appended to `path` (missing, empty, or a CSV with our header)."""
    from .outputs import check_new_file

    path = check_new_file(path, option)
    if path.is_file() and path.stat().st_size:
        try:
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise ValueError(f"{option} {str(path)!r} is not a readable CSV file: {err}") from None
        if header != COLUMNS:
            raise ValueError(
                f"{option} {str(path)!r} has other columns ({','.join(header)[:80]}) than eval writes "
                f"({','.join(COLUMNS)}); choose a new file"
            )
    return path


def append_csv(path: str | Path, evaluation: Evaluation) -> None:
    """Append one row (with a header if the file is new or empty) to a CSV of `COLUMNS`."""
    path = check_csv(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # checked creatable before the work
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(evaluation.row())
