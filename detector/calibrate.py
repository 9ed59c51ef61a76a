"""`detector calibrate`: refit the novelty standardisation and thresholds of a bundle, in place."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detector.data import load_spec
from detector.errors import DataError
from detector.model.bundle import Bundle, load_bundle, save_bundle
from detector.training.pipeline import calibrate_bundle, fingerprint, split

MIN_CALIBRATION = 20


def recalibrate(path: Path, spec: str, target_fpr: float, device: str = "auto",
                progress: bool = True) -> tuple[Bundle, list[str]]:
    """Calibrate on SPEC. If SPEC is the bundle's own training data, only its held-out splits are
    used (never samples the model was fitted on); otherwise SPEC is halved, one half to
    standardise the novelty components, the other for thresholds."""
    bundle = load_bundle(path)
    samples = load_spec(spec)
    if tuple(samples.sample_shape) != tuple(bundle.config["data"]["sample_shape"]):
        raise DataError(f"{spec}: samples of shape {list(samples.sample_shape)} do not fit a model trained on "
                        f"{bundle.config['data']['sample_shape']}")
    if len(samples) < MIN_CALIBRATION:
        raise DataError(f"{spec}: {len(samples)} samples; calibration needs at least {MIN_CALIBRATION}")
    original = bundle.calibration.get("calibration_split")
    if original and fingerprint(samples) == bundle.config["data"].get("fingerprint"):
        parts = split(samples, original["val_fraction"], original["cal_fraction"], original["seed"])
        standardise, calibrate = parts.val, parts.cal
    else:
        original = None
        perm = np.random.default_rng(0).permutation(len(samples))
        half = len(samples) // 2
        standardise, calibrate = samples.take(np.sort(perm[:half])), samples.take(np.sort(perm[half:]))
    caught = calibrate_bundle(bundle, standardise, calibrate, target_fpr, device, 1024, progress)
    if original:
        bundle.calibration["calibration_split"] = original
    bundle.calibration["calibration_data"] = spec
    save_bundle(bundle, path)
    return bundle, caught
