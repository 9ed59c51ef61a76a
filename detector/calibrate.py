"""Calibrating a bundle: the novelty fusion standardised on one held-out split, thresholds and p-values fitted on
another, the anomaly maps' scale. `detector train` calls it on its own splits; `detector calibrate` refits a bundle
in place. The statistics themselves live in scoring/calibration.py and scoring/novelty.py."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from detector.config import ScoreConfig
from detector.data import load_spec
from detector.data.sampleset import SampleSet
from detector.data.splits import fingerprint, split_as, split_record
from detector.errors import DataError
from detector.model.bundle import Bundle, load_bundle, save_bundle
from detector.model.vae import transform_chance_nats
from detector.progress import progress as progress_bar
from detector.scoring.calibration import CalibrationWarning, calibrate_score, calibration_to_bundle
from detector.scoring.maps import MapScale, fitted_smoothing, raw_maps
from detector.scoring.novelty import NoveltyFusion, default_fusion, usable_components
from detector.scoring.scorer import PRIMARY, Scorer, calibrated_scores, score_settings
from detector.scoring.scores import DIAGNOSTICS

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
    # The training split as recorded at training (or, in a bundle whose calibration was since refitted on other data
    # or by a script, the training settings it was made from): the model's own data is never calibrated on
    # samples it was fitted on.
    original = bundle.calibration.get("calibration_split") or split_record(bundle.config.get("train", {}))
    if original and fingerprint(samples) == bundle.config["data"].get("fingerprint"):
        parts = split_as(samples, original)
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


def calibrate_bundle(bundle: Bundle, val: SampleSet, cal: SampleSet, target_fpr: float, device: str,
                     batch_size: int, progress: bool) -> list[str]:
    """Fit the novelty fusion on ``val`` and thresholds on ``cal`` into ``bundle``; returns warnings. A bundle
    written before the on-device score gets the current score settings (and so the current novelty score); one
    written since gets the defaults of settings added after it."""
    bundle.calibration = {}
    score = bundle.config["score"]
    kept = score if "elbo_samples" in score else {"iw_chunk": score["iw_chunk"]}  # legacy: only the memory bound
    bundle.config["score"] = {**score_settings(ScoreConfig()), **kept}  # settings added since: their defaults
    scorer = Scorer(bundle, device=device)
    raw_val = raw_columns(scorer, val, batch_size, progress, "standardising")
    components, combine, statistics = default_fusion(scorer.kind)
    components, notes = usable_components(components, raw_val, transform_chance_nats(scorer.transform_views))
    fusion = NoveltyFusion.fit(raw_val, components, combine, tuple(s for s in statistics if s.score in raw_val))
    # Thresholds for the diagnostics too, so that a request asking for them gets p-values and verdicts.
    raw_cal = raw_columns(scorer, cal, batch_size, progress, "calibrating", DIAGNOSTICS)
    raw_cal[PRIMARY] = fusion.apply(raw_cal)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        cals = {name: calibrate_score(name, raw_cal[name], target_fpr) for name in calibrated_scores(scorer.kind)}
    meta, arrays = calibration_to_bundle(cals)
    arrays.update(fusion.to_arrays())
    if scorer.kind == "image":  # the anomaly maps' standardisation, on the standardising split
        arrays.update(fit_map_scale(scorer, val, batch_size).to_arrays())
    bundle.calibration = {"fusion": fusion.to_json(), "scores": meta, "target_fpr": target_fpr, "primary": PRIMARY,
                          "n_standardise": len(val), "n_calibrate": len(cal)}
    bundle.calibration_arrays = arrays
    return notes + [str(w.message) for w in caught]


MAP_FIT_SAMPLES = 2000  # normal images whose map pixels fix the maps' centre and spread


def fit_map_scale(scorer: Scorer, samples: SampleSet, batch_size: int) -> MapScale:
    take = samples.take(np.arange(min(len(samples), MAP_FIT_SAMPLES)))
    smoothing = fitted_smoothing(scorer.segmenter)
    maps = [raw_maps(scorer.model, scorer._to_device(raw), smoothing, scorer.segmenter).cpu().numpy()
            for _, raw in take.chunks(min(batch_size, 256))]
    return MapScale.fit(np.concatenate(maps), smoothing)


def raw_columns(scorer: Scorer, samples: SampleSet, batch_size: int, progress: bool, desc: str,
                diagnostics=()) -> dict[str, np.ndarray]:
    """Every sample's raw scores (before the fusion and calibration), as columns."""
    with progress_bar(len(samples), desc, enabled=progress) as bar:
        parts = [scorer.raw_scores(raw, diagnostics)[0] for _, raw in samples.chunks(batch_size, bar=bar)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
