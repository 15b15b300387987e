"""LDM AutoencoderKL decoder (VA-VAE f16d32 format): key names, parameter count, loading, numerics, errors."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from lowdiff_sched.adapters.dit.vae import (
    VAVAE_F16D32,
    AttnBlock,
    DecoderConfig,
    ResnetBlock,
    VAEDecoder,
    decoder_config_from_state_dict,
    load_vae_decoder,
)


TINY = DecoderConfig(widths=(32, 64), num_res_blocks=1, attn_levels=(1,), z_channels=4, embed_dim=4)


def _tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny decoder's state with every parameter perturbed (so norms/biases are not at init values)."""
    torch.manual_seed(seed)
    model = VAEDecoder(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _with_extras(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    extras = {
        "encoder.conv_in.weight": torch.randn(32, 3, 3, 3, generator=g),
        "quant_conv.weight": torch.randn(8, 8, 1, 1, generator=g),
        "loss.logvar": torch.zeros(()),
    }
    return {**extras, **state}


def _z(shape=(2, 4, 8, 8)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(2))


# --- architecture: names and parameter count ------------------------------------------------------


def _expected_keys(widths, num_res_blocks, attn_levels) -> set[str]:
    """The checkpoint key set, spelled out from the LDM architecture description."""
    conv = lambda p: {f"{p}.weight", f"{p}.bias"}  # noqa: E731 (conv and GroupNorm both have weight+bias)

    def res(p, cin, cout):
        keys = conv(f"{p}.norm1") | conv(f"{p}.conv1") | conv(f"{p}.norm2") | conv(f"{p}.conv2")
        return keys | (conv(f"{p}.nin_shortcut") if cin != cout else set())

    def attn(p):
        return set().union(*(conv(f"{p}.{n}") for n in ("norm", "q", "k", "v", "proj_out")))

    keys = conv("post_quant_conv") | conv("decoder.conv_in") | conv("decoder.norm_out") | conv("decoder.conv_out")
    keys |= res("decoder.mid.block_1", 0, 0) | attn("decoder.mid.attn_1") | res("decoder.mid.block_2", 0, 0)
    block_in = widths[-1]
    for i in reversed(range(len(widths))):
        for j in range(num_res_blocks + 1):
            keys |= res(f"decoder.up.{i}.block.{j}", block_in, widths[i])
            block_in = widths[i]
            if i in attn_levels:
                keys |= attn(f"decoder.up.{i}.attn.{j}")
        if i != 0:
            keys |= conv(f"decoder.up.{i}.upsample.conv")
    return keys


def _expected_param_count(widths, num_res_blocks, attn_levels, z, embed, out=3) -> int:
    """Parameter count from the architecture: conv k*k*cin*cout + cout, GroupNorm 2*C."""
    conv = lambda k, cin, cout: k * k * cin * cout + cout  # noqa: E731
    gn = lambda c: 2 * c  # noqa: E731

    def res(cin, cout):
        return gn(cin) + conv(3, cin, cout) + gn(cout) + conv(3, cout, cout) + (conv(1, cin, cout) if cin != cout else 0)

    def attn(c):
        return gn(c) + 4 * conv(1, c, c)

    top = widths[-1]
    n = conv(1, embed, z) + conv(3, z, top) + 2 * res(top, top) + attn(top)
    block_in = top
    for i in reversed(range(len(widths))):
        for _ in range(num_res_blocks + 1):
            n += res(block_in, widths[i]) + (attn(widths[i]) if i in attn_levels else 0)
            block_in = widths[i]
        n += conv(3, widths[i], widths[i]) if i != 0 else 0
    return n + gn(widths[0]) + conv(3, widths[0], out)


# Hand-evaluated from `_expected_param_count` for VA-VAE f16d32; the decoder half is 41.4M parameters.
VAVAE_DECODER_PARAMS = 41_418_659


def test_vavae_f16d32_keys_and_param_count():
    with torch.device("meta"):
        model = VAEDecoder(VAVAE_F16D32)
    keys = set(model.state_dict())
    for name in (
        "decoder.conv_in.weight",
        "decoder.mid.block_1.norm1.weight",
        "decoder.mid.attn_1.q.weight",
        "decoder.up.3.block.0.nin_shortcut.weight",
        "decoder.up.3.upsample.conv.weight",
        "decoder.up.4.attn.0.proj_out.weight",
        "decoder.up.4.attn.0.q.weight",
        "decoder.up.1.upsample.conv.weight",
        "decoder.up.0.block.2.conv1.weight",
        "decoder.norm_out.weight",
        "decoder.conv_out.weight",
        "post_quant_conv.weight",
    ):
        assert name in keys, name
    assert not any(k.startswith("decoder.up.0.upsample") for k in keys)
    assert not any(k.startswith(f"decoder.up.{i}.attn") for i in range(4) for k in keys)
    assert keys == _expected_keys(VAVAE_F16D32.widths, 2, (4,))
    assert tuple(model.state_dict()["decoder.conv_in.weight"].shape) == (512, 32, 3, 3)

    expected = _expected_param_count((128, 128, 256, 256, 512), 2, (4,), 32, 32)
    assert expected == VAVAE_DECODER_PARAMS
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.upsampling_factor == 16


def test_from_ch_mult_matches_vavae_constant():
    cfg = DecoderConfig.from_ch_mult(128, (1, 1, 2, 2, 4), 2, (16,), 256, z_channels=32, embed_dim=32)
    assert cfg == VAVAE_F16D32


def test_config_inferred_from_state_dict():
    assert decoder_config_from_state_dict(_tiny_state()) == TINY
    with torch.device("meta"):
        vavae = VAEDecoder(VAVAE_F16D32).state_dict()
    assert decoder_config_from_state_dict(vavae) == VAVAE_F16D32
    # Attention at every level and a different block count are read off the keys too.
    cfg = DecoderConfig(widths=(32, 32, 64), num_res_blocks=0, attn_levels=(0, 2), z_channels=8, embed_dim=6, out_channels=1)
    with torch.device("meta"):
        assert decoder_config_from_state_dict(VAEDecoder(cfg).state_dict()) == cfg


def test_config_validation():
    with pytest.raises(ValueError, match="multiples of 32"):
        DecoderConfig(widths=(48,), num_res_blocks=1, attn_levels=(), z_channels=4, embed_dim=4)
    with pytest.raises(ValueError, match="attn_levels"):
        DecoderConfig(widths=(32,), num_res_blocks=1, attn_levels=(1,), z_channels=4, embed_dim=4)


# --- shapes and loading round trips --------------------------------------------------------------


def test_tiny_shapes_and_factor():
    torch.manual_seed(0)
    model = VAEDecoder(TINY).eval()
    out = model.decode(_z().double())
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    assert model.upsampling_factor == 2
    assert model.decode(_z((1, 4, 5, 3))).shape == (1, 3, 10, 6)
    with pytest.raises(ValueError, match=r"\[B, 4, h, w\]"):
        model.decode(torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize("fmt", ["lightning", "model", "bare", "safetensors"])
def test_round_trip(tmp_path, fmt):
    state = _tiny_state()
    reference = VAEDecoder(TINY)
    reference.load_state_dict(state)
    reference.eval()
    z = _z()
    with torch.no_grad():
        expected = reference.decode(z)

    full = _with_extras(state)
    if fmt == "safetensors":
        path = tmp_path / "vae.safetensors"
        save_file({k: v.contiguous() for k, v in full.items()}, str(path))
    else:
        path = tmp_path / ("vae.ckpt" if fmt == "lightning" else "vae.pt")
        payload = {"lightning": {"state_dict": full, "epoch": 3}, "model": {"model": full}, "bare": full}[fmt]
        torch.save(payload, path)

    loaded = load_vae_decoder(path)
    assert loaded.config == TINY
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert set(loaded.state_dict()) == set(state)
    with torch.no_grad():
        assert torch.equal(loaded.decode(z), expected)


def test_half_precision_checkpoint_decodes_in_float32(tmp_path):
    state = {k: v.half() for k, v in _tiny_state().items()}
    torch.save(state, tmp_path / "vae.pt")
    loaded = load_vae_decoder(tmp_path / "vae.pt")
    assert loaded.post_quant_conv.weight.dtype == torch.float32
    with torch.no_grad():
        assert loaded.decode(_z()).dtype == torch.float32


# --- independent numerics of the building blocks -------------------------------------------------


def _perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return module.eval()


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    # (torch.testing.assert_close costs a one-off ~1 s import of torch.distributed.tensor)
    assert actual.shape == expected.shape
    err = ((actual - expected).abs() / (1 + expected.abs())).max().item()
    assert err <= tol, err


def test_attn_block_matches_explicit_softmax_attention():
    torch.manual_seed(3)
    block = _perturbed(AttnBlock(64), 4)
    x = torch.randn(2, 64, 5, 7)
    sd = block.state_dict()
    h = F.group_norm(x, 32, sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    q, k, v = (F.conv2d(h, sd[f"{n}.weight"], sd[f"{n}.bias"]).flatten(2) for n in "qkv")  # [B, C, N]
    w = torch.softmax(q.transpose(1, 2) @ k / 64**0.5, dim=-1)  # [B, Nq, Nk], softmax over keys
    att = (v @ w.transpose(1, 2)).reshape(x.shape)  # att[b, c, i] = sum_j w[b, i, j] v[b, c, j]
    expected = x + F.conv2d(att, sd["proj_out.weight"], sd["proj_out.bias"])
    with torch.no_grad():
        _assert_close(block(x), expected)


@pytest.mark.parametrize("cin,cout", [(32, 64), (64, 64)])
def test_resnet_block_matches_explicit_ops(cin, cout):
    torch.manual_seed(5)
    block = _perturbed(ResnetBlock(cin, cout), 6)
    x = torch.randn(2, cin, 6, 6)
    sd = block.state_dict()
    swish = lambda t: t * torch.sigmoid(t)  # noqa: E731
    h = swish(F.group_norm(x, 32, sd["norm1.weight"], sd["norm1.bias"], eps=1e-6))
    h = F.conv2d(h, sd["conv1.weight"], sd["conv1.bias"], padding=1)
    h = swish(F.group_norm(h, 32, sd["norm2.weight"], sd["norm2.bias"], eps=1e-6))  # (dropout 0 / eval: identity)
    h = F.conv2d(h, sd["conv2.weight"], sd["conv2.bias"], padding=1)
    skip = F.conv2d(x, sd["nin_shortcut.weight"], sd["nin_shortcut.bias"]) if cin != cout else x
    assert ("nin_shortcut.weight" in sd) == (cin != cout)
    with torch.no_grad():
        _assert_close(block(x), skip + h)


# --- errors ---------------------------------------------------------------------------------------

_UNPICKLED: list[str] = []


def _mark(tag: str) -> str:
    _UNPICKLED.append(tag)
    return tag


class _Trap:
    """Unpickling this *calls* `_mark` -- which weights_only loading must refuse to do."""

    def __reduce__(self):
        return (_mark, ("ran",))


def _assert_one_line(exc_info, path) -> None:
    msg = str(exc_info.value)
    assert "\n" not in msg and str(path) in msg, msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(ValueError, match="does not exist") as info:
        load_vae_decoder(path)
    _assert_one_line(info, path)
    with pytest.raises(ValueError, match="is not a file"):
        load_vae_decoder(tmp_path)


@pytest.mark.parametrize(
    "name,size,reason",
    [
        ("junk.pt", 4096, "is neither a torch file nor a .safetensors file"),
        ("empty.ckpt", 0, "is empty"),
        ("junk.safetensors", 4096, "not a readable safetensors file"),
    ],
)
def test_random_bytes(tmp_path, name, size, reason):
    path = tmp_path / name
    path.write_bytes(random.Random(0).randbytes(size))
    with pytest.raises(ValueError, match=reason) as info:
        load_vae_decoder(path)
    _assert_one_line(info, path)


def test_pickled_object_refused_without_running_it(tmp_path):
    path = tmp_path / "trap.pt"
    torch.save({"state_dict": _tiny_state(), "extra": _Trap()}, path)
    _UNPICKLED.clear()
    with pytest.raises(ValueError, match=r"not a plain tensor checkpoint \(torch.load\(weights_only=True\) refused it: Unsupported gl") as info:
        load_vae_decoder(path)
    _assert_one_line(info, path)
    assert _UNPICKLED == []
    torch.load(path, weights_only=False)  # our own file: shows the trap is live under a plain unpickle
    assert _UNPICKLED == ["ran"]


def test_not_a_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="must hold a dict of tensors, got list"):
        load_vae_decoder(path)


def test_no_decoder_keys(tmp_path):
    path = tmp_path / "enc.ckpt"
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(32, 3, 3, 3), "loss.logvar": torch.zeros(())}}, path)
    with pytest.raises(ValueError, match="no decoder.\\* keys") as info:
        load_vae_decoder(path)
    _assert_one_line(info, path)


def test_missing_required_key_is_named(tmp_path):
    state = _tiny_state()
    del state["post_quant_conv.weight"]
    path = tmp_path / "nopqc.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match="missing 'post_quant_conv.weight'"):
        load_vae_decoder(path)
    with pytest.raises(ValueError, match="missing 'decoder.conv_in.weight'"):
        decoder_config_from_state_dict({"decoder.conv_out.weight": torch.zeros(3, 32, 3, 3)})


def test_post_quant_conv_disagrees_with_conv_in(tmp_path):
    state = _tiny_state()
    state["post_quant_conv.weight"] = torch.zeros(8, 4, 1, 1)
    state["post_quant_conv.bias"] = torch.zeros(8)
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match="outputs 8 channels but decoder.conv_in.weight takes 4") as info:
        load_vae_decoder(path)
    _assert_one_line(info, path)


def test_shape_mismatch_and_missing_block(tmp_path):
    state = _tiny_state()
    state["decoder.up.1.block.1.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "shape.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match="does not match.*size mismatch for decoder.up.1.block.1.conv1.weight") as info:
        load_vae_decoder(path)
    _assert_one_line(info, path)

    state = _tiny_state()
    del state["decoder.mid.attn_1.k.bias"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="Missing key.*decoder.mid.attn_1.k.bias") as info:
        load_vae_decoder(path)
    _assert_one_line(info, path)
