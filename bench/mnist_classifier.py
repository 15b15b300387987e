"""Train the digit classifier that FD-MNIST and class accuracy use, and write the shipped weights.

    python bench/mnist_classifier.py [--epochs 20] [--out lowdiff_sched/weights/mnist-classifier.safetensors]

Prints the held-out accuracy (the 500 held-out digits) and the training time.
"""

from __future__ import annotations

import argparse
import json

from lowdiff_sched.classifier import CLASSIFIER_FILE, save_classifier, train_classifier
from lowdiff_sched.weights import HERE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / CLASSIFIER_FILE))
    args = parser.parse_args()
    model, report = train_classifier(epochs=args.epochs, seed=args.seed)
    save_classifier(model, args.out)
    print(json.dumps({**report, "out": args.out}, indent=2))


if __name__ == "__main__":
    main()
