"""FID, KID, Inception Score and precision/recall for any model, the way the field reports them.

The network and the metric definitions are torch-fidelity's: its InceptionV3 is the
TensorFlow FID graph ported bit for bit (the one EDM's fid.py and the ADM evaluator use),
read from a local weights file only; nothing is ever downloaded. Reference statistics are
an EDM-style `.npz` (`mu`, `sigma`), written by `lowdiff-sched ref-stats` with the image
size and, if asked, the features KID and precision/recall need.

The Frechet distance itself is `metrics.frechet_distance`, the package's one implementation
(tested against torch-fidelity's on the same features).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .metrics import frechet_distance, gaussian_stats

WEIGHTS_ENV = "LOWDIFF_INCEPTION_WEIGHTS"
WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"
FEATURES = 2048  # the pool3 features FID, KID and precision/recall use
PRC_NEIGHBOURS = 3  # precision/recall's k-nearest-neighbour radius (torch-fidelity's default)


def _source(path: str | Path | None) -> str:
    """How the user named the weights, for errors: the option, or the environment variable."""
    return "--inception-weights" if path is not None else f"${WEIGHTS_ENV}"


def weights_path(path: str | Path | None) -> Path:
    """The Inception weights file: `path`, else $LOWDIFF_INCEPTION_WEIGHTS; a one-line error
    saying where to get it when neither names a file (never a download)."""
    given = path if path is not None else os.environ.get(WEIGHTS_ENV)
    if not given:
        raise ValueError(
            f"--inception-weights: no Inception weights given (nor ${WEIGHTS_ENV}); nothing is downloaded: "
            f"fetch torch-fidelity's {WEIGHTS_FILE} from {WEIGHTS_URL} and pass its path"
        )
    found = Path(given)
    if not found.is_file():
        raise ValueError(f"{_source(path)} {str(found)!r}: no such file (get {WEIGHTS_FILE} from {WEIGHTS_URL})")
    return found


def load_inception(path: str | Path | None, device: str | torch.device = "cpu") -> nn.Module:
    """torch-fidelity's InceptionV3 with the weights at `path` (see `weights_path`), returning
    pool3 features and unbiased logits. The file is read here, with weights_only, and
    torch-fidelity (which unpickles without that guard) never opens it: it is handed a file
    this function writes from the tensors it read."""
    import tempfile

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from .errors import first_line
    from .tensorfiles import load_tensor_file

    found, source = weights_path(path), _source(path)
    state = load_tensor_file(found, source)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ValueError(f"{source} {str(found)!r}: not a state dict of tensors")
    with tempfile.TemporaryDirectory() as folder:
        ours = Path(folder) / "inception-state.pt"
        torch.save({k: v.contiguous() for k, v in state.items()}, ours)
        try:
            net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(ours))
        except RuntimeError as err:  # load_state_dict: missing, unexpected or misshapen weights
            raise ValueError(f"{source} {str(found)!r} does not fit InceptionV3: {first_line(err)}") from None
    return net.to(device)


@dataclass(frozen=True)
class ReferenceStats:
    """A dataset's Inception statistics: mean and covariance of the pool3 features, and the
    features themselves when kept (KID and precision/recall need them). `size` is the (H, W)
    of the images they came from, when known."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None = None
    size: tuple[int, int] | None = None

    def save(self, path: str | Path) -> None:
        from .outputs import save_npz

        arrays: dict[str, np.ndarray] = {"mu": self.mu, "sigma": self.sigma}
        if self.features is not None:
            arrays["features"] = self.features
        if self.size is not None:
            arrays["size"] = np.asarray(self.size, dtype=np.int64)
        save_npz(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "ReferenceStats":
        """Read an EDM-style `.npz`; anything else is a one-line error naming the file."""
        where = f"--ref {str(path)!r}"
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"{where} is not a readable .npz file: {err}") from None
        if not isinstance(data, np.lib.npyio.NpzFile):  # a .npy file: one bare array
            raise ValueError(f"{where} holds one bare array (a .npy file), not the .npz of mu and sigma that ref-stats writes")
        try:
            with data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"{where} is not a readable .npz file: {err}") from None
        missing = [k for k in ("mu", "sigma") if k not in arrays]
        if missing:
            raise ValueError(f"{where} lacks {' and '.join(missing)} (an EDM-style reference holds mu and sigma)")
        for key, array in arrays.items():
            if key in ("mu", "sigma", "features", "size") and array.dtype.kind not in "iuf":
                raise ValueError(f"{where}: {key} must hold real numbers, got dtype {array.dtype}")
        mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
        if mu.shape != (FEATURES,) or sigma.shape != (FEATURES, FEATURES):
            raise ValueError(f"{where}: mu {mu.shape} and sigma {sigma.shape} are not Inception pool3 statistics ({FEATURES} features)")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise ValueError(f"{where}: mu or sigma holds NaN or inf")
        scale = float(np.abs(sigma).max()) or 1.0
        if float(np.abs(sigma - sigma.T).max()) > 1e-6 * scale:
            raise ValueError(f"{where}: sigma is not symmetric, so it is no covariance")
        lowest = float(np.linalg.eigvalsh((sigma + sigma.T) / 2)[0])
        if lowest < -1e-6 * scale:
            raise ValueError(f"{where}: sigma is not positive semi-definite (eigenvalue {lowest:.3g}), so it is no covariance")
        features = arrays.get("features")
        if features is not None:
            if features.ndim != 2 or features.shape[1] != FEATURES or features.shape[0] < 2:
                raise ValueError(f"{where}: features must be [N, {FEATURES}] with N >= 2, got {features.shape}")
            if not np.isfinite(features).all():
                raise ValueError(f"{where}: features hold NaN or inf")
        size = None
        if "size" in arrays:
            raw = arrays["size"]
            if raw.shape != (2,) or not (raw > 0).all() or not np.equal(np.mod(raw, 1), 0).all():
                raise ValueError(f"{where}: size must be (H, W), two positive ints, got {raw.tolist()!r}")
            size = (int(raw[0]), int(raw[1]))
        return cls(mu, sigma, features, size)


def to_inception_input(images: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """[B, C, H, W] floats in `value_range` -> [B, 3, H, W] uint8, quantised as the PNGs are
    written (gray images repeated to RGB)."""
    from .outputs import to_uint8

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"Inception metrics need [B, 1 or 3, H, W] images, got shape {tuple(images.shape)}")
    pixels = torch.from_numpy(to_uint8(images, value_range)).permute(0, 3, 1, 2)
    return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels


@torch.no_grad()
def inception_features(net: nn.Module, images: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """[B, 2048 + 1008] float32: pool3 features then unbiased logits of `images`."""
    device = next(net.parameters()).device
    pool, logits = net(to_inception_input(images, value_range).contiguous().to(device))
    return torch.cat([pool, logits], dim=1).float().cpu()


class InceptionJudge:
    """The field's metrics against a reference (`ReferenceStats`): FID always, the Inception
    Score of the samples, and KID and precision/recall when the reference kept its features.
    A `judges.Judge`, so `evaluate` and the plan search can use it like the built-in ones."""

    primary = "fid"

    def __init__(self, reference: ReferenceStats, net: nn.Module, value_range: tuple[float, float] = (-1.0, 1.0),
                 kid_subsets: int = 100, kid_subset_size: int = 1000) -> None:
        self.reference, self.net, self.value_range = reference, net, value_range
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.lower_is_better = {"fid": True, "is": False}
        if reference.features is not None:
            self.lower_is_better.update({"kid": True, "precision": False, "recall": False})

    def check_count(self, n: int) -> None:
        """Refuse a sample count the metrics cannot use: precision/recall compare each sample
        with its 3 nearest neighbours, so both sets need at least 4."""
        need = PRC_NEIGHBOURS + 1
        if self.reference.features is not None and n < need:
            raise ValueError(f"--n: precision/recall need at least {need} samples, got {n}")
        if self.reference.features is not None and len(self.reference.features) < need:
            raise ValueError(f"--ref: precision/recall need at least {need} reference features, the file has {len(self.reference.features)}")

    def check_size(self, size: tuple[int, int]) -> None:
        """Refuse samples of another size than the reference's images (when it is known)."""
        if self.reference.size is not None and tuple(size) != self.reference.size:
            h, w = self.reference.size
            raise ValueError(f"--ref: the reference statistics are of {h}x{w} images; the model makes {size[0]}x{size[1]}")

    def features(self, samples: Tensor) -> Tensor:
        self.check_size((samples.shape[-2], samples.shape[-1]))
        return inception_features(self.net, samples, self.value_range)

    def metrics(self, features: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, isc_features_to_metric

        d = len(self.reference.mu)  # FEATURES for Inception's pool3
        pool, logits = features[:, :d], features[:, d:]
        out = {"fid": frechet_distance(pool, (torch.from_numpy(self.reference.mu), torch.from_numpy(self.reference.sigma)))}
        out["is"] = isc_features_to_metric(logits, splits=min(10, len(logits)))[KEY_METRIC_ISC_MEAN]
        if self.reference.features is not None:
            out.update(self._against_features(pool, torch.from_numpy(self.reference.features).float()))
        return out

    def _against_features(self, pool: Tensor, real: Tensor) -> dict[str, float]:
        from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric
        from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

        quiet: dict[str, Any] = {"verbose": False}
        subset = min(self.kid_subset_size, len(pool), len(real))
        kid = kid_features_to_metric(pool, real, kid_subsets=self.kid_subsets, kid_subset_size=subset, **quiet)
        prc = prc_features_to_metric(pool, real, prc_neighborhood=PRC_NEIGHBOURS, **quiet)
        return {"kid": kid[KEY_METRIC_KID_MEAN], "precision": prc[KEY_METRIC_PRECISION], "recall": prc[KEY_METRIC_RECALL]}


@torch.no_grad()
def reference_stats(net: nn.Module, images: Any, *, keep_features: bool = False, progress: bool = False) -> ReferenceStats:
    """Inception statistics of the uint8-quantised images an iterable of [B, C, H, W] batches
    in [-1, 1] yields (e.g. a DataLoader over an EDM dataset); features are kept only if asked."""
    from tqdm.auto import tqdm

    feats, size = [], None
    for batch in tqdm(images, disable=not progress, unit="batch", desc="Inception features"):
        size = size or tuple(batch.shape[-2:])
        if tuple(batch.shape[-2:]) != size:
            raise ValueError(f"the dataset mixes image sizes: {size} and {tuple(batch.shape[-2:])}")
        feats.append(inception_features(net, batch)[:, :FEATURES])
    if not feats:
        raise ValueError("the dataset holds no images")
    pool = torch.cat(feats)
    mu, sigma = gaussian_stats(pool)
    kept = pool.float().numpy() if keep_features else None
    return ReferenceStats(mu.numpy(), sigma.numpy(), kept, size)
