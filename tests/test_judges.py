"""Judges: the oracle's exact Frechet distance against the dense formula and the closed-form
Monte-Carlo floor, bootstrap intervals, paired differences, and the digit judge on real digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowdiff_sched.adapters.analytic import GaussianFieldCascade
from lowdiff_sched.judges import DigitJudge, OracleJudge, Score, bootstrap, class_labels_of, paired_difference, score
from lowdiff_sched.metrics import frechet_distance

ORACLES = {
    (levels, channels): GaussianFieldCascade(levels=levels, channels=channels, mean=0.3, std=0.7)
    for levels in ((4, 8), (8, 16))
    for channels in (1, 2)
}


def dense_fd(oracle: GaussianFieldCascade, samples: torch.Tensor) -> float:
    """The reference: the dense D x D Frechet distance to the oracle's exact law."""
    return frechet_distance(samples.flatten(1).double(), (oracle.mean_vector(-1), oracle.covariance(-1)))


def oracle_fd(oracle: GaussianFieldCascade, samples: torch.Tensor) -> float:
    judge = OracleJudge(oracle)
    return judge.metrics(judge.features(samples), None)["fd"]


def monte_carlo_floor(oracle: GaussianFieldCascade, n: int) -> float:
    """E[FD] of n true samples to second order in the sampling error, in closed form.

    In the DFT eigenbasis the law has variances s_i; the sample mean adds tr(S)/n, and the
    unbiased covariance has E|dS_ij|^2 = (s_i s_j + [i = j] s_i^2) / (n - 1), which the Bures
    term turns into (1/2) sum_ij E|dS_ij|^2 / (s_i + s_j)."""
    s = oracle.spectrum(-1).flatten()
    pairs = (s[:, None] * s[None, :] / (s[:, None] + s[None, :])).sum()
    return float(s.sum() / n + 0.5 * (pairs + s.sum() / 2) / (n - 1))


# ---- OracleJudge against the dense formula ----------------------------------------------------


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(
    st.sampled_from(sorted(ORACLES)),
    st.floats(0.05, 1.0),
    st.floats(0.5, 2.0),
    st.floats(-1.0, 1.0),
    st.integers(0, 2**31 - 1),
)
def test_oracle_judge_equals_dense_frechet_distance(key, fraction, scale, shift, seed):
    """With at most D + 1 samples, the N x N route gives the dense FD to 1e-6, for true,
    scaled and shifted samples alike."""
    oracle = ORACLES[key]
    d = oracle.levels[-1].numel
    n = max(3, round(fraction * (d + 1)))
    samples = oracle.sample_data(n, generator=torch.Generator().manual_seed(seed)) * scale + shift
    assert oracle_fd(oracle, samples) == pytest.approx(dense_fd(oracle, samples), rel=1e-6)


@settings(max_examples=8, deadline=None, derandomize=True, database=None)
@given(
    st.sampled_from(sorted(ORACLES)),
    st.floats(1.05, 2.0),
    st.floats(0.5, 2.0),
    st.floats(-1.0, 1.0),
    st.integers(0, 2**31 - 1),
)
def test_oracle_judge_with_more_samples_than_dimensions(key, ratio, scale, shift, seed):
    """With N > D samples the judge still gives the dense FD, to 2e-5.

    Looser than 1e-6 on purpose, see test_oracle_judge_is_exact_with_many_samples: the N x N
    Gram matrix has N - D eigenvalues that are 0 up to rounding (~1e-13 here), and the judge
    adds the square roots of the positive ones (~3e-7 each). Measured: up to 4.2e-6 relative
    at N = 2D (D = 512), 1.2e-5 at N = 3D, 1.6e-4 at N = 31D."""
    oracle = ORACLES[key]
    d = oracle.levels[-1].numel
    n = round(ratio * d)
    samples = oracle.sample_data(n, generator=torch.Generator().manual_seed(seed)) * scale + shift
    assert oracle_fd(oracle, samples) == pytest.approx(dense_fd(oracle, samples), rel=2e-5)


def test_oracle_judge_is_exact_with_many_samples():
    """Many more samples than dimensions: the judge's FD is the dense FD to 1e-6."""
    oracle = GaussianFieldCascade(levels=(4, 8), channels=1)
    samples = oracle.sample_data(2000, generator=torch.Generator().manual_seed(1))
    assert oracle_fd(oracle, samples) == pytest.approx(dense_fd(oracle, samples), rel=1e-6)


@pytest.mark.parametrize("levels, channels, n", [((4, 8), 1, 300), ((8, 16), 1, 400), ((4, 8), 2, 500)])
def test_true_samples_score_at_the_monte_carlo_floor(levels, channels, n):
    """True samples score at the closed-form sampling floor, and the law scaled by a = 1.5 at
    (a - 1)^2 tr(S) + a^2 tr(S)/n + a (floor - tr(S)/n), its second-order expectation
    (measured ratios to the prediction: 1.031-1.063 and 1.03-1.056; over ten seeds the
    floor ratio ranges 0.95-1.13)."""
    oracle = GaussianFieldCascade(levels=levels, channels=channels)
    samples = oracle.sample_data(n, generator=torch.Generator().manual_seed(0))
    floor = monte_carlo_floor(oracle, n)
    fd = oracle_fd(oracle, samples)
    assert 0.85 * floor < fd < 1.25 * floor
    a, trace = 1.5, float(oracle.spectrum(-1).sum())
    wide = oracle_fd(oracle, samples * a)  # the oracle's mean is 0: a pure scale of the law
    predicted = (a - 1) ** 2 * trace + a**2 * trace / n + a * (floor - trace / n)
    assert 0.9 * predicted < wide < 1.15 * predicted
    assert wide > 5 * fd


def test_oracle_judge_sees_a_mean_shift_exactly():
    """Shifting every sample by b adds exactly 2 b sum(mean - mu) + D b^2 to the FD."""
    oracle = GaussianFieldCascade(levels=(8, 16), channels=1)
    samples = oracle.sample_data(100, generator=torch.Generator().manual_seed(4)).double()  # N < D
    judge = OracleJudge(oracle)
    d = samples[0].numel()
    error = (samples.flatten(1).mean(0) - oracle.mean_vector(-1)).sum().item()
    gain = judge.metrics(samples + 0.2, None)["fd"] - judge.metrics(samples, None)["fd"]
    # to 1e-7: the centring direction's eigenvalue is 0 up to rounding (~1e-15), and its
    # square root (~3e-8) enters the cross term (measured difference 3.4e-8)
    assert gain == pytest.approx(2 * 0.2 * error + d * 0.04, rel=0, abs=1e-7)


# ---- bootstrap, score, paired_difference ------------------------------------------------------


def shifted_bootstrap(values: torch.Tensor, reps: int, seed: int, level: float) -> tuple[float, float]:
    """A second implementation: resample indices with the same generator, numpy's percentiles,
    shifted by the resamples' mean offset from the value."""
    generator = torch.Generator().manual_seed(seed)
    means = [float(values[torch.randint(len(values), (len(values),), generator=generator)].mean()) for _ in range(reps)]
    tail = (1 - level) / 2
    shift = float(np.mean(means)) - float(values.mean())
    return float(np.quantile(means, tail)) - shift, float(np.quantile(means, 1 - tail)) - shift


@settings(max_examples=10, deadline=None, derandomize=True, database=None)
@given(st.integers(5, 200), st.integers(10, 200), st.integers(0, 2**31 - 1), st.sampled_from([0.5, 0.9, 0.95]))
def test_bootstrap_equals_a_shifted_percentile_bootstrap_written_here(n, reps, seed, level):
    """bootstrap(statistic, n, reps, seed, level) is the percentile interval of `reps` resamples
    with replacement, shifted to centre on the value; same seed, same interval; it contains the value."""
    values = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    stat = lambda idx: {"mean": float(values.mean() if idx is None else values[idx].mean())}  # noqa: E731
    got = bootstrap(stat, n, reps, seed=seed, level=level)
    lo, hi = shifted_bootstrap(values, reps, seed, level)
    assert got["mean"] == pytest.approx((lo, hi), rel=0, abs=1e-12 * float(values.abs().max()) + 1e-14)
    assert bootstrap(stat, n, reps, seed=seed, level=level) == got
    if reps >= 50 and level == 0.95:
        assert got["mean"][0] <= float(values.mean()) <= got["mean"][1]


def test_bootstrap_without_reps_is_empty_and_seeds_matter():
    """reps = 0 gives no intervals (score then reports lo = hi = value); other seeds, other intervals."""
    values = torch.randn(50, generator=torch.Generator().manual_seed(0))
    stat = lambda idx: {"mean": float(values.mean() if idx is None else values[idx].mean())}  # noqa: E731
    assert bootstrap(stat, 50, 0) == {}
    assert bootstrap(stat, 50, 40, seed=1) != bootstrap(stat, 50, 40, seed=2)
    oracle = ORACLES[(4, 8), 1]
    samples = oracle.sample_data(40, generator=torch.Generator().manual_seed(1))
    (name, s), = score(OracleJudge(oracle), samples, reps=0).items()
    assert name == "fd" and s.lo == s.value == s.hi == oracle_fd(oracle, samples)
    assert s.to_dict() == {"value": s.value, "lo": s.lo, "hi": s.hi} and Score(**s.to_dict()) == s


def test_score_is_deterministic_for_a_seed():
    """The same samples and seed give the same scores; another seed moves the interval."""
    oracle = ORACLES[(4, 8), 1]
    judge = OracleJudge(oracle)
    samples = oracle.sample_data(60, generator=torch.Generator().manual_seed(2)) * 1.3
    first = score(judge, samples, reps=20, seed=5)
    assert first == score(judge, samples, reps=20, seed=5)
    other = score(judge, samples, reps=20, seed=6)["fd"]
    assert other.value == first["fd"].value and (other.lo, other.hi) != (first["fd"].lo, first["fd"].hi)
    assert first["fd"].lo < first["fd"].hi


def test_score_fd_interval_contains_the_value():
    """A 95% interval of the FD of true samples contains the FD itself."""
    oracle = ORACLES[(4, 8), 1]
    samples = oracle.sample_data(300, generator=torch.Generator().manual_seed(0))
    s = score(OracleJudge(oracle), samples, reps=30, seed=3)["fd"]
    assert s.lo <= s.value <= s.hi


def test_paired_difference_with_itself_is_exactly_zero():
    """metric(a) - metric(a) is 0 with interval [0, 0], whatever the resamples."""
    oracle = ORACLES[(4, 8), 2]
    samples = oracle.sample_data(80, generator=torch.Generator().manual_seed(3))
    assert paired_difference(OracleJudge(oracle), samples, samples.clone(), reps=30, seed=1) == {"fd": Score(0.0, 0.0, 0.0)}


def test_paired_interval_is_narrower_than_unpaired():
    """Two sets sharing 90% of their seeds: the paired difference is exactly the difference of
    the values, and its interval is much narrower than the unpaired one would be
    (measured: width 0.299 against sqrt(w_a^2 + w_b^2) = 0.945, ratio 0.32)."""
    oracle = ORACLES[(4, 8), 1]
    judge = OracleJudge(oracle)
    a = oracle.sample_data(300, generator=torch.Generator().manual_seed(0))
    b = a.clone()
    b[:30] = oracle.sample_data(30, generator=torch.Generator().manual_seed(9))
    b = b * 1.05
    paired = paired_difference(judge, b, a, reps=100, seed=1)["fd"]
    sa, sb = score(judge, b, reps=100, seed=1)["fd"], score(judge, a, reps=100, seed=1)["fd"]
    assert paired.value == sa.value - sb.value
    unpaired = ((sa.hi - sa.lo) ** 2 + (sb.hi - sb.lo) ** 2) ** 0.5
    assert 0 < paired.hi - paired.lo < 0.6 * unpaired


def test_paired_difference_needs_equal_counts():
    oracle = ORACLES[(4, 8), 1]
    samples = oracle.sample_data(10, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="same count, got 10 and 9"):
        paired_difference(OracleJudge(oracle), samples, samples[:9])


# ---- DigitJudge on real digits ----------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    from lowdiff_sched.datasets.mnist import load_mnist

    return DigitJudge(), *load_mnist("heldout")


def test_digit_judge_rates_held_out_digits_as_real(digits):
    """Held-out digits: accuracy above 0.95 (measured 0.978) and an FD far below pure noise's
    (measured 24.1 against 1613); noise gets chance accuracy (0.1), wrong labels almost none."""
    judge, images, labels = digits
    real = score(judge, images, labels, reps=0)
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fake = score(judge, noise, labels, reps=0)
    assert set(real) == {"fd", "accuracy"} and real["fd"].value == real["fd"].lo == real["fd"].hi
    assert real["accuracy"].value > 0.95
    assert real["fd"].value < 0.05 * fake["fd"].value
    assert fake["accuracy"].value < 0.2
    assert score(judge, images, (labels + 1) % 10, reps=0)["accuracy"].value < 0.05
    assert set(score(judge, images[:20], reps=0)) == {"fd"}  # no labels, no accuracy


def test_digit_judge_accuracy_is_the_classifier_argmax(digits):
    """accuracy is the share of features whose class-head argmax is the label; features are 128-D."""
    judge, images, labels = digits
    features = judge.features(images[:64])
    assert features.shape == (64, 128)
    with torch.no_grad():
        logits = judge.classifier(images[:64])  # eval mode: dropout off, so head(features)
    want = float((logits.argmax(1) == labels[:64]).double().mean())
    assert judge.metrics(features, labels[:64])["accuracy"] == want


def test_class_labels_of_seeds():
    """Seed s is drawn for class s % label_dim; an unconditional model has no labels."""
    assert class_labels_of([0, 7, 10, 23], 10).tolist() == [0, 7, 0, 3]
    assert class_labels_of([1, 2], 0) is None
