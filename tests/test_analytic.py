"""GaussianFieldCascade against independent dense references.

The references here never touch the module's Fourier tables: covariances are built from
an explicit DFT matrix and explicit pooling matrices, posterior means by dense Gaussian
conditioning, and the probability-flow map by k-diffusion's own Heun solver.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowdiff_sched.adapters.analytic import GaussianFieldCascade
from lowdiff_sched.metrics import frechet_distance
from lowdiff_sched.protocol import Level, ResolutionCascade, stage_denoiser
from lowdiff_sched.resample import downsample, upsample

HYP = settings(max_examples=12, deadline=None, derandomize=True, database=None)

# Tiny cascades: squares, three levels, and one non-square.
CONFIGS = [
    ((2, 4), 1),
    ((2, 4), 2),
    ((2, 4, 8), 1),
    ((2, 4, 8), 2),
    (((2, 3), (4, 6)), 1),
    (((2, 3), (4, 6)), 2),
]


# --------------------------------------------------------------- dense reference


def _size(entry) -> tuple[int, int]:
    return (entry, entry) if isinstance(entry, int) else tuple(entry)


def dft_matrix(n: int) -> np.ndarray:
    k = np.arange(n)
    return np.exp(-2j * np.pi * np.outer(k, k) / n) / np.sqrt(n)


def pool_matrix(size: tuple[int, int], f: int, channels: int) -> np.ndarray:
    """Block mean pooling by f of a flattened (C, H, W) image, as a matrix."""

    def pool1(n: int) -> np.ndarray:
        p = np.zeros((n // f, n))
        p[np.arange(n) // f, np.arange(n)] = 1.0 / f
        return p

    return np.kron(np.eye(channels), np.kron(pool1(size[0]), pool1(size[1])))


def reference_spectrum(size, channels, alpha, k0, std) -> np.ndarray:
    h, w = size
    ky = np.fft.fftfreq(h, 1.0 / h)[:, None]
    kx = np.fft.fftfreq(w, 1.0 / w)[None, :]
    shape = (ky**2 + kx**2 + k0**2) ** (-alpha / 2)
    std = np.broadcast_to(np.asarray(std, dtype=float), (channels,))
    return np.stack([s**2 * h * w * shape / shape.sum() for s in std])


class Dense:
    """Means, covariances and pooling matrices of every level, built densely."""

    def __init__(self, levels, channels, alpha=3.0, k0=1.0, mean=0.0, std=0.5):
        self.sizes = [_size(e) for e in levels]
        self.channels = channels
        mean = np.broadcast_to(np.asarray(mean, dtype=float), (channels,))
        top = self.sizes[-1]
        S = reference_spectrum(top, channels, alpha, k0, std)
        F = np.kron(dft_matrix(top[0]), dft_matrix(top[1]))
        cov = scipy.linalg.block_diag(*[(F.conj().T @ np.diag(s.ravel()) @ F).real for s in S])
        self.S_top = S
        self.cov = [cov]
        self.pool = [None]  # pool[l]: level l -> level l - 1
        for lo, hi in zip(self.sizes[-2::-1], self.sizes[::-1]):
            P = pool_matrix(hi, hi[0] // lo[0], channels)
            self.pool.insert(1, P)
            self.cov.insert(0, P @ self.cov[0] @ P.T)
        self.mean = [np.repeat(mean, h * w) for h, w in self.sizes]

    def denoise(self, l: int, x: np.ndarray, sigma: float) -> np.ndarray:
        C, mu = self.cov[l], self.mean[l]
        return mu + C @ np.linalg.solve(C + sigma**2 * np.eye(len(mu)), x - mu)

    def denoise_cond(self, l: int, x: np.ndarray, z: np.ndarray, sigma: float, cond_sigma: float) -> np.ndarray:
        C, mu, P = self.cov[l], self.mean[l], self.pool[l]
        d, dz = len(mu), P.shape[0]
        joint = np.block(
            [[C + sigma**2 * np.eye(d), C @ P.T], [P @ C, P @ C @ P.T + cond_sigma**2 * np.eye(dz)]]
        )
        cross = np.hstack([C, C @ P.T])
        obs = np.concatenate([x - mu, z - self.mean[l - 1]])
        return mu + cross @ np.linalg.solve(joint, obs)


def _flat(t: torch.Tensor) -> np.ndarray:
    return t.reshape(t.shape[0], -1).numpy()


# ------------------------------------------------------------ spectra, covariance


@pytest.mark.parametrize("levels,channels", CONFIGS)
def test_covariance_and_mean_match_dense_pooling(levels, channels):
    kw = dict(alpha=2.5, k0=0.7, mean=[0.3, -0.1][:channels], std=[0.5, 1.2][:channels])
    cascade = GaussianFieldCascade(levels, channels=channels, **kw)
    dense = Dense(levels, channels, **kw)
    np.testing.assert_allclose(cascade.spectrum(-1).numpy(), dense.S_top, rtol=1e-12)
    for l in range(len(levels)):
        np.testing.assert_allclose(cascade.covariance(l).numpy(), dense.cov[l], atol=1e-12)
        np.testing.assert_allclose(cascade.mean_vector(l).numpy(), dense.mean[l], atol=0)
        # The level's spectrum is the diagonal of its covariance in the orthonormal DFT basis.
        h, w = dense.sizes[l]
        F = np.kron(np.eye(channels), np.kron(dft_matrix(h), dft_matrix(w)))
        diag = np.diag(F @ dense.cov[l] @ F.conj().T).real.reshape(channels, h, w)
        np.testing.assert_allclose(cascade.spectrum(l).numpy(), diag, atol=1e-12)
    # std is the marginal std of every top-level pixel.
    np.testing.assert_allclose(
        cascade.covariance(-1).diagonal().numpy(), np.repeat(np.square(kw["std"]), np.prod(dense.sizes[-1]))
    )


# ----------------------------------------------------------------- denoisers


def _config_and_inputs(data, conditional: bool):
    levels, channels = data.draw(st.sampled_from(CONFIGS), label="config")
    alpha = data.draw(st.floats(0.5, 4.0), label="alpha")
    k0 = data.draw(st.floats(0.3, 2.0), label="k0")
    lo = 1 if conditional else 0
    l = data.draw(st.integers(lo, len(levels) - 1), label="level")
    sigmas = data.draw(st.lists(st.floats(0.02, 5.0), min_size=3, max_size=3), label="sigmas")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    kw = dict(alpha=alpha, k0=k0, mean=[0.2, -0.4][:channels], std=[0.7, 0.3][:channels])
    return levels, channels, kw, l, sigmas, np.random.default_rng(seed)


@HYP
@given(st.data())
def test_unconditional_denoiser_matches_dense(data):
    levels, channels, kw, l, sigmas, rng = _config_and_inputs(data, conditional=False)
    cascade = GaussianFieldCascade(levels, channels=channels, **kw)
    dense = Dense(levels, channels, **kw)
    h, w = dense.sizes[l]
    x = torch.from_numpy(rng.normal(size=(3, channels, h, w)) * 1.5)
    out = cascade.denoise(x, torch.tensor(sigmas, dtype=torch.float64), level=l)
    assert out.dtype == torch.float64 and out.shape == x.shape
    expected = np.stack([dense.denoise(l, xi, s) for xi, s in zip(_flat(x), sigmas)])
    np.testing.assert_allclose(_flat(out), expected, atol=1e-8)


@HYP
@given(st.data())
def test_conditional_denoiser_matches_dense(data):
    levels, channels, kw, l, sigmas, rng = _config_and_inputs(data, conditional=True)
    cond_sigmas = data.draw(
        st.lists(st.just(0.0) | st.floats(0.0, 3.0), min_size=3, max_size=3), label="cond_sigmas"
    )
    cascade = GaussianFieldCascade(levels, channels=channels, **kw)
    dense = Dense(levels, channels, **kw)
    size, low = dense.sizes[l], dense.sizes[l - 1]
    x = torch.from_numpy(rng.normal(size=(3, channels, *size)))
    z = torch.from_numpy(rng.normal(size=(3, channels, *low)))
    cond = upsample(z, size, "nearest")
    out = cascade.denoise(
        x, torch.tensor(sigmas, dtype=torch.float64), level=l, cond=cond, cond_sigma=torch.tensor(cond_sigmas)
    )
    expected = np.stack(
        [dense.denoise_cond(l, xi, zi, s, cs) for xi, zi, s, cs in zip(_flat(x), _flat(z), sigmas, cond_sigmas)]
    )
    np.testing.assert_allclose(_flat(out), expected, atol=1e-8)


def test_conditional_denoiser_cond_sigma_forms_agree():
    """None == 0, a float == a [B] tensor, and level=-1 == level=L-1."""
    cascade = GaussianFieldCascade(((2, 3), (4, 6)), channels=2)
    dense = Dense(((2, 3), (4, 6)), 2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 4, 6, generator=g, dtype=torch.float64)
    z = torch.randn(2, 2, 2, 3, generator=g, dtype=torch.float64)
    cond = upsample(z, (4, 6))
    clean = cascade.denoise(x, 0.8, level=1, cond=cond)
    np.testing.assert_allclose(
        _flat(clean), np.stack([dense.denoise_cond(1, xi, zi, 0.8, 0.0) for xi, zi in zip(_flat(x), _flat(z))]),
        atol=1e-8,
    )
    torch.testing.assert_close(
        clean, cascade.denoise(x, torch.tensor(0.8, dtype=torch.float64), level=-1, cond=cond, cond_sigma=0.0),
        rtol=0, atol=1e-14,
    )
    a = cascade.denoise(x, torch.full((2,), 0.8, dtype=torch.float64), level=1, cond=cond, cond_sigma=0.5)
    b = cascade.denoise(x, 0.8, level=-1, cond=cond, cond_sigma=torch.full((2,), 0.5))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_denoiser_limits():
    """sigma = 0 returns x; an uninformative condition gives the unconditional denoiser;
    a clean condition is reproduced exactly by the pooled estimate."""
    cascade = GaussianFieldCascade((4, 8), channels=2, mean=0.3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 8, 8, generator=g, dtype=torch.float64)
    cond = upsample(torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64), (8, 8))
    torch.testing.assert_close(cascade.denoise(x, 0.0, level=1), x, rtol=0, atol=1e-13)
    torch.testing.assert_close(cascade.denoise(x, 0.0, level=1, cond=cond, cond_sigma=0.0), x, rtol=0, atol=1e-13)
    torch.testing.assert_close(
        cascade.denoise(x, 0.9, level=1, cond=cond, cond_sigma=1e7), cascade.denoise(x, 0.9, level=1), atol=1e-9, rtol=0
    )
    d = cascade.denoise(x, 2.0, level=1, cond=cond, cond_sigma=0.0)
    torch.testing.assert_close(downsample(d, (4, 4)), downsample(cond, (4, 4)), rtol=0, atol=1e-12)


def test_denoise_dtype_extras_and_protocol():
    cascade = GaussianFieldCascade((4, 8), channels=1)
    assert isinstance(cascade, ResolutionCascade)
    assert cascade.levels == (Level((4, 4), 1), Level((8, 8), 1))
    assert "GaussianFieldCascade" in repr(cascade)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    out = cascade.denoise(x, torch.tensor([0.5, 2.0]), level=1, class_labels=torch.tensor([1, 2]))
    assert out.dtype == torch.float32
    ref = cascade.denoise(x.double(), torch.tensor([0.5, 2.0]), level=1)
    torch.testing.assert_close(out, ref.float())
    model = stage_denoiser(cascade, -1)
    torch.testing.assert_close(model(x, torch.tensor([0.5, 2.0]), foo="ignored"), out)
    # Level objects are accepted as levels.
    same = GaussianFieldCascade((Level((4, 4), 1), Level((8, 8), 1)), channels=1)
    torch.testing.assert_close(same.denoise(x, 0.5, level=-1), cascade.denoise(x, 0.5, level=1))


# -------------------------------------------------------------------- sampling


def test_sample_data_moments_match_covariance():
    cascade = GaussianFieldCascade((4, 8), channels=2, mean=(0.5, -1.0), std=(0.5, 0.25))
    n = 20000
    x = cascade.sample_data(n, generator=torch.Generator().manual_seed(0))
    assert x.shape == (n, 2, 8, 8) and x.dtype == torch.float32
    flat = x.double().reshape(n, -1)
    np.testing.assert_allclose(flat.mean(0).numpy(), cascade.mean_vector().numpy(), atol=0.03)
    emp = torch.cov(flat.T)
    assert (emp - cascade.covariance()).abs().max() < 0.015
    # Seeded: same generator state, same samples.
    again = cascade.sample_data(n, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


def test_downsampled_top_samples_match_lower_level():
    cascade = GaussianFieldCascade((2, 4, 8), channels=1, mean=0.2, alpha=2.0)
    n = 20000
    top = cascade.sample_data(n, -1, torch.Generator().manual_seed(1))
    pooled = downsample(top.double(), (2, 2))
    low = cascade.sample_data(n, 0, torch.Generator().manual_seed(2))
    low_b = cascade.sample_data(n, 0, torch.Generator().manual_seed(3))
    truth = (cascade.mean_vector(0), cascade.covariance(0))
    for s in (pooled, low):
        emp = torch.cov(s.double().reshape(n, -1).T)
        assert (emp - truth[1]).abs().max() < 0.01
    # Two-sample check on the same scale as two independent draws of the lower level.
    assert frechet_distance(pooled, low) < 3 * frechet_distance(low, low_b) + 1e-4


@pytest.fixture
def one_thread():
    """The ODE tests run thousands of tiny FFTs: intra-op threads only add synchronisation,
    which stalls badly when the machine is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def test_flow_map_matches_heun_ode_solve(one_thread):
    from k_diffusion.sampling import sample_heun

    cascade = GaussianFieldCascade(((2, 3), (4, 6), (8, 12)), channels=2, mean=(0.4, -0.2), std=(0.5, 1.0))
    g = torch.Generator().manual_seed(5)
    for level in (1, 2):
        shape = cascade.levels[level].shape
        x = cascade.sample_data(3, level, g).double() + 80.0 * torch.randn(3, *shape, generator=g, dtype=torch.float64)
        exact = cascade.flow_map(x, 80.0, 0.05, level=level)
        err = {}
        for steps in (200, 400):
            ode = sample_heun(stage_denoiser(cascade, level), x, _karras(steps, 0.05, 80.0), disable=True)
            err[steps] = (ode - exact).abs().max().item()
        # Heun converges to the exact map at second order: halving the step quarters the error.
        assert err[400] < 2e-4, err
        assert 3.0 < err[200] / err[400] < 5.0, err
    # Per-sample sigmas, identity and composition.
    x = torch.randn(2, 2, 8, 12, generator=g, dtype=torch.float64)
    torch.testing.assert_close(cascade.flow_map(x, 3.0, 3.0), x, rtol=0, atol=1e-13)
    mid = cascade.flow_map(x, torch.tensor([5.0, 2.0]), torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(
        cascade.flow_map(mid, torch.tensor([1.0, 0.5]), 0.1),
        cascade.flow_map(x, torch.tensor([5.0, 2.0]), 0.1),
        rtol=0, atol=1e-12,
    )


def test_heun_sampling_reproduces_distribution(one_thread):
    from k_diffusion.sampling import get_sigmas_karras, sample_euler, sample_heun

    cascade = GaussianFieldCascade((8,), channels=2, mean=(0.3, -0.3), std=(0.5, 0.8))
    truth = (cascade.mean_vector(), cascade.covariance())
    n = 2000
    g = torch.Generator().manual_seed(11)
    noise = torch.randn(n, 2, 8, 8, generator=g, dtype=torch.float64)
    x_T = cascade.mean_vector().view(1, 2, 8, 8) + 80.0 * noise
    model = stage_denoiser(cascade, 0)
    good = sample_heun(model, x_T, get_sigmas_karras(18, 0.002, 80.0).double(), disable=True)
    # A first-order sampler with 10 steps: plausible-looking, but measurably off.
    bad = sample_euler(model, x_T, get_sigmas_karras(10, 0.002, 80.0).double(), disable=True)
    fd_true = frechet_distance(cascade.sample_data(n, generator=g), truth)  # finite-N floor, about 0.45
    bound = 2 * fd_true + 0.02
    fd_good = frechet_distance(good, truth)
    fd_bad = frechet_distance(bad, truth)
    assert fd_good < bound, (fd_good, fd_true)
    assert fd_bad > 2 * bound, (fd_bad, fd_true)


# ------------------------------------------------------------------ bad input


def test_bad_input_raises():
    cascade = GaussianFieldCascade((4, 8), channels=2)
    x = torch.zeros(2, 2, 8, 8)
    with pytest.raises(ValueError, match="level >= 1"):
        cascade.denoise(torch.zeros(2, 2, 4, 4), 1.0, level=0, cond=torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="cond"):
        cascade.denoise(x, 1.0, level=1, cond=torch.zeros(2, 2, 4, 4))  # previous level's size
    with pytest.raises(ValueError, match="cond"):
        cascade.denoise(x, 1.0, level=1, cond=torch.zeros(2, 1, 8, 8))  # channels
    with pytest.raises(ValueError, match="cond.*batch"):
        cascade.denoise(x, 1.0, level=1, cond=torch.zeros(3, 2, 8, 8))
    with pytest.raises(ValueError, match="cond_sigma"):
        cascade.denoise(x, 1.0, level=1, cond=x, cond_sigma=torch.ones(3))
    with pytest.raises(ValueError, match="sigma"):
        cascade.denoise(x, torch.ones(3), level=1)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 2, 8, 8\]"):
        cascade.denoise(torch.zeros(2, 2, 4, 4), 1.0, level=1)
    with pytest.raises(ValueError, match="level 2"):
        cascade.denoise(x, 1.0, level=2)
    with pytest.raises(ValueError, match="cond_mode.*'bilinear'"):
        GaussianFieldCascade((4, 8), cond_mode="bilinear")
    with pytest.raises(ValueError, match=r"levels\[1\].*\(6, 6\).*\(4, 4\)"):
        GaussianFieldCascade((4, 6))
    with pytest.raises(ValueError, match=r"levels\[1\]"):
        GaussianFieldCascade(((2, 3), (4, 9)))  # factors 2 and 3
    with pytest.raises(ValueError, match="strictly increase"):
        GaussianFieldCascade((4, 4))
    with pytest.raises(ValueError, match=r"levels\[0\] has 1 channels"):
        GaussianFieldCascade((Level((4, 4), 1),), channels=3)
    with pytest.raises(ValueError, match="std"):
        GaussianFieldCascade((4,), std=0.0)
    with pytest.raises(ValueError, match="mean"):
        GaussianFieldCascade((4,), channels=3, mean=(0.0, 1.0))
    with pytest.raises(ValueError, match="k0"):
        GaussianFieldCascade((4,), k0=0.0)
    with pytest.raises(ValueError, match="levels"):
        GaussianFieldCascade(())
