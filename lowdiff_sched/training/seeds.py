"""Counter-based seeds: every random stream of a run is a pure function of
(seed, stream, step[, rank]), so a resumed run replays exactly what an uninterrupted one
would have drawn, whatever the number of processes."""

from __future__ import annotations

import numpy as np

# Stream ids: one per independent use of randomness.
DATA_ORDER = 1  # the permutation of the dataset in each epoch
LOSS_NOISE = 2  # sigma and eps draws of the loss (the same on every rank: global batch)
MODEL_RNG = 3  # torch's global RNG, for whatever the model draws itself (dropout ...)
RETROFIT = 4  # the layers a retrofit adds to the starting network (TrainRecipe.build)


def derive_seed(seed: int, stream: int, *counters: int) -> int:
    """A 63-bit seed for `stream` at `counters`, statistically independent of every other."""
    words = np.random.SeedSequence([int(seed), int(stream), *map(int, counters)]).generate_state(2, np.uint32)
    return (int(words[0]) << 31 | int(words[1]) >> 1) & ((1 << 63) - 1)
