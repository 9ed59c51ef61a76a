"""train -> calibrate -> fit latent density -> bundle: the whole of `detector train`."""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import detector
from detector.config import (DebiasConfig, ScoreConfig, Settings, validate_debias, validate_model, validate_score,
                             validate_train)
from detector.debias.sampler import debias_weights_fn, fit_density, latent_means_of
from detector.data.sampleset import SampleSet
from detector.errors import DataError
from detector.model.bundle import Bundle, save_bundle
from detector.model.device import resolve_device
from detector.model.vae import VAE, resolve_model_config, transform_chance_nats
from detector.scoring.calibration import CalibrationWarning, calibrate_score, calibration_to_bundle
from detector.scoring.latent import knn_reference
from detector.scoring.maps import MapScale, raw_maps
from detector.scoring.novelty import NoveltyFusion, default_fusion, usable_components
from detector.scoring.scorer import PRIMARY, Scorer, calibrated_scores
from detector.scoring.scores import DIAGNOSTICS
from detector.data.batches import load_tensor
from detector.training.checkpoint import checkpoint_dir
from detector.training.trainer import History, train_vae

NOISE_SEED = 1234
MIN_SAMPLES = 50


@dataclass
class Splits:
    train: SampleSet
    val: SampleSet
    cal: SampleSet


def split(samples: SampleSet, val_fraction: float, cal_fraction: float, seed: int) -> Splits:
    """Seeded disjoint train / validation / calibration splits."""
    n = len(samples)
    if n < MIN_SAMPLES:
        raise DataError(f"{samples.name}: {n} samples; training needs at least {MIN_SAMPLES}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val, n_cal = max(1, int(n * val_fraction)), max(1, int(n * cal_fraction))
    return Splits(samples.take(np.sort(perm[n_val + n_cal :])), samples.take(np.sort(perm[:n_val])),
                  samples.take(np.sort(perm[n_val : n_val + n_cal])))


def fingerprint(samples: SampleSet) -> str:
    """Cheap identity of a dataset: name, size, shape and a strided content hash."""
    h = hashlib.sha256(f"{samples.name}|{len(samples)}|{samples.sample_shape}".encode())
    step = max(1, len(samples) // 256)
    for i in range(0, len(samples), step):
        h.update(np.ascontiguousarray(samples.read(i, i + 1)).tobytes())
    return h.hexdigest()[:16]


def _vector_normalization(model: VAE, train: torch.Tensor) -> None:
    x = train.float().reshape(train.shape[0], -1)
    model.input_mean.copy_(x.mean(0).reshape(model.input_mean.shape))
    model.input_std.copy_(x.std(0).clamp_min(1e-6).reshape(model.input_std.shape))


def fit_latent_density(model: VAE, data: torch.Tensor, device: torch.device, debias: DebiasConfig) -> dict:
    """From the training set's encoder means: a Gaussian (latent_distance), the whitened means
    themselves (latent_knn) and DB-VAE's per-dimension histograms (resampling weights)."""
    mus = torch.from_numpy(latent_means_of(model, data, device)).double()
    cov = torch.cov(mus.T) + 1e-6 * torch.eye(mus.shape[1], dtype=torch.float64)
    hist = fit_density(mus.numpy(), debias)
    mean, precision = mus.mean(0).numpy(), torch.linalg.inv(cov).numpy()
    return {"latent_mean": mean, "latent_precision": precision,
            "knn_reference": knn_reference(mus.numpy(), mean, precision), **hist.to_arrays()}


def score_settings(cfg: ScoreConfig) -> dict:
    """The bundle's "score" section: how the Scorer computes each score."""
    return {"elbo_samples": cfg.elbo_samples, "transform_views": cfg.transform_views, "knn_k": cfg.knn_k,
            "iw_samples": cfg.iw_samples,
            "iw_chunk": cfg.iw_chunk, "noise_seed": NOISE_SEED}


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
    raw_val = _raw(scorer, val, batch_size, progress, "standardising")
    components, combine, statistics = default_fusion(scorer.kind)
    components, notes = usable_components(components, raw_val, transform_chance_nats(scorer.transform_views))
    fusion = NoveltyFusion.fit(raw_val, components, combine, tuple(s for s in statistics if s.score in raw_val))
    # Thresholds for the diagnostics too, so that a request asking for them gets p-values and verdicts.
    raw_cal = _raw(scorer, cal, batch_size, progress, "calibrating", DIAGNOSTICS)
    raw_cal[PRIMARY] = fusion.apply(raw_cal)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        cals = {name: calibrate_score(name, raw_cal[name], target_fpr) for name in calibrated_scores(scorer.kind)}
    meta, arrays = calibration_to_bundle(cals)
    if scorer.kind == "image":  # the anomaly maps' standardisation, on the standardising split
        arrays.update(fit_map_scale(scorer, val, batch_size).to_arrays())
    bundle.calibration = {"fusion": fusion.to_json(), "scores": meta, "target_fpr": target_fpr, "primary": PRIMARY,
                          "n_standardise": len(val), "n_calibrate": len(cal)}
    bundle.calibration_arrays = arrays
    return notes + [str(w.message) for w in caught]


MAP_FIT_SAMPLES = 2000  # normal images whose map pixels fix the maps' centre and spread


def fit_map_scale(scorer: Scorer, samples: SampleSet, batch_size: int) -> MapScale:
    take = samples.take(np.arange(min(len(samples), MAP_FIT_SAMPLES)))
    maps = [raw_maps(scorer.model, scorer._to_device(raw)).cpu().numpy()
            for _, raw in take.chunks(min(batch_size, 256))]
    return MapScale.fit(np.concatenate(maps))


def _raw(scorer: Scorer, samples: SampleSet, batch_size: int, progress: bool, desc: str,
         diagnostics=()) -> dict[str, np.ndarray]:
    from detector.progress import progress as progress_bar

    parts = []
    with progress_bar(len(samples), desc, enabled=progress) as bar:
        for _, raw in samples.chunks(batch_size):
            parts.append(scorer.raw_scores(raw, diagnostics)[0])
            bar.update(len(raw))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@dataclass
class TrainResult:
    bundle: Bundle
    history: History
    calibration_warnings: list[str]


def train_bundle(samples: SampleSet, settings: Settings, out: Path, resume: bool = False,
                 progress: bool = True) -> TrainResult | None:
    """Fit, calibrate, write ``out``. Under torchrun every rank trains; rank 0 alone calibrates and
    writes, and the other ranks return None."""
    validate_train(settings.train)
    validate_model(settings.model)
    validate_debias(settings.debias)
    validate_score(settings.score)
    tcfg = settings.train
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    device = resolve_device(tcfg.device)
    model_cfg = resolve_model_config(settings.model, samples.kind, samples.sample_shape)
    splits = split(samples, tcfg.val_fraction, tcfg.cal_fraction, tcfg.seed)
    train_data = load_tensor(splits.train).reshape(len(splits.train), *model_cfg.input_shape)
    val_data = load_tensor(splits.val).reshape(len(splits.val), *model_cfg.input_shape)
    setup = (lambda m: _vector_normalization(m, train_data)) if samples.kind == "vector" else None
    weights_fn = None
    if tcfg.debias:
        weights_fn = debias_weights_fn(train_data, settings.debias)
    data_fingerprint = fingerprint(samples)
    model, history = train_vae(model_cfg, tcfg, train_data, val_data, device, checkpoint_dir(out), resume,
                               data_fingerprint, progress, weights_fn, setup)
    if history.rank != 0:
        return None
    device = next(model.parameters()).device
    density = fit_latent_density(model, train_data, device, settings.debias)
    score_cfg: ScoreConfig = settings.score
    config = {
        "name": "vae",
        "detector_version": detector.__version__,
        "model": dataclasses.asdict(model_cfg),
        "score": score_settings(score_cfg),
        "data": {"kind": samples.kind, "name": samples.name, "sample_shape": list(samples.sample_shape),
                 "storage_dtype": "uint8" if samples.is_uint8 else "float32", "fingerprint": data_fingerprint,
                 "n_train": len(splits.train), "n_val": len(splits.val), "n_cal": len(splits.cal)},
        "debias": dataclasses.asdict(settings.debias),
        "train": {**dataclasses.asdict(tcfg), "max_epochs": history.max_epochs, "best_epoch": history.best_epoch,
                  "val_loss": history.val_loss, "samples_per_second": history.samples_per_second},
    }
    bundle = Bundle(config=config, weights={k: v.detach().cpu() for k, v in model.state_dict().items()},
                    density=density)
    caught = calibrate_bundle(bundle, splits.val, splits.cal, score_cfg.target_fpr, tcfg.device,
                              score_cfg.batch_size, progress)
    bundle.calibration["calibration_split"] = {"seed": tcfg.seed, "val_fraction": tcfg.val_fraction,
                                               "cal_fraction": tcfg.cal_fraction}
    save_bundle(bundle, out)
    return TrainResult(bundle, history, caught)
