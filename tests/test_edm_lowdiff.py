"""The LowDiff retrofit of EDM networks: the top level is the original right after
`from_edm`, lower levels use only their own sub-network, and the result samples."""

from __future__ import annotations

import pytest
import torch

from lowdiff_sched import presets
from lowdiff_sched.adapters.edm.lowdiff import LowDiffUNet
from lowdiff_sched.adapters.edm.networks import EDMPrecond, VEPrecond, VPPrecond
from lowdiff_sched.protocol import ResolutionCascade
from lowdiff_sched.sampling import sample_cascade

TINY = dict(model_channels=16, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)
VARIANTS = {
    "ddpmpp": dict(embedding_type="positional", encoder_type="standard", decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1]),
    "ncsnpp": dict(embedding_type="fourier", encoder_type="residual", decoder_type="standard", channel_mult_noise=2, resample_filter=[1, 3, 3, 1]),
    "skip": dict(embedding_type="positional", encoder_type="skip", decoder_type="skip", channel_mult_noise=1, resample_filter=[1, 1]),
}
PRECONDS = {"vp": VPPrecond, "ve": VEPrecond, "edm": EDMPrecond}


def build(precond: str = "edm", variant: str = "ddpmpp", label_dim: int = 0, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = dict(img_resolution=16, img_channels=3, label_dim=label_dim, model_type="SongUNet", **TINY, **VARIANTS[variant])
    return PRECONDS[precond](**kwargs).eval()


@pytest.mark.parametrize("precond", list(PRECONDS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_top_level_equals_the_original_network_right_after_retrofit(precond, variant):
    net = build(precond, variant, label_dim=4)
    model = LowDiffUNet.from_edm(net, levels=(4, 8, 16)).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 16, 16, generator=gen) * 5
    sigma = torch.tensor([0.05, 2.0, 40.0])
    labels = torch.nn.functional.one_hot(torch.tensor([0, 3, 1]), 4).float()
    cond = torch.randn(3, 3, 16, 16, generator=gen) * 3  # any condition at all
    with torch.no_grad():
        ref = net(x, sigma, class_labels=labels)
        out = model.denoise(x, sigma, level=-1, cond=cond, cond_sigma=torch.tensor([0.5, 1.0, 9.0]), class_labels=labels)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_level_uses_only_its_own_sub_network(variant):
    model = LowDiffUNet.from_edm(build("edm", variant), levels=(4, 8, 16))
    gen = torch.Generator().manual_seed(2)
    for level, size in enumerate((4, 8, 16)):
        model.zero_grad(set_to_none=True)
        x = torch.randn(2, 3, size, size, generator=gen)
        cond = None if level == 0 else torch.randn(2, 3, size, size, generator=gen)
        out = model.denoise(x, torch.tensor([1.0, 3.0]), level=level, cond=cond, cond_sigma=0.5 if cond is not None else None)
        assert out.shape == x.shape and torch.isfinite(out).all()
        out.square().sum().backward()
        touched = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        # nothing above this level's resolution is used ...
        for name in touched:
            if name.startswith("net.model.enc.") or name.startswith("net.model.dec."):
                res = int(name.split(".")[3].split("x")[0])
                assert res <= size, (level, name)
        # ... and the level's own input conv (at the top: the zero-initialised condition conv) and head are
        assert any(n.startswith(f"in_convs.{level}.") for n in touched), level
        assert any(n.startswith(f"heads.{level}.") for n in touched) == (size < 16)
        assert not any(n.startswith("in_convs.") and not n.startswith(f"in_convs.{level}.") for n in touched)


def test_it_is_a_resolution_cascade_and_samples_a_paper_preset():
    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=32, img_channels=3, model_type="SongUNet", **TINY, **VARIANTS["ddpmpp"]).eval()
    model = LowDiffUNet.from_edm(net, levels=(8, 16, 32)).eval()
    assert isinstance(model, ResolutionCascade)
    assert [lv.size for lv in model.levels] == [(8, 8), (16, 16), (32, 32)]
    with torch.no_grad():
        x = sample_cascade(model, presets.get("cifar10-3stage"), seeds=[0, 1], disable=True)
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()


def test_parameter_overhead_is_of_the_papers_order():
    """LowDiff reports 55.74M -> 55.77M on CIFAR-10 DDPM++; the retrofit must add about as little."""
    from lowdiff_sched.adapters.edm.networks import UNET_CONFIGS

    with torch.device("meta"):
        net = VPPrecond(img_resolution=32, img_channels=3, augment_dim=9, dropout=0.13, model_type="SongUNet", **UNET_CONFIGS["ddpmpp"])
        model = LowDiffUNet.from_edm(net, levels=(8, 16, 32))
    base = sum(p.numel() for p in net.parameters())
    assert base == 55_733_891
    assert 0 < model.parameter_overhead < 100_000


def test_bad_input():
    net = build()
    with pytest.raises(ValueError, match="resolutions"):
        LowDiffUNet.from_edm(net, levels=(6, 16))
    with pytest.raises(ValueError, match="end at the network's resolution"):
        LowDiffUNet.from_edm(net, levels=(4, 8))
    with pytest.raises(ValueError, match="SongUNet"):
        LowDiffUNet.from_edm(torch.nn.Linear(2, 2))
    model = LowDiffUNet.from_edm(net, levels=(8, 16))
    with pytest.raises(ValueError, match="unconditional"):
        model.denoise(torch.randn(1, 3, 8, 8), torch.ones(1), level=0, cond=torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="cond is required"):
        model.denoise(torch.randn(1, 3, 16, 16), torch.ones(1), level=1)
    with pytest.raises(ValueError, match="shape"):
        model.denoise(torch.randn(1, 3, 8, 8), torch.ones(1), level=1, cond=torch.randn(1, 3, 8, 8))


def test_edm_cascade_is_the_plain_network_as_one_level():
    from lowdiff_sched.adapters.edm.lowdiff import EDMCascade

    net = build("vp")
    cascade = EDMCascade(net)
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        assert torch.equal(cascade.denoise(x, sigma, level=0), net(x, sigma))
    assert [lv.size for lv in cascade.levels] == [(16, 16)]
    with pytest.raises(ValueError, match="one level"):
        cascade.denoise(x, sigma, level=0, cond=x)


def test_a_retrofitted_songunet_fine_tunes_and_every_level_learns(tmp_path):
    """LowDiff Alg. 1 on the real network: a few dozen CPU steps lower each level's loss."""
    import json

    import numpy as np
    from PIL import Image

    from lowdiff_sched.training import ImageDataset, TrainConfig, train

    data = tmp_path / "data"
    data.mkdir()
    gen = np.random.default_rng(0)
    for i in range(32):  # smooth colour blobs: structure at every scale
        yy, xx = np.mgrid[0:16, 0:16]
        cy, cx = gen.uniform(3, 13, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 12.0)[..., None] * gen.uniform(0, 1, 3)
        Image.fromarray((255 * blob).astype(np.uint8)).save(data / f"{i:02d}.png")
    model = LowDiffUNet.from_edm(build("edm", "ddpmpp"), levels=(4, 8, 16))
    config = TrainConfig(steps=40, batch=16, lr=2e-3, loss="edm", seed=0, checkpoint_every=40, log_every=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is faster on a shared 2-core machine
    try:
        train(model, ImageDataset(data), config, tmp_path / "run", progress=False)
    finally:
        torch.set_num_threads(threads)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    for level in ("0", "1", "2"):
        first = np.mean([r["levels"][level] for r in log[:8]])
        last = np.mean([r["levels"][level] for r in log[-8:]])
        assert last < 0.8 * first, (level, first, last)
