"""The Scorer's one check of samples, and its one scoring entry point for checked and unchecked batches."""

from __future__ import annotations

import numpy as np
import pytest

from detector.data.synthetic import bars
from detector.errors import InvalidInput
from detector.scoring.scorer import CheckedBatch, Scorer
from tests.conftest import NOVELTY_TOLERANCE


@pytest.fixture(scope="module")
def scorer(bundle_path):
    return Scorer.from_path(bundle_path, device="cpu")


@pytest.mark.parametrize("batch, message", [
    (np.zeros((2, 1, 15, 16), np.uint8), r"shape \[N, 1, 16, 16\], got \[2, 1, 15, 16\]"),
    (np.zeros((0, 1, 16, 16), np.uint8), "empty batch"),
    (np.full((1, 1, 16, 16), np.nan, np.float32), "NaN or Inf"),
    (np.full((1, 1, 16, 16), 2.0, np.float32), "within 0..1"),
])
def test_the_check_says_what_is_wrong(scorer, batch, message):
    with pytest.raises(InvalidInput, match=message):
        scorer.check(batch)
    with pytest.raises(InvalidInput, match=message):  # score checks what it was not handed checked
        scorer.score(batch)


def test_only_the_check_makes_a_checked_batch():
    with pytest.raises(TypeError, match="comes from Scorer.check"):
        CheckedBatch(np.zeros((1, 1, 16, 16), np.uint8), object())


def test_checked_parts_joined_or_sliced_score_as_the_whole(scorer):
    x = bars(7, size=16, seed=3)
    parts = [scorer.check(x[:3]), scorer.check(x[3:])]
    joined = CheckedBatch.join(parts)
    assert len(joined) == 7 and CheckedBatch.join(parts[:1]) is parts[0]
    whole = scorer.score(x).scores["novelty"]
    np.testing.assert_allclose(scorer.score(joined).scores["novelty"], whole, **NOVELTY_TOLERANCE)
    np.testing.assert_allclose(scorer.score(joined[2:5]).scores["novelty"], whole[2:5], **NOVELTY_TOLERANCE)


def test_staged_batches_and_their_slices_score_as_unstaged(scorer):
    """The server stages a batch (its copy to the device) before scoring it; on the CPU a staged batch is the
    model-space tensor, and a staged batch split in halves (out of device memory) scores as its rows."""
    x = bars(9, size=16, seed=4)
    whole = scorer.score(x).scores["novelty"]
    staged = scorer.stage(x)
    assert len(staged) == 9 and staged.tensor().shape == (9, 1, 16, 16)
    np.testing.assert_allclose(staged.tensor().numpy(), x.astype(np.float32) / 255, atol=0)
    np.testing.assert_array_equal(scorer.score(staged).scores["novelty"], whole)
    halves = np.concatenate([scorer.score(staged[:4]).scores["novelty"], scorer.score(staged[4:]).scores["novelty"]])
    np.testing.assert_allclose(halves, whole, **NOVELTY_TOLERANCE)
    with pytest.raises(InvalidInput, match="NaN"):  # staging checks what it was not handed checked
        scorer.stage(np.full((1, 1, 16, 16), np.nan, np.float32))
