"""LevelStack and its distillation: the top level stays the original network, the lower
levels learn the top level's pooled predictions, runs save and load, the CLI trains one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lowdiff_sched.adapters.edm.lowdiff import cascade_of
from lowdiff_sched.runs import build_from_spec, spec_of
from lowdiff_sched.adapters.edm.networks import EDMPrecond
from lowdiff_sched.adapters.edm.stack import LevelStack
from lowdiff_sched.cli.app import app
from lowdiff_sched.plan import CascadePlan, StagePlan
from lowdiff_sched.resample import downsample
from lowdiff_sched.sampling import sample_cascade
from lowdiff_sched.schedules import karras_sigmas
from lowdiff_sched.training import EDMLoss, TrainConfig
from lowdiff_sched.training.losses import distill_loss, draw_multires_noise, make_loss
from lowdiff_sched.transitions import Continue

KWARGS = {"img_resolution": 16, "img_channels": 1, "label_dim": 3, "model_type": "SongUNet", "model_channels": 16,
          "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [], "dropout": 0.1}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_net(seed: int = 0) -> EDMPrecond:
    """A small EDM network whose output convs are not zero (a fresh one predicts c_skip x only)."""
    torch.manual_seed(seed)
    net = EDMPrecond(**KWARGS)
    net.init_kwargs = dict(KWARGS)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return net.eval()


def labels(n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.arange(n) % 3, 3).float()


def test_top_level_is_the_original_network_and_lower_levels_start_as_copies():
    net = tiny_net()
    stack = LevelStack.from_edm(net, (8, 16)).eval()
    assert stack.net is net and stack.nets[-1] is net and stack.label_dim == 3
    assert stack.parameter_overhead == sum(p.numel() for p in net.parameters())
    gen = torch.Generator().manual_seed(2)
    sigma = torch.tensor([0.4, 3.0, 20.0])
    with torch.no_grad():
        for level, size in enumerate((8, 16)):
            x = torch.randn(3, 1, size, size, generator=gen)
            torch.testing.assert_close(stack.denoise(x, sigma, level=level, class_labels=labels(3)), net(x, sigma, class_labels=labels(3)), rtol=0, atol=0)
        stack.nets[0].model.dec["16x16_aux_conv"].weight.data.add_(1.0)  # the copy is its own weights
        assert torch.equal(stack.denoise(x, sigma, level=1, class_labels=labels(3)), net(x, sigma, class_labels=labels(3)))
    with pytest.raises(ValueError, match="unconditional"):
        stack.denoise(x, sigma, level=1, cond=x)
    with pytest.raises(ValueError, match="multiples of 2"):
        LevelStack.from_edm(net, (5, 16))
    with pytest.raises(ValueError, match="end at the network's resolution 16"):
        LevelStack.from_edm(net, (8, 32))


def test_frozen_top_stays_in_eval_mode_without_gradients():
    """The teacher never trains and never drops out, whatever train() the loop calls."""
    stack = LevelStack.from_edm(tiny_net(), (8, 16)).freeze_top()
    stack.train()
    assert stack.nets[0].training and not stack.nets[1].training
    assert all(not p.requires_grad for p in stack.nets[1].parameters())
    assert all(p.requires_grad for p in stack.nets[0].parameters())


def test_distill_loss_is_the_pooled_teacher_target_written_out():
    """A second implementation of the loss: level 0 sees P(x0 + sigma eps) at sigma / 2 and
    regresses P(D_top(x0 + sigma eps; sigma)), weighted by EDM's lambda at sigma / 2."""
    stack = LevelStack.from_edm(tiny_net(), (8, 16)).freeze_top()
    stack.train()
    stack.nets[0].eval()  # no dropout, so the two computations see the same network
    loss_fn = make_loss("edm", P_mean=1.0, P_std=1.5)
    x0 = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    noise = draw_multires_noise(stack.levels, 4, loss_fn, generator=torch.Generator().manual_seed(4), levels=[0], distill=True)
    total, per_level = distill_loss(stack, x0, loss_fn, class_labels=labels(4), noise=noise)
    z = noise[0]
    assert z.eps.shape == (4, 1, 16, 16) and z.sigma_c is None  # the top level's noise, no condition
    x = x0 + z.sigma.view(-1, 1, 1, 1) * z.eps
    with torch.no_grad():
        target = downsample(stack.nets[1](x, z.sigma, class_labels=labels(4)), (8, 8))
        D = stack.nets[0](downsample(x, (8, 8)), z.sigma / 2, class_labels=labels(4))
        s = z.sigma / 2
        weight = ((s**2 + 0.25) / (s * 0.5) ** 2).view(-1, 1, 1, 1)
        expected = (weight * (D - target) ** 2).sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(total.detach(), expected)
    assert set(per_level) == {0}
    total.backward()
    assert all(p.grad is None for p in stack.nets[1].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stack.nets[0].parameters())
    with pytest.raises(ValueError, match="below the top one"):
        distill_loss(stack, x0, loss_fn, levels=[0, 1])


def test_train_config_validates_distill_and_loss_kwargs():
    TrainConfig(steps=1, batch=2, distill=True, loss_kwargs={"P_mean": 1.0})
    with pytest.raises(ValueError, match="distill"):
        TrainConfig(steps=1, batch=2, distill="yes")
    with pytest.raises(ValueError, match="loss_kwargs"):
        TrainConfig(steps=1, batch=2, loss_kwargs={"P_mean": "high"})
    with pytest.raises(ValueError, match="P_man"):
        TrainConfig(steps=1, batch=2, loss_kwargs={"P_man": 1.0})
    assert EDMLoss(P_mean=1.0) == make_loss("edm", P_mean=1.0)
    saved = TrainConfig(steps=1, batch=2).to_dict()
    del saved["distill"], saved["loss_kwargs"]  # a run saved before these fields existed
    assert TrainConfig.from_dict(saved) == TrainConfig(steps=1, batch=2)


def test_spec_round_trip_rebuilds_a_level_stack():
    stack = cascade_of(tiny_net(), (8, 16), method="distill")
    assert isinstance(stack, LevelStack)
    spec = spec_of(stack)
    assert spec["backbone"] == "edm" and spec["method"] == "distill" and spec["levels"] == [8, 16]
    rebuilt = build_from_spec(json.loads(json.dumps(spec)))
    rebuilt.load_state_dict(stack.state_dict())
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval().denoise(x, torch.ones(2), level=0), stack.eval().denoise(x, torch.ones(2), level=0))


def test_cli_distills_the_lower_level_and_leaves_the_top_untouched(tmp_path):
    """train --method distill: only level 0 trains and its loss falls; the run's top level
    equals the starting network bit for bit; the run samples a Continue plan."""
    from lowdiff_sched.runs import load_run

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(data / f"{i}.png")
    kwargs = {**KWARGS, "label_dim": 0, "dropout": 0.0}
    config = tmp_path / "distill.json"
    config.write_text(json.dumps({
        "init": {"class_name": "EDMPrecond", "init_kwargs": kwargs},
        "data": str(data), "levels": [8, 16], "method": "distill", "out": str(tmp_path / "run"), "batch": 4, "steps": 12,
        "lr": 2e-3, "checkpoint_every": 0, "seed": 1, "train": {"log_every": 4, "loss_kwargs": {"P_mean": 1.0, "P_std": 1.0}},
    }))
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--config", str(config), "--no-progress"])
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(set(r["levels"]) == {"0"} for r in log)
    assert log[-1]["loss"] < log[0]["loss"]
    assert TrainConfig.from_json((tmp_path / "run" / "train_config.json").read_text()).distill
    model = load_run(tmp_path / "run")
    assert isinstance(model, LevelStack)
    torch.manual_seed(1)  # the fresh network the config builds, seeded as `train` seeds it
    fresh = EDMPrecond(**kwargs)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.nets[1].state_dict().items())
    s = karras_sigmas(4).double()
    plan = CascadePlan([StagePlan(0, s[:3] / 2, "dpmpp_2m"), StagePlan(1, s[2:], "dpmpp_2m", transition=Continue())])
    out = sample_cascade(model, plan, seeds=[0, 1], disable=True)
    assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all()


def test_train_init_takes_a_shipped_model_by_name():
    """`init: "mnist-base"` starts from the shipped network itself (the mnist-fast config's start)."""
    from lowdiff_sched.backbones import backbone
    from lowdiff_sched.models import load_model

    net = backbone("edm").start("mnist-base", seed=0)
    shipped = load_model("mnist-base").net
    assert type(net).__name__ == "EDMPrecond" and net.training and all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(v, shipped.state_dict()[k]) for k, v in net.state_dict().items())
    assert net.init_kwargs == shipped.init_kwargs
