"""Small CNN classifiers that judge the shipped models: 32x32 MNIST digits and 64x64 emoji
categories.

Their penultimate features (128-D) define FD-MNIST and FD-emoji, Frechet distances between
generated images and the train split (as Inception features define FID); their logits give
class accuracy (an image generated for label c, classified as c). The shipped weights are
trained by `fit_classifier` on the train splits (bench/mnist_classifier.py,
bench/emoji_judge.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, TypeVar

import torch
from torch import Tensor, nn

FEATURES = 128
CLASSIFIER_FILE = "mnist-classifier.safetensors"
EMOJI_CLASSIFIER_FILE = "emoji-classifier.safetensors"


class DigitClassifier(nn.Module):
    """(conv, pool) x2, then a 128-unit feature layer and the class logits.
    Input [B, 1, 32, 32] in [-1, 1]."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 8 * 8, FEATURES), nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURES, classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations [B, 128]: the space FD-MNIST is measured in."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 32, 32):
            raise ValueError(f"the digit classifier takes images [B, 1, 32, 32], got {tuple(x.shape)}")
        return self.body(x.to(torch.float32).clamp(-1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))


class EmojiClassifier(nn.Module):
    """(conv, batch norm, ReLU, pool) at 64, 32, 16 and 8 pixels, a global average, a 128-unit
    feature layer and the category logits. Input [B, 3, 64, 64] in [-1, 1]."""

    def __init__(self, classes: int = 9) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((3, 32), (32, 64), (64, 128), (128, 128)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, FEATURES), nn.ReLU())
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURES, classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations [B, 128]: the space FD-emoji is measured in."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, 64, 64):
            raise ValueError(f"the emoji classifier takes images [B, 3, 64, 64], got {tuple(x.shape)}")
        return self.body(x.to(torch.float32).clamp(-1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))


def _shift(images: Tensor, generator: torch.Generator, max_shift: int = 2, fill: float = -1.0) -> Tensor:
    """Random translations of up to `max_shift` pixels, filling with the background `fill`."""
    b = images.shape[0]
    padded = nn.functional.pad(images, (max_shift,) * 4, value=fill)
    dx, dy = (torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)).unbind(0)
    size = images.shape[-1]
    return torch.stack([padded[i, :, dy[i]:dy[i] + size, dx[i]:dx[i] + size] for i in range(b)])


_M = TypeVar("_M", bound=nn.Module)


def fit_classifier(
    make: Callable[[], _M], images: Tensor, labels: Tensor, *, epochs: int, batch: int = 128, lr: float = 2e-3,
    seed: int = 0, max_shift: int = 2, fill: float = -1.0, flip: bool = False, balance: bool = False,
) -> tuple[_M, float]:
    """Train `make()` (built under `seed`) with Adam and a one-cycle schedule on random
    translations (and, with `flip`, random mirror images); with `balance` each class weighs
    the same in the loss however many images it has. Returns the model in eval mode and the
    seconds it took. The caller's RNG is left as it was."""
    weight = None
    if balance:
        counts = torch.bincount(labels).double()
        weight = (counts.sum() / (counts.clamp_min(1) * len(counts))).float()
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * -(-len(labels) // batch))
        started = time.perf_counter()
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(labels), generator=generator)
            for start in range(0, len(order), batch):
                rows = order[start:start + batch]
                x = _shift(images[rows], generator, max_shift, fill)
                if flip:
                    mirror = torch.rand(len(rows), generator=generator) < 0.5
                    x = torch.where(mirror.view(-1, 1, 1, 1), x.flip(-1), x)
                loss = nn.functional.cross_entropy(model(x), labels[rows], weight=weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
    return model.eval(), time.perf_counter() - started


def train_classifier(epochs: int = 20, batch: int = 128, lr: float = 2e-3, seed: int = 0) -> tuple[DigitClassifier, dict]:
    """Train on the bundled train split (random shifts); report held-out accuracy and time."""
    from .datasets.mnist import load_mnist

    images, labels = load_mnist("train")
    model, seconds = fit_classifier(DigitClassifier, images, labels, epochs=epochs, batch=batch, lr=lr, seed=seed)
    report = {"heldout_accuracy": heldout_accuracy(model), "seconds": seconds, "epochs": epochs}
    return model, report


@torch.no_grad()
def heldout_accuracy(model: DigitClassifier) -> float:
    from .datasets.mnist import load_mnist

    images, labels = load_mnist("heldout")
    return float((model(images).argmax(1) == labels).float().mean())


def save_classifier(model: nn.Module, path: str | Path) -> None:
    from safetensors.torch import save_file

    from .outputs import atomic_path

    with atomic_path(Path(path)) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))


def load_classifier(path: str | Path | None = None, model: nn.Module | None = None) -> nn.Module:
    """`model` (default: a DigitClassifier) with the weights in `path` (default: the digit
    classifier shipped with the package), in eval mode."""
    from safetensors.torch import load_file

    from .weights import weight_path

    file = Path(path) if path is not None else weight_path(CLASSIFIER_FILE)
    model = model if model is not None else DigitClassifier()
    model.load_state_dict({k: v.float() for k, v in load_file(str(file)).items()}, strict=True)
    return model.eval()
