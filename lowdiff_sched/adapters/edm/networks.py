"""EDM's SongUNet (DDPM++ / NCSN++) and its VP, VE and EDM preconditioners, reimplemented.

Re-derived from the EDM paper (Karras et al. 2022) and the facts of NVlabs/edm's
`training/networks.py`: every class, constructor argument, parameter and buffer carries EDM's
name, so `NETWORK_CLASSES[name](*init_args, **init_kwargs)` rebuilds an object from the init
arguments an EDM pickle records, and EDM's state dicts load into it unchanged. Nothing from
EDM (torch_utils, dnnlib) is imported and no pickled source is ever executed.

Layers cast their weights to the activation dtype, so the preconditioners can run the model
in float16 on CUDA (`use_fp16`) while keeping float32 master weights; elsewhere everything
stays float32. EDM's ADM backbone (`DhariwalUNet`) is not implemented.
"""

from __future__ import annotations

import inspect
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.functional import silu

__all__ = [
    "weight_init",
    "Linear",
    "Conv2d",
    "GroupNorm",
    "AttentionOp",
    "UNetBlock",
    "PositionalEmbedding",
    "FourierEmbedding",
    "SongUNet",
    "VPPrecond",
    "VEPrecond",
    "EDMPrecond",
    "NETWORK_CLASSES",
    "UNET_CONFIGS",
    "DATASET_CONFIGS",
    "check_init_kwargs",
    "build_checked",
]

# mode -> (draw, scale(fan_in, fan_out)): uniform draws lie in [-1, 1], normal draws are N(0, 1).
_INIT_MODES: dict[str, tuple[str, Callable[[int, int], float]]] = {
    "xavier_uniform": ("uniform", lambda fan_in, fan_out: math.sqrt(6 / (fan_in + fan_out))),
    "xavier_normal": ("normal", lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out))),
    "kaiming_uniform": ("uniform", lambda fan_in, fan_out: math.sqrt(3 / fan_in)),
    "kaiming_normal": ("normal", lambda fan_in, fan_out: math.sqrt(1 / fan_in)),
}


def _check_init_mode(mode: str) -> None:
    if mode not in _INIT_MODES:
        raise ValueError(f"init_mode must be one of {sorted(_INIT_MODES)}, got {mode!r}")


def weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> Tensor:
    """A fresh tensor from one of EDM's four init modes (Xavier/Kaiming, uniform/normal)."""
    _check_init_mode(mode)
    draw, scale = _INIT_MODES[mode]
    unit = torch.rand(*shape) * 2 - 1 if draw == "uniform" else torch.randn(*shape)
    return scale(fan_in, fan_out) * unit


class Linear(nn.Module):
    """Fully connected layer y = x W^T + b with EDM's init; W and b follow x's dtype."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1,
        init_bias: float = 0,
    ) -> None:
        super().__init__()
        _check_init_mode(init_mode)
        self.in_features = in_features
        self.out_features = out_features
        fans: dict[str, Any] = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        if bias:
            self.bias = nn.Parameter(weight_init([out_features], **fans) * init_bias)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


def _blur_up(x: Tensor, f: Tensor, padding: int) -> Tensor:
    """Per-channel 2x upsampling: stride-2 transposed convolution with 4 f (f sums to 1)."""
    channels = x.shape[1]
    return F.conv_transpose2d(x, (4 * f).repeat(channels, 1, 1, 1), groups=channels, stride=2, padding=padding)


def _blur_down(x: Tensor, f: Tensor, padding: int) -> Tensor:
    """Per-channel 2x downsampling: filter with f, keep every second pixel."""
    channels = x.shape[1]
    return F.conv2d(x, f.repeat(channels, 1, 1, 1), groups=channels, stride=2, padding=padding)


class Conv2d(nn.Module):
    """2-D convolution with optional 2x up/downsampling through a separable FIR filter.

    `kernel=0` gives a pure resampler (no weight, no bias). The unfused path resamples, then
    convolves; `fused_resample` with `down` convolves at full resolution first, then blurs and
    decimates (EDM uses it for NCSN++'s residual encoder path; for kernel > 1 it is a different
    operator, not just a faster one).
    The buffer `resample_filter` (outer(f, f) / sum(f)^2) exists only when resampling.
    """

    resample_filter: Tensor | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[float] = (1, 1),
        fused_resample: bool = False,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1,
        init_bias: float = 0,
    ) -> None:
        if up and down:
            raise ValueError("Conv2d: up and down cannot both be set")
        if fused_resample and up and kernel > 1:
            # EDM's formula for this case shrinks the output by kernel - 1 pixels; no EDM network uses it.
            raise ValueError(
                f"Conv2d: fused_resample with up=True needs kernel <= 1, got kernel={kernel}; "
                "use fused_resample=False"
            )
        _check_init_mode(init_mode)
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans: dict[str, Any] = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        if kernel:
            self.weight = nn.Parameter(weight_init([out_channels, in_channels, kernel, kernel], **fans) * init_weight)
        else:
            self.register_parameter("weight", None)
        if kernel and bias:
            self.bias = nn.Parameter(weight_init([out_channels], **fans) * init_bias)
        else:
            self.register_parameter("bias", None)
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f2d = torch.outer(f, f).reshape(1, 1, f.numel(), f.numel()) / f.sum().square()
        self.register_buffer("resample_filter", f2d if (up or down) else None)

    def _filter(self, dtype: torch.dtype) -> tuple[Tensor, int]:
        """The resampling filter in `dtype` and its padding; every up/down Conv2d has one."""
        if self.resample_filter is None:
            raise ValueError("Conv2d: up/down resampling needs the resample_filter buffer, which is None")
        f = self.resample_filter.to(dtype)
        return f, (f.shape[-1] - 1) // 2

    def forward(self, x: Tensor) -> Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        if self.fused_resample and self.down and w is not None:
            f, f_pad = self._filter(x.dtype)
            # the filter's padding is applied (as zeros) before the convolution
            x = _blur_down(F.conv2d(x, w, padding=w_pad + f_pad), f, padding=0)
        else:
            if self.up:
                f, f_pad = self._filter(x.dtype)
                x = _blur_up(x, f, padding=f_pad)
            if self.down:
                f, f_pad = self._filter(x.dtype)
                x = _blur_down(x, f, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalization with min(num_groups, num_channels // min_channels_per_group) groups."""

    def __init__(
        self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        if self.num_groups < 1:
            raise ValueError(
                f"GroupNorm: num_channels={num_channels} is below min_channels_per_group={min_channels_per_group}"
            )
        if num_channels % self.num_groups:
            # EDM's networks would fail here only at the first forward, deep inside torch
            raise ValueError(
                f"GroupNorm: num_channels={num_channels} does not split into {self.num_groups} groups; "
                "every channel count (model_channels x channel_mult) must be divisible by min(32, channels // 4)"
            )
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class AttentionOp(torch.autograd.Function):
    """Attention weights w[n, i, j] = softmax_j(sum_c q[n, c, i] k[n, c, j] / sqrt(C)).

    Computed in float32 whatever the input dtype; the result and the gradients come back in
    the inputs' dtypes, and only (q, k, w) are kept for the backward pass.
    """

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor) -> Tensor:
        scale = 1 / math.sqrt(k.shape[1])
        logits = torch.einsum("nci,ncj->nij", q.to(torch.float32), k.to(torch.float32)) * scale
        w = logits.softmax(dim=2).to(q.dtype)
        ctx.save_for_backward(q, k, w)
        return w

    @staticmethod
    def backward(ctx: Any, dw: Tensor) -> tuple[Tensor, Tensor]:
        q, k, w = ctx.saved_tensors
        dw, w32 = dw.to(torch.float32), w.to(torch.float32)
        # softmax Jacobian: dlogits = w * (dw - <dw, w>_j)
        dlogits = w32 * (dw - (dw * w32).sum(dim=2, keepdim=True))
        scale = 1 / math.sqrt(k.shape[1])
        dq = torch.einsum("ncj,nij->nci", k.to(torch.float32), dlogits) * scale
        dk = torch.einsum("nci,nij->ncj", q.to(torch.float32), dlogits) * scale
        return dq.to(q.dtype), dk.to(k.dtype)


class UNetBlock(nn.Module):
    """Residual block (GroupNorm, SiLU, 3x3 convs, embedding injection, optional 2x resampling)
    with optional multi-head self-attention; the union of DDPM++, NCSN++ and ADM blocks.

    `init`, `init_zero`, `init_attn` are Conv2d/Linear init kwargs; None means EDM's defaults
    ({}, {"init_weight": 0} and `init`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int | None = None,
        channels_per_head: int = 64,
        dropout: float = 0,
        skip_scale: float = 1,
        eps: float = 1e-5,
        resample_filter: Sequence[float] = (1, 1),
        resample_proj: bool = False,
        adaptive_scale: bool = True,
        init: Mapping[str, Any] | None = None,
        init_zero: Mapping[str, Any] | None = None,
        init_attn: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        init = dict(init or {})
        init_zero = dict(init_weight=0) if init_zero is None else dict(init_zero)
        init_attn = init if init_attn is None else dict(init_attn)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = float(skip_scale)
        self.adaptive_scale = adaptive_scale

        resample: dict[str, Any] = dict(up=up, down=down, resample_filter=resample_filter)
        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=3, **resample, **init)
        affine_out = out_channels * (2 if adaptive_scale else 1)
        self.affine = Linear(in_features=emb_channels, out_features=affine_out, **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=3, **init_zero)

        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if (resample_proj or out_channels != in_channels) else 0
            self.skip = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=kernel, **resample, **init)

        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            self.qkv = Conv2d(in_channels=out_channels, out_channels=out_channels * 3, kernel=1, **init_attn)
            self.proj = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=1, **init_zero)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = silu(self.norm1(h) * (scale + 1) + shift)
        else:
            h = silu(self.norm1(h + params))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        x = (h + (x if self.skip is None else self.skip(x))) * self.skip_scale

        if self.num_heads:
            n, c, height, width = x.shape
            # qkv channels per head are interleaved: channel 3 c + {0, 1, 2} holds q, k, v of channel c
            q, k, v = self.qkv(self.norm2(x)).reshape(n * self.num_heads, c // self.num_heads, 3, -1).unbind(2)
            w = AttentionOp.apply(q, k)
            a = torch.einsum("nij,ncj->nci", w, v).reshape(n, c, height, width)
            x = (self.proj(a) + x) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding [cos(x w_j), sin(x w_j)], w_j = max_positions^(-j / (C/2 - endpoint))."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: Tensor) -> Tensor:
        half = self.num_channels // 2
        j = torch.arange(half, dtype=torch.float32, device=x.device)
        freqs = (1 / self.max_positions) ** (j / (half - (1 if self.endpoint else 0)))
        angle = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([angle.cos(), angle.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features [cos(2 pi f x), sin(2 pi f x)], f ~ N(0, scale^2) in buffer `freqs`."""

    freqs: Tensor

    def __init__(self, num_channels: int, scale: float = 16) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: Tensor) -> Tensor:
        angle = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([angle.cos(), angle.sin()], dim=1)


_EMBEDDING_TYPES = ("positional", "fourier")
_ENCODER_TYPES = ("standard", "skip", "residual")
_DECODER_TYPES = ("standard", "skip")


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def block_resolution(name: str) -> int:
    """The resolution in an encoder/decoder entry's name: '16x16_block0' -> 16."""
    return int(name.split("x", 1)[0])


class SongUNet(nn.Module):
    """The DDPM++ / NCSN++ U-Net of Song et al. (score SDE) in EDM's formulation.

    Modules live in `enc` / `dec` ModuleDicts named "{res}x{res}_{role}", res = img_resolution
    >> level. Encoder "aux" paths feed a 2x-downsampled copy of the input into every level
    ('skip': added after a 1x1 conv; 'residual': a fused-downsampling 3x3 conv chain, NCSN++);
    decoder 'skip' sums an RGB output of every level, upsampled, instead of the finest only.
    """

    map_noise: PositionalEmbedding | FourierEmbedding

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[float] = (1, 1),
    ) -> None:
        _check_choice("embedding_type", embedding_type, _EMBEDDING_TYPES)
        _check_choice("encoder_type", encoder_type, _ENCODER_TYPES)
        _check_choice("decoder_type", decoder_type, _DECODER_TYPES)
        if len(channel_mult) < 1:
            raise ValueError("channel_mult must name at least one resolution, got []")
        super().__init__()
        self.img_resolution = img_resolution
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init: dict[str, Any] = dict(init_mode="xavier_uniform")
        init_zero: dict[str, Any] = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn: dict[str, Any] = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        block_kwargs: dict[str, Any] = dict(
            emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
            resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
            init=init, init_zero=init_zero, init_attn=init_attn,
        )

        # Mapping: noise level (+ class label, + augmentation label) -> embedding vector.
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(num_channels=noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(num_channels=noise_channels)
        self.map_label = Linear(in_features=label_dim, out_features=noise_channels, **init) if label_dim else None
        self.map_augment = (
            Linear(in_features=augment_dim, out_features=noise_channels, bias=False, **init) if augment_dim else None
        )
        self.map_layer0 = Linear(in_features=noise_channels, out_features=emb_channels, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)

        # Encoder. `cout` tracks the main path's channels, `caux` the aux path's.
        self.enc = nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(in_channels=cout, out_channels=model_channels, kernel=3, **init)
                cout = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(
                    in_channels=cout, out_channels=cout, down=True, **block_kwargs
                )
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(
                        in_channels=caux, out_channels=caux, kernel=0, down=True, resample_filter=resample_filter
                    )
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(in_channels=caux, out_channels=cout, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        in_channels=caux, out_channels=cout, kernel=3, down=True,
                        resample_filter=resample_filter, fused_resample=True, **init,
                    )
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    in_channels=cin, out_channels=cout, attention=(res in attn_resolutions), **block_kwargs
                )
        skips = [cast(int, module.out_channels) for name, module in self.enc.items() if "aux" not in name]

        # Decoder: every "_block" consumes one encoder output (concatenated), last in first out.
        self.dec = nn.ModuleDict()
        last = len(channel_mult) - 1
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == last:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(
                    in_channels=cout, out_channels=cout, attention=True, **block_kwargs
                )
                self.dec[f"{res}x{res}_in1"] = UNetBlock(in_channels=cout, out_channels=cout, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(in_channels=cout, out_channels=cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attention = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(
                    in_channels=cin, out_channels=cout, attention=attention, **block_kwargs
                )
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < last:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(
                        in_channels=out_channels, out_channels=out_channels, kernel=0, up=True,
                        resample_filter=resample_filter,
                    )
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(num_channels=cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(
                    in_channels=cout, out_channels=out_channels, kernel=3, **init_zero
                )

    def forward(
        self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None, augment_labels: Tensor | None = None
    ) -> Tensor:
        """F(x, c_noise): x (N, C, H, W), noise_labels (N,), class_labels (N, label_dim) or None."""
        out = self.walk(x, self.embedding(noise_labels, class_labels, augment_labels))[1]
        if out is None:
            raise ValueError("SongUNet: the decoder has no output conv (no '_aux_conv' entry in dec)")
        return out

    def noise_embedding(self, noise_labels: Tensor) -> Tensor:
        """map_noise's output in the order the mapping network takes it."""
        emb = self.map_noise(noise_labels)
        # the map takes [sin, cos], though the embeddings return [cos, sin]
        cos, sin = emb.chunk(2, dim=1)
        return torch.cat([sin, cos], dim=1)

    def embedding(
        self, noise_labels: Tensor, class_labels: Tensor | None, augment_labels: Tensor | None = None,
        extra: Tensor | None = None,
    ) -> Tensor:
        """The conditioning vector of every block; `extra` (noise-embedding width) is added
        before the mapping layers (LowDiff's level and cond-sigma embeddings)."""
        emb = self.noise_embedding(noise_labels)
        if extra is not None:
            emb = emb + extra
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError(f"class_labels are required: this SongUNet has label_dim={self.map_label.in_features}")
            labels = class_labels
            if self.training and self.label_dropout:
                # classifier-free guidance training: drop each sample's label with prob. label_dropout
                keep = torch.rand([noise_labels.shape[0], 1], device=labels.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        return silu(self.map_layer1(silu(self.map_layer0(emb))))

    def walk(
        self, x: Tensor, emb: Tensor, *, res: int | None = None, entry: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """The encoder and decoder at and below resolution `res` (default: the top), returning
        (the decoder's last features, the aux output or None). Without `entry`, x is the image
        at the top; with it, `entry` is the features that enter at `res` in place of the way in
        (input conv or down block) and x is the image at `res` (a skip encoder's aux input)."""
        top = self.img_resolution
        res = top if res is None else res
        if entry is None and res != top:
            raise ValueError(f"entering at {res}x{res} needs the entry features")
        skips = []
        aux = x
        if entry is not None:
            skip_encoder = any(name.endswith("_aux_skip") for name in self.enc)
            aux = x if skip_encoder or res == top else entry  # a residual encoder's aux path carries features
            x = entry
            skips.append(x)
        for name, module in self.enc.items():
            r = block_resolution(name)
            if r > res or (entry is not None and r == res and "_block" not in name):
                continue  # above `res`, or the way into it, which `entry` replaces
            if name.endswith("_aux_down"):
                aux = module(aux)
            elif name.endswith("_aux_skip"):
                x = skips[-1] = x + module(aux)
            elif name.endswith("_aux_residual"):
                x = skips[-1] = aux = (x + module(aux)) / math.sqrt(2)
            else:
                x = module(x, emb) if isinstance(module, UNetBlock) else module(x)
                skips.append(x)

        out = None
        for name, module in self.dec.items():  # deepest resolution first
            if block_resolution(name) > res:
                break
            if name.endswith("_aux_up"):
                out = module(out)
            elif name.endswith("_aux_norm"):
                rgb = module(x)
            elif name.endswith("_aux_conv"):
                rgb = module(silu(rgb))
                out = rgb if out is None else out + rgb
            else:
                if "_block" in name:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = module(x, emb)
        return x, out


def _build_model(model_type: str, **kwargs: Any) -> SongUNet:
    if model_type == "SongUNet":
        return SongUNet(**kwargs)
    if model_type == "DhariwalUNet":
        raise ValueError(
            "model_type='DhariwalUNet' (EDM's ADM backbone, EDMPrecond's default) is not implemented; "
            "only SongUNet is: pass model_type='SongUNet'"
        )
    raise ValueError(f"model_type must be 'SongUNet' (the only backbone implemented), got {model_type!r}")


class _Precond(nn.Module, ABC):
    """Shared forward of the preconditioners: D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)."""

    model: SongUNet

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, use_fp16: bool) -> None:
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16

    def _make_model(self, model_type: str, model_kwargs: dict[str, Any]) -> SongUNet:
        return _build_model(
            model_type, img_resolution=self.img_resolution, in_channels=self.img_channels,
            out_channels=self.img_channels, label_dim=self.label_dim, **model_kwargs,
        )

    @abstractmethod
    def scalings(self, sigma: Tensor) -> tuple[Any, Any, Any, Tensor]:
        """(c_skip, c_out, c_in, c_noise) for a float32 sigma of shape (N, 1, 1, 1)."""

    def forward(
        self,
        x: Tensor,
        sigma: Tensor | float,
        class_labels: Tensor | None = None,
        force_fp32: bool = False,
        **model_kwargs: Any,
    ) -> Tensor:
        """The denoiser D(x; sigma) in float32; extra kwargs (augment_labels) go to the model."""
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        fp16 = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        dtype = torch.float16 if fp16 else torch.float32

        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        return c_skip * x + c_out * F_x.to(torch.float32)  # EDM eq. 7

    def round_sigma(self, sigma: Tensor | float) -> Tensor:
        """Noise levels the model supports: all of them (no rounding)."""
        return torch.as_tensor(sigma)


class VPPrecond(_Precond):
    """Variance-preserving preconditioning (DDPM++ in the score-SDE VP formulation)."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        beta_d: float = 19.9,
        beta_min: float = 0.1,
        M: int = 1000,
        epsilon_t: float = 1e-5,
        model_type: str = "SongUNet",
        **model_kwargs: Any,
    ) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16)
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        with torch.device("cpu"):  # float32 values as EDM stores them, even inside a meta-device build
            self.sigma_min = float(self.sigma(torch.tensor(epsilon_t, dtype=torch.float32)))
            self.sigma_max = float(self.sigma(torch.tensor(1.0, dtype=torch.float32)))
        self.model = self._make_model(model_type, model_kwargs)

    def sigma(self, t: Tensor | float) -> Tensor:
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)  (EDM Table 1, VP)."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * t**2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma: Tensor | float) -> Tensor:
        """t(sigma), the inverse of `sigma`: the positive root of beta_d t^2 / 2 + beta_min t = ln(1 + sigma^2)."""
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d

    def scalings(self, sigma: Tensor) -> tuple[Any, Any, Any, Tensor]:
        # EDM Table 1, VP
        c_skip = 1
        c_out = -sigma
        c_in = 1 / (sigma**2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        return c_skip, c_out, c_in, c_noise


class VEPrecond(_Precond):
    """Variance-exploding preconditioning (NCSN++ in the score-SDE VE formulation)."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0.02,
        sigma_max: float = 100,
        model_type: str = "SongUNet",
        **model_kwargs: Any,
    ) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.model = self._make_model(model_type, model_kwargs)

    def scalings(self, sigma: Tensor) -> tuple[Any, Any, Any, Tensor]:
        # EDM Table 1, VE
        c_skip = 1
        c_out = sigma
        c_in = 1
        c_noise = (0.5 * sigma).log()
        return c_skip, c_out, c_in, c_noise


class EDMPrecond(_Precond):
    """EDM's own preconditioning (unit-variance network inputs and targets for every sigma).

    EDM's default model_type 'DhariwalUNet' is kept for kwargs compatibility but is not
    implemented: pass model_type='SongUNet'.
    """

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0,
        sigma_max: float = float("inf"),
        sigma_data: float = 0.5,
        model_type: str = "DhariwalUNet",
        **model_kwargs: Any,
    ) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self.model = self._make_model(model_type, model_kwargs)

    def scalings(self, sigma: Tensor) -> tuple[Any, Any, Any, Tensor]:
        # EDM Table 1, "ours"
        sigma_data = self.sigma_data
        c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
        c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
        c_in = 1 / (sigma_data**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise


# EDM class name -> class, for every persistent class of EDM's networks.py that is implemented
# (DhariwalUNet and iDDPMPrecond are not; AttentionOp is never pickled).
NETWORK_CLASSES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        Linear, Conv2d, GroupNorm, UNetBlock, PositionalEmbedding, FourierEmbedding,
        SongUNet, VPPrecond, VEPrecond, EDMPrecond,
    )
}

# SongUNet kwargs of EDM train.py's --arch choices. Precond wrappers accept them as they are
# (VP/VE default to model_type='SongUNet'; EDMPrecond must be given it).
UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "ddpmpp": dict(
        embedding_type="positional", encoder_type="standard", decoder_type="standard",
        channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2],
    ),
    "ncsnpp": dict(
        embedding_type="fourier", encoder_type="residual", decoder_type="standard",
        channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2],
    ),
}

# Per-dataset overrides of EDM's released models (README table; train.py defaults: dropout
# 0.13, augment 0.12 > 0 so augment_dim 9). Merge over UNET_CONFIGS[arch].
DATASET_CONFIGS: dict[str, dict[str, Any]] = {
    "cifar10-32x32": dict(dropout=0.13, augment_dim=9),
    "ffhq-64x64": dict(channel_mult=[1, 2, 2, 2], dropout=0.05, augment_dim=9),
    "afhqv2-64x64": dict(channel_mult=[1, 2, 2, 2], dropout=0.25, augment_dim=9),
}


# ----------------------------------------------------------------------------------------
# Checking init kwargs read from a file before a network is built from them.

_PRECONDS = ("VPPrecond", "VEPrecond", "EDMPrecond")
_MAX_BLOCKS = 10_000  # UNetBlocks; EDM's largest configs have about 50


def _count(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        kind = "a positive int" if least == 1 else f"an int >= {least}"
        raise ValueError(f"{name}={value!r}: must be {kind}")
    return int(value)


def _counts(name: str, value: Any, least: int, *, empty: bool) -> list[int]:
    if not isinstance(value, (list, tuple)) or (not empty and not value):
        raise ValueError(f"{name}={value!r}: must be a {'' if empty else 'non-empty '}list of ints")
    return [_count(f"{name}[{i}]", v, least) for i, v in enumerate(value)]


def _real(name: str, value: Any, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not lo <= cast(float, value) <= hi:
        raise ValueError(f"{name}={value!r}: must be a number in [{lo}, {hi}]")
    return float(value)


def check_init_kwargs(class_name: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse, as a one-line ValueError naming the field, init kwargs of an EDM precond network
    or SongUNet (read from a file) that would not build: counts that are not ints or not
    positive, or sizes past `backbones.MAX_PARAMETERS`. Other classes are not checked.

    The size is an upper bound counted from the kwargs alone, so nothing is allocated."""
    from ...backbones import MAX_PARAMETERS

    if class_name not in (*_PRECONDS, "SongUNet"):
        return
    given = dict(kwargs)
    if class_name in _PRECONDS:
        if given.get("model_type", "SongUNet" if class_name != "EDMPrecond" else "DhariwalUNet") != "SongUNet":
            return  # refused when built, with the reason
        in_channels = _count("img_channels", given.get("img_channels"), 1)
        if class_name == "VPPrecond" and "M" in given:
            _count("M", given["M"], 1)
    else:
        in_channels = _count("in_channels", given.get("in_channels"), 1)
        _count("out_channels", given.get("out_channels"), 1)
    defaults = {k: p.default for k, p in inspect.signature(SongUNet).parameters.items() if p.default is not p.empty}
    get = lambda name: given.get(name, defaults.get(name))  # noqa: E731
    _count("img_resolution", given.get("img_resolution"), 1)
    label_dim, augment_dim = _count("label_dim", get("label_dim"), 0), _count("augment_dim", get("augment_dim"), 0)
    model_channels = _count("model_channels", get("model_channels"), 1)
    mult = _counts("channel_mult", get("channel_mult"), 1, empty=False)
    mult_emb, mult_noise = _count("channel_mult_emb", get("channel_mult_emb"), 1), _count("channel_mult_noise", get("channel_mult_noise"), 1)
    num_blocks = _count("num_blocks", get("num_blocks"), 0)
    _counts("attn_resolutions", get("attn_resolutions"), 1, empty=True)
    taps = get("resample_filter")
    if not isinstance(taps, (list, tuple)) or not taps:
        raise ValueError(f"resample_filter={taps!r}: must be a non-empty list of numbers")
    for i, tap in enumerate(taps):
        _real(f"resample_filter[{i}]", tap)
    for name in ("dropout", "label_dropout"):
        _real(name, get(name), 0.0, 1.0)

    levels = len(mult)
    blocks = levels * (2 * num_blocks + 1) + 2 * (levels - 1) + 2  # encoder, decoder, their resampling blocks
    if blocks > _MAX_BLOCKS:
        raise ValueError(
            f"num_blocks={num_blocks} over {levels} resolutions (channel_mult) makes {blocks} blocks, more than {_MAX_BLOCKS}"
        )
    width, emb, noise = model_channels * max(mult), model_channels * mult_emb, model_channels * mult_noise
    # per block at most: two 3x3 convs (the first on a concatenated skip), a 1x1 skip, attention,
    # the embedding's affine layer, and a resampling filter buffer per conv
    per_block = 33 * width**2 + emb * width + 10 * width + 2 * len(taps) ** 2
    total = blocks * per_block + noise * emb + emb**2 + (label_dim + augment_dim) * noise + 18 * width * in_channels * levels
    if total > MAX_PARAMETERS:
        raise ValueError(
            f"model_channels={model_channels}, channel_mult={mult}, channel_mult_emb={mult_emb}, num_blocks={num_blocks}, "
            f"resample_filter of {len(taps)} taps: a network of up to {total:.3g} parameters, more than the "
            f"{MAX_PARAMETERS:.3g} a file may ask for"
        )


def build_checked(cls: type, kwargs: Mapping[str, Any], what: str) -> nn.Module:
    """`cls(**kwargs)` for init arguments read from a file: those of the networks here are
    checked first (`check_init_kwargs`), and any failure is a one-line ValueError starting
    with `what`, never an allocation or a traceback from inside the constructor."""
    from ...errors import first_line

    name = cls.__name__
    if NETWORK_CLASSES.get(name) is cls:
        try:
            check_init_kwargs(name, kwargs)
        except ValueError as err:
            raise ValueError(f"{what}: {err}") from None
    try:
        return cls(**kwargs)
    except Exception as err:
        raise ValueError(f"{what}: cannot build {name} ({type(err).__name__}: {first_line(err)})") from None
