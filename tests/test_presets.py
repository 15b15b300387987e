"""Named presets against the configurations reported in "LowDiff: Efficient Diffusion Sampling with Low-Resolution Condition"."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lowdiff_sched import presets
from lowdiff_sched.plan import CascadePlan, pixel_ratios
from lowdiff_sched.protocol import Level
from lowdiff_sched.samplers import resolve_sampler
from lowdiff_sched.transitions import Condition, Continue, Renoise

NAMES = presets.names()
LOWDIFF_EDM = ("cifar10-3stage", "cifar10-2stage", "ffhq64-4stage", "ffhq64-2stage", "mnist-3stage", "mnist-2stage")
LOWDIFF_DIT = ("imagenet256-dit-b1", "imagenet256-dit-xl1")
# EDM's baseline step count per dataset: the lowest stage's schedule is this one, truncated
EDM_STEPS = {"cifar10": 18, "ffhq64": 40, "mnist": 18}


def cascade_for(name: str, n_levels: int) -> list[Level]:
    """Levels doubling up to the preset's final size: pixels for EDM, 32-channel latents for DiT."""
    if name.startswith("imagenet256"):
        top, channels = 16, 32
    elif name.startswith(("ffhq64", "emoji")):
        top, channels = 64, 3
    elif name.startswith("mnist"):
        top, channels = 32, 1
    else:
        assert name.startswith("cifar10"), name
        top, channels = 32, 3
    sizes = [top >> (n_levels - 1 - k) for k in range(n_levels)]
    return [Level((s, s), channels) for s in sizes]


def count_calls(stage) -> int:
    calls = [0]

    def model(x, sigma, **extra):
        calls[0] += 1
        return 0.9 * x

    torch.manual_seed(0)
    x = torch.randn(1, 1, 2, 2, dtype=stage.sigmas.dtype) * stage.sigmas[0]
    resolve_sampler(stage.sampler)(model, x, stage.sigmas, disable=True, **stage.sampler_kwargs)
    return calls[0]


def edm_karras64(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    i = np.arange(n, dtype=np.float64)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return np.append((a + i / (n - 1) * (b - a)) ** rho, 0.0)


def flow_grid64(n: int, shift: float = 0.3) -> np.ndarray:
    """LightningDiT's Euler grid as sigmas, t = 0 replaced by 1000."""
    t = np.linspace(0, 1, n + 1)
    out = np.empty(n + 1)
    out[0] = 1000.0
    tp = shift * t[1:] / (1 - (1 - shift) * t[1:])
    out[1:] = (1 - tp) / tp
    out[-1] = 0.0
    return out


def test_expected_names_present():
    for name in (*LOWDIFF_EDM, *LOWDIFF_DIT, "cifar10-edm-35", "ffhq64-edm-79"):
        assert name in NAMES
    assert len(set(NAMES)) == len(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_preset_builds_validates_and_round_trips(name):
    plan = presets.get(name)
    assert isinstance(plan, CascadePlan)
    assert plan.name == name
    assert plan.stages[-1].sigmas[-1].item() == 0.0
    for stage in plan.stages[:-1]:
        assert stage.sigmas[-1].item() > 0  # lower stages stop early (LowDiff Alg. 2)
    n = len(plan)
    assert len(presets.info(name).paper_nfe) == n
    assert plan.validate(cascade_for(name, n)) is plan
    # extra lower levels do not matter: levels count from the top
    assert plan.validate(cascade_for(name, n + 1)) is plan
    back = CascadePlan.from_json(plan.to_json())
    assert back == plan
    for a, b in zip(plan.stages, back.stages):
        assert a.sigmas.dtype == b.sigmas.dtype and torch.equal(a.sigmas, b.sigmas)
    hand_over = {"mnist-c2f": Renoise(), "mnist-continue": Continue(), "mnist-fast": Continue(),
                 "emoji-fast": Continue()}.get(name, Condition())  # the rest are LowDiff
    for stage in plan.stages[1:]:
        assert stage.transition == hand_over
    # fresh objects each time
    assert presets.get(name) is not plan and presets.get(name) == plan


@pytest.mark.parametrize("name", NAMES)
def test_stage_nfe_matches_paper(name):
    plan = presets.get(name)
    paper = presets.info(name).paper_nfe
    for i, (stage, p) in enumerate(zip(plan.stages, paper)):
        counted = count_calls(stage)
        assert stage.nfe() == counted, (name, i)
        if stage.sampler == "heun" and stage.truncated and p % 2 == 1:
            # a truncated Heun step always costs 2: an odd paper count becomes paper - 1
            assert counted == p - 1, (name, i, counted, p)
        else:
            assert counted == p, (name, i, counted, p)


@pytest.mark.parametrize("name", LOWDIFF_EDM)
def test_lowdiff_edm_sigma_ranges(name):
    """Table 10: lowest stage on EDM's (0.002, 80) schedule, conditioned stages (0.01, 50)."""
    from k_diffusion.sampling import get_sigmas_karras

    plan = presets.get(name)
    first = plan.stages[0]
    assert math.isclose(first.sigmas[0].item(), 80.0, rel_tol=1e-6)
    assert first.sampler == "heun"
    n_edm = EDM_STEPS[name.split("-")[0]]
    edm = get_sigmas_karras(n_edm, 0.002, 80.0)
    k = first.sigmas.numel()
    assert torch.equal(first.sigmas, edm[:k].to(first.sigmas.dtype))
    np.testing.assert_allclose(first.sigmas.double().numpy(), edm_karras64(n_edm, 0.002, 80.0)[:k], rtol=1e-5)
    for stage in plan.stages[1:]:
        s = stage.sigmas.double().numpy()
        assert stage.sampler == "heun"
        assert math.isclose(s[0], 50.0, rel_tol=1e-6), (name, s[0])
        pos = s[s > 0]
        assert (pos <= 50.0 * (1 + 1e-6)).all() and (pos >= 0.01 * (1 - 1e-6)).all()
    top = plan.stages[-1].sigmas.double().numpy()
    assert math.isclose(top[-2], 0.01, rel_tol=1e-5)
    n_top = len(top) - 1
    np.testing.assert_allclose(top, edm_karras64(n_top, 0.01, 50.0), rtol=1e-5)


def test_cifar10_3stage_effective_nfe():
    plan = presets.get("cifar10-3stage")
    levels = cascade_for("cifar10-3stage", 3)
    assert pixel_ratios(plan, levels) == [1 / 16, 1 / 4]
    assert plan.nfe() == [18, 12, 17]
    assert plan.effective_nfe([1 / 16, 1 / 4]) == 22  # ceil(18/16 + 12/4) + 17
    assert "effective NFE 22" in plan.describe(levels)


@pytest.mark.parametrize("name,steps,nfe", [("cifar10-edm-35", 18, 35), ("ffhq64-edm-79", 40, 79)])
def test_edm_baselines(name, steps, nfe):
    from k_diffusion.sampling import get_sigmas_karras

    plan = presets.get(name)
    assert len(plan) == 1
    stage = plan.stages[0]
    assert stage.sampler == "heun"
    assert torch.equal(stage.sigmas, get_sigmas_karras(steps, 0.002, 80.0))
    np.testing.assert_allclose(stage.sigmas.double().numpy(), edm_karras64(steps, 0.002, 80.0), rtol=1e-5)
    assert stage.nfe() == nfe == count_calls(stage)
    assert plan.effective_nfe([]) == nfe


@pytest.mark.parametrize(
    "name,grids,steps",
    [
        ("imagenet256-dit-b1", (100, 50), (45, 50)),
        ("imagenet256-dit-xl1", (100, 100), (45, 100)),
        ("imagenet256-dit-b1-baseline-100", (100,), (100,)),
        ("imagenet256-dit-xl1-baseline-250", (250,), (250,)),
    ],
)
def test_dit_presets_flow_grids(name, grids, steps):
    plan = presets.get(name)
    assert len(plan) == len(grids)
    for stage, grid, k in zip(plan.stages, grids, steps):
        assert stage.sampler == "euler"
        assert stage.sigmas.dtype == torch.float64
        assert stage.steps == k
        np.testing.assert_allclose(stage.sigmas.numpy(), flow_grid64(grid)[: k + 1], rtol=1e-12, atol=0)
        assert stage.nfe() == k == count_calls(stage)


@pytest.mark.parametrize("bad", ["cifar10", "", "CIFAR10-3STAGE", "imagenet256-dit-b2"])
def test_unknown_preset(bad):
    for fn in (presets.get, presets.info):
        with pytest.raises(ValueError) as err:
            fn(bad)
        msg = str(err.value)
        assert repr(bad) in msg or bad in msg
        for name in NAMES:
            assert name in msg
