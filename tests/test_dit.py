"""The LightningDiT adapter: parameter names and sizes of the released models, the fixed
tables against independent formulas, checkpoints in LightningDiT's layout, the retrofit
invariant, the flow denoiser against Euler in flow time, guidance, and the flow loss."""

from __future__ import annotations

import json

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowdiff_sched import presets
from lowdiff_sched.adapters.dit.cascade import C2FDiT, DiTCascade, LowDiffDiT, guided_velocity
from lowdiff_sched.labels import class_ids
from lowdiff_sched.adapters.dit.weights import (
    denormalize,
    load_dit,
    load_latent_stats,
    normalize,
    read_state_dict,
    save_dit,
)
from lowdiff_sched.adapters.dit.networks import DiTConfig, LightningDiT, rope_2d, sincos_2d
from lowdiff_sched.adapters.dit.sizes import SIZES, size_config
from lowdiff_sched.runs import build_from_spec, spec_of
from lowdiff_sched.sampling import sample_cascade
from lowdiff_sched.schedules import flow_sigmas
from lowdiff_sched.training import FlowLoss, multires_loss
from lowdiff_sched.datasets.latents import LatentDataset

SMALL = DiTConfig(input_size=8, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=10)


def random_net(config: DiTConfig = SMALL, seed: int = 0) -> LightningDiT:
    """A network with every trainable weight perturbed: a fresh DiT's zero-initialised
    modulation and output layers would make every output 0 and every test trivial."""
    torch.manual_seed(seed)
    net = LightningDiT(config)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return net.eval()


# ---- the released architectures ------------------------------------------------------------
@pytest.mark.parametrize("name, total, trainable, tensors", [
    ("dit-b1", 130_556_192, 130_359_584, 159),  # counted on LightningDiT's released code
    ("dit-xl1", 675_256_736, None, 351),
])
def test_released_sizes(name, total, trainable, tensors):
    with torch.device("meta"):
        net = LightningDiT(SIZES[name])
    assert sum(p.numel() for p in net.parameters()) == total
    if trainable is not None:
        assert sum(p.numel() for p in net.parameters() if p.requires_grad) == trainable
    assert len(net.state_dict()) == tensors


def test_parameter_names_are_lightningdits():
    with torch.device("meta"):
        keys = set(LightningDiT(SIZES["dit-b1"]).state_dict())
    for k in ["pos_embed", "x_embedder.proj.weight", "x_embedder.proj.bias", "t_embedder.mlp.0.weight", "t_embedder.mlp.2.bias",
              "y_embedder.embedding_table.weight", "feat_rope.freqs_cos", "feat_rope.freqs_sin",
              "blocks.11.norm1.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.weight",
              "blocks.0.norm2.weight", "blocks.0.mlp.w12.weight", "blocks.0.mlp.w3.bias", "blocks.0.adaLN_modulation.1.weight",
              "final_layer.norm_final.weight", "final_layer.linear.weight", "final_layer.adaLN_modulation.1.bias"]:
        assert k in keys, k
    assert not any("q_norm" in k for k in keys)  # qk-norm off in the released models


def test_config_errors():
    with pytest.raises(ValueError, match="num_heads"):
        DiTConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="patch_size"):
        DiTConfig(input_size=15, patch_size=2)
    with pytest.raises(ValueError, match="unknown DiT size"):
        size_config("dit-zz")
    with pytest.raises(ValueError, match="unknown DiT config keys"):
        DiTConfig.from_dict({"depht": 3})


# ---- fixed tables against a per-entry formula ----------------------------------------------
@given(grid=st.integers(1, 6), quarter=st.integers(1, 4))
@settings(max_examples=20, deadline=None)
def test_sincos_table_entry_by_entry(grid, quarter):
    dim = 4 * quarter
    table = sincos_2d(dim, grid)
    half, q = dim // 2, dim // 4
    for token in range(grid * grid):
        row, col = divmod(token, grid)
        for c in range(dim):
            pos, k = (col, c) if c < half else (row, c - half)  # first half: column, second: row
            w = 1 / 10000 ** ((k % q) / q)
            want = math.sin(pos * w) if k < q else math.cos(pos * w)
            assert table[token, c].item() == pytest.approx(want, abs=1e-6)


@given(grid=st.integers(1, 6), quarter=st.integers(1, 4))
@settings(max_examples=20, deadline=None)
def test_rope_table_entry_by_entry(grid, quarter):
    head_dim = 4 * quarter
    cos, sin = rope_2d(head_dim, grid)
    for token in range(grid * grid):
        row, col = divmod(token, grid)
        for c in range(head_dim):
            pos, k = (row, c) if c < head_dim // 2 else (col, c - head_dim // 2)  # first half: row
            angle = pos / 10000 ** (2 * (k // 2) / (head_dim // 2))  # channel pairs share a frequency
            assert cos[token, c].item() == pytest.approx(math.cos(angle), abs=1e-6)
            assert sin[token, c].item() == pytest.approx(math.sin(angle), abs=1e-6)


def test_rope_rotates_pairs_keeping_norms_and_relative_positions():
    net = random_net()
    rope = net.feat_rope
    q = torch.randn(1, 1, 64, 16)
    assert torch.allclose(rope(q).norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    # a rotary embedding makes q.k depend on relative position only: shift both tokens by one row
    a, b = torch.randn(16), torch.randn(16)
    qs = torch.zeros(1, 1, 64, 16)
    qs[0, 0, 1 * 8 + 2], qs[0, 0, 3 * 8 + 5] = a, b  # tokens (1, 2) and (3, 5)
    qs[0, 0, 2 * 8 + 2], qs[0, 0, 4 * 8 + 5] = a, b  # tokens (2, 2) and (4, 5)
    r = rope(qs)[0, 0]
    assert torch.allclose(r[10] @ r[29], r[18] @ r[37], atol=1e-5)


# ---- checkpoints ----------------------------------------------------------------------------
def _velocity(net: LightningDiT, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = net.config
    x = torch.randn(3, c.in_channels, c.input_size, c.input_size, generator=g)
    with torch.no_grad():
        return net(x, torch.rand(3, generator=g), torch.tensor([0, 3, c.num_classes]))


def test_lightningdit_checkpoint_round_trip(tmp_path):
    net = random_net().requires_grad_(False)  # as loaded models are (autograd picks other CPU kernels)
    before = _velocity(net)
    path = save_dit(tmp_path / "model.pt", net, SMALL)
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"model", "ema", "config"} and set(saved["ema"]) == set(net.state_dict())
    model = load_dit(path, SMALL)
    assert isinstance(model, DiTCascade)
    assert torch.equal(_velocity(model.net), before)


@pytest.mark.parametrize("layout", ["bare", "ema-only", "model-only", "ddp"])
def test_checkpoint_layouts(tmp_path, layout):
    net = random_net().requires_grad_(False)
    sd = net.state_dict()
    data = {"bare": sd, "ema-only": {"ema": sd, "opt": {}}, "model-only": {"model": sd},
            "ddp": {f"module.{k}": v for k, v in sd.items()}}[layout]
    torch.save(data, tmp_path / "c.pt")
    assert torch.equal(_velocity(load_dit(tmp_path / "c.pt", SMALL).net), _velocity(net))


def test_ema_wins_over_model(tmp_path):
    a, b = random_net(seed=0), random_net(seed=1).requires_grad_(False)
    save_dit(tmp_path / "c.pt", a, SMALL, ema=b)
    assert torch.equal(_velocity(load_dit(tmp_path / "c.pt", SMALL).net), _velocity(b))


def test_checkpoint_errors(tmp_path):
    save_dit(tmp_path / "small.pt", random_net(), SMALL)
    with pytest.raises(ValueError, match=r"does not fit dit-s1: .*shape mismatches \(e\.g\. "):
        load_dit(tmp_path / "small.pt", SIZES["dit-s1"], "dit-s1")
    deeper = DiTConfig(**{**SMALL.to_dict(), "depth": 3})
    with pytest.raises(ValueError, match=r"missing keys \(e\.g\. blocks\.2\."):
        load_dit(tmp_path / "small.pt", deeper)
    with pytest.raises(ValueError, match="does not exist"):
        load_dit(tmp_path / "nope.pt", SMALL)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="is neither a torch file nor a .safetensors file"):
        load_dit(tmp_path / "junk.pt", SMALL)
    torch.save({"model": {"a": 1}}, tmp_path / "nostate.pt")
    with pytest.raises(ValueError, match="holds no state dict"):
        read_state_dict(tmp_path / "nostate.pt")


class _Trap:
    ran = False

    def __reduce__(self):
        return (_spring, ())


def _spring():
    _Trap.ran = True
    return {}


def test_checkpoint_with_code_is_refused(tmp_path):
    torch.save({"model": _Trap()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refused"):
        load_dit(tmp_path / "evil.pt", SMALL)
    assert not _Trap.ran


def test_retrofit_checkpoints_are_recognised(tmp_path):
    net = random_net()
    for model in (LowDiffDiT(net, (4, 8)), C2FDiT(net, (2, 4, 8))):
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.01)
        model.requires_grad_(False)  # as loaded ones are (autograd picks other CPU kernels)
        path = save_dit(tmp_path / f"{type(model).__name__}.pt", model, SMALL)
        back = load_dit(path, SMALL)
        assert type(back) is type(model) and [lv.size for lv in back.levels] == [lv.size for lv in model.levels]
        x, s = torch.randn(2, *model.levels[0].shape), torch.tensor([1.0, 3.0])
        assert torch.equal(back.denoise(x, s, level=0), model.denoise(x, s, level=0))
        spec = spec_of(model)
        assert spec["backbone"] == "dit" and type(build_from_spec(json.loads(json.dumps(spec)))) is type(model)


def test_latent_stats(tmp_path):
    mean, std = torch.randn(1, 4, 1, 1), torch.rand(1, 4, 1, 1) + 0.5
    torch.save({"mean": mean, "std": std}, tmp_path / "s.pt")
    stats = load_latent_stats(tmp_path / "s.pt", 4)
    z = torch.randn(2, 4, 3, 3)
    assert torch.allclose(denormalize(normalize(z, stats), stats), z, atol=1e-6)
    assert torch.allclose(normalize(z, stats), (z - mean) / std)
    with pytest.raises(ValueError, match="one per latent channel"):
        load_latent_stats(tmp_path / "s.pt", 32)
    torch.save({"mean": mean, "std": -std}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="std positive"):
        load_latent_stats(tmp_path / "bad.pt", 4)
    torch.save({"mu": mean}, tmp_path / "keys.pt")
    with pytest.raises(ValueError, match="'mean' and 'std'"):
        load_latent_stats(tmp_path / "keys.pt", 4)


# ---- the retrofit -------------------------------------------------------------------------------
@given(levels=st.sampled_from([(4, 8), (2, 8), (2, 4, 8), (6, 8)]), seed=st.integers(0, 3))
@settings(max_examples=8, deadline=None)
def test_retrofit_top_level_is_the_original(levels, seed):
    net = random_net(seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g) * 3
    sigma = torch.tensor([0.3, 4.0])
    y = torch.tensor([1, 7])
    with torch.no_grad():
        want = DiTCascade(net).denoise(x, sigma, level=0, class_labels=y)
        lowdiff = LowDiffDiT.from_lightningdit(net, levels)
        cond = torch.randn(2, 4, 8, 8, generator=g)
        assert torch.equal(lowdiff.denoise(x, sigma, level=-1, cond=cond, cond_sigma=0.7, class_labels=y), want)
        assert torch.equal(C2FDiT.from_lightningdit(net, levels).denoise(x, sigma, level=-1, class_labels=y), want)
        for i, lv in enumerate(lowdiff.levels[:-1]):
            xl = torch.randn(2, *lv.shape, generator=g)
            out = lowdiff.denoise(xl, sigma, level=i, cond=None if i == 0 else torch.randn_like(xl), cond_sigma=0.5, class_labels=y)
            assert out.shape == xl.shape and torch.isfinite(out).all()


def test_retrofit_adds_little_and_checks_input():
    with torch.device("meta"):
        net = LightningDiT(SIZES["dit-b1"])
        model = LowDiffDiT(net, (8, 16))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) - sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert 0 < trainable < 0.02 * 130_359_584  # per-level embedder and final layer, level and cond-time embeddings
    net = random_net()
    with pytest.raises(ValueError, match="at least 2 increasing sizes that end at the network's resolution 8"):
        LowDiffDiT(net, (4, 16))
    with pytest.raises(ValueError, match="needs a LightningDiT"):
        LowDiffDiT(torch.nn.Linear(2, 2), (4, 8))  # type: ignore[arg-type]
    model = LowDiffDiT(net, (4, 8))
    with pytest.raises(ValueError, match="cond is required"):
        model.denoise(torch.randn(1, 4, 8, 8), torch.ones(1), level=1)
    with pytest.raises(ValueError, match="level 0 is unconditional"):
        model.denoise(torch.randn(1, 4, 4, 4), torch.ones(1), level=0, cond=torch.randn(1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"x must have shape \[B, 4, 4, 4\] at level 0"):
        model.denoise(torch.randn(1, 4, 8, 8), torch.ones(1), level=0)
    with pytest.raises(ValueError, match="unknown DiT denoiser options"):
        model.denoise(torch.randn(1, 4, 4, 4), torch.ones(1), level=0, cfg=3.0)


# ---- the flow denoiser ----------------------------------------------------------------------------
def test_euler_in_sigma_space_is_euler_in_flow_time():
    """k-diffusion's Euler through the wrapper and Euler in flow time on LightningDiT's shifted
    grid take the same steps: z_{i+1} = z_i + (t_{i+1} - t_i) v (the linear path makes the
    two discretisations coincide; checked here, not assumed)."""
    from k_diffusion.sampling import sample_euler

    net = random_net().double()
    sigmas = flow_sigmas(12, shift=0.3)
    y = torch.tensor([2, 5])
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        def d64(x, sigma):  # the wrapper's equations in float64: sigma = (1 - t) / t, x = z / t
            t = 1 / (1 + sigma.view(-1, 1, 1, 1))
            z = x * t
            return z + (1 - t) * net(z, t.flatten(), y)

        x_k = sample_euler(d64, noise * sigmas[0], sigmas, disable=True)
        t = 1 / (1 + sigmas)
        z = noise * sigmas[0] * t[0]
        for i in range(len(sigmas) - 1):
            z = z + (t[i + 1] - t[i]) * net(z, t[i].expand(2), y)
        assert torch.allclose(x_k, z, atol=1e-10)
        # and the float32 adapter (DiTCascade.denoise) gives the same samples to float32 accuracy
        model = DiTCascade(random_net())
        x32 = sample_euler(lambda x, s: model.denoise(x, s, level=0, class_labels=y), noise * sigmas[0], sigmas, disable=True)
        assert torch.allclose(x32, x_k, atol=1e-4)


def test_cfg_matches_the_formula_and_interval():
    net = random_net()
    calls = []

    def v(z, t, y):
        calls.append(z.shape[0])
        return net(z, t, y)

    z, y = torch.randn(3, 4, 8, 8), torch.tensor([1, 2, 3])
    t = torch.tensor([0.05, 0.3, 0.9])
    with torch.no_grad():
        cond, uncond = net(z, t, y), net(z, t, torch.full_like(y, 10))
        out = guided_velocity(v, z, t, y, 10, cfg_scale=4.0, cfg_interval_start=0.125)
        want = uncond + 4.0 * (cond - uncond)
        assert torch.allclose(out[1:], want[1:], atol=1e-5)
        assert torch.allclose(out[0], cond[0], atol=1e-5)  # t < interval start: no guidance
        three = guided_velocity(v, z, t, y, 10, cfg_scale=4.0, cfg_channels=3)
        assert torch.allclose(three[:, :3], want[:, :3], atol=1e-5) and torch.allclose(three[:, 3:], cond[:, 3:], atol=1e-5)
        calls.clear()
        assert torch.equal(guided_velocity(v, z, t, y, 10, cfg_scale=1.0), net(z, t, y))
        guided_velocity(v, z, t, y, 10, cfg_scale=3.0, cfg_interval_start=0.95)
        assert calls == [3, 3]  # no doubling when guidance is off for every sample
    with pytest.raises(ValueError, match="cfg_channels"):
        guided_velocity(v, z, t, y, 10, cfg_scale=2.0, cfg_channels=9)


def test_class_ids_from_rows_or_ids():
    rows = torch.nn.functional.one_hot(torch.tensor([3, 0]), 10).float()
    assert class_ids(rows, 2, 10, torch.device("cpu")).tolist() == [3, 0]
    assert class_ids(torch.tensor([3, 10]), 2, 10, torch.device("cpu")).tolist() == [3, 10]
    assert class_ids(None, 2, 10, torch.device("cpu")).tolist() == [10, 10]
    with pytest.raises(ValueError, match="one-hot"):
        class_ids(rows * 0.5, 2, 10, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 10\]"):
        class_ids(torch.tensor([11, 0]), 2, 10, torch.device("cpu"))


def test_lowdiff_plan_samples_a_dit_cascade_deterministically():
    model = LowDiffDiT(random_net(), (4, 8))
    plan = presets.get("imagenet256-dit-b1")
    with torch.no_grad():
        a = sample_cascade(model, plan, seeds=[0, 1, 2], batch_size=2, extra_args={"class_labels": torch.tensor([1, 2, 3]), "cfg_scale": 2.0})
        b = sample_cascade(model, plan, seeds=[2], extra_args={"class_labels": torch.tensor([3]), "cfg_scale": 2.0})
    assert a.shape == (3, 4, 8, 8) and torch.isfinite(a).all()
    assert torch.allclose(a[2:], b, atol=1e-5)


# ---- training -------------------------------------------------------------------------------------
def test_flow_loss_is_velocity_regression():
    """multires_loss with FlowLoss on a DiT level is sum ||v_pred - (x0 - noise)||^2 per sample."""
    from lowdiff_sched.training.losses import LevelNoise

    net = random_net()
    model = DiTCascade(net)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 4, 8, 8, generator=g)
    loss_fn = FlowLoss()
    sigma = loss_fn.sample_sigma(4, g)
    eps = torch.randn(4, 4, 8, 8, generator=g)
    y = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3]), 10).float()
    total, _ = multires_loss(model, x0, loss_fn, class_labels=y, noise={0: LevelNoise(sigma, eps)})
    t = (1 / (1 + sigma)).view(-1, 1, 1, 1)
    with torch.no_grad():
        v = net(t * x0 + (1 - t) * eps, t.flatten(), torch.tensor([0, 1, 2, 3]))
    want = ((v - (x0 - eps)) ** 2).sum(dim=(1, 2, 3)).mean()
    assert total.item() == pytest.approx(want.item(), rel=1e-4)


def test_flow_loss_draws_and_checks():
    g = torch.Generator().manual_seed(0)
    sigma = FlowLoss().sample_sigma(20000, g)
    t = 1 / (1 + sigma)
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item()) < 0.05 and abs(logit.std().item() - 1) < 0.05  # t ~ sigmoid(N(0, 1))
    u = 1 / (1 + FlowLoss("uniform").sample_sigma(20000, g))
    assert abs(u.mean().item() - 0.5) < 0.01
    with pytest.raises(ValueError, match="t_dist"):
        FlowLoss("beta")


def test_lowdiff_dit_trains_a_few_steps(tmp_path):
    from lowdiff_sched.training import TrainConfig, train

    g = torch.Generator().manual_seed(0)
    latents = torch.randn(16, 4, 8, 8, generator=g)
    from safetensors.numpy import save_file

    save_file({"latents": latents.numpy(), "labels": np.arange(16) % 10}, str(tmp_path / "lat.safetensors"))
    data = LatentDataset(tmp_path / "lat.safetensors")
    assert len(data) == 16 and data.label_dim == 10 and data[3][1] == 3
    model = LowDiffDiT(random_net(), (4, 8))
    cfg = TrainConfig(steps=3, batch=4, lr=1e-3, loss="flow", label_dim=10, checkpoint_every=0, log_every=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, data, cfg, tmp_path / "run", progress=False)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("final_layers.0") for k in changed) and any(k.startswith("net.blocks") for k in changed)
    assert not any("pos_embed" in k or "freqs" in k for k in changed)  # fixed tables stay fixed


def test_latent_dataset_errors(tmp_path):
    np.savez(tmp_path / "x.npz", latents=np.zeros((2, 4, 8, 8), np.float32), labels=np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="'labels' must be 2 non-negative int class ids"):
        LatentDataset(tmp_path / "x.npz")
    np.savez(tmp_path / "y.npz", images=np.zeros((2, 4, 8, 8), np.float32))
    with pytest.raises(ValueError, match="no 'latents' array"):
        LatentDataset(tmp_path / "y.npz")
    (tmp_path / "z.txt").write_text("0 1 2")
    with pytest.raises(ValueError, match=".safetensors or .npz"):
        LatentDataset(tmp_path / "z.txt")
    with pytest.raises(ValueError, match="does not exist"):
        LatentDataset(tmp_path / "missing.npz")


def test_flop_counts_per_level_give_unconditional_levels_no_condition():
    """cost.flops_per_call works for cascades whose upper levels take no condition (C2F), and
    a level's FLOPs grow with its token count."""
    from lowdiff_sched.cost import flops_per_call

    net = random_net()
    for model in (C2FDiT(net, (4, 8)), LowDiffDiT(net, (4, 8))):
        low, high = flops_per_call(model, 0), flops_per_call(model, 1)
        assert 0 < low < high
