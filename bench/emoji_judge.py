"""Train the emoji classifier and build the reference that `EmojiJudge` (FD-emoji, KID, class
accuracy, Laplacian-pyramid SWD) scores samples against, write the shipped files, and show
what the judge says of real held-out images, blurred 2x and noised.

    lowdiff-sched data emoji   # once: data/emoji/emoji-{train,heldout}.zip
    python bench/emoji_judge.py [--epochs 12] [--out-dir lowdiff_sched/weights]

Prints the classifier's held-out accuracy (plain, and with every class weighted alike), the
training time, and the judge's metrics for: a class-balanced draw of held-out images, the
same draw blurred 2x (downsampled to 32x32 and upsampled back bilinearly), and noised
(Gaussian, std 0.05 and 0.1 in [-1, 1] units).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lowdiff_sched.classifier import EMOJI_CLASSIFIER_FILE, EmojiClassifier, fit_classifier, save_classifier
from lowdiff_sched.datasets import load_emoji
from lowdiff_sched.judges import EMOJI_REFERENCE_FILE, EmojiJudge, EmojiReference, balanced_rows, score
from lowdiff_sched.weights import HERE


@torch.no_grad()
def accuracies(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    hit = torch.cat([model(chunk).argmax(1) for chunk in images.split(500)]) == labels
    per_class = [float(hit[labels == c].float().mean()) for c in range(int(labels.max()) + 1)]
    return {"heldout_accuracy": float(hit.float().mean()), "heldout_balanced_accuracy": sum(per_class) / len(per_class)}


def blur2x(images: torch.Tensor) -> torch.Tensor:
    low = torch.nn.functional.interpolate(images, scale_factor=0.5, mode="bilinear", antialias=True)
    return torch.nn.functional.interpolate(low, scale_factor=2, mode="bilinear")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=250, help="train images per class in the reference")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args()

    images, labels = load_emoji("train")
    held, held_labels = load_emoji("heldout")
    model, seconds = fit_classifier(EmojiClassifier, images, labels, epochs=args.epochs, seed=args.seed,
                                    max_shift=4, fill=1.0, flip=True, balance=True)
    report: dict = {"epochs": args.epochs, "seconds": round(seconds, 1), **accuracies(model, held, held_labels)}
    reference = EmojiReference.of(model, images[balanced_rows(labels, args.per_class, args.seed)], seed=args.seed)
    save_classifier(model, args.out_dir / EMOJI_CLASSIFIER_FILE)
    reference.save(args.out_dir / EMOJI_REFERENCE_FILE)

    judge = EmojiJudge(model, EmojiReference.load(args.out_dir / EMOJI_REFERENCE_FILE))
    rows = balanced_rows(held_labels, 100, seed=args.seed + 1)
    real, real_labels = held[rows], held_labels[rows]
    generator = torch.Generator().manual_seed(args.seed)
    variants = {
        "heldout": real,
        "heldout blurred 2x": blur2x(real),
        "heldout + noise 0.05": real + 0.05 * torch.randn(real.shape, generator=generator),
        "heldout + noise 0.1": real + 0.1 * torch.randn(real.shape, generator=generator),
    }
    report["judge"] = {name: {k: round(v.value, 4) for k, v in score(judge, x.clamp(-1, 1), real_labels, reps=0).items()}
                       for name, x in variants.items()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
