"""An exact Gaussian oracle cascade: every denoiser in closed form.

The top level is a stationary Gaussian random field on a periodic grid (channels
independent, power-law spectrum); each lower level is DEFINED as the block mean pool
of the top field. Every level is therefore diagonal in the orthonormal 2-D DFT, so
the unconditional denoiser is a per-frequency Wiener filter and the LowDiff
conditional denoiser (condition = noisy mean pool of this level) is a rank-one Kalman
update per block of the f^2 fine frequencies that alias onto one coarse frequency.

Fourier conventions (all DFTs orthonormal, X = fft2(x, norm="ortho")). Mean pooling an
H x W grid by f onto M = (H/f, W/f) maps the fine mode k onto the coarse mode q = k mod M
with the coefficient

    a(k) = G(k) / f^3,   G(k) = prod_d sum_{j=0}^{f-1} exp(2 pi i k_d j / N_d),

(1/f^2 from the block mean, 1/f from the ratio of the two orthonormal bases), so the
level-l spectrum is S_l(q) = sum_{k = q mod M} |a(k)|^2 S(k).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence, cast

import torch
from torch import Tensor

from ..backbones import Backbone
from ..protocol import CascadeDefaults, Level, as_level, check_condition, level_index
from ..resample import downsample, integer_factor

__all__ = ["GaussianFieldCascade"]

_COND_MODES: tuple[str, ...] = ("nearest",)


def _per_channel(name: str, value: Any, channels: int) -> tuple[float, ...]:
    try:
        t = torch.as_tensor(value, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a float or a sequence of {channels} floats, got {value!r}") from err
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise ValueError(f"{name} must be a float or a sequence of {channels} floats, got {value!r}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {value!r}")
    return tuple(float(v) for v in t)


def _pool_coefficients(size: tuple[int, int], f: int) -> Tensor:
    """a(k) [H, W] complex128: the factor by which mean pooling by f maps fine mode k
    (unsigned indices of the H x W grid) onto coarse mode k mod (H/f, W/f)."""
    j = torch.arange(f, dtype=torch.float64)
    g = []
    for n in size:
        k = torch.arange(n, dtype=torch.float64)
        phase = 2 * math.pi * k[:, None] * j[None, :] / n
        g.append(torch.polar(torch.ones_like(phase), phase).sum(dim=1))
    G = g[0][:, None] * g[1][None, :]
    return G / f**3


def _blocks(t: Tensor, f: int) -> Tensor:
    """[..., f*My, f*Mx] -> [..., f, My, f, Mx]: fine index k = j * M + q, so axis -3/-1
    is the coarse frequency q and axes -4/-2 enumerate the f^2 aliases of q."""
    *lead, h, w = t.shape
    return t.reshape(*lead, f, h // f, f, w // f)


def _unblocks(t: Tensor) -> Tensor:
    *lead, f, my, f2, mx = t.shape
    return t.reshape(*lead, f * my, f2 * mx)


class GaussianFieldCascade(CascadeDefaults):
    """A `ResolutionCascade` whose data law is known exactly, so its denoisers are the
    true posterior means: the reference against which samplers and plans are measured.

    levels: ints (square), (H, W) pairs or `Level`s, lowest to highest, each an integer
    multiple of the previous one. The top level is a Gaussian field with per-channel mean
    `mean`, marginal std `std`, and DFT-coefficient variance proportional to
    (|k|^2 + k0^2)^(-alpha/2); lower levels are its block mean pools.
    """

    # exact at every level with or without a condition, so every hand-over applies (plan search)
    hand_overs = ("condition", "continue", "renoise")

    def __init__(
        self,
        levels: Sequence[int | tuple[int, int] | Level] = (8, 16, 32),
        channels: int = 3,
        alpha: float = 3.0,
        k0: float = 1.0,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 0.5,
        cond_mode: str = "nearest",
    ) -> None:
        if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if isinstance(levels, (int, Level)) or not isinstance(levels, Sequence) or len(levels) == 0:
            raise ValueError(f"levels must be a non-empty sequence of sizes, got {levels!r}")
        self.levels: tuple[Level, ...] = tuple(as_level(e, channels, i) for i, e in enumerate(levels))
        self._factors: tuple[int, ...] = (1,)
        for i in range(1, len(self.levels)):
            low, high = self.levels[i - 1].size, self.levels[i].size
            try:
                f = integer_factor(low, high)
            except ValueError:
                raise ValueError(
                    f"levels[{i}] size {high} is not one integer multiple of levels[{i - 1}] size {low}"
                ) from None
            if f < 2:
                raise ValueError(f"levels must strictly increase in size, got {low} then {high} at levels[{i}]")
            self._factors += (f,)
        if not math.isfinite(float(alpha)):
            raise ValueError(f"alpha must be finite, got {alpha!r}")
        if not (math.isfinite(float(k0)) and float(k0) > 0):
            raise ValueError(f"k0 must be a positive float, got {k0!r}")
        if cond_mode not in _COND_MODES:
            raise ValueError(
                f"cond_mode must be one of {_COND_MODES} (the condition is pooled back exactly), got {cond_mode!r}"
            )
        self.channels = channels
        self.alpha = float(alpha)
        self.k0 = float(k0)
        self.cond_mode = cond_mode
        self.mean: tuple[float, ...] = _per_channel("mean", mean, channels)
        self.std: tuple[float, ...] = _per_channel("std", std, channels)
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {std!r}")

        spectra, coeffs = self._build_tables()
        self._tables: dict[torch.device, tuple[list[Tensor], list[Tensor | None], Tensor]] = {
            torch.device("cpu"): (spectra, coeffs, torch.tensor(self.mean, dtype=torch.float64))
        }

    # ------------------------------------------------------------------ tables

    def _build_tables(self) -> tuple[list[Tensor], list[Tensor | None]]:
        top = self.levels[-1].size
        n_y, n_x = top
        k_y = torch.fft.fftfreq(n_y, 1 / n_y, dtype=torch.float64)
        k_x = torch.fft.fftfreq(n_x, 1 / n_x, dtype=torch.float64)
        shape = (k_y[:, None] ** 2 + k_x[None, :] ** 2 + self.k0**2) ** (-self.alpha / 2)
        # Var x(n) = (1/N) sum_k S(k) for an orthonormal DFT, so this makes std the marginal std.
        std = torch.tensor(self.std, dtype=torch.float64)
        S = std[:, None, None] ** 2 * (n_y * n_x) * shape / shape.sum()

        spectra: list[Tensor] = []
        for lvl in self.levels:
            F = top[0] // lvl.size[0]
            if F == 1:
                spectra.append(S)
            else:
                a = _pool_coefficients(top, F)
                spectra.append((_blocks(a.abs() ** 2 * S, F)).sum(dim=(-4, -2)))
        coeffs: list[Tensor | None] = [None] + [
            _pool_coefficients(self.levels[i].size, self._factors[i]) for i in range(1, len(self.levels))
        ]
        return spectra, coeffs

    def _on(self, device: torch.device) -> tuple[list[Tensor], list[Tensor | None], Tensor]:
        if device not in self._tables:
            spectra, coeffs, mu = self._tables[torch.device("cpu")]
            self._tables[device] = (
                [s.to(device) for s in spectra],
                [None if a is None else a.to(device) for a in coeffs],
                mu.to(device),
            )
        return self._tables[device]

    def _level_index(self, level: int) -> int:
        if isinstance(level, bool) or not isinstance(level, int):
            raise TypeError(f"level must be an int, got {level!r}")
        return level_index(level, len(self.levels))

    # ---------------------------------------------------------------- checks

    def _check_x(self, name: str, x: Any, lvl: Level) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4 or tuple(x.shape[1:]) != lvl.shape:
            raise ValueError(f"{name} must have shape [B, {', '.join(map(str, lvl.shape))}], got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")

    @staticmethod
    def _scale(name: str, value: Any, batch: int, device: torch.device) -> Tensor:
        """A per-sample std as float64 [B, 1, 1, 1] on `device`."""
        if isinstance(value, Tensor):
            t = value.detach().to(device=device, dtype=torch.float64)
            if t.ndim == 0 or t.numel() == 1:
                t = t.reshape(1).expand(batch)
            elif t.ndim != 1 or t.shape[0] != batch:
                raise ValueError(f"{name} must be a float or a tensor of shape [{batch}], got {tuple(value.shape)}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            t = torch.full((batch,), float(value), dtype=torch.float64, device=device)
        else:
            raise TypeError(f"{name} must be a float or a tensor of shape [{batch}], got {type(value).__name__}")
        return t.view(batch, 1, 1, 1)

    # --------------------------------------------------------------- public

    def denoise(
        self,
        x: Tensor,
        sigma: Tensor | float,
        *,
        level: int,
        cond: Tensor | None = None,
        cond_sigma: Tensor | float | None = None,
        **extra: Any,
    ) -> Tensor:
        """E[x0 | x] at `level` (x = x0 + sigma eps), or, with `cond`, the LowDiff posterior
        E[x0 | x, z] where z = P x0 + cond_sigma eps_c is the noisy previous level and
        `cond` is z nearest-upsampled to this level. Extra kwargs are ignored; `cond_sigma`
        is ignored without `cond`, and None means a clean condition."""
        li = self._level_index(level)
        lvl = self.levels[li]
        self._check_x("x", x, lvl)
        check_condition(li, cond, required=False)
        spectra, coeffs, mu = self._on(x.device)
        B = x.shape[0]
        mu = mu.view(-1, 1, 1)
        S = spectra[li]
        s2 = self._scale("sigma", sigma, B, x.device) ** 2

        X = torch.fft.fft2(x.to(torch.float64) - mu, norm="ortho")
        if cond is None:
            X_hat = S / (S + s2) * X
        else:
            self._check_x("cond", cond, lvl)
            if cond.shape[0] != B:
                raise ValueError(f"cond must have x's batch size {B}, got {tuple(cond.shape)}")
            sc2 = (
                torch.zeros(B, 1, 1, 1, dtype=torch.float64, device=x.device)
                if cond_sigma is None
                else self._scale("cond_sigma", cond_sigma, B, x.device) ** 2
            )
            f = self._factors[li]
            z = downsample(cond.to(device=x.device, dtype=torch.float64), self.levels[li - 1].size)
            Z = torch.fft.fft2(z - mu, norm="ortho")  # [B, C, My, Mx]

            a = _blocks(cast(Tensor, coeffs[li]), f)  # [f, My, f, Mx]; li > 0 (check_condition), so not None
            S_b = _blocks(S, f)  # [C, f, My, f, Mx]
            s2_b = s2.view(B, 1, 1, 1, 1, 1)
            sc2_b = sc2.view(B, 1, 1, 1)
            # Condition on X_obs = X + sigma E first (diagonal), then on the single row Z(q).
            m0 = S_b / (S_b + s2_b) * _blocks(X, f)
            V = S_b * s2_b / (S_b + s2_b)
            innov = Z - (a * m0).sum(dim=(-4, -2))
            den = (a.abs() ** 2 * V).sum(dim=(-4, -2)) + sc2_b  # [B, C, My, Mx]
            # den == 0 only when sigma == cond_sigma == 0: then x already is x0 and K = 0.
            gain = torch.where(den > 0, 1 / den.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
            K = V * a.conj() * gain[:, :, None, :, None, :]
            X_hat = _unblocks(m0 + K * innov[:, :, None, :, None, :])
        out = torch.fft.ifft2(X_hat, norm="ortho").real + mu
        return out.to(x.dtype)

    def sample_data(
        self,
        n: int,
        level: int = -1,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """n true samples [n, C, H, W] float32 of `level`: IFFT(sqrt(S_l) FFT(w)) + mean with
        white w drawn from `generator` (on the generator's device unless `device` is given)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        li = self._level_index(level)
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        device = torch.device(device)
        gen_device = generator.device if generator is not None else device
        w = torch.randn(n, *self.levels[li].shape, generator=generator, dtype=torch.float64, device=gen_device)
        spectra, _, mu = self._on(device)
        x = torch.fft.ifft2(spectra[li].sqrt() * torch.fft.fft2(w.to(device), norm="ortho"), norm="ortho").real
        return (x + mu.view(-1, 1, 1)).to(torch.float32)

    def spectrum(self, level: int = -1) -> Tensor:
        """S_l [C, H, W] float64: the variance of each orthonormal DFT coefficient of `level`."""
        return self._tables[torch.device("cpu")][0][self._level_index(level)].clone()

    def mean_vector(self, level: int = -1) -> Tensor:
        """[C*H*W] float64: the mean of a flattened (C, H, W) sample of `level`."""
        lvl = self.levels[self._level_index(level)]
        mu = torch.tensor(self.mean, dtype=torch.float64)
        return mu.view(-1, 1, 1).expand(lvl.shape).reshape(-1).clone()

    def covariance(self, level: int = -1) -> Tensor:
        """[D, D] float64 dense covariance of a flattened (C, H, W) sample of `level`
        (block diagonal over channels, circulant within a channel)."""
        li = self._level_index(level)
        C, H, W = self.levels[li].shape
        S = self._tables[torch.device("cpu")][0][li]
        # Autocovariance r(d) = (1/N) sum_k S(k) exp(2 pi i k.d / N); Cov[x(n), x(m)] = r(n - m).
        r = torch.fft.ifft2(S.to(torch.complex128)).real  # [C, H, W]
        iy = torch.arange(H)
        ix = torch.arange(W)
        dy = (iy[:, None, None, None] - iy[None, None, :, None]) % H
        dx = (ix[None, :, None, None] - ix[None, None, None, :]) % W
        blocks = r[:, dy, dx].reshape(C, H * W, H * W)
        return torch.block_diag(*blocks)

    def flow_map(
        self,
        x: Tensor,
        sigma_from: Tensor | float,
        sigma_to: Tensor | float,
        level: int = -1,
    ) -> Tensor:
        """The exact probability-flow ODE map from noise level sigma_from to sigma_to:
        per frequency, x(sigma_to) - mu = sqrt((S + sigma_to^2) / (S + sigma_from^2)) (x(sigma_from) - mu)."""
        li = self._level_index(level)
        self._check_x("x", x, self.levels[li])
        spectra, _, mu = self._on(x.device)
        B = x.shape[0]
        S = spectra[li]
        mu = mu.view(-1, 1, 1)
        s_from = self._scale("sigma_from", sigma_from, B, x.device)
        s_to = self._scale("sigma_to", sigma_to, B, x.device)
        X = torch.fft.fft2(x.to(torch.float64) - mu, norm="ortho")
        X = torch.sqrt((S + s_to**2) / (S + s_from**2)) * X
        return (torch.fft.ifft2(X, norm="ortho").real + mu).to(x.dtype)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{h}x{w}" for h, w in (lvl.size for lvl in self.levels))
        return (
            f"GaussianFieldCascade(levels=[{sizes}], channels={self.channels}, "
            f"alpha={self.alpha:g}, k0={self.k0:g}, mean={self.mean}, std={self.std})"
        )


def exact_msf(field: GaussianFieldCascade, mode: str = "bilinear"):  # -> MSFCascade
    """MSF's per-scale models for a Gaussian field, exactly: scale i's denoiser is the true
    posterior mean of its residual r_i given the noisy residual and its input prior p_i
    (the law MSF's scale-i network learns). The field's levels are the scales.

    Residuals and priors are linear in the sample, so (r_i, p_i) is jointly Gaussian; the
    matrices come from running `msf.factorize` / `msf.input_priors` on the identity. With
    two scales the prior determines r_0, so sampling reproduces the field's law exactly;
    with more, p_i is a lossy summary of the scales below and MSF's factorised sampling is
    itself an approximation, which this oracle makes measurable. Dense: keep D small.
    """
    from ..msf import MSFCascade, factorize, input_priors

    sizes = [lv.size for lv in field.levels]
    C, H, W = field.levels[-1].shape
    D = C * H * W
    basis = torch.eye(D, dtype=torch.float64).view(D, C, H, W)
    residuals = factorize(basis, sizes, mode=mode)
    R = [r.reshape(D, -1).T for r in residuals]  # r_i = R_i x
    Q = [None, *(p.reshape(D, -1).T for p in input_priors(residuals, sizes, mode))]  # p_i = Q_i x
    S, mu = field.covariance(-1), field.mean_vector(-1)

    def denoiser(i: int):
        Ri = R[i]
        m0 = Ri @ mu
        Qi = Q[i]
        if Qi is None:
            gain, offset, cov = None, m0, Ri @ S @ Ri.T
        else:
            c_rp, c_pp = Ri @ S @ Qi.T, Qi @ S @ Qi.T
            gain = c_rp @ torch.linalg.pinv(c_pp, hermitian=True, rtol=1e-10)
            offset, cov = m0 - gain @ (Qi @ mu), Ri @ S @ Ri.T - gain @ c_rp.T
        lam, vec = torch.linalg.eigh((cov + cov.T) / 2)
        lam = lam.clamp_min(0)
        shape = residuals[i].shape[1:]

        def denoise(x: Tensor, sigma: Tensor, cond: Tensor | None = None, **extra: Any) -> Tensor:
            b = x.shape[0]
            y = x.reshape(b, -1).to(torch.float64)
            if gain is None:
                m = offset.expand(b, -1)
            elif cond is None:
                raise ValueError(f"scale {i} is conditioned on its input prior: cond is required")
            else:
                m = offset + cond.reshape(b, -1).to(torch.float64) @ gain.T
            s2 = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1).expand(b, 1) ** 2
            coef = ((y - m) @ vec) * (lam / (lam + s2))
            return (m + coef @ vec.T).reshape(b, *shape).to(x.dtype)

        return denoise

    return MSFCascade([denoiser(i) for i in range(len(sizes))], field.levels, C)


class AnalyticBackbone(Backbone):
    """Exact cascades, with nothing to train: the gaussian-field oracle."""

    name = "analytic"

    def models(self) -> Iterable[Any]:
        from ..models import ModelSpec

        def build(device: torch.device, **options: Any) -> GaussianFieldCascade:
            return GaussianFieldCascade(**{"levels": (8, 16, 32), "channels": 3, **options})

        def oracle(cascade: Any) -> Any:
            from ..judges import OracleJudge

            return OracleJudge(cascade)

        yield ModelSpec("gaussian-field", "exact Gaussian random-field oracle, levels 8/16/32, 3 channels (no weights; exact denoisers)",
                        build, default_plan="cifar10-3stage", judge=oracle)


ANALYTIC = AnalyticBackbone()
