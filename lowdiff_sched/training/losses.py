"""EDM's three training-noise distributions and loss weights, rectified flow's in the same
terms, LowDiff's multi-resolution loss, and MSF's per-scale rectified-flow loss.

Each loss class says only how sigma is drawn and how a sample at that sigma is weighted;
`multires_loss` applies one of them identically at every level of a cascade (LowDiff Alg. 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import Tensor

from ..protocol import Level, ResolutionCascade, is_conditioned
from ..resample import downsample, upsample
from ..schedules import discrete_vp_sigmas


def _rand(n: int, generator: torch.Generator | None, device: torch.device | str | None) -> Tensor:
    """U[0, 1) draws [n], made on the generator's device (so a CPU generator repeats anywhere)."""
    where = generator.device if generator is not None else device
    u = torch.rand(n, generator=generator, device=where)
    return u if device is None else u.to(device)


def _randn(shape: Sequence[int], generator: torch.Generator | None, device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
    """N(0, 1) draws of `shape`, made on the generator's device like `_rand`."""
    where = generator.device if generator is not None else device
    z = torch.randn(tuple(shape), generator=generator, device=where, dtype=dtype)
    return z if device is None else z.to(device)


class SigmaLoss(Protocol):
    """What `multires_loss` needs from a loss: the training sigma distribution and its weight."""

    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor: ...

    def weight(self, sigma: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class VPLoss:
    """Variance preserving (Song et al. 2021): t ~ U[epsilon_t, 1], sigma = sigma_VP(t), weight 1/sigma^2."""

    beta_d: float = 19.9
    beta_min: float = 0.1
    epsilon_t: float = 1e-5

    def sigma(self, t: Tensor) -> Tensor:
        # EDM Table 1 (VP): sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)
        return torch.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t).sqrt()

    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
        # EDM Table 1 (VP): t ~ U(epsilon_t, 1)
        t = 1 + _rand(n, generator, device) * (self.epsilon_t - 1)
        return self.sigma(t)

    def weight(self, sigma: Tensor) -> Tensor:
        # EDM Table 1 (VP): lambda(sigma) = 1 / sigma^2
        return 1 / sigma**2


@dataclass(frozen=True)
class VELoss:
    """Variance exploding (Song et al. 2021): ln sigma ~ U[ln sigma_min, ln sigma_max], weight 1/sigma^2."""

    sigma_min: float = 0.02
    sigma_max: float = 100.0

    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
        # EDM Table 1 (VE): sigma = sigma_min (sigma_max / sigma_min)^u, u ~ U[0, 1)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _rand(n, generator, device)

    def weight(self, sigma: Tensor) -> Tensor:
        # EDM Table 1 (VE): lambda(sigma) = 1 / sigma^2
        return 1 / sigma**2


@dataclass(frozen=True)
class EDMLoss:
    """EDM (Karras et al. 2022): ln sigma ~ N(P_mean, P_std^2), weight (sigma^2 + sigma_data^2) / (sigma sigma_data)^2."""

    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_data: float = 0.5

    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
        # EDM Table 1 (ours): ln(sigma) ~ N(P_mean, P_std^2)
        return (_randn((n,), generator, device, torch.float32) * self.P_std + self.P_mean).exp()

    def weight(self, sigma: Tensor) -> Tensor:
        # EDM Table 1 (ours): lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


@dataclass(frozen=True)
class FlowLoss:
    """Rectified flow as LightningDiT trains it, in sigma terms: flow time t ~ sigmoid(N(0, 1))
    ("lognorm", their default) or U(0, 1), clipped to [eps, 1 - eps], sigma = (1 - t) / t.

    Since D - x0 = (1 - t)(v_pred - v) (flow.velocity_denoiser), the weight
    1 / (1 - t)^2 = ((1 + sigma) / sigma)^2 makes the weighted denoising error exactly the
    velocity regression error ||v_pred - (x0 - noise)||^2. LightningDiT's extra cosine term is
    not included.
    """

    t_dist: str = "lognorm"
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.t_dist not in ("lognorm", "uniform"):
            raise ValueError(f"FlowLoss.t_dist must be 'lognorm' or 'uniform', got {self.t_dist!r}")
        if not 0 < self.eps < 0.5:
            raise ValueError(f"FlowLoss.eps must lie in (0, 0.5), got {self.eps}")

    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
        if self.t_dist == "lognorm":
            t = torch.sigmoid(_randn((n,), generator, device, torch.float32))
        else:
            t = _rand(n, generator, device)
        t = t.clamp(self.eps, 1 - self.eps)
        return (1 - t) / t

    def weight(self, sigma: Tensor) -> Tensor:
        return ((1 + sigma) / sigma) ** 2


@dataclass(frozen=True)
class DDPMLoss:
    """A discrete VP (DDPM) schedule as its networks are trained ("Denoising Diffusion
    Probabilistic Models", Alg. 1): a timestep drawn uniformly from the T training steps, sigma
    its training sigma (`schedules.discrete_vp_sigmas`), and the weight that makes the
    weighted denoising error the network's own regression error for its prediction type:
    ||eps_pred - eps||^2 (1 / sigma^2), ||v_pred - v||^2 ((sigma^2 + 1) / sigma^2, "Progressive
    Distillation for Fast Sampling of Diffusion Models", Sec. 4) or ||x0_pred - x0||^2 (1)."""

    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    num_train_timesteps: int = 1000
    prediction_type: str = "epsilon"
    sigmas: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"DDPMLoss.prediction_type must be epsilon, v_prediction or sample, got {self.prediction_type!r}")
        table = discrete_vp_sigmas(self.beta_schedule, self.beta_start, self.beta_end, int(self.num_train_timesteps))
        object.__setattr__(self, "sigmas", table)

    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
        steps = (_rand(n, generator, device) * len(self.sigmas)).long().clamp_max(len(self.sigmas) - 1)
        return self.sigmas.to(steps.device)[steps]

    def weight(self, sigma: Tensor) -> Tensor:
        if self.prediction_type == "epsilon":
            return 1 / sigma**2
        if self.prediction_type == "v_prediction":
            return (sigma**2 + 1) / sigma**2
        return torch.ones_like(sigma)


LOSSES: dict[str, type] = {"vp": VPLoss, "ve": VELoss, "edm": EDMLoss, "flow": FlowLoss, "ddpm": DDPMLoss}


def make_loss(name: str, **kwargs: Any) -> SigmaLoss:
    """The loss named "vp", "ve", "edm", "flow" or "ddpm", with its paper's hyper-parameters
    unless `kwargs` set some (e.g. EDM's P_mean and P_std); each a value of its field's kind."""
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {name!r}")
    defaults = {f.name: f.default for f in fields(LOSSES[name]) if f.init}
    for key, value in kwargs.items():
        kind = str if isinstance(defaults.get(key), str) else (int, float)
        if key in defaults and (isinstance(value, bool) or not isinstance(value, kind)):
            raise ValueError(f"loss {name!r}: {key} must be a {'name' if kind is str else 'number'}, got {value!r}")
    try:
        return LOSSES[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"loss {name!r}: {err}") from None


@dataclass(frozen=True)
class LevelNoise:
    """One level's random draws for a batch: the noise level and unit noise of the sample,
    and (above level 0) those of the condition, drawn at the level below."""

    sigma: Tensor
    eps: Tensor
    sigma_c: Tensor | None = None
    eps_c: Tensor | None = None

    def rows(self, start: int, stop: int) -> "LevelNoise":
        """The draws of samples start..stop-1 (a process's share of a global batch)."""
        cut = lambda t: None if t is None else t[start:stop]  # noqa: E731
        return LevelNoise(self.sigma[start:stop], self.eps[start:stop], cut(self.sigma_c), cut(self.eps_c))


def check_level_ids(cascade_levels: Sequence[Level], levels: Sequence[int] | None) -> list[int]:
    """Level indices to train, ascending; all of them when `levels` is None."""
    n = len(cascade_levels)
    if levels is None:
        return list(range(n))
    ids = [int(i) for i in levels]
    if not ids or any(not 0 <= i < n for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"levels must be distinct indices in [0, {n}), got {list(levels)!r}")
    return sorted(ids)


def trained_level_ids(cascade_levels: Sequence[Level], levels: Sequence[int] | None, distill: bool = False) -> list[int]:
    """The levels a run trains: `levels`, or all of them (all but the top, the teacher, when distilling)."""
    if distill and levels is None:
        levels = range(len(cascade_levels) - 1)
    ids = check_level_ids(cascade_levels, levels)
    if distill and len(cascade_levels) - 1 in ids:
        raise ValueError(f"distillation trains the levels below the top one (its teacher), got levels {ids}")
    return ids


def draw_multires_noise(
    cascade_levels: Sequence[Level],
    batch: int,
    loss_fn: SigmaLoss,
    *,
    generator: torch.Generator | None = None,
    levels: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    distill: bool = False,
) -> dict[int, LevelNoise]:
    """Every random draw of `multires_loss` for a batch, level by level in ascending order,
    each level in the order sigma, eps, sigma_c, eps_c (the condition's only above level 0).
    For `distill_loss` (`distill`), sigma and eps are the top level's and there is no condition."""
    draws = {}
    for i in check_level_ids(cascade_levels, levels):
        sigma = loss_fn.sample_sigma(batch, generator, device).to(dtype)
        eps = _randn((batch, *cascade_levels[-1 if distill else i].shape), generator, device, dtype)
        sigma_c = eps_c = None
        if i > 0 and not distill:
            sigma_c = loss_fn.sample_sigma(batch, generator, device).to(dtype)
            eps_c = _randn((batch, *cascade_levels[i - 1].shape), generator, device, dtype)
        draws[i] = LevelNoise(sigma, eps, sigma_c, eps_c)
    return draws


def _check_noise(noise: dict[int, LevelNoise], ids: list[int], batch: int) -> None:
    if sorted(noise) != ids or any(z.sigma.shape[0] != batch for z in noise.values()):
        sizes = {i: z.sigma.shape[0] for i, z in noise.items()}
        raise ValueError(f"noise must hold batches of {batch} for levels {ids}, got batch sizes {sizes}")


def multires_loss(
    model: ResolutionCascade,
    x0: Tensor,
    loss_fn: SigmaLoss,
    *,
    class_labels: Tensor | None = None,
    generator: torch.Generator | None = None,
    levels: Sequence[int] | None = None,
    noise: dict[int, LevelNoise] | None = None,
) -> tuple[Tensor, dict[int, Tensor]]:
    """LowDiff's training loss (Alg. 1): the backbone's weighted denoising loss at every level,
    summed. Returns (total, {level: that level's loss, detached}).

    x0 [B, C, H, W] is a clean batch at the top level's size. Level i trains on
    y_i = downsample(x0); above level 0 it is conditioned on the level below, noised with an
    independently drawn sigma_c and nearest-upsampled (unless the model's
    `conditions_on_lower_level` is False, as for C2F-DM). Each level's loss is EDM's: per-element
    weighted squared error summed over the sample, averaged over the batch. Randomness comes
    from `generator` (see `draw_multires_noise` for the order), or from `noise` drawn ahead.
    """
    if not isinstance(model, ResolutionCascade):
        raise TypeError(f"model must implement ResolutionCascade (levels + denoise), got {type(model).__name__}")
    top = model.levels[-1]
    if not isinstance(x0, Tensor) or x0.ndim != 4 or tuple(x0.shape[1:]) != top.shape:
        got = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"x0 must be a batch [B, {top.channels}, {top.size[0]}, {top.size[1]}] at the top level, got {got}")
    ids = check_level_ids(model.levels, levels)
    if noise is None:
        noise = draw_multires_noise(model.levels, x0.shape[0], loss_fn, generator=generator, levels=ids, device=x0.device, dtype=x0.dtype)
    _check_noise(noise, ids, x0.shape[0])
    extra = {} if class_labels is None else {"class_labels": class_labels}
    total = x0.new_zeros((), dtype=torch.float32)
    per_level: dict[int, Tensor] = {}
    for i in ids:
        z = noise[i]
        size = model.levels[i].size
        y = downsample(x0, size)
        n = z.sigma.view(-1, 1, 1, 1) * z.eps
        cond = cond_sigma = None
        if is_conditioned(model, i):  # C2F-DM's levels are not: each trains on its own downsampled data only
            # LowDiff Alg. 1: c = U(D(x0, r_{i-1}) + sigma_c eps_c, r_i)
            if z.sigma_c is None or z.eps_c is None:
                raise ValueError(f"noise of level {i} needs sigma_c and eps_c: the level is conditioned on the level below")
            low = downsample(x0, model.levels[i - 1].size)
            cond = upsample(low + z.sigma_c.view(-1, 1, 1, 1) * z.eps_c, size, "nearest")
            cond_sigma = z.sigma_c
        D_yn = model.denoise(y + n, z.sigma, level=i, cond=cond, cond_sigma=cond_sigma, **extra)
        weight = loss_fn.weight(z.sigma.float()).view(-1, 1, 1, 1)
        # EDM Eq. 2 / loss.py: lambda(sigma) ||D(y + n; sigma) - y||^2, summed over the sample
        loss = (weight * (D_yn.float() - y.float()) ** 2).sum(dim=(1, 2, 3)).mean()
        per_level[i] = loss.detach()
        total = total + loss
    return total, per_level


def distill_loss(
    model: ResolutionCascade,
    x0: Tensor,
    loss_fn: SigmaLoss,
    *,
    class_labels: Tensor | None = None,
    generator: torch.Generator | None = None,
    levels: Sequence[int] | None = None,
    noise: dict[int, LevelNoise] | None = None,
) -> tuple[Tensor, dict[int, Tensor]]:
    """Lower levels learn the top level's own answer at their resolution (for `LevelStack`).

    With x = x0 + sigma eps at the top level, level i (f times smaller) sees P(x), whose
    noise is sigma_i = sigma / f, and regresses P(D_top(x; sigma)) with the loss's weight at
    sigma_i. The target is the L2-best prediction of the top level's pooled x0 estimate from
    the pooled state, which is what a `Continue` hand-over needs: the low stage walks the top
    level's trajectory at low resolution. The top level is the teacher and is not trained
    (`levels` None: every lower level). Returns (total, {level: its loss, detached}).
    """
    top = len(model.levels) - 1
    if not isinstance(x0, Tensor) or x0.ndim != 4 or tuple(x0.shape[1:]) != model.levels[-1].shape:
        got = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"x0 must be a batch at the top level's shape {model.levels[-1].shape}, got {got}")
    ids = trained_level_ids(model.levels, levels, distill=True)
    if noise is None:
        noise = draw_multires_noise(model.levels, x0.shape[0], loss_fn, generator=generator, levels=ids, device=x0.device,
                                    dtype=x0.dtype, distill=True)
    _check_noise(noise, ids, x0.shape[0])
    extra = {} if class_labels is None else {"class_labels": class_labels}
    total = x0.new_zeros((), dtype=torch.float32)
    per_level: dict[int, Tensor] = {}
    for i in ids:
        z = noise[i]
        size = model.levels[i].size
        factor = model.levels[-1].size[0] / size[0]
        x = x0 + z.sigma.view(-1, 1, 1, 1) * z.eps
        with torch.no_grad():
            target = downsample(model.denoise(x, z.sigma, level=top, **extra), size).float()
        sigma_i = z.sigma / factor
        D = model.denoise(downsample(x, size), sigma_i, level=i, **extra)
        weight = loss_fn.weight(sigma_i.float()).view(-1, 1, 1, 1)
        loss = (weight * (D.float() - target) ** 2).sum(dim=(1, 2, 3)).mean()
        per_level[i] = loss.detach()
        total = total + loss
    return total, per_level


def msf_loss(
    velocities: Sequence[Callable[..., Tensor]],
    x: Tensor,
    sizes: Sequence[Sequence[int]],
    *,
    base: Tensor | None = None,
    mode: str = "bilinear",
    generator: torch.Generator | None = None,
    **extra: Any,
) -> tuple[Tensor, dict[int, Tensor]]:
    """MSF's per-scale rectified-flow loss with teacher forcing ("MSF: Efficient Diffusion Model Via Multi-Scale Latent Factorize", Eq. 5).

    x [B, C, *sizes[-1]] is factorized into residuals r_i (Alg. 1; `base` for the latent
    variant); scale i's network sees z_t = t r_i + (1 - t) z0 with t ~ U[0, 1) and, for
    i >= 1, the input prior computed from the TRUE residuals below it (Alg. 2: teacher
    forcing, so all scales train in parallel), and regresses v = r_i - z0:
    velocities[i](z_t, t, cond=prior_i, **extra). Returns the sum over scales and each
    scale's mean squared error.
    """
    from ..msf import factorize, input_priors

    if len(velocities) != len(sizes):
        raise ValueError(f"need one velocity network per scale ({len(sizes)}), got {len(velocities)}")
    residuals = factorize(x, sizes, base=base, mode=mode)
    priors = [None, *input_priors(residuals, sizes, mode)]
    per_scale: dict[int, Tensor] = {}
    for i, (v_fn, r, prior) in enumerate(zip(velocities, residuals, priors)):
        z0 = _randn(r.shape, generator, r.device, r.dtype)
        t = _rand(r.shape[0], generator, r.device).to(r.dtype)
        z_t = t.view(-1, 1, 1, 1) * r + (1 - t).view(-1, 1, 1, 1) * z0
        kwargs = extra if prior is None else {**extra, "cond": prior}
        v = v_fn(z_t, t, **kwargs)
        per_scale[i] = (r - z0 - v).square().mean()
    return torch.stack(list(per_scale.values())).sum(), per_scale
