"""gaussian_stats and frechet_distance against closed forms and a scipy.linalg.sqrtm reference."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowdiff_sched.metrics import frechet_distance, gaussian_stats

HYP = settings(max_examples=25, deadline=None, derandomize=True, database=None)


def reference_fd(m1, S1, m2, S2) -> float:
    covmean = scipy.linalg.sqrtm(S1 @ S2)
    return float(np.sum((m1 - m2) ** 2) + np.trace(S1) + np.trace(S2) - 2 * np.trace(covmean).real)


def random_spd(rng: np.random.Generator, d: int, ridge: float = 0.1) -> np.ndarray:
    a = rng.uniform(-2, 2, size=(d, d))
    return a @ a.T + ridge * np.eye(d)


# ------------------------------------------------------------------ gaussian_stats


def test_gaussian_stats_matches_numpy_and_flattens():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 2, 3, 2)).astype(np.float32)
    mean, cov = gaussian_stats(x)
    assert mean.dtype == torch.float64 and cov.dtype == torch.float64
    assert mean.shape == (12,) and cov.shape == (12, 12)
    flat = x.reshape(50, -1).astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(flat, rowvar=False), rtol=1e-10, atol=1e-13)
    t_mean, t_cov = gaussian_stats(torch.from_numpy(x))
    torch.testing.assert_close(t_mean, mean)
    torch.testing.assert_close(t_cov, cov)


def test_gaussian_stats_rejects_bad_samples():
    with pytest.raises(ValueError, match="at least 2 samples"):
        gaussian_stats(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="samples contains NaN"):
        gaussian_stats(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="samples contains NaN or inf"):
        gaussian_stats(torch.tensor([[0.0, float("inf")], [1.0, 2.0]]))
    with pytest.raises(TypeError, match="samples must be"):
        gaussian_stats([[0.0, 1.0], [1.0, 2.0]])


# ------------------------------------------------------------------ closed forms


def test_identical_gaussians_have_zero_distance():
    rng = np.random.default_rng(1)
    m, S = rng.normal(size=6), random_spd(rng, 6)
    assert abs(frechet_distance((m, S), (m, S))) < 1e-9 * np.trace(S)
    x = rng.normal(size=(40, 6))
    assert abs(frechet_distance(x, x)) < 1e-9


@HYP
@given(st.floats(-5, 5), st.floats(0.0, 3.0), st.floats(-5, 5), st.floats(0.0, 3.0))
def test_one_dimensional_closed_form(m1, s1, m2, s2):
    fd = frechet_distance((np.array([m1]), np.array([[s1**2]])), (np.array([m2]), np.array([[s2**2]])))
    assert fd == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, rel=1e-9, abs=1e-9)


@HYP
@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_diagonal_closed_form(d, seed):
    rng = np.random.default_rng(seed)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0, 3, size=d), rng.uniform(0, 3, size=d)
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    fd = frechet_distance((torch.from_numpy(m1), torch.diag(torch.from_numpy(v1))), (m2, np.diag(v2)))
    assert fd == pytest.approx(expected, rel=1e-9, abs=1e-10)


def test_singular_covariances():
    """Rank-deficient covariances (eigenvalues exactly 0) are fine: N(0, e1 e1^T) vs N(0, e2 e2^T) is 2."""
    z = np.zeros(2)
    assert frechet_distance((z, np.diag([1.0, 0.0])), (z, np.diag([0.0, 1.0]))) == pytest.approx(2.0, abs=1e-12)
    # Fewer samples than dimensions: a singular sample covariance.
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(5, 20)), rng.normal(size=(5, 20))
    ma, Sa = gaussian_stats(a)
    mb, Sb = gaussian_stats(b)
    expected = reference_fd(ma.numpy(), Sa.numpy(), mb.numpy(), Sb.numpy())
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


# -------------------------------------------------------------- reference + symmetry


@HYP
@given(st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_matches_sqrtm_reference_and_is_symmetric(d, seed):
    rng = np.random.default_rng(seed)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    S1, S2 = random_spd(rng, d), random_spd(rng, d)
    fd = frechet_distance((m1, S1), (m2, S2))
    assert fd == pytest.approx(reference_fd(m1, S1, m2, S2), rel=1e-7, abs=1e-9)
    assert frechet_distance((m2, S2), (m1, S1)) == pytest.approx(fd, rel=1e-9, abs=1e-10)
    # Translating both means together changes nothing; scaling both by c scales FD by c^2.
    shift = rng.normal(size=d)
    assert frechet_distance((m1 + shift, S1), (m2 + shift, S2)) == pytest.approx(fd, rel=1e-9, abs=1e-10)
    assert frechet_distance((3 * m1, 9 * S1), (3 * m2, 9 * S2)) == pytest.approx(9 * fd, rel=1e-8, abs=1e-9)


def test_samples_and_moments_agree():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(300, 2, 2, 2)) * np.linspace(0.5, 2, 8).reshape(2, 2, 2)
    b = rng.normal(size=(200, 8)) + 0.3
    fd = frechet_distance(a, b)
    assert fd == pytest.approx(frechet_distance(gaussian_stats(a), gaussian_stats(b)), rel=1e-12)
    assert fd == pytest.approx(frechet_distance(torch.from_numpy(a).float(), gaussian_stats(b)), rel=1e-5)
    assert fd == pytest.approx(frechet_distance(b, a), rel=1e-9)
    ma, Sa = gaussian_stats(a)
    mb, Sb = gaussian_stats(b)
    assert fd == pytest.approx(reference_fd(ma.numpy(), Sa.numpy(), mb.numpy(), Sb.numpy()), rel=1e-8)


def test_sample_estimate_converges_to_population_value():
    rng = np.random.default_rng(4)
    m1, m2 = np.zeros(3), np.array([1.0, 0.0, -1.0])
    S1, S2 = random_spd(rng, 3), random_spd(rng, 3)
    x = rng.multivariate_normal(m1, S1, size=200_000)
    y = rng.multivariate_normal(m2, S2, size=200_000)
    assert frechet_distance(x, y) == pytest.approx(reference_fd(m1, S1, m2, S2), rel=0.02)


# ------------------------------------------------------------------------ errors


def test_bad_arguments_raise():
    m, S = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance((m, S), (np.zeros(2), np.eye(2)))
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(np.zeros((4, 3)) + np.arange(4)[:, None], np.ones((4, 5)))
    with pytest.raises(ValueError, match="b cov must be a square matrix"):
        frechet_distance((m, S), (m, np.ones((3, 2))))
    with pytest.raises(ValueError, match="a cov has shape"):
        frechet_distance((m, np.eye(4)), (m, S))
    with pytest.raises(ValueError, match="a mean must be 1-D"):
        frechet_distance((np.zeros((3, 1)), S), (m, S))
    with pytest.raises(ValueError, match="b cov is not symmetric"):
        frechet_distance((m, S), (m, np.triu(np.ones((3, 3)))))
    with pytest.raises(ValueError, match="a cov is not positive semi-definite"):
        frechet_distance((m, -np.eye(3)), (m, S))
    with pytest.raises(ValueError, match="b mean contains NaN"):
        frechet_distance((m, S), (np.array([0.0, np.nan, 0.0]), S))
    with pytest.raises(ValueError, match="a cov contains NaN or inf"):
        frechet_distance((m, np.diag([1.0, np.inf, 1.0])), (m, S))
    with pytest.raises(ValueError, match="a needs at least 2 samples"):
        frechet_distance(np.zeros((1, 3)), (m, S))
    with pytest.raises(ValueError, match="b must be samples .* or a \\(mean, cov\\) pair"):
        frechet_distance((m, S), (m, S, S))
    with pytest.raises(TypeError, match="a must be a torch.Tensor or numpy.ndarray"):
        frechet_distance("samples", (m, S))
