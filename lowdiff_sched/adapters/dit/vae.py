"""Image decoder for latent-diffusion `AutoencoderKL` checkpoints (VA-VAE, LDM / SD-style KL VAEs).

LightningDiT samples in the latent space of VA-VAE f16d32: latents [B, 32, 16, 16] that an
LDM-format KL autoencoder decodes to images [B, 3, 256, 256] in about [-1, 1]. Only the decoder
half is needed to look at samples or score them, so this module rebuilds just that half
(`post_quant_conv` + `decoder.*`) with parameter names identical to the checkpoint's, and
`load_vae_decoder` loads it strictly.

Checkpoints do not record their architecture, and attention placement in particular differs
between them, so the config is *inferred* from the state dict (`decoder_config_from_state_dict`):
per-level widths, residual blocks per level, which levels have attention, latent and output
channels. The decoder is therefore parametrised by levels (index 0 = full resolution, the last
= lowest resolution, where decoding starts) rather than by the LDM `ch * ch_mult` /
`attn_resolutions` pair; `DecoderConfig.from_ch_mult` converts from the latter.

Loading never unpickles arbitrary objects: torch files go through
`torch.load(..., weights_only=True)` only, `.safetensors` through `safetensors.torch.load_file`.
Every failure a user can cause with a bad path or file is a one-line `ValueError` naming the path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...tensorfiles import load_tensor_file

__all__ = [
    "AttnBlock",
    "DecoderConfig",
    "LDMDecoder",
    "ResnetBlock",
    "Upsample",
    "VAEDecoder",
    "VAVAE_F16D32",
    "decoder_config_from_state_dict",
    "load_vae_decoder",
]

_GROUPS = 32  # LDM's Normalize: GroupNorm(32, C, eps=1e-6)
_EPS = 1e-6


@dataclass(frozen=True)
class DecoderConfig:
    """Architecture of an LDM KL-autoencoder decoder, by level.

    widths[i] is the channel count of up-level i (level 0 is the output resolution, level
    len(widths)-1 the latent resolution); each level has num_res_blocks + 1 ResnetBlocks, followed
    by an AttnBlock each when i is in attn_levels. z_channels feeds `decoder.conv_in`, embed_dim is
    the latent channel count that `post_quant_conv` maps to z_channels.
    """

    widths: tuple[int, ...]
    num_res_blocks: int
    attn_levels: tuple[int, ...]
    z_channels: int
    embed_dim: int
    out_channels: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "attn_levels", tuple(sorted({int(i) for i in self.attn_levels})))
        if not self.widths or any(w <= 0 or w % _GROUPS for w in self.widths):
            raise ValueError(f"widths must be a non-empty tuple of positive multiples of {_GROUPS} (GroupNorm groups), got {self.widths}")
        if self.num_res_blocks < 0:
            raise ValueError(f"num_res_blocks must be >= 0, got {self.num_res_blocks}")
        if any(not 0 <= i < len(self.widths) for i in self.attn_levels):
            raise ValueError(f"attn_levels must index levels 0..{len(self.widths) - 1}, got {self.attn_levels}")
        for name in ("z_channels", "embed_dim", "out_channels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_ch_mult(
        cls,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        attn_resolutions: tuple[int, ...],
        resolution: int,
        z_channels: int,
        embed_dim: int,
        out_channels: int = 3,
    ) -> DecoderConfig:
        """The config of an LDM `ddconfig` (ch, ch_mult, attn_resolutions in pixels at `resolution`)."""
        n = len(ch_mult)
        attn = tuple(i for i in range(n) if resolution // 2**i in set(attn_resolutions))
        return cls(tuple(ch * m for m in ch_mult), num_res_blocks, attn, z_channels, embed_dim, out_channels)

    @property
    def upsampling_factor(self) -> int:
        """Image size / latent size: one x2 upsample per level above level 0."""
        return 2 ** (len(self.widths) - 1)


# VA-VAE f16d32 (LightningDiT's tokenizer): ch 128, ch_mult (1,1,2,2,4), 2 res blocks,
# attention at 16x16 of 256 (the lowest level), z_channels = embed_dim = 32.
VAVAE_F16D32 = DecoderConfig(widths=(128, 128, 256, 256, 512), num_res_blocks=2, attn_levels=(4,), z_channels=32, embed_dim=32)


def _normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=_GROUPS, num_channels=channels, eps=_EPS, affine=True)


class ResnetBlock(nn.Module):
    """LDM residual block: GroupNorm-swish-conv3x3 twice, 1x1 `nin_shortcut` when channels change."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = getattr(self, "nin_shortcut", None)
        return (x if shortcut is None else shortcut(x)) + h


class AttnBlock(nn.Module):
    """LDM spatial self-attention: one head over the H*W positions, 1x1-conv q/k/v/proj_out, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        # [B, C, H, W] -> [B, 1 head, H*W, C]; SDPA's default scale is C**-0.5, as in LDM.
        q, k, v = (t.reshape(b, 1, c, h * w).transpose(-1, -2) for t in (self.q(y), self.k(y), self.v(y)))
        a = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(a.transpose(-1, -2).reshape(b, c, h, w))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv named `conv`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class _UpLevel(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, n_blocks: int, attn: bool, upsample: bool, dropout: float) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(in_channels if j == 0 else out_channels, out_channels, dropout) for j in range(n_blocks))
        self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(n_blocks if attn else 0))
        if upsample:
            self.upsample = Upsample(out_channels)

    def forward(self, h: Tensor) -> Tensor:
        for j, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[j](h)
        up = getattr(self, "upsample", None)
        return h if up is None else up(h)


class LDMDecoder(nn.Module):
    """The `decoder.*` half of an LDM AutoencoderKL: z [B, z_channels, h, w] -> [B, out, h*f, w*f].

    `up[i]` is level i (0 = full resolution); forward runs from the last level down to 0.
    """

    def __init__(self, config: DecoderConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = config
        widths = config.widths
        block_in = widths[-1]
        self.conv_in = nn.Conv2d(config.z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, dropout)
        levels: list[_UpLevel] = []
        for i in reversed(range(len(widths))):
            levels.insert(0, _UpLevel(block_in, widths[i], config.num_res_blocks + 1, i in config.attn_levels, i != 0, dropout))
            block_in = widths[i]
        self.up = nn.ModuleList(levels)
        self.norm_out = _normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, config.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VAEDecoder(nn.Module):
    """`post_quant_conv` (1x1, embed_dim -> z_channels) + `decoder`; state-dict names match the checkpoint."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.decoder = LDMDecoder(config)

    @property
    def upsampling_factor(self) -> int:
        """Image size / latent size (16 for VA-VAE f16d32)."""
        return self.config.upsampling_factor

    def forward(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z))

    def decode(self, z: Tensor) -> Tensor:
        """Latents [B, embed_dim, h, w] -> float32 images [B, out_channels, h*f, w*f] (about [-1, 1])."""
        if z.ndim != 4 or z.shape[1] != self.config.embed_dim:
            raise ValueError(f"latents must have shape [B, {self.config.embed_dim}, h, w], got {tuple(z.shape)}")
        param = self.post_quant_conv.weight
        return self(z.to(device=param.device, dtype=param.dtype)).float()


def _require(state: Mapping[str, Any], key: str, ndim: int = 4) -> Tensor:
    t = state.get(key)
    if t is None:
        raise ValueError(f"not an LDM AutoencoderKL decoder state dict: missing {key!r}")
    if not isinstance(t, Tensor) or t.ndim != ndim:
        raise ValueError(f"{key!r} must be a {ndim}-d tensor, got {type(t).__name__} {tuple(getattr(t, 'shape', ()))}")
    return t


def decoder_config_from_state_dict(state: Mapping[str, Tensor]) -> DecoderConfig:
    """Infer the decoder architecture from `post_quant_conv.*` / `decoder.*` tensor shapes and key names.

    Raises ValueError naming the first missing key when `state` is not an LDM decoder, and when
    `post_quant_conv` does not produce the channels `decoder.conv_in` takes.
    """
    conv_in = _require(state, "decoder.conv_in.weight")
    conv_out = _require(state, "decoder.conv_out.weight")
    pqc = _require(state, "post_quant_conv.weight")
    widths = [int(_require(state, "decoder.up.0.block.0.conv2.weight").shape[0])]
    while (key := f"decoder.up.{len(widths)}.block.0.conv2.weight") in state:
        widths.append(int(_require(state, key).shape[0]))
    block_re = re.compile(r"decoder\.up\.0\.block\.(\d+)\.")
    n_blocks = 1 + max(int(m.group(1)) for k in state if (m := block_re.match(k)))
    attn = tuple(i for i in range(len(widths)) if any(k.startswith(f"decoder.up.{i}.attn.0.") for k in state))
    z_channels = int(conv_in.shape[1])
    if pqc.shape[0] != z_channels:
        raise ValueError(
            f"post_quant_conv.weight has shape {tuple(pqc.shape)}: it outputs {pqc.shape[0]} channels "
            f"but decoder.conv_in.weight takes {z_channels}"
        )
    return DecoderConfig(tuple(widths), n_blocks - 1, attn, z_channels, int(pqc.shape[1]), int(conv_out.shape[0]))


def _read_state(path: Path) -> Mapping[str, Any]:
    obj = load_tensor_file(path, "VAE checkpoint")
    if not isinstance(obj, Mapping):
        raise ValueError(f"VAE checkpoint {str(path)!r} must hold a dict of tensors, got {type(obj).__name__}")
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            return obj[key]
    return obj


def load_vae_decoder(path: str | Path, device: str | torch.device = "cpu") -> VAEDecoder:
    """Load the decoder half of an LDM AutoencoderKL checkpoint (e.g. VA-VAE f16d32), frozen, in eval mode.

    Accepts `.safetensors` or a torch file (`.pt/.ckpt/.pth`, read with weights_only=True) holding a
    bare state dict or one under "state_dict" (Lightning) or "model". Only `decoder.*` and
    `post_quant_conv.*` are used (encoder/quant_conv/loss keys are ignored); the architecture is
    inferred from them and loaded strictly. Raises a one-line ValueError naming `path` otherwise.
    """
    path = Path(path)
    raw = _read_state(path)
    state = {k: v for k, v in raw.items() if isinstance(k, str) and (k.startswith("decoder.") or k.startswith("post_quant_conv."))}
    if not any(k.startswith("decoder.") for k in state):
        raise ValueError(f"{path}: no decoder.* keys, so not an LDM AutoencoderKL checkpoint")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{path}: {bad[0]!r} is a {type(state[bad[0]]).__name__}, not a tensor")
    try:
        config = decoder_config_from_state_dict(state)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    model = VAEDecoder(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:] if line.strip())
        if len(detail) > 300:
            detail = detail[:297] + "..."
        raise ValueError(f"{path}: decoder state does not match the inferred {config}: {detail}") from None
    model.eval().requires_grad_(False)
    return model.to(device)
