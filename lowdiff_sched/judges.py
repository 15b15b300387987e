"""Judges: a model's own measure of sample quality, with bootstrap intervals.

A judge scores a batch of final samples (and their class ids) and returns, per metric, the
value and a bootstrap interval over the samples. `lower_is_better` names the direction of
each metric, so the plan search can build a Pareto front on the first one (`primary`).
Three are built in: the digit classifier's FD and class accuracy for the MNIST models
(`DigitJudge`); the emoji classifier's FD, KID and class accuracy with the sliced
Wasserstein distance of Laplacian-pyramid patches, which sees lost fine detail, for the
emoji models (`EmojiJudge`); and the exact Frechet distance to the law of the Gaussian
oracle (`OracleJudge`). `paired_difference` compares two plans run on the same seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, cast

import torch
from torch import Tensor

from .laplacian_swd import SWDReference, patch_descriptors
from .metrics import frechet_distance, gaussian_stats, kernel_distance, kernel_within

if TYPE_CHECKING:
    from .classifier import DigitClassifier, EmojiClassifier


@dataclass(frozen=True)
class Score:
    """A metric's value on all samples and its bootstrap interval (lo, hi); lo = hi = value
    when no bootstrap was run."""

    value: float
    lo: float
    hi: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi}


class Judge(Protocol):
    """What the plan search needs from a quality measure."""

    primary: str  # the metric the Pareto front is built on
    lower_is_better: dict[str, bool]  # every metric score() returns, and its direction

    def features(self, samples: Tensor) -> Tensor:
        """Per-sample data the metrics are computed from (kept, so intervals can be resampled)."""
        ...

    def metrics(self, features: Tensor, labels: Tensor | None) -> dict[str, float]:
        """Every metric on these samples' features."""
        ...


def bootstrap(
    statistic: Callable[[Tensor | None], dict[str, float]], n: int, reps: int, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Bootstrap intervals of `statistic(index)` over `reps` resamples with replacement of the
    indices 0..n-1 ({} when reps is 0); `statistic(None)` is the value on all samples.

    The interval is the resamples' central `level` range shifted by their mean's offset from
    the value: a resample repeats samples, which moves a Frechet distance up by about as much
    as its spread, so the plain percentile interval would lie above the value. The shifted
    interval keeps the spread (the measurement's noise) and is centred where the value is."""
    if reps <= 0:
        return {}
    values = statistic(None)
    generator = torch.Generator().manual_seed(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(reps):
        for name, value in statistic(torch.randint(n, (n,), generator=generator)).items():
            draws.setdefault(name, []).append(value)
    tail = (1 - level) / 2
    out = {}
    for name, v in draws.items():
        resampled = torch.tensor(v, dtype=torch.float64)
        lo, hi = resampled.quantile(torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
        shift = float(resampled.mean()) - values[name]
        out[name] = (lo - shift, hi - shift)
    return out


def score(judge: Judge, samples: Tensor, labels: Tensor | None = None, *, reps: int = 200, seed: int = 0) -> dict[str, Score]:
    """Every metric of `judge` on `samples`, with bootstrap intervals over the samples."""
    features = judge.features(samples)

    def metrics(idx: Tensor | None) -> dict[str, float]:
        if idx is None:
            return judge.metrics(features, labels)
        return judge.metrics(features[idx], None if labels is None else labels[idx])

    values = metrics(None)
    intervals = bootstrap(metrics, features.shape[0], reps, seed)
    return {name: Score(v, *intervals.get(name, (v, v))) for name, v in values.items()}


def paired_difference(
    judge: Judge, a: Tensor, b: Tensor, labels: Tensor | None = None, *, reps: int = 200, seed: int = 0
) -> dict[str, Score]:
    """metric(a) - metric(b) for two sample sets drawn on the same seeds (and labels), with a
    paired bootstrap: each resample takes the same seeds from both, so the noise the two
    share (which digits were asked for) cancels out of the interval."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"paired samples must have the same count, got {a.shape[0]} and {b.shape[0]}")
    fa, fb = judge.features(a), judge.features(b)

    def diff(idx: Tensor | None) -> dict[str, float]:
        la = labels if idx is None or labels is None else labels[idx]
        ma = judge.metrics(fa if idx is None else fa[idx], la)
        mb = judge.metrics(fb if idx is None else fb[idx], la)
        return {k: ma[k] - mb[k] for k in ma}

    values = diff(None)
    intervals = bootstrap(diff, fa.shape[0], reps, seed)
    return {name: Score(v, *intervals.get(name, (v, v))) for name, v in values.items()}


class DigitJudge:
    """FD-MNIST (Frechet distance of the digit classifier's 128-D features to the bundled train
    split's) and class accuracy (the share of digits classified as the class they were drawn for)."""

    primary = "fd"
    lower_is_better = {"fd": True, "accuracy": False}

    def __init__(self, classifier: DigitClassifier | None = None, reference: tuple[Tensor, Tensor] | None = None) -> None:
        from .classifier import load_classifier

        self.classifier = classifier if classifier is not None else cast("DigitClassifier", load_classifier())
        self.reference = reference if reference is not None else self._train_stats()

    @torch.no_grad()
    def _train_stats(self) -> tuple[Tensor, Tensor]:
        from .datasets.mnist import load_mnist

        images, _ = load_mnist("train")
        return gaussian_stats(self.features(images))

    @torch.no_grad()
    def features(self, samples: Tensor) -> Tensor:
        return torch.cat([self.classifier.features(chunk.cpu()) for chunk in samples.split(500)])

    @torch.no_grad()
    def metrics(self, features: Tensor, labels: Tensor | None) -> dict[str, float]:
        out = {"fd": frechet_distance(features, self.reference)}
        if labels is not None:
            out["accuracy"] = float((self.classifier.head(features).argmax(1) == labels.cpu()).double().mean())
        return out


EMOJI_REFERENCE_FILE = "emoji-reference.safetensors"
SWD_BANDS = ("swd64", "swd32", "swd16")  # the pyramid's bands, finest first: 64x64 and 32x32 detail, 16x16 low-pass
PATCHES_PER_IMAGE = 16


def balanced_rows(labels: Tensor, per_class: int, seed: int = 0) -> Tensor:
    """`per_class` row indices of every class (drawn with replacement, seeded), so a reference
    built from them has the class mix of samples drawn for every class in turn."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for c in range(int(labels.max()) + 1):
        members = (labels == c).nonzero().flatten()
        if len(members) == 0:
            raise ValueError(f"class {c} has no images")
        rows.append(members[torch.randint(len(members), (per_class,), generator=generator)])
    return torch.cat(rows)


@dataclass
class EmojiReference:
    """What `EmojiJudge` compares samples with, computed once from train images: the
    classifier features' Gaussian (FD), a subset of the features themselves (KID) and the
    patch quantiles per pyramid band (SWD)."""

    mu: Tensor
    sigma: Tensor
    kid_features: Tensor
    swd: SWDReference

    @classmethod
    @torch.no_grad()
    def of(cls, classifier: EmojiClassifier, images: Tensor, kid_count: int = 1000, seed: int = 0) -> "EmojiReference":
        features = torch.cat([classifier.features(chunk) for chunk in images.split(500)])
        mu, sigma = gaussian_stats(features)
        kid_rows = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:kid_count]
        patches = patch_descriptors(images, len(SWD_BANDS), PATCHES_PER_IMAGE, seed)
        return cls(mu, sigma, features[kid_rows].double(), SWDReference.of(patches, seed=seed))

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        from .outputs import atomic_path

        state = {"mu": self.mu, "sigma": self.sigma, "kid_features": self.kid_features,
                 **{f"swd.{k}": v for k, v in self.swd.state_dict().items()}}
        with atomic_path(Path(path)) as tmp:
            save_file({k: v.float().contiguous() for k, v in state.items()}, str(tmp))

    @classmethod
    def load(cls, path: str | Path | None = None) -> "EmojiReference":
        """The reference in `path` (default: the one shipped with the package)."""
        from safetensors.torch import load_file

        from .weights import weight_path

        state = {k: v.double() for k, v in load_file(str(path if path is not None else weight_path(EMOJI_REFERENCE_FILE))).items()}
        swd = SWDReference.from_state_dict({k[4:]: v for k, v in state.items() if k.startswith("swd.")})
        return cls(state["mu"], state["sigma"], state["kid_features"], swd)


class EmojiJudge:
    """For 64x64 emoji: FD-emoji and KID (the emoji classifier's 128-D features against the
    train split's, every class weighted alike), class accuracy, and the sliced Wasserstein
    distance of Laplacian-pyramid patches per band (`swd64` is the finest detail) and their
    mean (`swd`). A category classifier's features barely move when fine detail is lost,
    which is how a cascade fails; the SWD bands see it."""

    primary = "fd"
    lower_is_better = {"fd": True, "kid": True, "swd": True, **{band: True for band in SWD_BANDS}, "accuracy": False}

    def __init__(self, classifier: EmojiClassifier | None = None, reference: EmojiReference | None = None) -> None:
        from .classifier import EMOJI_CLASSIFIER_FILE, EmojiClassifier, load_classifier
        from .weights import weight_path

        self.classifier = (
            classifier if classifier is not None
            else cast(EmojiClassifier, load_classifier(weight_path(EMOJI_CLASSIFIER_FILE), EmojiClassifier()))
        )
        self.reference = reference if reference is not None else EmojiReference.load()
        self._kid_within = kernel_within(self.reference.kid_features)

    @torch.no_grad()
    def features(self, samples: Tensor) -> Tensor:
        """Per sample: the classifier's 128 features, then its patches of every band."""
        samples = samples.cpu()
        features = torch.cat([self.classifier.features(chunk) for chunk in samples.split(500)])
        patches = patch_descriptors(samples, len(SWD_BANDS), PATCHES_PER_IMAGE)
        return torch.cat([features.double(), *(p.flatten(1).double() for p in patches)], dim=1)

    @torch.no_grad()
    def metrics(self, features: Tensor, labels: Tensor | None) -> dict[str, float]:
        from .classifier import FEATURES

        classifier_features, patches = features[:, :FEATURES], features[:, FEATURES:]
        bands = [band.reshape(-1, PATCHES_PER_IMAGE, band.shape[1] // PATCHES_PER_IMAGE)
                 for band in patches.chunk(len(SWD_BANDS), dim=1)]
        swd = self.reference.swd.distances(bands)
        out = {"fd": frechet_distance(classifier_features, (self.reference.mu, self.reference.sigma)),
               "kid": kernel_distance(classifier_features, self.reference.kid_features, self._kid_within),
               "swd": sum(swd) / len(swd), **dict(zip(SWD_BANDS, swd))}
        if labels is not None:
            logits = self.classifier.head(classifier_features.float())
            out["accuracy"] = float((logits.argmax(1) == labels.cpu()).double().mean())
        return out


class OracleJudge:
    """The exact Frechet distance between the samples' Gaussian fit and the true law of the
    Gaussian oracle's top level. N true samples score above 0 by a Monte-Carlo floor that
    falls as 1/N; with N below the dimension D the fit's covariance is singular and the
    distance is strongly biased, so judge with N well above D (the CLI's default oracle has
    D = 3 x 32 x 32 = 3072).

    The law's covariance S is diagonal in the orthonormal 2-D DFT with variances `spectrum`,
    so S^1/2 is a filter, and tr((S^1/2 S_x S^1/2)^1/2) for the samples' covariance
    S_x = Xc^T Xc / (N - 1) is the sum of the square roots of the eigenvalues of
    A^T A / (N - 1), A = Xc S^1/2, or of the smaller A A^T / (N - 1) when N < D (the same
    non-zero eigenvalues): no decomposition larger than min(N, D)."""

    primary = "fd"
    lower_is_better = {"fd": True}

    def __init__(self, oracle: Any) -> None:  # a GaussianFieldCascade, from a layer above this one
        self.mean = oracle.mean_vector(-1)
        self.root = oracle.spectrum(-1).sqrt()  # [C, H, W]: S^1/2 per DFT coefficient

    def features(self, samples: Tensor) -> Tensor:
        return samples.double().cpu()

    def metrics(self, features: Tensor, labels: Tensor | None) -> dict[str, float]:
        n = features.shape[0]
        flat = features.flatten(1)
        mean = flat.mean(0)
        centred = features - mean.view(1, *features.shape[1:])
        filtered = torch.fft.ifft2(self.root * torch.fft.fft2(centred, norm="ortho"), norm="ortho").real.flatten(1)
        gram = filtered @ filtered.T if n < filtered.shape[1] else filtered.T @ filtered
        cross = torch.linalg.eigvalsh(gram / (n - 1)).clamp_min(0).sqrt().sum()
        trace_x = centred.square().sum() / (n - 1)
        fd = (mean - self.mean).square().sum() + trace_x + self.root.square().sum() - 2 * cross
        return {"fd": max(float(fd), 0.0)}


def class_labels_of(seeds: Sequence[int], label_dim: int) -> Tensor | None:
    """The class id each seed is drawn for (`labels.seed_labels`), or None for an unconditional model."""
    from .labels import seed_labels

    return torch.as_tensor(seed_labels(seeds, label_dim)) if label_dim else None
