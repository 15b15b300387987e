"""LightningDiT (Yao et al. 2025), written here with hustvl/LightningDiT's parameter names so
its checkpoints load with strict=True.

A DiT on VAE latents with SwiGLU MLPs, RMSNorm, 2-D rotary position embedding, optional
qk-norm, adaLN-Zero modulation, a frozen 2-D sin-cos position table and a class embedding
whose extra row is the null class of classifier-free guidance. The network predicts the
flow velocity v = data - noise at flow time t (t = 0 noise, t = 1 data, as in LightningDiT's transport).

The forward is split into `embed`, `conditioning`, `trunk` and `head` so the LowDiff
retrofit can swap the per-resolution pieces (patch embedder, tables, final layer) around
the shared trunk.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class DiTConfig:
    """LightningDiT's architecture as data; `input_size` is the latent grid (16 for 256 px
    images through VA-VAE f16d32), `num_classes` excludes the null class."""

    input_size: int = 16
    patch_size: int = 1
    in_channels: int = 32
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    use_qknorm: bool = False

    def __post_init__(self) -> None:
        for name in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "num_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"DiTConfig.{name} must be a positive int, got {value!r}")
        if self.input_size % self.patch_size:
            raise ValueError(f"DiTConfig.input_size={self.input_size} is not a multiple of patch_size={self.patch_size}")
        head_dim, rem = divmod(self.hidden_size, self.num_heads)
        if rem or head_dim % 4:
            raise ValueError(
                f"DiTConfig.hidden_size={self.hidden_size} must split into num_heads={self.num_heads} heads "
                "whose width is a multiple of 4 (2-D RoPE rotates pairs in each half)"
            )
        if not 0 <= self.class_dropout_prob < 1:
            raise ValueError(f"DiTConfig.class_dropout_prob must lie in [0, 1), got {self.class_dropout_prob}")

    @property
    def grid(self) -> int:
        """Tokens per side."""
        return self.input_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiTConfig":
        if not isinstance(data, dict):
            raise ValueError(f"a DiT config must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown DiT config keys {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)


# ---- fixed tables ------------------------------------------------------------------------
def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """[len(positions), dim]: sin then cos of positions times 1 / 10000^(2i / dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid: int) -> Tensor:
    """[grid * grid, dim] MAE-style 2-D table, tokens row-major: the first half of each row
    encodes the token's column, the second half its row."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1).float()


def rope_2d(head_dim: int, grid: int, theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos and sin tables [grid * grid, head_dim] of 2-D rotary embedding (EVA-02 style):
    the first half of a head rotates by the token's row, the second by its column, each
    with head_dim / 4 frequencies used by adjacent channel pairs."""
    quarter = head_dim // 4
    freqs = 1.0 / theta ** (torch.arange(0, 2 * quarter, 2, dtype=torch.float64) / (2 * quarter))
    angles = torch.arange(grid, dtype=torch.float64)[:, None] * freqs[None]  # [grid, quarter]
    angles = angles.repeat_interleave(2, dim=1)  # each frequency for a channel pair
    rows = angles[:, None, :].expand(grid, grid, -1)
    cols = angles[None, :, :].expand(grid, grid, -1)
    table = torch.cat([rows, cols], dim=-1).reshape(grid * grid, head_dim)
    return table.cos().float(), table.sin().float()


def rotate_pairs(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): a quarter turn of each channel pair."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)


class RoPE(nn.Module):
    """The rotary tables of one token grid (buffers `freqs_cos`, `freqs_sin`, as in a
    LightningDiT state dict)."""

    freqs_cos: Tensor
    freqs_sin: Tensor

    def __init__(self, head_dim: int, grid: int) -> None:
        super().__init__()
        cos, sin = rope_2d(head_dim, grid)
        self.register_buffer("freqs_cos", cos)
        self.register_buffer("freqs_sin", sin)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.freqs_cos + rotate_pairs(x) * self.freqs_sin


# ---- layers ------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x (1 + scale) + shift, per sample."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    """Latents [B, C, H, W] -> tokens [B, (H/p)(W/p), hidden] by a p x p strided conv."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Flow time t (unscaled, in [0, 1]) -> [cos, sin] features of 256 frequencies -> MLP."""

    def __init__(self, hidden_size: int, frequency_size: int = 256) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def features(self, t: Tensor, max_period: float = 10000.0) -> Tensor:
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        angles = t.float()[:, None] * freqs[None]
        return torch.cat([angles.cos(), angles.sin()], dim=-1)

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.features(t).to(cast(nn.Linear, self.mlp[0]).weight.dtype))


class LabelEmbedder(nn.Module):
    """Class ids -> vectors; row `num_classes` is the null class. In training, labels are
    replaced by the null class with probability `dropout_prob` (for CFG)."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def forward(self, labels: Tensor) -> Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RMSNorm(dim // num_heads) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(dim // num_heads) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: RoPE) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = rope(self.q_norm(q)), rope(self.k_norm(k))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class SwiGLU(nn.Module):
    """w3(silu(a) * b) with [a, b] = w12(x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class Block(nn.Module):
    """Pre-norm attention and SwiGLU, each modulated and gated by adaLN-Zero."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, config.num_heads, config.use_qknorm)
        self.norm2 = RMSNorm(dim)
        self.mlp = SwiGLU(dim, int(2 / 3 * int(dim * config.mlp_ratio)))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor, rope: RoPE) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = RMSNorm(hidden_size)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# ---- the network --------------------------------------------------------------------------
class LightningDiT(nn.Module):
    """v(z_t, t, y): the flow velocity of latents z_t [B, C, H, W] at flow time t [B] for
    class ids y [B] (y = num_classes is the null class)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        c, dim = config, config.hidden_size
        self.x_embedder = PatchEmbed(c.patch_size, c.in_channels, dim)
        self.t_embedder = TimestepEmbedder(dim)
        self.y_embedder = LabelEmbedder(c.num_classes, dim, c.class_dropout_prob)
        self.pos_embed = nn.Parameter(sincos_2d(dim, c.grid)[None], requires_grad=False)
        self.feat_rope = RoPE(dim // c.num_heads, c.grid)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.depth))
        self.final_layer = FinalLayer(dim, c.patch_size, c.in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init: xavier linears, N(0, 0.02) label and time embeddings, adaLN-Zero (zero
        modulation and zero final projection, so a fresh network outputs 0)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(cast(Tensor, self.x_embedder.proj.bias))  # the patch conv has a bias
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(cast(nn.Linear, self.t_embedder.mlp[0]).weight, std=0.02)
        nn.init.normal_(cast(nn.Linear, self.t_embedder.mlp[2]).weight, std=0.02)
        for block in cast(Iterable[Block], self.blocks):
            modulation = cast(nn.Linear, block.adaLN_modulation[-1])
            nn.init.zeros_(modulation.weight)
            nn.init.zeros_(modulation.bias)
        for layer in (cast(nn.Linear, self.final_layer.adaLN_modulation[-1]), self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def conditioning(self, t: Tensor, y: Tensor) -> Tensor:
        """The adaLN conditioning vector c = embed(t) + embed(y)."""
        return self.t_embedder(t) + self.y_embedder(y)

    def trunk(self, tokens: Tensor, c: Tensor, rope: RoPE) -> Tensor:
        for block in self.blocks:
            tokens = block(tokens, c, rope)
        return tokens

    def unpatchify(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """[B, h w, p p C] -> [B, C, h p, w p]."""
        p, ch = self.config.patch_size, self.config.in_channels
        (h, w), b = grid, tokens.shape[0]
        x = tokens.reshape(b, h, w, p, p, ch)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(b, ch, h * p, w * p)

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        grid = (x.shape[-2] // self.config.patch_size, x.shape[-1] // self.config.patch_size)
        tokens = self.x_embedder(x) + self.pos_embed
        c = self.conditioning(t, y)
        return self.unpatchify(self.final_layer(self.trunk(tokens, c, self.feat_rope), c), grid)
