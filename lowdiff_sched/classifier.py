"""A small CNN that classifies 32x32 MNIST digits: the judge of the MNIST models.

Its penultimate features (128-D) define FD-MNIST, a Frechet distance between generated
digits and the train split (as Inception features define FID); its logits give class
accuracy (a digit generated for label c, classified as c). The shipped weights are trained
by `train_classifier` on the bundled train split (bench/mnist_classifier.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor, nn

FEATURES = 128
CLASSIFIER_FILE = "mnist-classifier.safetensors"


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


def _shift(images: Tensor, generator: torch.Generator, max_shift: int = 2) -> Tensor:
    """Random translations of up to `max_shift` pixels, filling with the background (-1)."""
    b = images.shape[0]
    padded = nn.functional.pad(images, (max_shift,) * 4, value=-1.0)
    dx, dy = (torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)).unbind(0)
    size = images.shape[-1]
    return torch.stack([padded[i, :, dy[i]:dy[i] + size, dx[i]:dx[i] + size] for i in range(b)])


def train_classifier(epochs: int = 20, batch: int = 128, lr: float = 2e-3, seed: int = 0) -> tuple[DigitClassifier, dict]:
    """Train on the bundled train split (random shifts); report held-out accuracy and time."""
    from .datasets.mnist import load_mnist

    images, labels = load_mnist("train")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * -(-len(labels) // batch))
        started = time.perf_counter()
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(labels), generator=generator)
            for start in range(0, len(order), batch):
                rows = order[start:start + batch]
                loss = nn.functional.cross_entropy(model(_shift(images[rows], generator)), labels[rows])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
    model.eval()
    report = {"heldout_accuracy": heldout_accuracy(model), "seconds": time.perf_counter() - started, "epochs": epochs}
    return model, report


@torch.no_grad()
def heldout_accuracy(model: DigitClassifier) -> float:
    from .datasets.mnist import load_mnist

    images, labels = load_mnist("heldout")
    return float((model(images).argmax(1) == labels).float().mean())


def save_classifier(model: DigitClassifier, path: str | Path) -> None:
    from safetensors.torch import save_file

    from .outputs import atomic_path

    with atomic_path(Path(path)) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))


def load_classifier(path: str | Path | None = None) -> DigitClassifier:
    """The classifier from `path` (default: the one shipped with the package), in eval mode."""
    from safetensors.torch import load_file

    from .weights import weight_path

    file = Path(path) if path is not None else weight_path(CLASSIFIER_FILE)
    model = DigitClassifier()
    model.load_state_dict({k: v.float() for k, v in load_file(str(file)).items()}, strict=True)
    return model.eval()
