"""LowDiff's unified multi-resolution model ("LowDiff", Sec. 3.2) retrofitted onto a diffusers
`UNet2DModel` (`LowDiffUNet2D(net, scheduler, levels)`) or `DiTTransformer2DModel`
(`LowDiffDiT2D`, at the end).

Every weight of the UNet is kept. Per level it adds an input conv taking the image and the
upsampled condition, an output head, a one-hot level embedding and a condition-timestep
embedding, both added to the time embedding. A level at 1/2^d of the UNet's size enters at
depth d (where the d-th downsampling would have delivered its features), runs the rest of the
encoder, the middle and the decoder back up to depth d, and leaves through its own head. Every
new weight that touches the top level starts at zero, so right after the retrofit the top level
is the original network.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence, cast

import torch
from torch import Tensor, nn

from ...protocol import Level, check_condition, check_level_input, check_level_sizes, level_one_hot
from .cascade import DiffusersCascade, square_size
from .denoisers import sigma_to_timestep, uses_log_sigma_timesteps


@contextlib.contextmanager
def _no_upsampling(block: Any) -> Iterator[None]:
    """Run a decoder block without its upsampler: the level's output stays at its resolution."""
    upsamplers = block.upsamplers
    block.upsamplers = None
    try:
        yield
    finally:
        block.upsamplers = upsamplers


class _Retrofit(DiffusersCascade):
    """What both retrofits share: levels above 0 conditioned on the level below, the condition
    scaled and its noise level turned into a timestep as the sample's are."""

    conditions_on_lower_level = True

    def _inputs(self, extra: dict[str, Any], x: Tensor) -> tuple[int, Tensor | None, Tensor | None, Tensor | None]:
        """(level, scaled condition, condition timesteps, class ids) of a call: what `denoise`
        put in extra_args for `_network`, after refusing inputs the retrofit does not take."""
        level, cond, cond_t = extra.pop("_level"), extra.pop("_cond", None), extra.pop("_cond_t", None)
        unknown = sorted(set(extra) - {"class_labels"})
        if unknown:
            raise ValueError(f"{type(self).__name__} takes no {', '.join(unknown)} (extra_args it was given)")
        return level, cond, cond_t, self._class_ids(extra, x)

    def denoise(self, x: Tensor, sigma: Tensor, *, level: int, cond: Tensor | None = None,
                cond_sigma: Tensor | float | None = None, **extra: Any) -> Tensor:
        level = check_level_input(self.levels, level, x)
        check_condition(level, cond)
        dtype = next(self.net.parameters()).dtype
        inputs: dict[str, Any] = {"_level": level}
        if cond is not None:
            if tuple(cond.shape) != tuple(x.shape):
                raise ValueError(f"cond must have x's shape {tuple(x.shape)} (the level below, upsampled), got {tuple(cond.shape)}")
            if cond_sigma is None:
                raise ValueError("cond_sigma (the condition's noise level) is required with cond")
            c_sigma = torch.as_tensor(cond_sigma, device=x.device).reshape(-1).expand(x.shape[0])
            inputs["_cond"] = (cond / (c_sigma.to(cond.dtype).view(-1, 1, 1, 1) ** 2 + 1) ** 0.5).to(dtype)
            table = cast(Tensor, self._train_sigmas)  # a retrofit's schedule is DDPM-family (checked when built)
            inputs["_cond_t"] = sigma_to_timestep(c_sigma, table, uses_log_sigma_timesteps(self.scheduler_config)).to(torch.float32)
        return self._denoiser()(x.to(dtype), sigma, **extra, **inputs).to(x.dtype)


class LowDiffUNet2D(_Retrofit):
    """A diffusers UNet2DModel with LowDiff's per-level layers; levels above 0 are conditioned
    on the level below's hand-over."""

    def __init__(self, net: Any, scheduler: Any, levels: Sequence[int]) -> None:
        super().__init__(net, scheduler, levels)
        if self.kind != "unet" or self.flow:
            raise ValueError(f"LowDiffUNet2D retrofits a UNet2DModel on a DDPM-family schedule, got {type(net).__name__}")
        cfg: Any = net.config
        if len(self.levels) < 2:
            raise ValueError(f"a LowDiff retrofit needs at least two levels, got {[lv.size[0] for lv in self.levels]}")
        if cfg.time_embedding_type != "positional" or cfg.class_embed_type is not None \
                or any(hasattr(b, "skip_conv") for b in [*net.down_blocks, *net.up_blocks]):
            raise ValueError("LowDiffUNet2D retrofits UNet2DModels with positional time embeddings, plain class "
                             "embeddings and no skip blocks (the DDPM / ADM layout)")
        top = self.levels[-1].size[0]
        self.depths = tuple((top // lv.size[0]).bit_length() - 1 for lv in self.levels)
        widths, channels = list(cfg.block_out_channels), self.levels[0].channels
        time_dim = net.time_embedding.linear_2.out_features
        self.in_convs = nn.ModuleList()
        self.heads = nn.ModuleList()
        for i, d in enumerate(self.depths):
            cond = channels if i > 0 else 0
            if d == 0:  # the top keeps conv_in; the condition enters through a conv that starts at zero
                if cond:
                    conv = nn.Conv2d(cond, widths[0], 3, padding=1, bias=False)
                    nn.init.zeros_(conv.weight)
                    self.in_convs.append(conv)
                else:
                    self.in_convs.append(nn.Identity())
                self.heads.append(nn.Identity())
            else:
                self.in_convs.append(nn.Conv2d(channels + cond, widths[d - 1], 3, padding=1))
                out = nn.Conv2d(widths[d], int(cfg.out_channels), 3, padding=1)
                nn.init.zeros_(out.weight)
                if out.bias is not None:
                    nn.init.zeros_(out.bias)
                head = nn.Sequential(nn.GroupNorm(cfg.norm_num_groups, widths[d], eps=cfg.norm_eps), nn.SiLU(), out)
                self.heads.append(head)
        self.level_embed = nn.Linear(len(self.levels), time_dim, bias=False)
        self.cond_time_embed = nn.Linear(net.time_embedding.linear_1.in_features, time_dim, bias=False)
        nn.init.zeros_(self.level_embed.weight)
        nn.init.zeros_(self.cond_time_embed.weight)

    def _network(self, x: Tensor, timesteps: Tensor, **extra: Any) -> Tensor:
        level, cond, cond_t, labels = self._inputs(extra, x)
        net: Any = self.net
        d = self.depths[level]
        emb = net.time_embedding(net.time_proj(timesteps).to(x.dtype))
        if labels is not None:
            emb = emb + net.class_embedding(labels).to(x.dtype)
        emb = emb + self.level_embed(level_one_hot(len(self.levels), level, x.device).to(x.dtype))
        if cond_t is not None:
            emb = emb + self.cond_time_embed(net.time_proj(cond_t).to(x.dtype))
        if d == 0:
            h = net.conv_in(x) + (self.in_convs[level](cond) if cond is not None else 0)
        else:
            h = self.in_convs[level](torch.cat([x, cond], 1) if cond is not None else x)
        skips: tuple[Tensor, ...] = (h,)
        for block in net.down_blocks[d:]:
            h, found = block(hidden_states=h, temb=emb)
            skips += found
        if net.mid_block is not None:
            h = net.mid_block(h, emb)
        ups = list(net.up_blocks)[: len(net.up_blocks) - d]
        for j, block in enumerate(ups):
            mine, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
            with _no_upsampling(block) if d > 0 and j == len(ups) - 1 else contextlib.nullcontext():
                h = block(h, mine, emb)
        if d == 0:
            return net.conv_out(net.conv_act(net.conv_norm_out(h)))
        return self.heads[level](h)


class LowDiffDiT2D(_Retrofit):
    """LowDiff on a diffusers DiTTransformer2DModel, in the manner of LowDiff's DiT variant:
    per level a patch embedder with its own fixed sin-cos table (diffusers' PatchEmbed, the
    condition's channels beside the image's) and an output projection; a level embedding and a
    condition-timestep embedding added to every block's adaLN conditioning. The top level keeps
    the network's own embedder and output, its condition entering through a conv that starts
    at zero; the new embeddings start at zero too, so the top level is the original network."""

    def __init__(self, net: Any, scheduler: Any, levels: Sequence[int]) -> None:
        from diffusers.models.embeddings import PatchEmbed

        if type(net).__name__ != "DiTTransformer2DModel":
            raise ValueError(f"LowDiffDiT2D retrofits a DiTTransformer2DModel, got {type(net).__name__}")
        sizes = [int(r) for r in levels]
        super().__init__(net, scheduler, sizes[-1:])  # its own size, which the base accepts; the levels follow
        if len(sizes) < 2:
            raise ValueError(f"a LowDiff retrofit needs at least two levels, got {sizes}")
        patch, channels, width = int(net.config.patch_size), self.levels[0].channels, int(net.inner_dim)
        self.levels = tuple(Level((r, r), channels) for r in check_level_sizes(sizes, square_size(net.config.sample_size), multiple=patch))
        self.embedders = nn.ModuleList()
        self.outputs = nn.ModuleList()
        for i, r in enumerate(sizes[:-1]):
            self.embedders.append(PatchEmbed(height=r, width=r, patch_size=patch, in_channels=channels * (2 if i else 1),
                                             embed_dim=width))
            out = nn.Linear(width, patch * patch * int(net.out_channels))
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
            self.outputs.append(out)
        self.top_cond = nn.Conv2d(channels, width, patch, stride=patch, bias=False)
        nn.init.zeros_(self.top_cond.weight)
        time_channels = int(net.transformer_blocks[0].norm1.emb.time_proj.num_channels)
        self.level_embed = nn.Linear(len(self.levels), width, bias=False)
        self.cond_time_embed = nn.Linear(time_channels, width, bias=False)
        nn.init.zeros_(self.level_embed.weight)
        nn.init.zeros_(self.cond_time_embed.weight)
        self._extra: Tensor | None = None  # what the hooks add to each block's conditioning, during a call
        for block in net.transformer_blocks:
            block.norm1.emb.register_forward_hook(self._add_level_conditioning)

    def _add_level_conditioning(self, module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        return output if self._extra is None else output + self._extra.to(output.dtype)

    def _network(self, x: Tensor, timesteps: Tensor, **extra: Any) -> Tensor:
        level, cond, cond_t, labels = self._inputs(extra, x)
        net: Any = self.net
        top = level == len(self.levels) - 1
        if top:
            h = net.pos_embed(x) + (self.top_cond(cond).flatten(2).transpose(1, 2) if cond is not None else 0)
        else:
            h = self.embedders[level](torch.cat([x, cond], 1) if cond is not None else x)
        self._extra = self.level_embed(level_one_hot(len(self.levels), level, x.device).to(x.dtype))
        if cond_t is not None:
            proj = net.transformer_blocks[0].norm1.emb.time_proj
            self._extra = self._extra + self.cond_time_embed(proj(cond_t).to(x.dtype))
        try:
            for block in net.transformer_blocks:
                h = block(h, timestep=timesteps, class_labels=labels)
            conditioning = net.transformer_blocks[0].norm1.emb(timesteps, labels, hidden_dtype=h.dtype)
        finally:
            self._extra = None
        shift, scale = net.proj_out_1(torch.nn.functional.silu(conditioning)).chunk(2, dim=1)
        h = net.norm_out(h) * (1 + scale[:, None]) + shift[:, None]
        h = net.proj_out_2(h) if top else self.outputs[level](h)
        p, grid, out_channels = int(net.config.patch_size), x.shape[-1] // int(net.config.patch_size), int(net.out_channels)
        h = h.reshape(-1, grid, grid, p, p, out_channels).permute(0, 5, 1, 3, 2, 4).reshape(-1, out_channels, grid * p, grid * p)
        return h[:, : x.shape[1]] if out_channels == 2 * x.shape[1] else h
