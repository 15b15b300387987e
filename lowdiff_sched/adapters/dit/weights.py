"""LightningDiT checkpoints and latent statistics, read without executing code.

A LightningDiT checkpoint is `torch.save({"model": ..., "ema": ..., "opt": ..., "config": ...})`
or a bare state dict; the EMA weights are used when present. Retrofitted cascades (LowDiff,
C2F) are saved in the same layout, with their own parameter names, and are recognised by
them. `latents_stats.pt` holds {"mean", "std"} of shape [1, C, 1, 1]; the network works on
z' = (z - mean) / std, as LightningDiT's own training and sampling do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ...outputs import atomic_path
from ...tensorfiles import load_tensor_file
from .cascade import C2FDiT, DiTCascade, LowDiffDiT
from .networks import DiTConfig, LightningDiT

DiTModel = DiTCascade | LowDiffDiT | C2FDiT


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The weights in a checkpoint: its "ema" entry, else "model", else the file itself as a
    state dict; a DistributedDataParallel "module." prefix is dropped."""
    data = load_tensor_file(path, "checkpoint")
    if isinstance(data, dict):
        for key in ("ema", "model"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in data.items()):
        raise ValueError(f"checkpoint {str(path)!r} holds no state dict (expected {{'ema' or 'model': tensors}} or a bare state dict)")
    if all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    return data


def _load_strict(module: nn.Module, state: Mapping[str, Tensor], where: str, config_name: str) -> None:
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: checkpoint {tuple(state[k].shape)}, {config_name} {tuple(own[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise ValueError(f"checkpoint {where!r} does not fit {config_name}: {'; '.join(parts)}")
    # the module was built on the meta device: take the checkpoint's tensors as they are (float32)
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True, assign=True)


def _levels_from(state: Mapping[str, Tensor], config: DiTConfig) -> list[int]:
    """Latent sizes of a retrofit's levels, read off its per-level position tables."""
    sizes = []
    i = 0
    while f"pos_embeds.{i}" in state:
        tokens = state[f"pos_embeds.{i}"].shape[1]
        sizes.append(int(round(tokens**0.5)) * config.patch_size)
        i += 1
    return [*sizes, config.input_size]


def dit_from_state(state: Mapping[str, Tensor], config: DiTConfig, where: str = "state dict", config_name: str = "the config") -> DiTModel:
    """The cascade a state dict describes, loaded strictly: a plain LightningDiT (DiTCascade),
    a LowDiff retrofit (it has `final_layers.*`) or a C2F retrofit (`level_embed` only). Built
    on the meta device and filled from the state dict, so no time goes into a random init."""
    model: DiTModel
    with torch.device("meta"):
        net = LightningDiT(config)
        if any(k.startswith("final_layers.") for k in state):
            model = LowDiffDiT(net, _levels_from(state, config))
        elif "level_embed.weight" in state:
            model = C2FDiT(net, _levels_from(state, config))
        else:
            model = DiTCascade(net)
    _load_strict(model.net if isinstance(model, DiTCascade) else model, state, where, config_name)
    return model.eval().requires_grad_(False)


def load_dit(path: str | Path, config: DiTConfig, config_name: str = "the config") -> DiTModel:
    """A LightningDiT checkpoint (theirs, or a retrofit saved by `save_dit`) as a cascade in
    eval mode with the EMA weights."""
    return dit_from_state(read_state_dict(path), config, str(path), config_name)


def save_dit(path: str | Path, model: nn.Module, config: DiTConfig, *, ema: nn.Module | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write `model` in LightningDiT's checkpoint layout {"model", "ema", "config"}, atomically.
    A DiTCascade is saved as its bare network, exactly as LightningDiT saves one."""
    def weights(m: nn.Module) -> dict[str, Tensor]:
        m = m.net if isinstance(m, DiTCascade) else m
        return {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}

    state = {"model": weights(model), "ema": weights(ema if ema is not None else model), "config": {"model": config.to_dict(), **(extra or {})}}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_latent_stats(path: str | Path, channels: int | None = None) -> tuple[Tensor, Tensor]:
    """(mean, std), each [1, C, 1, 1], from a latents_stats.pt {"mean", "std"}."""
    data = load_tensor_file(path, "latent stats")
    if not isinstance(data, dict) or not {"mean", "std"} <= set(data):
        raise ValueError(f"latent stats {str(path)!r} must hold a dict with 'mean' and 'std' tensors")
    mean, std = (torch.as_tensor(data[k], dtype=torch.float32) for k in ("mean", "std"))
    c = channels if channels is not None else mean.numel()
    try:
        mean, std = mean.reshape(1, c, 1, 1), std.reshape(1, c, 1, 1)
    except RuntimeError:
        raise ValueError(f"latent stats {str(path)!r}: mean and std must have {c} values (one per latent channel), got {tuple(data['mean'].shape)} and {tuple(data['std'].shape)}") from None
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise ValueError(f"latent stats {str(path)!r}: mean must be finite and std positive")
    return mean, std


def denormalize(latents: Tensor, stats: tuple[Tensor, Tensor]) -> Tensor:
    """Model-space latents z' back to the VAE's latents z = z' std + mean."""
    mean, std = stats
    return latents * std.to(latents.device) + mean.to(latents.device)


def normalize(latents: Tensor, stats: tuple[Tensor, Tensor]) -> Tensor:
    """VAE latents z to the network's space z' = (z - mean) / std."""
    mean, std = stats
    return (latents - mean.to(latents.device)) / std.to(latents.device)


_MAX_DEPTH = 10_000  # blocks; LightningDiT-XL has 28


def check_dit_size(config: DiTConfig, levels: list[int] | None = None) -> None:
    """Refuse (one-line ValueError naming the fields) a config whose network, with the
    position tables of `levels`, would exceed `backbones.MAX_PARAMETERS`; counted, not built."""
    from ...backbones import MAX_PARAMETERS

    r = config.mlp_ratio
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < float("inf"):
        raise ValueError(f"DiTConfig.mlp_ratio must be a positive number, got {r!r}")
    if config.depth > _MAX_DEPTH:
        raise ValueError(f"DiTConfig.depth={config.depth} is more than {_MAX_DEPTH} blocks")
    h, p = config.hidden_size, config.patch_size
    tokens = sum((size // p) ** 2 for size in [*(levels or []), config.input_size])
    # per block: attention 4h^2, SwiGLU 2 r h^2, adaLN 6h^2 (+ biases and norms); then the
    # embedders, the final layer and one position table per level
    total = (
        config.depth * ((10 + 2 * r) * h * h + 16 * h)
        + 2 * h * h + 2 * p * p * config.in_channels * h + (config.num_classes + 1 + 256 + 8) * h + tokens * h
    )
    if total > MAX_PARAMETERS:
        raise ValueError(
            f"DiTConfig hidden_size={h}, depth={config.depth}, mlp_ratio={r}, num_classes={config.num_classes}, "
            f"input_size={config.input_size}, patch_size={p}: a network of about {total:.3g} parameters, more than "
            f"the {MAX_PARAMETERS:.3g} a file may ask for"
        )


def dit_cascade_of(net: LightningDiT, levels: list[int], method: str = "lowdiff") -> DiTModel:
    """The cascade to train or sample for `levels`: the network itself when the only level
    is its own size, else its LowDiff (or with method="c2f", C2F) retrofit."""
    if [int(r) for r in levels] == [net.config.input_size]:
        return DiTCascade(net)
    if method == "c2f":
        return C2FDiT(net, levels)
    if method == "lowdiff":
        return LowDiffDiT(net, levels)
    if method == "none":
        raise ValueError(f'method "none" runs the network at its own size {net.config.input_size} only, got levels {list(levels)}')
    raise ValueError(f"method must be 'none', 'lowdiff' or 'c2f', got {method!r}")
