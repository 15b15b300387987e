"""A diffusers model and its scheduler's configuration as a `ResolutionCascade`:
`from_diffusers(model, scheduler, levels=None)`.

Each level runs the same network (a training-free cascade), so a level below the model's own
size must be one its architecture accepts: a UNet2DModel any size its downsamplings divide;
an SD3 transformer any size whose patch grid fits its positional table (`pos_embed_max_size`);
a Flux transformer, whose positions are rotary, any even size; a DiTTransformer2DModel, whose
positional table is fixed, its own size only. Levels hand over
by Continue or Renoise: nothing conditions a level on the one below.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ...labels import class_ids
from ...protocol import CascadeDefaults, Level, check_level_input, check_level_sizes
from .denoisers import ddpm_denoiser, ddpm_sigmas, flow_denoiser

# The diffusers model classes this adapter runs, and what kind of network each is.
KINDS = {"UNet2DModel": "unet", "DiTTransformer2DModel": "dit", "SD3Transformer2DModel": "sd3",
         "FluxTransformer2DModel": "flux"}
FLOW_KINDS = ("sd3", "flux")
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)


def scheduler_parts(scheduler: Any) -> tuple[str, dict[str, Any]]:
    """(class name, config) of a diffusers scheduler, or of its config as a mapping (a
    scheduler_config.json read as a dict, with its "_class_name")."""
    if isinstance(scheduler, Mapping):
        config = dict(scheduler)
        return str(config.get("_class_name", "")), config
    found: Any = getattr(scheduler, "config", None)
    if found is None:
        raise TypeError(f"scheduler must be a diffusers scheduler or its config, got {type(scheduler).__name__}")
    return type(scheduler).__name__, dict(found)


def square_size(value: Any) -> int:
    """A square size from a diffusers config's sample_size (an int, or an (H, W) pair of equal sides)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"only square models are supported, got sample_size {value}")
        value = value[0]
    return int(value)


class DiffusersCascade(nn.Module, CascadeDefaults):
    """`net` (a diffusers model) at each of `levels`, denoised in EDM's sigma convention
    through its scheduler's schedule (`denoisers`). Conditioning inputs (class_labels,
    encoder_hidden_states, pooled_projections, ...) come through k-diffusion's extra_args."""

    conditions_on_lower_level = False
    net: Any  # a diffusers model: its submodules and config are read by name
    scheduler_config: dict[str, Any]

    def __init__(self, net: nn.Module, scheduler: Any, levels: Sequence[int] | None = None) -> None:
        super().__init__()
        kind = KINDS.get(type(net).__name__)
        if kind is None:
            raise ValueError(f"{type(net).__name__} is not supported; supported diffusers models: {', '.join(KINDS)}")
        scheduler_name, config = scheduler_parts(scheduler)
        self.flow = scheduler_name in FLOW_SCHEDULERS or "shift" in config and "beta_schedule" not in config
        if kind in FLOW_KINDS and not self.flow:
            raise ValueError(f"{type(net).__name__} is a flow-matching model; its scheduler must be one of {FLOW_SCHEDULERS}")
        if kind not in FLOW_KINDS and self.flow:
            raise ValueError(f"{type(net).__name__} is trained on a DDPM-family schedule, not {scheduler_name or 'a flow schedule'}")
        cfg: Any = net.config  # a diffusers FrozenDict with attribute access
        if kind == "flux":  # no size of its own: rotary positions, latents packed in 2x2 patches
            if levels is None:
                raise ValueError("FluxTransformer2DModel has no size of its own: give levels (latent sizes, e.g. [64, 128])")
            native, factor, channels = int(list(levels)[-1]), 2, int(cfg.in_channels) // 4
        else:
            native, channels = square_size(cfg.sample_size), int(cfg.in_channels)
            factor = 2 ** (len(cfg.block_out_channels) - 1) if kind == "unet" else int(cfg.patch_size)
        sizes = check_level_sizes(levels if levels is not None else [native], native, multiple=factor)
        if kind == "dit" and len(sizes) > 1:
            raise ValueError(f"DiTTransformer2DModel has a fixed positional table for {native}x{native}; it cannot run at "
                             f"level {sizes[0]}: use a one-level cascade, or retrofit and fine-tune it")
        if kind == "sd3":
            table = cfg.pos_embed_max_size
            too_big = [r for r in sizes[:-1] if table is None or r // factor > table]
            if too_big:
                raise ValueError(f"SD3Transformer2DModel's positional table (pos_embed_max_size {table}) does not cover level {too_big[0]}")
        self.net, self.kind, self.scheduler_config, self.patch = net, kind, config, factor
        self.levels = tuple(Level((r, r), channels) for r in sizes)
        self.label_dim = int((cfg.num_class_embeds if kind == "unet" else cfg.num_embeds_ada_norm if kind == "dit" else 0) or 0)
        self._takes = set(inspect.signature(net.forward).parameters) - {"img_ids", "txt_ids"}  # Flux's ids are made here
        self._train_sigmas = None if self.flow else ddpm_sigmas(config)
        self._denoiser()  # an unsupported schedule fails here, not at the first call

    def _denoiser(self) -> Any:
        """D(x, sigma, **extra) over this cascade's `_network`. Made per call, never stored: a
        stored closure would keep calling the original after `copy.deepcopy` (an EMA copy)."""
        if self.flow:
            return flow_denoiser(self._network, self.scheduler_config, fraction_timesteps=self.kind == "flux")
        return ddpm_denoiser(self._network, self.scheduler_config, self._train_sigmas)

    def image_seq_len(self, level: int) -> int:
        """Tokens the network sees at `level`: what a resolution-dependent time shift depends on."""
        size = self.levels[level].size[0]
        return (size // self.patch) ** 2

    def _class_ids(self, extra: dict[str, Any], x: Tensor) -> Tensor | None:
        """The batch's class ids from extra_args' class_labels (ids or one-hot rows), required
        by a class-conditional model; None for an unconditional one."""
        if not self.label_dim:
            return None
        if extra.get("class_labels") is None:
            raise ValueError(f"{type(self.net).__name__} is class-conditional ({self.label_dim} classes): give class_labels")
        return class_ids(extra["class_labels"], x.shape[0], self.label_dim, x.device)

    def _network(self, x: Tensor, timesteps: Tensor, **extra: Any) -> Tensor:
        """The model's output (its prediction) for inputs already scaled to its schedule."""
        unknown = sorted(set(extra) - self._takes)
        if unknown:
            raise ValueError(f"{type(self.net).__name__} takes no {', '.join(unknown)} (extra_args it was given)")
        if self.label_dim:
            extra["class_labels"] = self._class_ids(extra, x)
        if self.kind == "flux":
            return self._flux(x, timesteps, **extra)
        out = self.net(x, timestep=timesteps, return_dict=False, **extra)[0]
        if out.shape[1] == 2 * x.shape[1]:  # a learned variance rides along as the second half
            out = out[:, : x.shape[1]]
        return out

    def _flux(self, x: Tensor, timesteps: Tensor, **extra: Any) -> Tensor:
        """Flux on latents [B, C, H, W]: packed into 2x2 patches (tokens of 4C), positions as
        (0, row, column) ids, the text's ids zero, unpacked again."""
        b, c, h, w = x.shape
        tokens = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), 4 * c)
        rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).to(x.device, x.dtype)
        text = extra.get("encoder_hidden_states")
        txt_ids = torch.zeros(0 if text is None else text.shape[1], 3, device=x.device, dtype=x.dtype)
        out = self.net(tokens, timestep=timesteps, img_ids=img_ids, txt_ids=txt_ids, return_dict=False, **extra)[0]
        return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)

    def denoise(self, x: Tensor, sigma: Tensor, *, level: int, cond: Tensor | None = None,
                cond_sigma: Tensor | None = None, **extra: Any) -> Tensor:
        check_level_input(self.levels, level, x)
        if cond is not None:
            raise ValueError("a diffusers cascade is unconditional at every level: hand over with Continue or Renoise")
        dtype = next(self.net.parameters()).dtype
        return self._denoiser()(x.to(dtype), sigma, **extra).to(x.dtype)


def from_diffusers(model: nn.Module, scheduler: Any, levels: Sequence[int] | None = None) -> DiffusersCascade:
    """A diffusers model with its scheduler (or the scheduler's config) as a cascade: one level
    at the model's own size with `levels=None`, else the same network at each of `levels`
    (sizes low -> high, ending at the model's own). `stage_denoiser(cascade, -1)` then drives
    the model with any `k_diffusion.sampling.sample_*`."""
    return DiffusersCascade(model, scheduler, levels)
