"""LightningDiT as a ResolutionCascade: the flow-matching denoiser with classifier-free
guidance (`DiTCascade`), LowDiff's retrofit (`LowDiffDiT`) and C2F-DM's resolution-label
retrofit (`C2FDiT`).

All three work in k-diffusion's sigma space through `flow.velocity_denoiser`: x = z_t / t,
sigma = (1 - t) / t, D = z_t + (1 - t) v. LightningDiT's time shift belongs to the schedule
(`schedules.flow_sigmas(n, shift)`), so the network sees the shifted t = 1 / (1 + sigma).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence, cast

import torch
from torch import Tensor, nn

from ...flow import velocity_denoiser
from ...labels import class_ids
from ...protocol import CascadeDefaults, Level, check_condition, check_level_input, check_level_sizes, level_one_hot
from .networks import FinalLayer, LightningDiT, PatchEmbed, RoPE, sincos_2d

Velocity = Callable[[Tensor, Tensor, Tensor], Tensor]  # v(z_t, t, class ids)


def guided_velocity(
    velocity: Velocity, z: Tensor, t: Tensor, y: Tensor, null_class: int, *,
    cfg_scale: float = 1.0, cfg_interval_start: float = 0.0, cfg_channels: int | None = None,
) -> Tensor:
    """Classifier-free guidance as LightningDiT applies it: v_u + s (v_c - v_u) with the null
    class as the unconditional branch, only when s > 1 and only for samples whose (shifted)
    flow time t >= `cfg_interval_start`; `cfg_channels` limits guidance to the first channels
    (LightningDiT's released sampler guides 3 of 32), None guides all."""
    cfg_scale = float(cfg_scale)
    if cfg_channels is not None and not 0 < int(cfg_channels) <= z.shape[1]:
        raise ValueError(f"cfg_channels must lie in [1, {z.shape[1]}] or be None, got {cfg_channels}")
    active = t >= cfg_interval_start
    if cfg_scale <= 1 or not active.any():
        return velocity(z, t, y)
    both = velocity(torch.cat([z, z]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_class)]))
    cond, uncond = both.chunk(2)
    guided = uncond + cfg_scale * (cond - uncond)
    if cfg_channels is not None:
        guided = torch.cat([guided[:, : int(cfg_channels)], cond[:, int(cfg_channels) :]], dim=1)
    return torch.where(active.view(-1, 1, 1, 1), guided, cond)


def _guidance(extra: dict[str, Any]) -> dict[str, Any]:
    """The guidance options among a denoise call's extra arguments; anything else is an error."""
    known = {"cfg_scale", "cfg_interval_start", "cfg_channels"}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise ValueError(f"unknown DiT denoiser options {unknown}; known: class_labels, {', '.join(sorted(known))}")
    return extra


class _FlowCascade(nn.Module, CascadeDefaults):
    """What the DiT cascades share: class ids, guidance and the velocity -> x0 conversion."""

    net: LightningDiT
    levels: tuple[Level, ...]

    @property
    def label_dim(self) -> int:  # type: ignore[override]  # CascadeDefaults' class default, read-only here
        """Classes the network is conditioned on (class ids, not counting the null class)."""
        return self.net.num_classes

    def _denoise(self, velocity: Velocity, x: Tensor, sigma: Tensor, class_labels: Tensor | None, extra: dict[str, Any]) -> Tensor:
        options = _guidance(extra)
        x = x.to(torch.float32)
        y = class_ids(class_labels, x.shape[0], self.net.num_classes, x.device)

        def v(z: Tensor, t: Tensor) -> Tensor:
            return guided_velocity(velocity, z, t, y, self.net.num_classes, **options)

        return velocity_denoiser(v)(x, sigma)


class _Retrofit(_FlowCascade):
    """What the LowDiff and C2F retrofits share: levels, and per lower level the frozen sin-cos
    and RoPE tables of its token grid (stored, so a checkpoint says its levels)."""

    def _retrofit_levels(self, net: LightningDiT, levels: Sequence[int], who: str) -> tuple[int, ...]:
        if not isinstance(net, LightningDiT):
            raise ValueError(f"{who} needs a LightningDiT, got {type(net).__name__}")
        cfg = net.config
        sizes = check_level_sizes(levels, cfg.input_size, multiple=cfg.patch_size, min_levels=2)
        self.net, self.level_sizes = net, sizes
        self.levels = tuple(Level((r, r), cfg.in_channels) for r in sizes)
        grids = [r // cfg.patch_size for r in sizes[:-1]]
        self.pos_embeds = nn.ParameterList(nn.Parameter(sincos_2d(cfg.hidden_size, g)[None], requires_grad=False) for g in grids)
        self.ropes = nn.ModuleList(RoPE(cfg.hidden_size // cfg.num_heads, g) for g in grids)
        return sizes


class DiTCascade(_FlowCascade):
    """An unmodified LightningDiT as a one-level ResolutionCascade (the baseline)."""

    def __init__(self, net: LightningDiT) -> None:
        super().__init__()
        self.net = net
        cfg = net.config
        self.levels = (Level((cfg.input_size, cfg.input_size), cfg.in_channels),)

    def denoise(self, x: Tensor, sigma: Tensor, *, level: int, cond: Tensor | None = None,
                cond_sigma: Tensor | float | None = None, class_labels: Tensor | None = None, **extra: Any) -> Tensor:
        """D(x; sigma) of the flow network, guided by `cfg_scale` etc. in `extra`."""
        check_level_input(self.levels, level, x)
        if cond is not None:
            raise ValueError("DiTCascade has one level and takes no condition")
        return self._denoise(self.net, x, sigma, class_labels, extra)


class LowDiffDiT(_Retrofit):
    """LowDiff's unified model on a LightningDiT (Sec. 3.2 of the paper, for a transformer).

    The transformer blocks, time and class embeddings are shared. Each level below the top has
    its own patch embedder (latent + condition channels), frozen sin-cos position table and
    RoPE tables sized to its grid, and final layer (`x_embedders[i]`, `pos_embeds[i]`,
    `ropes[i]`, `final_layers[i]`); the top level keeps the network's own and adds only
    `x_embedders[-1]`, an embedder of the condition. A level embedding and an embedding of the
    condition's flow time are added to the conditioning vector. Every new weight reaching the
    top level starts at zero, so right after the retrofit the top level is the original
    network; lower levels start as copies of its embedder and final layer.
    """

    def __init__(self, net: LightningDiT, levels: Sequence[int] = (8, 16)) -> None:
        super().__init__()
        sizes = self._retrofit_levels(net, levels, "LowDiffDiT")
        cfg = net.config
        dim, p, ch = cfg.hidden_size, cfg.patch_size, cfg.in_channels
        self.x_embedders = nn.ModuleList()
        for i in range(len(sizes)):
            top = i == len(sizes) - 1
            embed = PatchEmbed(p, ch if top or i == 0 else 2 * ch, dim)
            with torch.no_grad():
                bias = cast(Tensor, embed.proj.bias)  # a PatchEmbed's conv has a bias
                embed.proj.weight.zero_()
                bias.zero_()
                if not top:  # the latent channels start as the network's own embedder
                    embed.proj.weight[:, :ch] = net.x_embedder.proj.weight
                    bias.copy_(cast(Tensor, net.x_embedder.proj.bias))
            self.x_embedders.append(embed)
        self.final_layers = nn.ModuleList(copy.deepcopy(net.final_layer) for _ in sizes[:-1])
        self.level_embed = nn.Linear(len(sizes), dim, bias=False)
        self.cond_t_embed = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.level_embed.weight)
        nn.init.zeros_(self.cond_t_embed.weight)

    @classmethod
    def from_lightningdit(cls, net: LightningDiT, levels: Sequence[int] = (8, 16)) -> "LowDiffDiT":
        """Retrofit a loaded LightningDiT; `levels` are latent sizes, low to high."""
        return cls(net, levels)

    @property
    def parameter_overhead(self) -> int:
        """Parameters added by the retrofit (frozen tables included)."""
        return sum(p.numel() for p in self.parameters()) - sum(p.numel() for p in self.net.parameters())

    def _parts(self, level: int) -> tuple[Tensor, RoPE, FinalLayer]:
        if level == len(self.levels) - 1:
            return self.net.pos_embed, self.net.feat_rope, self.net.final_layer
        return self.pos_embeds[level], cast(RoPE, self.ropes[level]), cast(FinalLayer, self.final_layers[level])

    def velocity(self, z: Tensor, t: Tensor, y: Tensor, *, level: int, z_cond: Tensor | None, t_cond: Tensor | None) -> Tensor:
        """The network's velocity at `level`, given the condition z_cond (flow scale, this
        level's size) at flow time t_cond."""
        net, top = self.net, level == len(self.levels) - 1
        pos, rope, final = self._parts(level)
        if z_cond is None:
            tokens = self.x_embedders[level](z)
        elif top:
            tokens = net.x_embedder(z) + self.x_embedders[level](z_cond)
        else:
            tokens = self.x_embedders[level](torch.cat([z, z_cond], dim=1))
        c = net.conditioning(t, y) + self.level_embed(level_one_hot(len(self.levels), level, z.device))
        if t_cond is not None:
            c = c + self.cond_t_embed(net.t_embedder(t_cond))
        grid = (z.shape[-2] // net.config.patch_size, z.shape[-1] // net.config.patch_size)
        return net.unpatchify(final(net.trunk(tokens + pos, c, rope), c), grid)

    def denoise(self, x: Tensor, sigma: Tensor, *, level: int, cond: Tensor | None = None,
                cond_sigma: Tensor | float | None = None, class_labels: Tensor | None = None, **extra: Any) -> Tensor:
        """D(x; sigma) at `level`; `cond` is the level below's noisy output (noise std
        `cond_sigma`), already at this level's size. The condition enters in flow scale,
        z_cond = cond / (1 + cond_sigma), as the sample itself does."""
        level = check_level_input(self.levels, level, x)
        check_condition(level, cond)
        batch = x.shape[0]
        t_cond = None
        if cond is not None:
            cs = torch.as_tensor(0.0 if cond_sigma is None else cond_sigma, dtype=torch.float32, device=x.device)
            t_cond = 1 / (1 + cs.reshape(-1).expand(batch))
            if tuple(cond.shape) != tuple(x.shape):
                raise ValueError(f"cond must have x's shape {tuple(x.shape)} (already upsampled to level {level}), got {tuple(cond.shape)}")
            cond = cond.to(torch.float32) * t_cond.view(-1, 1, 1, 1)

        def velocity(z: Tensor, t: Tensor, y: Tensor) -> Tensor:
            z_cond = tc = None
            if cond is not None:  # the guided branch doubles the batch: repeat the condition with it
                reps = z.shape[0] // batch
                z_cond, tc = cond.repeat(reps, 1, 1, 1), t_cond.repeat(reps)  # type: ignore[union-attr]
            return self.velocity(z, t, y, level=level, z_cond=z_cond, t_cond=tc)

        return self._denoise(velocity, x, sigma, class_labels, extra)


class C2FDiT(_Retrofit):
    """C2F-DM's "1DM-label" retrofit of a LightningDiT: one network for every resolution,
    told which one by a zero-initialised resolution-label embedding added to its conditioning
    vector. Each level is unconditional; lower grids get their own sin-cos and RoPE tables
    (a DiT's tables are sized to its grid). Hand over with `Renoise`."""

    conditions_on_lower_level = False

    def __init__(self, net: LightningDiT, levels: Sequence[int] = (8, 16)) -> None:
        super().__init__()
        sizes = self._retrofit_levels(net, levels, "C2FDiT")
        self.level_embed = nn.Linear(len(sizes), net.config.hidden_size, bias=False)
        nn.init.zeros_(self.level_embed.weight)

    @classmethod
    def from_lightningdit(cls, net: LightningDiT, levels: Sequence[int] = (8, 16)) -> "C2FDiT":
        return cls(net, levels)

    def denoise(self, x: Tensor, sigma: Tensor, *, level: int, cond: Tensor | None = None,
                cond_sigma: Tensor | float | None = None, class_labels: Tensor | None = None, **extra: Any) -> Tensor:
        """D(x; sigma) at `level`, the network run on that level's grid with its label."""
        level = check_level_input(self.levels, level, x)
        if cond is not None:
            raise ValueError("C2F levels are unconditional (they start from a re-noised upsampled estimate): cond must be None")
        net, top = self.net, level == len(self.levels) - 1
        pos = net.pos_embed if top else self.pos_embeds[level]
        rope = net.feat_rope if top else cast(RoPE, self.ropes[level])
        label = self.level_embed(level_one_hot(len(self.levels), level, x.device))

        def velocity(z: Tensor, t: Tensor, y: Tensor) -> Tensor:
            c = net.conditioning(t, y) + label
            grid = (z.shape[-2] // net.config.patch_size, z.shape[-1] // net.config.patch_size)
            return net.unpatchify(net.final_layer(net.trunk(net.x_embedder(z) + pos, c, rope), c), grid)

        return self._denoise(velocity, x, sigma, class_labels, extra)
