"""Calibrating a bundle in place: what it refuses, and which samples it uses."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from detector.calibrate import recalibrate
from detector.data.synthetic import bars
from detector.errors import DataError
from detector.model.bundle import load_bundle


@pytest.fixture
def bundle(bundle_path, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_path, copy)
    return copy


def test_data_that_does_not_fit_or_is_too_small_is_refused_and_the_bundle_is_untouched(bundle, tmp_path):
    before = (bundle / "manifest.json").read_bytes()
    np.savez(tmp_path / "small.npz", x=bars(10, size=16)[:, 0])
    np.savez(tmp_path / "other.npz", x=bars(100, size=12)[:, 0])
    with pytest.raises(DataError, match="calibration needs at least 20"):
        recalibrate(bundle, str(tmp_path / "small.npz"), 0.01, progress=False)
    with pytest.raises(DataError, match=r"shape \[1, 12, 12\] do not fit a model trained on \[1, 16, 16\]"):
        recalibrate(bundle, str(tmp_path / "other.npz"), 0.01, progress=False)
    assert (bundle / "manifest.json").read_bytes() == before


def test_the_training_data_is_recalibrated_on_its_held_out_splits_only(bundle, data_dir):
    original = load_bundle(bundle)
    updated, _ = recalibrate(bundle, str(data_dir / "normal.npz"), 0.05, progress=False)
    # Recognised by its fingerprint: the same held-out splits as at training, not halves of the whole set.
    assert updated.calibration["calibration_split"] == original.calibration["calibration_split"]
    assert updated.calibration["n_calibrate"] == original.calibration["n_calibrate"]
    assert updated.calibration["target_fpr"] == 0.05
    reloaded = load_bundle(bundle)
    assert reloaded.calibration["target_fpr"] == 0.05 and reloaded.calibration["calibration_data"].endswith("normal.npz")


def test_other_data_is_halved_between_standardising_and_thresholds(bundle, data_dir):
    updated, _ = recalibrate(bundle, str(data_dir / "normal_test.npz"), 0.01, progress=False)
    assert "calibration_split" not in updated.calibration
    assert updated.calibration["n_standardise"] == updated.calibration["n_calibrate"] == 100


def test_the_training_data_after_other_data_still_gets_its_held_out_splits(bundle, data_dir):
    original = load_bundle(bundle)
    recalibrate(bundle, str(data_dir / "normal_test.npz"), 0.01, progress=False)  # drops the recorded split
    updated, _ = recalibrate(bundle, str(data_dir / "normal.npz"), 0.01, progress=False)
    # The split is made again from the training settings, never halves of a set the model was fitted on.
    assert updated.calibration["calibration_split"] == original.calibration["calibration_split"]
    assert updated.calibration["n_calibrate"] == original.calibration["n_calibrate"]
    assert updated.calibration["n_standardise"] == original.calibration["n_standardise"]
