"""Seeded splits and the data fingerprint."""

from __future__ import annotations

import numpy as np
import pytest

from detector.data import load_spec
from detector.config import TrainConfig
from detector.data.splits import MIN_SAMPLES, fingerprint, split, split_as
from detector.data.synthetic import bars
from detector.errors import DataError


@pytest.fixture
def samples(tmp_path):
    np.savez(tmp_path / "x.npz", x=bars(400, size=16, seed=1)[:, 0])
    return load_spec(str(tmp_path / "x.npz"))


def test_splits_are_disjoint_cover_the_set_and_repeat_with_the_seed(samples):
    parts = split(samples, 0.1, 0.2, seed=3)
    rows = [set(p.rows.tolist()) for p in (parts.train, parts.val, parts.cal)]
    assert sum(map(len, rows)) == 400 and not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    assert (len(parts.val), len(parts.cal)) == (40, 80)
    again = split(samples, 0.1, 0.2, seed=3)
    assert np.array_equal(again.cal.rows, parts.cal.rows)
    assert not np.array_equal(split(samples, 0.1, 0.2, seed=4).cal.rows, parts.cal.rows)


def test_the_splits_a_bundle_recorded_are_made_again_from_its_config(samples):
    cfg = TrainConfig(val_fraction=0.15, cal_fraction=0.25, seed=7)
    recorded = {"val_fraction": 0.15, "cal_fraction": 0.25, "seed": 7, "epochs": 3}  # as config.json holds it
    parts, again = split(samples, cfg.val_fraction, cfg.cal_fraction, cfg.seed), split_as(samples, recorded)
    for a, b in ((parts.train, again.train), (parts.val, again.val), (parts.cal, again.cal)):
        assert np.array_equal(a.rows, b.rows)


def test_too_few_samples_to_split_is_a_data_error(samples):
    with pytest.raises(DataError, match=f"at least {MIN_SAMPLES}"):
        split(samples.take(np.arange(MIN_SAMPLES - 1)), 0.1, 0.2, seed=0)


def test_the_fingerprint_follows_the_content(samples, tmp_path):
    assert fingerprint(samples) == fingerprint(samples)
    x = bars(400, size=16, seed=1)[:, 0]
    x[0, 0, 0] ^= 1  # one pixel of the first sample (the fingerprint reads every 1/256th sample)
    np.savez(tmp_path / "y.npz", x=x)
    assert fingerprint(load_spec(str(tmp_path / "y.npz"))) != fingerprint(samples)
