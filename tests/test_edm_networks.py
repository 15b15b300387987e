"""EDM networks (adapters/edm/networks.py): sizes and names against EDM's released models, the
preconditioners against EDM Table 1 in float64, and every layer against a second computation
written here from the formulas (numpy / plain torch.nn.functional)."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn

from lowdiff_sched.adapters.edm.networks import (
    DATASET_CONFIGS,
    NETWORK_CLASSES,
    UNET_CONFIGS,
    AttentionOp,
    Conv2d,
    EDMPrecond,
    FourierEmbedding,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    SongUNet,
    UNetBlock,
    VEPrecond,
    VPPrecond,
)



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors here are tiny: a second OpenMP thread only adds barrier waits, which cost up to
    10x when another process shares the two cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# Data read off NVlabs/edm (training/networks.py, train.py, README).

EDM_INIT_ARGS = {
    "Linear": ["in_features", "out_features", "bias", "init_mode", "init_weight", "init_bias"],
    "Conv2d": [
        "in_channels", "out_channels", "kernel", "bias", "up", "down", "resample_filter",
        "fused_resample", "init_mode", "init_weight", "init_bias",
    ],
    "GroupNorm": ["num_channels", "num_groups", "min_channels_per_group", "eps"],
    "UNetBlock": [
        "in_channels", "out_channels", "emb_channels", "up", "down", "attention", "num_heads",
        "channels_per_head", "dropout", "skip_scale", "eps", "resample_filter", "resample_proj",
        "adaptive_scale", "init", "init_zero", "init_attn",
    ],
    "PositionalEmbedding": ["num_channels", "max_positions", "endpoint"],
    "FourierEmbedding": ["num_channels", "scale"],
    "SongUNet": [
        "img_resolution", "in_channels", "out_channels", "label_dim", "augment_dim", "model_channels",
        "channel_mult", "channel_mult_emb", "num_blocks", "attn_resolutions", "dropout", "label_dropout",
        "embedding_type", "channel_mult_noise", "encoder_type", "decoder_type", "resample_filter",
    ],
    "VPPrecond": [
        "img_resolution", "img_channels", "label_dim", "use_fp16", "beta_d", "beta_min", "M",
        "epsilon_t", "model_type", "model_kwargs",
    ],
    "VEPrecond": [
        "img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min", "sigma_max",
        "model_type", "model_kwargs",
    ],
    "EDMPrecond": [
        "img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min", "sigma_max",
        "sigma_data", "model_type", "model_kwargs",
    ],
}

# Plain defaults (mutable list/dict defaults are compared separately, by behaviour).
EDM_DEFAULTS = {
    "Linear": dict(bias=True, init_mode="kaiming_normal", init_weight=1, init_bias=0),
    "Conv2d": dict(bias=True, up=False, down=False, resample_filter=[1, 1], fused_resample=False,
                   init_mode="kaiming_normal", init_weight=1, init_bias=0),
    "GroupNorm": dict(num_groups=32, min_channels_per_group=4, eps=1e-5),
    "UNetBlock": dict(up=False, down=False, attention=False, num_heads=None, channels_per_head=64,
                      dropout=0, skip_scale=1, eps=1e-5, resample_filter=[1, 1], resample_proj=False,
                      adaptive_scale=True),
    "PositionalEmbedding": dict(max_positions=10000, endpoint=False),
    "FourierEmbedding": dict(scale=16),
    "SongUNet": dict(label_dim=0, augment_dim=0, model_channels=128, channel_mult=[1, 2, 2, 2],
                     channel_mult_emb=4, num_blocks=4, attn_resolutions=[16], dropout=0.10,
                     label_dropout=0, embedding_type="positional", channel_mult_noise=1,
                     encoder_type="standard", decoder_type="standard", resample_filter=[1, 1]),
    "VPPrecond": dict(label_dim=0, use_fp16=False, beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5,
                      model_type="SongUNet"),
    "VEPrecond": dict(label_dim=0, use_fp16=False, sigma_min=0.02, sigma_max=100, model_type="SongUNet"),
    "EDMPrecond": dict(label_dim=0, use_fp16=False, sigma_min=0, sigma_max=float("inf"), sigma_data=0.5,
                       model_type="DhariwalUNet"),
}

TRAIN_PY_ARCHS = {
    "ddpmpp": dict(embedding_type="positional", encoder_type="standard", decoder_type="standard",
                   channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2]),
    "ncsnpp": dict(embedding_type="fourier", encoder_type="residual", decoder_type="standard",
                   channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2]),
}
README_DATASETS = {
    "cifar10-32x32": dict(dropout=0.13, augment_dim=9),
    "ffhq-64x64": dict(channel_mult=[1, 2, 2, 2], dropout=0.05, augment_dim=9),
    "afhqv2-64x64": dict(channel_mult=[1, 2, 2, 2], dropout=0.25, augment_dim=9),
}

# State-dict names of two tiny SongUNets (img 8, channel_mult [1, 2], num_blocks 1, attention at 4),
# derived by hand from EDM's naming loops.
W_B = ("weight", "bias")
BLOCK = ("norm0.weight", "norm0.bias", "conv0.weight", "conv0.bias", "affine.weight", "affine.bias",
         "norm1.weight", "norm1.bias", "conv1.weight", "conv1.bias")
RESAMPLING_BLOCK = ("norm0.weight", "norm0.bias", "conv0.weight", "conv0.bias", "conv0.resample_filter",
                    "affine.weight", "affine.bias", "norm1.weight", "norm1.bias", "conv1.weight",
                    "conv1.bias", "skip.weight", "skip.bias", "skip.resample_filter")
SKIP = ("skip.weight", "skip.bias")
ATTN = ("norm2.weight", "norm2.bias", "qkv.weight", "qkv.bias", "proj.weight", "proj.bias")

TINY = dict(img_resolution=8, in_channels=3, out_channels=3, model_channels=8, channel_mult=[1, 2],
            num_blocks=1, attn_resolutions=[4])
# fourier embedding, labels, augmentation, 'skip' encoder and decoder
TINY_A = dict(TINY, label_dim=4, augment_dim=2, embedding_type="fourier", encoder_type="skip",
              decoder_type="skip", resample_filter=[1, 3, 3, 1])
KEYS_A = [
    ("map_noise", ("freqs",)), ("map_label", W_B), ("map_augment", ("weight",)),
    ("map_layer0", W_B), ("map_layer1", W_B),
    ("enc.8x8_conv", W_B), ("enc.8x8_block0", BLOCK),
    ("enc.4x4_down", RESAMPLING_BLOCK), ("enc.4x4_aux_down", ("resample_filter",)), ("enc.4x4_aux_skip", W_B),
    ("enc.4x4_block0", BLOCK + SKIP + ATTN),
    ("dec.4x4_in0", BLOCK + ATTN), ("dec.4x4_in1", BLOCK),
    ("dec.4x4_block0", BLOCK + SKIP), ("dec.4x4_block1", BLOCK + SKIP + ATTN),
    ("dec.4x4_aux_norm", W_B), ("dec.4x4_aux_conv", W_B),
    ("dec.8x8_up", RESAMPLING_BLOCK), ("dec.8x8_block0", BLOCK + SKIP), ("dec.8x8_block1", BLOCK + SKIP),
    ("dec.8x8_aux_up", ("resample_filter",)), ("dec.8x8_aux_norm", W_B), ("dec.8x8_aux_conv", W_B),
]
# positional embedding, unconditional, 'residual' encoder, 'standard' decoder
TINY_B = dict(TINY, encoder_type="residual", decoder_type="standard")
KEYS_B = [
    ("map_layer0", W_B), ("map_layer1", W_B),
    ("enc.8x8_conv", W_B), ("enc.8x8_block0", BLOCK),
    ("enc.4x4_down", RESAMPLING_BLOCK), ("enc.4x4_aux_residual", ("weight", "bias", "resample_filter")),
    ("enc.4x4_block0", BLOCK + SKIP + ATTN),
    ("dec.4x4_in0", BLOCK + ATTN), ("dec.4x4_in1", BLOCK),
    ("dec.4x4_block0", BLOCK + SKIP), ("dec.4x4_block1", BLOCK + SKIP + ATTN),
    ("dec.8x8_up", RESAMPLING_BLOCK), ("dec.8x8_block0", BLOCK + SKIP), ("dec.8x8_block1", BLOCK + SKIP),
    ("dec.8x8_aux_norm", W_B), ("dec.8x8_aux_conv", W_B),
]

# Parameter names of EDM's released CIFAR-10 DDPM++ network inside its precond wrapper.
REFERENCE_NAMES = (
    ["model.map_augment.weight", "model.map_layer0.weight", "model.map_layer1.weight",
     "model.enc.32x32_conv.weight", "model.enc.16x16_down.conv0.weight", "model.enc.8x8_down.conv0.weight",
     "model.dec.8x8_in0.qkv.weight", "model.dec.8x8_in1.conv1.weight", "model.dec.16x16_up.conv0.weight",
     "model.dec.32x32_up.skip.weight", "model.dec.32x32_aux_norm.weight", "model.dec.32x32_aux_conv.weight",
     "model.enc.16x16_down.conv0.resample_filter", "model.enc.16x16_block0.norm2.weight",
     "model.enc.16x16_block0.proj.weight", "model.dec.16x16_block4.qkv.bias"]
    + [f"model.enc.{r}x{r}_block{i}.{m}.weight" for r in (32, 16, 8) for i in range(4)
       for m in ("norm0", "conv0", "affine", "norm1", "conv1")]
    + [f"model.dec.{r}x{r}_block{i}.{m}.weight" for r in (32, 16, 8) for i in range(5)
       for m in ("norm0", "conv0", "affine", "norm1", "conv1", "skip")]
)


def _expand(spec: list[tuple[str, tuple[str, ...]]]) -> list[str]:
    return [f"{prefix}.{member}" for prefix, members in spec for member in members]


def _count(module: nn.Module) -> tuple[int, int]:
    return sum(p.numel() for p in module.parameters()), len(module.state_dict())


def _randomize(module: nn.Module, seed: int, std: float = 0.3) -> nn.Module:
    """Every parameter random, so no path hides behind a zero/1e-5 init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Registry, signatures and configs


def test_network_classes_cover_edm_persistent_names_with_edm_signatures():
    assert set(NETWORK_CLASSES) == set(EDM_INIT_ARGS)
    for name, cls in NETWORK_CLASSES.items():
        assert isinstance(cls, type) and cls.__name__ == name
        params = inspect.signature(cls.__init__).parameters
        assert list(params)[1:] == EDM_INIT_ARGS[name], name
        if name.endswith("Precond"):
            assert params["model_kwargs"].kind is inspect.Parameter.VAR_KEYWORD
        for arg, default in EDM_DEFAULTS[name].items():
            got = params[arg].default
            assert (list(got) if isinstance(got, tuple) else got) == default, (name, arg)


def test_unet_and_dataset_configs_equal_edm_train_py_and_readme():
    assert UNET_CONFIGS == TRAIN_PY_ARCHS
    assert DATASET_CONFIGS == README_DATASETS
    for arch in UNET_CONFIGS:  # usable as SongUNet kwargs as they are
        kwargs = {**UNET_CONFIGS[arch], "model_channels": 8}
        SongUNet(img_resolution=8, in_channels=3, out_channels=3, num_blocks=1, **kwargs)


def test_rebuild_from_edm_style_init_kwargs_with_numpy_scalars():
    """EDM pickles record init kwargs such as these (numpy floats, lists, init dicts)."""
    block = NETWORK_CLASSES["UNetBlock"](
        in_channels=16, out_channels=32, emb_channels=64, down=True, attention=True, num_heads=1,
        dropout=0.13, skip_scale=np.sqrt(0.5), eps=1e-6, resample_filter=[1, 3, 3, 1], resample_proj=True,
        adaptive_scale=False, init=dict(init_mode="xavier_uniform"),
        init_zero=dict(init_mode="xavier_uniform", init_weight=1e-5),
        init_attn=dict(init_mode="xavier_uniform", init_weight=np.sqrt(0.2)),
    )
    out = block.eval()(_randn(2, 16, 8, 8, seed=0, dtype=torch.float32), _randn(2, 64, seed=1, dtype=torch.float32))
    assert out.shape == (2, 32, 4, 4) and out.dtype == torch.float32
    conv = NETWORK_CLASSES["Conv2d"](4, 6, 3, True, False, True, [1, 3, 3, 1], True, "xavier_uniform", np.float64(0.5))
    assert conv.down and conv.fused_resample and conv.resample_filter.shape == (1, 1, 4, 4)


# ---------------------------------------------------------------------------------------------
# Sizes and names of the released CIFAR-10 networks (meta device: no memory, no init cost)


def test_full_size_cifar10_parameter_counts_match_edm():
    with torch.device("meta"):
        ddpmpp = VPPrecond(img_resolution=32, img_channels=3, label_dim=0, use_fp16=False, model_type="SongUNet",
                           augment_dim=9, dropout=0.13, **UNET_CONFIGS["ddpmpp"])
        ddpmpp_edm = EDMPrecond(32, 3, model_type="SongUNet", augment_dim=9, dropout=0.13, **UNET_CONFIGS["ddpmpp"])
        ncsnpp = VEPrecond(32, 3, label_dim=10, augment_dim=9, dropout=0.13, **UNET_CONFIGS["ncsnpp"])
    # The wrappers own no tensors: their state dict is the SongUNet's under "model.".
    assert _count(ddpmpp) == _count(ddpmpp.model) == (55_733_891, 425)
    assert _count(ddpmpp_edm) == (55_733_891, 425)
    assert _count(ncsnpp) == _count(ncsnpp.model) == (56_400_643, 434)
    assert ncsnpp.sigma_min == 0.02 and ncsnpp.sigma_max == 100
    assert ddpmpp_edm.sigma_data == 0.5

    names = list(ddpmpp.state_dict())
    assert set(REFERENCE_NAMES) <= set(names)
    assert not any(n.startswith("model.map_noise") or n.startswith("model.map_label") for n in names)
    buffers = [n for n, _ in ddpmpp.named_buffers()]
    assert buffers and all(n.endswith(".resample_filter") for n in buffers)
    nc_names = set(ncsnpp.state_dict())
    assert {"model.map_noise.freqs", "model.map_label.weight", "model.map_label.bias",
            "model.enc.16x16_aux_residual.weight", "model.enc.16x16_aux_residual.resample_filter",
            "model.enc.8x8_aux_residual.bias"} <= nc_names
    assert ncsnpp.state_dict()["model.map_noise.freqs"].shape == (128,)
    assert ncsnpp.state_dict()["model.enc.16x16_down.conv0.resample_filter"].shape == (1, 1, 4, 4)


@pytest.mark.parametrize("config, spec", [(TINY_A, KEYS_A), (TINY_B, KEYS_B)], ids=["skip-skip", "residual-std"])
def test_tiny_state_dict_keys_follow_edm_naming(config, spec):
    net = SongUNet(**config)
    assert list(net.state_dict()) == _expand(spec)
    sd = net.state_dict()
    assert sd["enc.4x4_block0.qkv.weight"].shape == (48, 16, 1, 1)
    assert sd["dec.4x4_block0.conv0.weight"].shape == (16, 32, 3, 3)
    assert sd["dec.8x8_block0.skip.weight"].shape == (8, 24, 1, 1)
    assert sd["dec.8x8_aux_conv.weight"].shape == (3, 8, 3, 3)


# ---------------------------------------------------------------------------------------------
# Initialisation statistics


@pytest.mark.parametrize("mode", ["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"])
def test_init_modes_have_edm_scales(mode):
    torch.manual_seed(0)
    fan_in, fan_out = 400, 300
    lin = Linear(fan_in, fan_out, init_mode=mode, init_weight=0.5, init_bias=2.0)
    std = math.sqrt(2 / (fan_in + fan_out)) if mode.startswith("xavier") else math.sqrt(1 / fan_in)
    assert lin.weight.std().item() == pytest.approx(0.5 * std, rel=0.02)
    assert lin.bias.std().item() == pytest.approx(2.0 * std, rel=0.2)
    if mode.endswith("uniform"):  # uniform on [-a, a], a = sqrt(3) std
        bound = 0.5 * math.sqrt(3) * std
        assert bound * 0.99 < lin.weight.abs().max().item() <= bound
    conv = Conv2d(32, 48, 3, init_mode=mode)  # fans count the kernel taps
    cstd = math.sqrt(2 / (9 * (32 + 48))) if mode.startswith("xavier") else math.sqrt(1 / (9 * 32))
    assert conv.weight.std().item() == pytest.approx(cstd, rel=0.03)
    assert torch.count_nonzero(conv.bias) == 0


def test_song_unet_init_scales():
    torch.manual_seed(0)
    net = SongUNet(img_resolution=8, in_channels=3, out_channels=3, model_channels=32, channel_mult=[1, 2],
                   num_blocks=1, attn_resolutions=[4], embedding_type="fourier", channel_mult_noise=2)
    for name, p in net.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0 or "norm" in name, name
    for module in net.modules():
        if isinstance(module, GroupNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    block = net.enc["4x4_block0"]  # 32 -> 64 channels, with attention
    xavier = lambda fi, fo: math.sqrt(6 / (fi + fo))  # noqa: E731
    assert 0 < block.conv1.weight.abs().max().item() <= 1e-5 * xavier(64 * 9, 64 * 9)
    assert 0 < block.proj.weight.abs().max().item() <= 1e-5 * xavier(64, 64)
    assert 0 < net.dec["8x8_aux_conv"].weight.abs().max().item() <= 1e-5 * xavier(32 * 9, 27)
    assert block.qkv.weight.std().item() == pytest.approx(math.sqrt(0.2) * math.sqrt(2 / (64 + 192)), rel=0.05)
    assert block.conv0.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * (32 + 64))), rel=0.05)
    assert net.map_noise.freqs.std().item() == pytest.approx(16, rel=0.15)
    big = FourierEmbedding(8192)
    assert big.freqs.shape == (4096,) and big.freqs.std().item() == pytest.approx(16, rel=0.04)
    plain = UNetBlock(8, 8, 16, attention=True, num_heads=1)  # EDM defaults: init_zero = weight 0
    assert torch.count_nonzero(plain.conv1.weight) == 0 and torch.count_nonzero(plain.proj.weight) == 0
    assert torch.count_nonzero(plain.conv0.weight) > 0


def test_song_unet_block_options_follow_edm():
    net = SongUNet(**TINY_B, dropout=0.2)
    blocks = [m for m in net.modules() if isinstance(m, UNetBlock)]
    assert len(blocks) == 10
    for b in blocks:
        assert b.skip_scale == pytest.approx(math.sqrt(0.5)) and b.dropout == 0.2 and not b.adaptive_scale
        assert b.num_heads in (0, 1) and b.norm0.eps == b.norm1.eps == 1e-6 and b.emb_channels == 32
        if b.skip is not None and b.skip.resample_filter is not None:
            assert b.skip.weight is not None  # resample_proj=True
    assert [n for n, b in net.named_modules() if isinstance(b, UNetBlock) and b.num_heads] == [
        "enc.4x4_block0", "dec.4x4_in0", "dec.4x4_block1"]
    assert net.dec["8x8_aux_norm"].eps == 1e-6
    assert net.enc["4x4_aux_residual"].fused_resample and net.enc["4x4_aux_residual"].down
    assert net.map_noise.endpoint and net.map_noise.max_positions == 10000
    assert net.map_layer0.in_features == 8 and net.map_layer0.out_features == 32  # noise 1x, emb 4x channels


def test_bad_init_mode_is_rejected():
    with pytest.raises(ValueError, match="orthogonal"):
        Linear(3, 4, init_mode="orthogonal")
    with pytest.raises(ValueError, match="orthogonal"):
        Conv2d(3, 4, 0, down=True, init_mode="orthogonal")


# ---------------------------------------------------------------------------------------------
# Conv2d against numpy float64 formulas


def np_filter(f1d):
    f = np.asarray(f1d, dtype=np.float64)
    return np.outer(f, f) / f.sum() ** 2


def np_conv(x, w, pad):
    """Cross-correlation, zero padding: out[o, i, j] = sum w[o, c, a, b] x[c, i + a - pad, j + b - pad]."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[-1]
    win = sliding_window_view(xp, (k, k), axis=(2, 3))  # n c i j a b
    return np.einsum("ncijab,ocab->noij", win, w)


def np_blur_down(x, f1d, pad):
    """y[i, j] = sum_ab f[a, b] x_pad[2 i + a, 2 j + b]."""
    f = np_filter(f1d)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = sliding_window_view(xp, f.shape, axis=(2, 3))[:, :, ::2, ::2]
    return np.einsum("ncijab,ab->ncij", win, f)


def np_blur_up(x, f1d, pad):
    """Scatter 4 f around every input pixel at stride 2, then crop `pad` from each side."""
    f = 4 * np_filter(f1d)
    k = f.shape[0]
    n, c, h, w = x.shape
    full = np.zeros((n, c, 2 * (h - 1) + k, 2 * (w - 1) + k))
    for i in range(h):
        for j in range(w):
            full[:, :, 2 * i:2 * i + k, 2 * j:2 * j + k] += x[:, :, i:i + 1, j:j + 1] * f
    return full[:, :, pad:full.shape[2] - pad, pad:full.shape[3] - pad]


def _conv_io(conv: Conv2d, x: torch.Tensor):
    w = None if conv.weight is None else conv.weight.detach().double().numpy()
    b = 0 if conv.bias is None else conv.bias.detach().double().numpy().reshape(1, -1, 1, 1)
    return conv(x).detach().numpy(), x.numpy(), w, b


FILTERS = [[1, 1], [1, 3, 3, 1]]


@pytest.mark.parametrize("f1d", FILTERS, ids=["box", "binomial"])
@pytest.mark.parametrize("kernel", [0, 1, 3])
@pytest.mark.parametrize("direction", ["up", "down"])
def test_conv2d_unfused_resample_then_convolve(f1d, kernel, direction):
    torch.manual_seed(1)
    conv = Conv2d(3, 3 if kernel == 0 else 5, kernel, resample_filter=f1d, init_bias=1.0,
                  **{direction: True}).double()
    out, x, w, b = _conv_io(conv, _randn(2, 3, 6, 6, seed=2))
    pad = (len(f1d) - 1) // 2
    ref = np_blur_up(x, f1d, pad) if direction == "up" else np_blur_down(x, f1d, pad)
    if kernel:
        ref = np_conv(ref, w, kernel // 2) + b
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    assert out.shape[-1] == (12 if direction == "up" else 3)
    if kernel == 0:
        assert conv.weight is None and conv.bias is None and list(conv.state_dict()) == ["resample_filter"]
    np.testing.assert_allclose(conv.resample_filter[0, 0].numpy(), np_filter(f1d))


@pytest.mark.parametrize("f1d", FILTERS, ids=["box", "binomial"])
@pytest.mark.parametrize("kernel", [1, 3])
def test_conv2d_fused_down_convolves_then_decimates(f1d, kernel):
    torch.manual_seed(3)
    fused = Conv2d(4, 6, kernel, down=True, fused_resample=True, resample_filter=f1d, init_bias=1.0).double()
    out, x, w, b = _conv_io(fused, _randn(2, 4, 8, 8, seed=4))
    f_pad = (len(f1d) - 1) // 2
    ref = np_blur_down(np_conv(x, w, kernel // 2 + f_pad), f1d, 0) + b
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    assert out.shape == (2, 6, 4, 4)
    unfused = Conv2d(4, 6, kernel, down=True, resample_filter=f1d).double()
    unfused.load_state_dict(fused.state_dict())
    other = unfused(torch.from_numpy(x)).detach().numpy()
    if kernel == 1:  # a 1x1 conv commutes with blur-and-decimate: both paths agree exactly
        np.testing.assert_allclose(out, other, rtol=1e-12, atol=1e-12)
    else:  # conv at full resolution vs. at half resolution: different operators (EDM's semantics)
        assert not np.allclose(out, other, atol=1e-3)


def test_conv2d_fused_up_kernel1_equals_unfused_and_simple_resamplers():
    torch.manual_seed(5)
    x = _randn(1, 3, 5, 5, seed=6)
    for f1d in FILTERS:
        fused = Conv2d(3, 2, 1, up=True, fused_resample=True, resample_filter=f1d).double()
        unfused = Conv2d(3, 2, 1, up=True, resample_filter=f1d).double()
        unfused.load_state_dict(fused.state_dict())
        torch.testing.assert_close(fused(x), unfused(x), rtol=1e-12, atol=1e-12)
    # box filter: down = 2x2 mean pool, up = nearest (block repetition)
    down = Conv2d(3, 3, 0, down=True).double()
    up = Conv2d(3, 3, 0, up=True).double()
    x6 = _randn(1, 3, 6, 6, seed=7)
    torch.testing.assert_close(down(x6), F.avg_pool2d(x6, 2))
    torch.testing.assert_close(up(x6), x6.repeat_interleave(2, -2).repeat_interleave(2, -1))
    # binomial up keeps a constant image constant away from the zero-padded border
    up_b = Conv2d(1, 1, 0, up=True, resample_filter=[1, 3, 3, 1]).double()
    y = up_b(torch.full((1, 1, 5, 5), 2.5, dtype=torch.float64))
    torch.testing.assert_close(y[..., 1:-1, 1:-1], torch.full_like(y[..., 1:-1, 1:-1], 2.5))


def test_conv2d_rejects_bad_resampling():
    with pytest.raises(ValueError, match="up and down"):
        Conv2d(3, 3, 3, up=True, down=True)
    with pytest.raises(ValueError, match="fused_resample"):
        Conv2d(3, 3, 3, up=True, fused_resample=True)


def test_conv2d_and_linear_plain_match_functional():
    torch.manual_seed(8)
    conv = Conv2d(3, 5, 3, init_bias=1.0).double()
    out, x, w, b = _conv_io(conv, _randn(2, 3, 5, 7, seed=9))
    np.testing.assert_allclose(out, np_conv(x, w, 1) + b, rtol=1e-12, atol=1e-12)
    assert conv.resample_filter is None and list(conv.state_dict()) == ["weight", "bias"]
    lin = Linear(6, 4, init_bias=1.0)
    xl = _randn(3, 6, seed=10)
    ref = xl.numpy() @ lin.weight.detach().double().numpy().T + lin.bias.detach().double().numpy()
    out16 = lin(xl.to(torch.float16))
    assert out16.dtype == torch.float16 and lin.weight.dtype == torch.float32  # weights follow x
    np.testing.assert_allclose(lin(xl).detach().numpy(), ref, rtol=1e-6, atol=1e-6)
    assert Linear(6, 4, bias=False).bias is None and list(Linear(6, 4, bias=False).state_dict()) == ["weight"]


# ---------------------------------------------------------------------------------------------
# GroupNorm, attention, UNetBlock


def test_group_norm_matches_formula_and_group_rule():
    assert GroupNorm(8).num_groups == 2 and GroupNorm(256).num_groups == 32 and GroupNorm(12).num_groups == 3
    assert GroupNorm(64, num_groups=8).num_groups == 8 and GroupNorm(64, min_channels_per_group=16).num_groups == 4
    with pytest.raises(ValueError, match="num_channels=3"):
        GroupNorm(3)
    with pytest.raises(ValueError, match="num_channels=144 does not split into 32 groups"):
        GroupNorm(144)  # model_channels=48 x 3: torch would fail only at the first forward
    gn = _randomize(GroupNorm(12, eps=1e-6), seed=11).double()
    x = _randn(2, 12, 4, 5, seed=12) * 3 + 1
    xs = x.reshape(2, 3, -1)
    mean, var = xs.mean(-1, keepdim=True), xs.var(-1, unbiased=False, keepdim=True)
    ref = ((xs - mean) / torch.sqrt(var + 1e-6)).reshape_as(x) * gn.weight[:, None, None] + gn.bias[:, None, None]
    torch.testing.assert_close(gn(x), ref.detach())
    torch.testing.assert_close(gn(x), F.group_norm(x, 3, gn.weight, gn.bias, 1e-6))


def test_attention_op_is_scaled_softmax_with_exact_gradient():
    q, k = _randn(2, 3, 4, seed=13).requires_grad_(), _randn(2, 3, 5, seed=14).requires_grad_()
    w = AttentionOp.apply(q, k)
    logits = np.einsum("nci,ncj->nij", q.detach().numpy(), k.detach().numpy()) / math.sqrt(3)
    ref = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    np.testing.assert_allclose(w.detach().numpy(), ref, rtol=1e-6, atol=1e-7)  # float32 inside
    assert w.dtype == torch.float64 and w.shape == (2, 4, 5)
    # hand-written backward vs. autograd through a float64 softmax
    g = _randn(2, 4, 5, seed=15)
    dq, dk = torch.autograd.grad((w * g).sum(), (q, k))
    w_ref = torch.softmax(torch.einsum("nci,ncj->nij", q, k) / math.sqrt(3), dim=2)
    dq_ref, dk_ref = torch.autograd.grad((w_ref * g).sum(), (q, k))
    torch.testing.assert_close(dq, dq_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dk, dk_ref, rtol=1e-5, atol=1e-6)
    assert dq.dtype == dk.dtype == torch.float64
    w16 = AttentionOp.apply(q.detach().half(), k.detach().half())
    assert w16.dtype == torch.float16
    np.testing.assert_allclose(w16.float().numpy(), ref, atol=2e-3)


def reference_block(block: UNetBlock, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """UNetBlock without resampling, written out with torch.nn.functional in float64."""
    def conv(m, h):
        return F.conv2d(h, m.weight, m.bias, padding=m.weight.shape[-1] // 2)

    def gn(m, h):
        return F.group_norm(h, m.num_groups, m.weight, m.bias, m.eps)

    s = block.skip_scale
    h = conv(block.conv0, F.silu(gn(block.norm0, x)))
    params = (emb @ block.affine.weight.T + block.affine.bias)[:, :, None, None]
    if block.adaptive_scale:
        c = h.shape[1]
        h = F.silu(gn(block.norm1, h) * (1 + params[:, :c]) + params[:, c:])
    else:
        h = F.silu(gn(block.norm1, h + params))
    x = (conv(block.conv1, h) + (x if block.skip is None else conv(block.skip, x))) * s
    if block.num_heads:
        n, c, hh, ww = x.shape
        heads, ch = block.num_heads, c // block.num_heads
        qkv = conv(block.qkv, gn(block.norm2, x)).reshape(n, 3 * c, hh * ww)
        outs = []
        for head in range(heads):
            part = qkv[:, head * 3 * ch:(head + 1) * 3 * ch]
            q, k, v = part[:, 0::3], part[:, 1::3], part[:, 2::3]  # interleaved per channel
            w = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(ch), dim=-1)  # [n, query, key]
            outs.append(v @ w.transpose(1, 2))
        a = torch.cat(outs, dim=1).reshape(n, c, hh, ww)
        x = (conv(block.proj, a) + x) * s
    return x


@pytest.mark.parametrize("adaptive_scale", [False, True])
@pytest.mark.parametrize("in_channels, heads", [(8, 2), (16, 1)])
def test_unet_block_matches_written_out_reference(adaptive_scale, in_channels, heads):
    torch.manual_seed(15)
    block = UNetBlock(in_channels, 16, 12, attention=True, num_heads=heads, dropout=0.5, skip_scale=math.sqrt(0.5),
                      eps=1e-6, adaptive_scale=adaptive_scale, resample_proj=True)
    block = _randomize(block, seed=16).double().eval()
    x, emb = _randn(2, in_channels, 4, 4, seed=17), _randn(2, 12, seed=18)
    with torch.no_grad():
        torch.testing.assert_close(block(x, emb), reference_block(block, x, emb))
        assert (block.skip is None) == (in_channels == 16)
        block.train()
        assert not torch.allclose(block(x, emb), reference_block(block, x, emb))  # dropout is live in training


def test_unet_block_skip_scale_arithmetic_and_heads():
    block = UNetBlock(8, 8, 4, skip_scale=0.25).double()  # conv1 starts at exactly zero (init_zero)
    x = _randn(2, 8, 4, 4, seed=19)
    torch.testing.assert_close(block(x, _randn(2, 4, seed=20)), 0.25 * x)
    assert UNetBlock(128, 128, 4, attention=True).num_heads == 2  # out_channels // channels_per_head
    assert UNetBlock(128, 128, 4, attention=True, channels_per_head=32).num_heads == 4
    assert UNetBlock(128, 128, 4, num_heads=4).num_heads == 0 and not hasattr(UNetBlock(8, 8, 4), "qkv")
    down = UNetBlock(8, 8, 4, down=True, resample_proj=False)
    assert down.skip is not None and down.skip.weight is None  # pure resampler skip
    assert UNetBlock(8, 8, 4, down=True, resample_proj=True).skip.weight.shape == (8, 8, 1, 1)
    up = UNetBlock(8, 6, 4, up=True)
    assert up(_randn(1, 8, 3, 3, seed=21, dtype=torch.float32), torch.zeros(1, 4)).shape == (1, 6, 6, 6)


# ---------------------------------------------------------------------------------------------
# Embeddings


@pytest.mark.parametrize("endpoint", [False, True])
def test_positional_embedding_formula(endpoint):
    emb = PositionalEmbedding(10, max_positions=1000, endpoint=endpoint)
    x = torch.tensor([0.0, 0.5, 3.0, 250.0], dtype=torch.float64)
    j = np.arange(5)
    freqs = (1 / 1000) ** (j / (5 - (1 if endpoint else 0)))
    angle = np.outer(x.numpy(), freqs)
    # frequencies are float32 (as in EDM): angles up to 250 carry ~1e-5 of rounding
    np.testing.assert_allclose(emb(x).numpy(), np.concatenate([np.cos(angle), np.sin(angle)], 1), atol=1e-4)
    assert list(emb.state_dict()) == []


def test_fourier_embedding_formula():
    torch.manual_seed(22)
    emb = FourierEmbedding(8, scale=3)
    assert list(emb.state_dict()) == ["freqs"] and emb.freqs.shape == (4,)
    x = torch.tensor([-1.0, 0.1, 2.0], dtype=torch.float64)
    angle = 2 * np.pi * np.outer(x.numpy(), emb.freqs.double().numpy())
    np.testing.assert_allclose(emb(x).numpy(), np.concatenate([np.cos(angle), np.sin(angle)], 1), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# SongUNet


def _hook_inputs(module: nn.Module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    return seen


@pytest.mark.parametrize("embedding_type", ["positional", "fourier"])
@pytest.mark.parametrize("encoder_type", ["standard", "skip", "residual"])
@pytest.mark.parametrize("decoder_type", ["standard", "skip"])
def test_song_unet_forward_every_variant(embedding_type, encoder_type, decoder_type):
    torch.manual_seed(23)
    net = SongUNet(**TINY, label_dim=3, augment_dim=2, dropout=0.5, embedding_type=embedding_type,
                   encoder_type=encoder_type, decoder_type=decoder_type, channel_mult_noise=2)
    _randomize(net, seed=24, std=0.2)
    x = _randn(2, 3, 8, 8, seed=25, dtype=torch.float32)
    noise, labels, aug = torch.tensor([0.3, -1.2]), torch.eye(3)[:2], _randn(2, 2, seed=26, dtype=torch.float32)
    net.eval()
    with torch.no_grad():
        y = net(x, noise, labels, augment_labels=aug)
        assert y.shape == (2, 3, 8, 8) and y.dtype == torch.float32 and torch.isfinite(y).all()
        assert torch.equal(y, net(x, noise, labels, augment_labels=aug))  # deterministic in eval
        assert not torch.allclose(y, net(x, noise, labels), atol=1e-4)  # augment labels are used
        assert not torch.allclose(y, net(x, noise.flip(0), labels), atol=1e-4)  # noise labels are used
        net.train()
        assert not torch.allclose(y, net(x, noise, labels, augment_labels=aug), atol=1e-4)  # dropout


def reference_song_unet(net: SongUNet, x, noise, labels, aug, encoder_type, decoder_type):
    """The TINY SongUNet's dataflow written out by hand (EDM's SongUNet.forward, 2 levels, 1 block)."""
    e, d = net.enc, net.dec
    angle = torch.outer(noise, (1 / 10000) ** (torch.arange(4, dtype=torch.float64) / 3))  # 8 channels, endpoint
    emb = torch.cat([angle.sin(), angle.cos()], dim=1)  # sin first
    emb = emb + net.map_label(labels * math.sqrt(3)) + net.map_augment(aug)
    emb = F.silu(net.map_layer1(F.silu(net.map_layer0(emb))))
    h0 = e["8x8_conv"](x)
    h1 = e["8x8_block0"](h0, emb)
    h2 = e["4x4_down"](h1, emb)
    if encoder_type == "skip":
        h2 = h2 + e["4x4_aux_skip"](e["4x4_aux_down"](x))
    if encoder_type == "residual":
        h2 = (h2 + e["4x4_aux_residual"](x)) / math.sqrt(2)
    h3 = e["4x4_block0"](h2, emb)
    y = d["4x4_in1"](d["4x4_in0"](h3, emb), emb)
    y = d["4x4_block0"](torch.cat([y, h3], 1), emb)
    y = d["4x4_block1"](torch.cat([y, h2], 1), emb)
    out = None
    if decoder_type == "skip":
        out = d["8x8_aux_up"](d["4x4_aux_conv"](F.silu(d["4x4_aux_norm"](y))))
    y = d["8x8_up"](y, emb)
    y = d["8x8_block0"](torch.cat([y, h1], 1), emb)
    y = d["8x8_block1"](torch.cat([y, h0], 1), emb)
    rgb = d["8x8_aux_conv"](F.silu(d["8x8_aux_norm"](y)))
    return rgb if out is None else out + rgb


@pytest.mark.parametrize("encoder_type", ["standard", "skip", "residual"])
@pytest.mark.parametrize("decoder_type", ["standard", "skip"])
def test_song_unet_dataflow_matches_written_out_graph(encoder_type, decoder_type):
    torch.manual_seed(40)
    net = SongUNet(**TINY, label_dim=3, augment_dim=2, encoder_type=encoder_type, decoder_type=decoder_type,
                   resample_filter=[1, 3, 3, 1])
    net = _randomize(net, seed=41, std=0.2).double().eval()
    args = (_randn(2, 3, 8, 8, seed=42), torch.tensor([0.3, -1.2], dtype=torch.float64),
            torch.eye(3, dtype=torch.float64)[:2], _randn(2, 2, seed=43))
    with torch.no_grad():
        torch.testing.assert_close(net(*args[:3], augment_labels=args[3]),
                                   reference_song_unet(net, *args, encoder_type, decoder_type))


def test_song_unet_runs_in_the_input_dtype_with_float32_weights():
    """The mechanism behind use_fp16: float32 master weights, float16 activations (here on CPU)."""
    torch.manual_seed(44)
    net = SongUNet(**TINY_A)
    net = _randomize(net, seed=45, std=0.2).eval()
    x, noise, labels = _randn(2, 3, 8, 8, seed=46, dtype=torch.float32), torch.tensor([0.3, -1.2]), torch.eye(4)[:2]
    with torch.no_grad():
        y32, y16 = net(x, noise, labels), net(x.half(), noise, labels)
    assert y16.dtype == torch.float16 and all(p.dtype == torch.float32 for p in net.parameters())
    torch.testing.assert_close(y16.float(), y32, rtol=0, atol=1e-2 * y32.abs().max().item())


def test_song_unet_mapping_swaps_sin_cos_and_scales_labels():
    torch.manual_seed(27)
    net = SongUNet(**TINY).eval()
    seen = _hook_inputs(net.map_layer0)
    noise = torch.tensor([0.25, -2.0])
    net(_randn(2, 3, 8, 8, seed=28, dtype=torch.float32), noise, None)
    freqs = (1 / 10000) ** (np.arange(4) / 3)  # 8 noise channels, endpoint=True
    angle = np.outer(noise.numpy(), freqs)
    np.testing.assert_allclose(seen[0].numpy(), np.concatenate([np.sin(angle), np.cos(angle)], 1), rtol=1e-6, atol=1e-6)

    net = SongUNet(**TINY, label_dim=4, augment_dim=2, label_dropout=0.5).eval()
    labels = torch.eye(4).repeat(4, 1)  # 16 one-hot rows
    x = _randn(16, 3, 8, 8, seed=29, dtype=torch.float32)
    seen, seen_aug = _hook_inputs(net.map_label), _hook_inputs(net.map_augment)
    net(x, torch.zeros(16), labels)
    torch.testing.assert_close(seen[-1], labels * 2)  # labels * sqrt(label_dim), no dropout in eval
    assert seen_aug == []  # map_augment only runs when augment labels are given
    net.train()
    torch.manual_seed(30)
    net(x, torch.zeros(16), labels)
    kept = seen[-1].abs().sum(1) > 0
    torch.testing.assert_close(seen[-1][kept], labels[kept] * 2)
    assert 0 < kept.sum() < 16  # some labels dropped, some kept
    net.label_dropout = 1.0
    net(x, torch.zeros(16), labels)
    assert torch.count_nonzero(seen[-1]) == 0
    with pytest.raises(ValueError, match="class_labels"):
        net(x, torch.zeros(16), None)


def test_song_unet_state_dict_round_trip():
    torch.manual_seed(31)
    a = SongUNet(**TINY_A).eval()
    torch.manual_seed(32)
    b = SongUNet(**TINY_A).eval()
    _randomize(a, seed=33)
    args = (_randn(2, 3, 8, 8, seed=34, dtype=torch.float32), torch.tensor([0.1, 1.0]), torch.eye(4)[:2])
    with torch.no_grad():
        assert not torch.allclose(a(*args), b(*args))
        b.load_state_dict(a.state_dict(), strict=True)
        torch.testing.assert_close(a(*args), b(*args), rtol=0, atol=0)


@pytest.mark.parametrize("field, value", [("encoder_type", "dense"), ("decoder_type", "residual"),
                                          ("embedding_type", "sinusoidal")])
def test_song_unet_rejects_unknown_types(field, value):
    with pytest.raises(ValueError, match=f"{field}.*'{value}'"):
        SongUNet(**{**TINY, field: value})


# ---------------------------------------------------------------------------------------------
# Preconditioning against EDM Table 1, in float64


class StubF(nn.Module):
    """F(x_in, c_noise) = tanh(x_in) + c_noise / 100, recording what it is called with; it answers
    in float64 so that the wrappers' float32 output is their own doing."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict] = []

    def forward(self, x, noise_labels, class_labels=None, **kwargs):
        self.calls.append(dict(x=x, noise=noise_labels, labels=class_labels, kwargs=kwargs))
        return (torch.tanh(x) + noise_labels.reshape(-1, 1, 1, 1) / 100).to(torch.float64)


def vp_t(sigma, beta_d=19.9, beta_min=0.1):
    """VP t(sigma): the root of beta_d t^2 / 2 + beta_min t = ln(1 + sigma^2)."""
    return (np.sqrt(beta_min**2 + 2 * beta_d * np.log1p(sigma**2)) - beta_min) / beta_d


def vp_sigma(t, beta_d=19.9, beta_min=0.1):
    return np.sqrt(np.expm1(0.5 * beta_d * t**2 + beta_min * t))


def table1(kind, s):
    """(c_skip, c_out, c_in, c_noise) of EDM Table 1 for float64 sigmas s."""
    if kind == "vp":
        return np.ones_like(s), -s, 1 / np.sqrt(s**2 + 1), 999 * vp_t(s)
    if kind == "ve":
        return np.ones_like(s), s, np.ones_like(s), np.log(s / 2)
    sd = 0.5
    return sd**2 / (s**2 + sd**2), s * sd / np.sqrt(s**2 + sd**2), 1 / np.sqrt(s**2 + sd**2), np.log(s) / 4


SMALL = dict(model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[])


def _precond(kind, **kwargs):
    cls = {"vp": VPPrecond, "ve": VEPrecond, "edm": EDMPrecond}[kind]
    extra = dict(model_type="SongUNet") if kind == "edm" else {}
    net = cls(8, 3, **extra, **SMALL, **kwargs)
    net.model = StubF()
    return net


SIGMAS = np.array([0.002, 0.03, 0.5, 2.0, 80.0])


@pytest.mark.parametrize("kind", ["vp", "ve", "edm"])
@pytest.mark.parametrize("in_dtype", [torch.float64, torch.float32, torch.float16])
def test_preconditioning_matches_table1(kind, in_dtype):
    net = _precond(kind, use_fp16=True)  # use_fp16 only acts on CUDA: float32 here
    x = _randn(5, 3, 8, 8, seed=35) * torch.from_numpy(np.sqrt(1 + SIGMAS**2)).reshape(-1, 1, 1, 1)
    x = x.to(in_dtype)
    aug = torch.ones(5, 9)
    out = net(x, torch.from_numpy(SIGMAS), class_labels=torch.ones(5, 10), augment_labels=aug)
    assert out.dtype == torch.float32 and out.shape == x.shape

    call = net.model.calls[-1]
    assert call["x"].dtype == torch.float32 and call["labels"] is None  # label_dim=0 drops labels
    assert call["kwargs"].keys() == {"augment_labels"} and call["kwargs"]["augment_labels"] is aug
    x64, s = x.to(torch.float64).numpy(), SIGMAS
    c_skip, c_out, c_in, c_noise = (c.reshape(-1, 1, 1, 1) for c in table1(kind, s))
    np.testing.assert_allclose(call["x"].double().numpy(), c_in * x64, rtol=1e-6, atol=1e-6)
    # VP: EDM evaluates ln(1 + sigma^2) in float32, off by up to ~1e-3 in c_noise at sigma=0.002
    atol = 1e-3 if kind == "vp" else 1e-5
    np.testing.assert_allclose(call["noise"].double().numpy(), c_noise.ravel(), rtol=1e-5, atol=atol)
    F_ref = np.tanh(c_in * x64) + c_noise / 100
    D_ref = c_skip * x64 + c_out * F_ref  # EDM eq. 7
    np.testing.assert_allclose(out.double().numpy(), D_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", ["vp", "ve", "edm"])
def test_preconditioning_labels_and_sigma_forms(kind):
    net = _precond(kind, label_dim=4)
    x = _randn(3, 3, 8, 8, seed=36, dtype=torch.float32)
    net(x, torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(net.model.calls[-1]["labels"], torch.zeros(1, 4))  # None -> one zero row
    labels = torch.eye(4, dtype=torch.long)[:3]
    a = net(x, 0.7, class_labels=labels)  # a plain float sigma broadcasts over the batch
    assert net.model.calls[-1]["labels"].dtype == torch.float32 and net.model.calls[-1]["labels"].shape == (3, 4)
    b = net(x, torch.full((3,), 0.7, dtype=torch.float64), class_labels=labels.reshape(3, 1, 4))
    torch.testing.assert_close(a, b)
    assert torch.equal(net.round_sigma(torch.tensor([0.123])), torch.tensor([0.123]))


def test_vp_sigma_and_inverse():
    net = _precond("vp")
    t = np.array([1e-3, 0.1, 0.5, 1.0])
    np.testing.assert_allclose(net.sigma(torch.from_numpy(t)).numpy(), vp_sigma(t), rtol=1e-9)
    np.testing.assert_allclose(net.sigma_inv(torch.from_numpy(vp_sigma(t))).numpy(), t, rtol=1e-9)
    assert net.sigma_max == pytest.approx(vp_sigma(1.0), rel=1e-6)
    # sigma(1e-5) = sqrt(exp(~1e-6) - 1) evaluated in float32 as EDM does: 2^-10, not 1.0e-3
    assert net.sigma_min == pytest.approx(vp_sigma(1e-5), rel=0.03)
    ve, edm = _precond("ve"), _precond("edm")
    assert (ve.sigma_min, ve.sigma_max) == (0.02, 100)
    assert (edm.sigma_min, edm.sigma_max, edm.sigma_data) == (0, float("inf"), 0.5)


def test_precond_with_real_song_unet_end_to_end():
    torch.manual_seed(37)
    wrapper_owned = ("img_resolution", "in_channels", "out_channels", "label_dim")
    kwargs = {k: v for k, v in TINY_A.items() if k not in wrapper_owned}
    net = VPPrecond(8, 3, label_dim=4, **kwargs).eval()
    assert isinstance(net.model, SongUNet) and net.model.map_label.in_features == 4
    _randomize(net, seed=38, std=0.2)
    x = _randn(2, 3, 8, 8, seed=39)
    with torch.no_grad():
        d = net(x, torch.tensor([0.5, 5.0]), class_labels=torch.eye(4)[:2], augment_labels=torch.ones(2, 2))
        assert d.dtype == torch.float32 and d.shape == x.shape and torch.isfinite(d).all()
        assert not torch.allclose(d, net(x, torch.tensor([0.5, 5.0]), class_labels=torch.eye(4)[:2]))
        unconditional = EDMPrecond(8, 3, model_type="SongUNet", **SMALL).eval()
        y = unconditional(x, torch.tensor([0.5, 5.0]))
        torch.testing.assert_close(y, unconditional(x, torch.tensor([0.5, 5.0]), class_labels=torch.eye(4)[:2]))


@pytest.mark.parametrize("cls", [VPPrecond, VEPrecond, EDMPrecond])
def test_dhariwal_unet_and_unknown_models_are_refused(cls):
    with pytest.raises(ValueError, match="DhariwalUNet.*not implemented.*model_type='SongUNet'"):
        cls(8, 3, model_type="DhariwalUNet", **SMALL)
    with pytest.raises(ValueError, match="'ResNet'"):
        cls(8, 3, model_type="ResNet", **SMALL)
    if cls is EDMPrecond:  # EDM's default backbone
        with pytest.raises(ValueError, match="DhariwalUNet"):
            EDMPrecond(8, 3, **SMALL)
