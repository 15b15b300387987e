"""C2F-DM's schedule tools on the exact Gaussian oracle: the PCA-rank switch point and TRD."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowdiff_sched.adapters.analytic import GaussianFieldCascade
from lowdiff_sched.trd import _candidates, pca_rank, redistribute_timesteps, select_switch_sigma
from lowdiff_sched.plan import CascadePlan, StagePlan
from lowdiff_sched.schedules import karras_sigmas
from lowdiff_sched.transitions import Condition, Renoise


@pytest.fixture(scope="module")
def oracle():
    return GaussianFieldCascade(levels=(8, 16), channels=1)


def renoise_plan(low_steps: int, start: float, top_steps: int, name: str = "") -> CascadePlan:
    return CascadePlan(
        [StagePlan(0, karras_sigmas(low_steps), "heun"),
         StagePlan(1, karras_sigmas(top_steps, 0.002, start), "heun", transition=Renoise())],
        name=name,
    )


# ---- PCA rank ---------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(10, 40), st.integers(8, 30), st.integers(0, 2**31 - 1))
def test_pca_rank_of_a_subspace_is_its_dimension(k, n, d, seed):
    """n generic samples in a k-dimensional affine subspace of R^d: rank k at threshold 1."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))[0]
    samples = torch.randn(n, k, generator=gen, dtype=torch.float64) @ basis.T + torch.randn(d, generator=gen, dtype=torch.float64)
    assert pca_rank(samples, threshold=1.0 - 1e-9) == min(k, n - 1)
    assert pca_rank(samples * 7.5, threshold=1.0 - 1e-9) == min(k, n - 1)  # scale does not matter
    assert pca_rank(samples, 0.5) <= pca_rank(samples, 0.9) <= pca_rank(samples, 1.0 - 1e-9)


def test_pca_rank_closed_form():
    # centred samples with orthogonal directions of variance 0.9, 0.09, 0.01 (shares of the total)
    s = torch.tensor([0.9, 0.09, 0.01]).sqrt() * 2
    x = torch.cat([torch.diag(s), -torch.diag(s)])  # 6 samples, mean 0, variances proportional to s^2
    assert pca_rank(x, 0.85) == 1 and pca_rank(x, 0.95) == 2 and pca_rank(x, 0.995) == 3
    assert pca_rank(torch.ones(4, 3)) == 0
    with pytest.raises(ValueError, match="threshold"):
        pca_rank(x, 0.0)


def test_continuous_rank_interpolates_the_cut_index():
    s = torch.tensor([0.9, 0.09, 0.01]).sqrt() * 2
    x = torch.cat([torch.diag(s), -torch.diag(s)])
    assert pca_rank(x, 0.45, continuous=True) == pytest.approx(0.5)  # half of the first component's 0.9
    assert pca_rank(x, 0.945, continuous=True) == pytest.approx(1.5)
    for t in (0.3, 0.7, 0.95, 0.999):
        assert pca_rank(x, t) - 1 <= pca_rank(x, t, continuous=True) <= pca_rank(x, t)


def test_switch_point_is_stable_across_seeds(oracle):
    plan = renoise_plan(12, 2.0, 6)
    points = [select_switch_sigma(oracle, plan, n=64, seeds=range(base, base + 64)) for base in (0, 1000, 2000, 3000)]
    assert len({p.step for p in points}) == 1 and len({p.sigma for p in points}) == 1
    a = points[0]
    assert len(a.ranks) == 12 and a.sigmas[0] == pytest.approx(80.0)
    assert a.ranks[a.step] <= 1.05 * min(a.ranks) < a.ranks[a.step + 1]  # the end of the minimal plateau
    # on a Gaussian the x0 predictions' covariance S (S + sigma^2)^-1 S flattens as sigma falls, so
    # (beyond sampling noise at the flat start) the rank only grows
    assert all(b >= 0.99 * a for a, b in zip(a.ranks, a.ranks[1:]))


def test_switch_point_errors(oracle):
    plan = renoise_plan(6, 2.0, 4)
    with pytest.raises(ValueError, match="stage must index"):
        select_switch_sigma(oracle, plan, stage=2)
    with pytest.raises(ValueError, match="at least 2"):
        select_switch_sigma(oracle, plan, seeds=[3])


# ---- TRD ---------------------------------------------------------------------------------------


def test_candidates_lie_between_the_neighbours():
    sigmas = karras_sigmas(6).double()
    for i in range(len(sigmas) - 1):
        c = _candidates(sigmas, i, 5)
        hi = sigmas[i - 1] if i > 0 else sigmas[i]
        lo = sigmas[i + 1]
        assert len(c) == 5 and all(lo < v < hi for v in c) and c == sorted(c)


def test_trd_lowers_l2_to_the_reference_and_is_deterministic(oracle):
    plan = renoise_plan(4, 2.0, 3, name="c2f-small")
    reference = renoise_plan(40, 2.0, 30)
    result = redistribute_timesteps(oracle, plan, reference, n_calib=16, n_candidates=3, max_iter=2)
    assert result.l2_after < result.l2_before  # strictly lower on the oracle
    assert result.plan.nfe() == plan.nfe() and result.plan.name == "c2f-small-trd"
    assert result.evaluations > 1 and result.sweeps >= 1
    again = redistribute_timesteps(oracle, plan, reference, n_calib=16, n_candidates=3, max_iter=2)
    assert again.plan == result.plan and again.l2_after == result.l2_after
    # the tuned plan's L2, measured independently, is what TRD reported
    from lowdiff_sched.sampling import sample_cascade

    x, ref = (sample_cascade(oracle, p, seeds=range(16)).double() for p in (result.plan, reference))
    assert float((x - ref).square().mean()) == pytest.approx(result.l2_after, rel=1e-9)


def test_trd_never_raises_l2(oracle):
    """Starting from the reference itself (L2 = 0), nothing can improve and nothing moves."""
    plan = renoise_plan(4, 2.0, 3)
    result = redistribute_timesteps(oracle, plan, plan, n_calib=4, n_candidates=2, max_iter=3)
    assert result.l2_before == 0 and result.l2_after == 0 and result.plan.stages == plan.stages and result.sweeps == 1


def test_trd_errors(oracle):
    plan = renoise_plan(4, 2.0, 3)
    lowdiff = CascadePlan([StagePlan(0, karras_sigmas(6)[:4], "heun"), StagePlan(1, karras_sigmas(4, 0.01, 50.0), "heun", transition=Condition())])
    with pytest.raises(ValueError, match="same transitions"):
        redistribute_timesteps(oracle, plan, lowdiff, n_calib=2)
    single = CascadePlan([StagePlan(1, karras_sigmas(4), "heun")])
    with pytest.raises(ValueError, match="same levels"):
        redistribute_timesteps(oracle, plan, single, n_calib=2)
    with pytest.raises(ValueError, match="n_candidates"):
        redistribute_timesteps(oracle, plan, plan, n_candidates=0)


def test_tune_steps_cli_writes_a_plan_that_sample_uses(tmp_path):
    from typer.testing import CliRunner

    from lowdiff_sched.cli.app import app

    def levels(p: CascadePlan) -> CascadePlan:  # the gaussian-field model has levels 8/16/32: run 16 -> 32
        return CascadePlan([StagePlan(s.level - 2, s.sigmas, s.sampler, transition=s.transition) for s in p.stages], name=p.name)

    plan, ref = tmp_path / "c2f.json", tmp_path / "ref.json"
    plan.write_text(levels(renoise_plan(3, 2.0, 2, name="c2f")).to_json())
    ref.write_text(levels(renoise_plan(20, 2.0, 12)).to_json())
    out = tmp_path / "tuned.json"
    runner = CliRunner()
    result = runner.invoke(app, ["tune-steps", "--model", "gaussian-field", "--plan", str(plan), "--reference", str(ref), "--out", str(out),
                                 "--n-calib", "4", "--candidates", "2", "--max-iter", "1"])
    assert result.exit_code == 0, result.output
    assert "L2 to the reference" in result.stdout and "->" in result.stdout
    tuned = CascadePlan.from_json(out.read_text())
    assert tuned.name == "c2f-trd" and tuned.nfe() == CascadePlan.from_json(plan.read_text()).nfe()
    result = runner.invoke(app, ["sample", "--model", "gaussian-field", "--plan", str(out), "--seeds", "0-1", "--out", str(tmp_path / "s"), "--no-progress"])
    assert result.exit_code == 0, result.output
    bad = runner.invoke(app, ["tune-steps", "--model", "gaussian-field", "--plan", str(plan), "--reference", "cifar10-edm-35", "--out", str(out)])
    assert bad.exit_code == 2 and "same levels" in bad.stderr


# ---- C2F-DM's resolution-label retrofit of an EDM network (1DM-label) ---------------------------


def tiny_edm(label_dim=0):
    from lowdiff_sched.adapters.edm.networks import EDMPrecond

    torch.manual_seed(0)
    net = EDMPrecond(16, 1, label_dim=label_dim, model_type="SongUNet", model_channels=16, channel_mult=[1, 2], num_blocks=1,
                     attn_resolutions=[], dropout=0.0, embedding_type="positional", encoder_type="standard",
                     decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1])
    return net.eval()


def test_c2f_retrofit_starts_as_the_original_network_at_every_size():
    from lowdiff_sched.adapters.edm.c2f import C2FUNet

    net = tiny_edm(label_dim=3)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a fresh EDM network's output convs are zero: give it weights that show
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model = C2FUNet.from_edm(net, (8, 16))
    labels = torch.nn.functional.one_hot(torch.tensor([0, 2]), 3).float()
    with torch.no_grad():
        for level, size in enumerate((8, 16)):
            x = torch.randn(2, 1, size, size, generator=gen)
            sigma = torch.tensor([0.3, 5.0])
            torch.testing.assert_close(model.denoise(x, sigma, level=level, class_labels=labels), net(x, sigma, class_labels=labels))
        model.level_embed.weight.data.normal_()
        x = torch.randn(2, 1, 8, 8, generator=gen)
        assert not torch.allclose(model.denoise(x, sigma, level=0, class_labels=labels), net(x, sigma, class_labels=labels))
    assert model.parameter_overhead == 2 * net.model.map_layer0.in_features
    with pytest.raises(ValueError, match="unconditional"):
        model.denoise(x, sigma, level=0, cond=x)
    with pytest.raises(ValueError, match="multiples of 2"):
        C2FUNet.from_edm(net, (5, 16))


def test_c2f_training_alternates_levels_and_runs_end_to_end(tmp_path):
    """train --method c2f: one level per step in turn, each unconditional; then sample with Renoise."""
    import json

    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from lowdiff_sched.adapters.edm.c2f import C2FUNet
    from lowdiff_sched.runs import load_run
    from lowdiff_sched.cli.app import app
    from lowdiff_sched.training import TrainConfig

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(data / f"{i}.png")
    config = tmp_path / "c2f.json"
    config.write_text(json.dumps({
        "init": {"class_name": "EDMPrecond", "init_kwargs": {
            "img_resolution": 16, "img_channels": 1, "model_type": "SongUNet", "model_channels": 16, "channel_mult": [1, 2],
            "num_blocks": 1, "attn_resolutions": [], "dropout": 0.0}},
        "data": str(data), "levels": [8, 16], "method": "c2f", "out": str(tmp_path / "run"), "batch": 2, "steps": 4,
        "checkpoint_every": 0, "train": {"log_every": 1},
    }))
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--config", str(config), "--no-progress"])
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [sorted(r["levels"]) for r in log] == [["0"], ["1"], ["0"], ["1"]]  # alternating low / high batches
    assert all(r["loss"] == r["levels"][next(iter(r["levels"]))] for r in log)
    assert TrainConfig.from_json((tmp_path / "run" / "train_config.json").read_text()).alternate_levels
    model = load_run(tmp_path / "run")
    assert isinstance(model, C2FUNet) and model.level_sizes == (8, 16)
    plan = tmp_path / "plan.json"
    plan.write_text(renoise_plan(3, 2.0, 2, name="c2f").to_json())
    result = runner.invoke(app, ["sample", "--model", str(tmp_path / "run"), "--plan", str(plan), "--seeds", "0-1",
                                 "--out", str(tmp_path / "s"), "--no-progress"])
    assert result.exit_code == 0, result.output
