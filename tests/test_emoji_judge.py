"""The emoji judge: Laplacian-pyramid SWD, the kernel distance, and the shipped classifier and
reference on 72 real held-out emoji (tests/fixtures, Noto and Twemoji artwork; see its
ATTRIBUTION.txt)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowdiff_sched.judges import SWD_BANDS, EmojiJudge, EmojiReference, balanced_rows, paired_difference, score
from lowdiff_sched.laplacian_swd import SWDReference, laplacian_pyramid, patch_descriptors, pyr_up
from lowdiff_sched.metrics import kernel_distance
from lowdiff_sched.training import ImageDataset

FIXTURE = Path(__file__).parent / "fixtures" / "emoji-heldout-72.zip"


@pytest.fixture(scope="module")
def real() -> tuple[torch.Tensor, torch.Tensor]:
    data = ImageDataset(FIXTURE)
    images, labels = zip(*(data[i] for i in range(len(data))))
    return torch.stack(images), torch.tensor(labels)


@pytest.fixture(scope="module")
def judge() -> EmojiJudge:
    return EmojiJudge()


@settings(max_examples=25, deadline=None)
@given(bands=st.integers(1, 4), channels=st.integers(1, 3), scale=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_laplacian_pyramid_rebuilds_the_image(bands: int, channels: int, scale: int, seed: int) -> None:
    size = 8 * scale * 2 ** (bands - 1)
    x = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    pyramid = laplacian_pyramid(x, bands)
    assert [p.shape[-1] for p in pyramid] == [size >> k for k in range(bands)]
    rebuilt = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        rebuilt = detail + pyr_up(rebuilt)
    assert torch.allclose(rebuilt, x, atol=1e-12)


def test_a_constant_image_has_no_detail() -> None:
    pyramid = laplacian_pyramid(torch.full((1, 3, 32, 32), 0.3), 3)
    assert all(float(p.abs().max()) < 1e-6 for p in pyramid[:-1])
    assert torch.allclose(pyramid[-1], torch.full((1, 3, 8, 8), 0.3))


def test_swd_of_a_shifted_gaussian_matches_the_closed_form() -> None:
    """For N(0, I) against N(delta, I) the 1-D W1 along a unit direction u is |u.delta|, so
    the sliced distance is the mean of |u.delta| over the reference's directions (and close
    to |delta| sqrt(2 / (pi d)) for many random directions in d dimensions)."""
    g = torch.Generator().manual_seed(0)
    d, n = 147, 20_000
    reference = SWDReference.of([torch.randn(n, d, generator=g, dtype=torch.float64)], directions=256, points=128)
    delta = torch.full((d,), 0.2, dtype=torch.float64)
    same, shifted = (reference.distances([torch.randn(n, d, generator=g, dtype=torch.float64) + shift]) for shift in (0, delta))
    expected = float((reference.directions.T @ (delta / reference.std[0])).abs().mean()) * 1e3
    assert shifted[0] == pytest.approx(expected, rel=0.03)
    assert expected == pytest.approx(float(delta.norm()) * math.sqrt(2 / (math.pi * d)) * 1e3, rel=0.15)
    assert same[0] < 0.15 * expected


def test_patch_places_depend_on_the_seed_and_position_only() -> None:
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    a = patch_descriptors(x, 3, 5, seed=7)
    b = patch_descriptors(x, 3, 5, seed=7)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert [tuple(t.shape) for t in a] == [(4, 5, 147)] * 3
    with pytest.raises(ValueError, match="smaller than the 7x7 patches"):
        patch_descriptors(torch.zeros(1, 1, 16, 16), 3, 1)


def test_kernel_distance_equals_torch_fidelity_kid_on_one_full_subset() -> None:
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric

    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 16, generator=g, dtype=torch.float64)
    b = torch.randn(200, 16, generator=g, dtype=torch.float64) * 1.3 + 0.2
    ours = kernel_distance(a, b)
    # torch-fidelity draws equal-size subsets; with the size of the smaller set and one subset the
    # larger set is subsampled, so compare on equal counts
    theirs = kid_features_to_metric(a[:200], b, kid_subsets=1, kid_subset_size=200, verbose=False)[KEY_METRIC_KID_MEAN]
    assert kernel_distance(a[:200], b) == pytest.approx(theirs, rel=1e-9)
    assert ours > 0.01 and abs(kernel_distance(a[:150], a[150:])) < 0.3 * ours


def test_balanced_rows_draw_every_class_alike() -> None:
    labels = torch.tensor([0] * 50 + [1] * 3 + [2] * 10)
    rows = balanced_rows(labels, 20, seed=3)
    assert torch.bincount(labels[rows]).tolist() == [20, 20, 20]
    assert torch.equal(rows, balanced_rows(labels, 20, seed=3))
    with pytest.raises(ValueError, match="class 1 has no images"):
        balanced_rows(torch.tensor([0, 2]), 4)


def _blur2x(x: torch.Tensor) -> torch.Tensor:
    low = torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True)
    return torch.nn.functional.interpolate(low, scale_factor=2, mode="bilinear")


def test_shipped_judge_flags_blurred_and_noised_real_emoji(real, judge: EmojiJudge) -> None:
    images, labels = real
    noised = (images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    clean, blurred, noisy = (judge.metrics(judge.features(x), labels) for x in (images, _blur2x(images), noised))
    # the finest band sees both defects several times over the real images' own distance
    assert blurred["swd64"] > 5 * clean["swd64"]
    assert noisy["swd64"] > 3 * clean["swd64"]
    assert blurred["swd"] > clean["swd"] and noisy["swd"] > clean["swd"]
    # the classifier knows real emoji: well above the 1/9 of chance on held-out images
    assert clean["accuracy"] > 0.5
    assert set(clean) == set(EmojiJudge.lower_is_better)


def test_paired_difference_puts_blur_above_zero(real, judge: EmojiJudge) -> None:
    images, labels = real
    diff = paired_difference(judge, _blur2x(images), images, labels, reps=30)
    assert diff["swd64"].lo > 0
    assert diff["fd"].value > diff["fd"].lo  # an interval, not a point


def test_reference_round_trips_through_its_file(real, tmp_path: Path, judge: EmojiJudge) -> None:
    images, _ = real
    reference = EmojiReference.of(judge.classifier, images, kid_count=50)
    reference.save(tmp_path / "ref.safetensors")
    loaded = EmojiReference.load(tmp_path / "ref.safetensors")
    assert torch.allclose(loaded.mu, reference.mu.float().double())
    assert torch.allclose(loaded.swd.quantiles, reference.swd.quantiles.float().double())
    features = judge.features(images[:40])
    a = EmojiJudge(judge.classifier, reference).metrics(features, None)
    b = EmojiJudge(judge.classifier, loaded).metrics(features, None)
    assert a.keys() == b.keys() and all(np.isclose(a[k], b[k], rtol=1e-4) for k in a)
    assert len(SWD_BANDS) == reference.swd.quantiles.shape[0]


def test_score_gives_every_metric_an_interval(real, judge: EmojiJudge) -> None:
    images, labels = real
    scores = score(judge, images, labels, reps=20)
    assert all(s.lo <= s.value <= s.hi or k == "accuracy" for k, s in scores.items())
    with pytest.raises(ValueError, match=r"emoji classifier takes images \[B, 3, 64, 64\]"):
        judge.features(torch.zeros(2, 3, 32, 32))
