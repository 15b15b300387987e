"""Shared test doubles: a tiny cascade whose denoiser is closed-form and records its calls."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, the Triton kernels run in Triton's interpreter; it must be chosen before
# the kernels are compiled (decorated), so before any test imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lowdiff_sched.protocol import Level

# Keep CPU thread count fixed so timings and float reductions repeat across runs
# (OMP_NUM_THREADS, when set, decides: e.g. 1 beside a training job).
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1)))


class IidCascade:
    """Levels 4/8/16 of iid Gaussian pixels N(0, s_l^2), with s_l the std of a mean-pooled
    iid top level (s / f). The denoiser is the exact posterior mean, plus a small linear use
    of `cond` and of a per-sample `label` extra argument, so tests can see both flow in.
    Every call is recorded as (level, batch, sigma, cond, cond_sigma, x)."""

    def __init__(self, sizes=(4, 8, 16), channels: int = 2, std: float = 0.5, cond_weight: float = 0.05) -> None:
        self.levels = tuple(Level((s, s), channels) for s in sizes)
        self.std = [std * s / sizes[-1] for s in sizes]
        self.cond_weight = cond_weight
        self.calls: list[tuple] = []

    def denoise(self, x, sigma, *, level, cond=None, cond_sigma=None, label=None, **extra):
        assert sigma.shape == (x.shape[0],)
        self.calls.append((level, x.shape[0], sigma.clone(), cond, cond_sigma, x.clone()))
        var = self.std[level] ** 2
        out = x * (var / (var + sigma.view(-1, 1, 1, 1) ** 2))
        if cond is not None:
            out = out + self.cond_weight * cond
        if label is not None:
            out = out + 0.01 * label.view(-1, 1, 1, 1).to(x.dtype)
        return out


@pytest.fixture
def iid_cascade() -> IidCascade:
    return IidCascade()


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory):
    """torch-fidelity's InceptionV3, randomly initialised (seeded), saved as a weights file:
    the real weights' stand-in, so the FID pipeline runs without them."""
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fe

    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    with mock.patch.object(fe, "load_state_dict_from_url", return_value=None), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict"), torch.random.fork_rng():
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)
    return path
