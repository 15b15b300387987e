"""LowDiff's unified multi-resolution model retrofitted onto an EDM SongUNet.

`LowDiffUNet.from_edm(net, levels=(8, 16, 32))` keeps every weight of the precond network
`net` and adds, per level, what LowDiff (Sec. 3.2) adds: an input conv taking the image and
the upsampled condition, an output head, a one-hot level embedding and a cond-sigma
embedding, both added to the noise embedding. A level-r forward runs only the encoder from
r's resolution down and the decoder back up to it. Every new weight that touches the top
level starts at zero, so right after the retrofit the top level is the original network.
"""

from __future__ import annotations

import json
from typing import Any, Sequence, TypeGuard, cast

import torch
from torch import Tensor, nn
from torch.nn.functional import silu

from ...kernels import upsample_concat
from ...protocol import Level, check_condition, check_level_input, level_index, level_one_hot
from ...resample import UPSAMPLE_MODES
from .c2f import C2FUNet
from .inputs import EDMNetCascade, check_retrofit, label_rows
from .networks import NETWORK_CLASSES, Conv2d, GroupNorm, SongUNet, _Precond, block_resolution, build_checked
from .stack import LevelStack


class LowDiffUNet(EDMNetCascade):
    """A retrofitted EDM precond network implementing `ResolutionCascade`.

    Parameters of the original network keep their names under `net.`; new ones live in
    `in_convs`, `heads`, `level_embed` and `cond_sigma_embed`.
    """

    net: _Precond

    def __init__(
        self, net: nn.Module, levels: Sequence[int], cond: str = "nearest", embed_cond_sigma: bool = True
    ) -> None:
        super().__init__()
        unet, levels, channels = check_retrofit(net, levels, "from_edm")
        img_res = levels[-1]
        depths = {img_res >> d: d for d in range(len(self._depth_channels(unet)))}
        for r in levels:
            if r not in depths:
                raise ValueError(f"level {r} is not one of the UNet's resolutions {sorted(depths)}")
        if cond not in UPSAMPLE_MODES:
            raise ValueError(f"cond must be one of {UPSAMPLE_MODES}, got {cond!r}")
        self.net = cast(_Precond, net)  # check_retrofit found its SongUNet
        self.level_sizes = levels
        self.depths = tuple(depths[r] for r in levels)
        self.cond_mode = cond
        self.embed_cond_sigma = embed_cond_sigma
        self.levels = tuple(Level((r, r), channels) for r in levels)

        widths = self._depth_channels(unet)  # channels entering each depth's first block
        noise_channels = unet.map_layer0.in_features
        init: dict[str, Any] = dict(init_mode="xavier_uniform")
        self.in_convs = nn.ModuleList()
        self.heads = nn.ModuleList()
        for i, d in enumerate(self.depths):
            cond_ch = 0 if i == 0 else channels
            if d == 0:
                # the top level keeps the original input conv; the condition enters through
                # a conv that starts at zero (no bias), so the sum is the original at first
                conv = Conv2d(in_channels=cond_ch, out_channels=widths[0], kernel=3, bias=False, **init) if cond_ch else None
                if conv is not None:
                    nn.init.zeros_(conv.weight)
                self.in_convs.append(conv if conv is not None else nn.Identity())
                self.heads.append(nn.Identity())
            else:
                self.in_convs.append(Conv2d(in_channels=channels + cond_ch, out_channels=widths[d], kernel=3, **init))
                out_width = self._decoder_width(unet, img_res >> d)
                self.heads.append(nn.ModuleDict({
                    "norm": GroupNorm(num_channels=out_width, eps=1e-6),
                    "conv": Conv2d(in_channels=out_width, out_channels=channels, kernel=3, init_mode="xavier_uniform", init_weight=1e-5),
                }))
        self.level_embed = nn.Linear(len(levels), noise_channels, bias=False)
        nn.init.zeros_(self.level_embed.weight)
        self.cond_sigma_embed = nn.Linear(noise_channels, noise_channels, bias=False) if embed_cond_sigma else None
        if self.cond_sigma_embed is not None:
            nn.init.zeros_(self.cond_sigma_embed.weight)

    @classmethod
    def from_edm(
        cls, net: nn.Module, levels: Sequence[int] = (8, 16, 32), cond: str = "nearest", embed_cond_sigma: bool = True
    ) -> "LowDiffUNet":
        """Wrap a loaded EDM precond network (VPPrecond/VEPrecond/EDMPrecond around a SongUNet)."""
        return cls(net, levels, cond, embed_cond_sigma)

    # ---- structure ----------------------------------------------------------------
    @staticmethod
    def _depth_channels(unet: SongUNet) -> list[int]:
        """Per depth, the channel count a depth's first encoder block takes in."""
        widths = []
        for name, block in unet.enc.items():
            if name.split("_", 1)[1] in ("conv", "down"):  # not the aux path's aux_down
                widths.append(int(cast(int, block.out_channels)))
        return widths

    @staticmethod
    def _decoder_width(unet: SongUNet, res: int) -> int:
        """Channels leaving the decoder's last block at resolution `res`."""
        last = [b for n, b in unet.dec.items() if block_resolution(n) == res and "_block" in n][-1]
        return int(cast(int, last.out_channels))

    @property
    def parameter_overhead(self) -> int:
        """Parameters added by the retrofit."""
        return sum(p.numel() for p in self.parameters()) - sum(p.numel() for p in self.net.parameters())

    # ---- forward ------------------------------------------------------------------
    def _embedding(self, level: int, c_noise: Tensor, class_labels: Tensor | None,
                   c_noise_cond: Tensor | None, augment_labels: Tensor | None) -> Tensor:
        """SongUNet's conditioning vector plus LowDiff's level and cond-sigma embeddings."""
        unet = self.net.model
        extra = self.level_embed(level_one_hot(len(self.levels), level, c_noise.device))
        if self.cond_sigma_embed is not None and c_noise_cond is not None:
            extra = extra + self.cond_sigma_embed(unet.noise_embedding(c_noise_cond))
        return unet.embedding(c_noise, class_labels, augment_labels, extra=extra)

    def _forward_level(self, inp: Tensor, channels: int, level: int, emb: Tensor) -> Tensor:
        """F at one level: this level's way in, SongUNet's walk at and below its resolution,
        and (below the top) this level's head."""
        unet = self.net.model
        depth, res = self.depths[level], self.level_sizes[level]
        image = inp[:, :channels]
        if depth == 0:
            entry = unet.enc[f"{res}x{res}_conv"](image)
            if inp.shape[1] > channels:
                entry = entry + self.in_convs[level](inp[:, channels:])
        else:
            entry = self.in_convs[level](inp)
        x, out = unet.walk(image, emb, res=res, entry=entry)
        if depth > 0:
            head = cast(nn.ModuleDict, self.heads[level])
            y = head["conv"](silu(head["norm"](x)))
            out = y if out is None else out + y
        if out is None:
            raise ValueError(f"level {level}: the SongUNet's decoder has no output at {res}x{res}")
        return out

    def denoise(
        self,
        x: Tensor,
        sigma: Tensor,
        *,
        level: int,
        cond: Tensor | None = None,
        cond_sigma: Tensor | float | None = None,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
        **extra: Any,
    ) -> Tensor:
        """D(x; sigma) at `level` with the backbone's own preconditioning
        (D = c_skip x + c_out F(c_in x, c_in(sigma_c) cond, c_noise)); float32 out."""
        level = check_level_input(self.levels, level, x)
        lv = self.levels[level]
        check_condition(level, cond)
        net = self.net
        x = x.to(torch.float32)
        batch = x.shape[0]

        def per_sample(v: Tensor | float | None) -> Tensor:
            return torch.as_tensor(0.0 if v is None else v, dtype=torch.float32, device=x.device).reshape(-1).expand(batch)

        sigma = per_sample(sigma)
        c_skip, c_out, c_in, c_noise = net.scalings(sigma.view(-1, 1, 1, 1))  # the backbone's own, EDM eq. 7
        labels = label_rows(net, class_labels, batch, x.device)
        c_in = torch.as_tensor(c_in, dtype=torch.float32, device=x.device).reshape(-1).expand(batch)
        c_noise_cond = None
        if cond is None:
            inp = x * c_in.view(-1, 1, 1, 1)
        else:
            _, _, c_in_cond, c_noise_cond = net.scalings(per_sample(cond_sigma).view(-1, 1, 1, 1))
            c_in_cond = torch.as_tensor(c_in_cond, dtype=torch.float32, device=x.device).reshape(-1).expand(batch)
            c_noise_cond = c_noise_cond.flatten()
            inp = upsample_concat(x, cond.to(torch.float32), mode=self.cond_mode, x_scale=c_in, cond_scale=c_in_cond)
        emb = self._embedding(level, c_noise.flatten(), labels, c_noise_cond, augment_labels)
        F_x = self._forward_level(inp, lv.channels, level, emb)
        return c_skip * x + c_out * F_x.to(torch.float32)


class EDMCascade(EDMNetCascade):
    """An unmodified EDM precond network as a one-level ResolutionCascade: the
    single-resolution baseline, sampled by any k-diffusion sampler through the same plans."""

    net: _Precond

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = cast(_Precond, net)
        self.levels = (Level((int(self.net.img_resolution),) * 2, int(self.net.img_channels)),)

    def denoise(self, x: Tensor, sigma: Tensor, *, level: int, cond: Tensor | None = None,
                cond_sigma: Tensor | float | None = None, class_labels: Tensor | None = None, **extra: Any) -> Tensor:
        level_index(level, 1)
        if cond is not None:
            raise ValueError("EDMCascade has one level and takes no condition")
        return self.net(x, sigma, class_labels=label_rows(self.net, class_labels, x.shape[0], x.device))


# ---- the cascade a method makes of an EDM network, and its loss ----
_LOSS_OF_PRECOND = {"VPPrecond": "vp", "VEPrecond": "ve", "EDMPrecond": "edm"}


def backbone_loss(model: "LowDiffUNet | EDMCascade | C2FUNet | LevelStack") -> str:
    """The backbone's own loss ("vp", "ve" or "edm"), which LowDiff keeps at every level."""
    return _LOSS_OF_PRECOND[type(model.net).__name__]


def is_edm_precond(net: Any) -> TypeGuard[_Precond]:
    """Whether `net` is one of EDM's precond networks (VPPrecond, VEPrecond, EDMPrecond)."""
    return type(net).__name__ in _LOSS_OF_PRECOND


def build_network(class_name: str, init_kwargs: dict[str, Any]) -> _Precond:
    """A fresh EDM precond network (VPPrecond/VEPrecond/EDMPrecond) from its init kwargs,
    which it records as `init_kwargs` (as `load_edm` does), so runs can describe it."""
    if class_name not in _LOSS_OF_PRECOND:
        raise ValueError(f"unsupported backbone {class_name!r}; supported: {', '.join(_LOSS_OF_PRECOND)}")
    if not isinstance(init_kwargs, dict):
        raise ValueError(f"init_kwargs of {class_name} must be a JSON object, got {type(init_kwargs).__name__}")
    kwargs = json.loads(json.dumps(init_kwargs))  # a plain copy, as it will be written
    net = cast(_Precond, build_checked(NETWORK_CLASSES[class_name], kwargs, f"init_kwargs of {class_name}"))
    net.init_kwargs = kwargs
    return net


METHODS = ("none", "lowdiff", "c2f", "distill")  # none: the network itself, one level


def cascade_of(
    net: nn.Module, levels: Sequence[int], cond: str = "nearest", embed_cond_sigma: bool = True, method: str = "lowdiff"
) -> "LowDiffUNet | EDMCascade | C2FUNet | LevelStack":
    """The cascade to train or sample for `levels`: the network itself (EDMCascade) when the
    only level is its own resolution, else its LowDiff retrofit, with method="c2f" C2F-DM's
    resolution-label retrofit, or with method="distill" a LevelStack (the network on top,
    copies below, to be distilled from it)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    levels = [int(r) for r in levels]
    if levels == [int(getattr(net, "img_resolution", -1))]:
        return EDMCascade(net)
    if method == "none":
        raise ValueError(f'method "none" runs the network at its own resolution only, got levels {levels}')
    if method == "c2f":
        return C2FUNet.from_edm(net, levels)
    if method == "distill":
        return LevelStack.from_edm(net, levels)
    return LowDiffUNet.from_edm(net, levels, cond, embed_cond_sigma)
