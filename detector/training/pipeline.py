"""split -> train -> fit the latent statistics -> calibrate -> bundle: the whole of `detector train`."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import detector
from detector.calibrate import calibrate_bundle
from detector.config import ScoreConfig, Settings, validate_debias, validate_model, validate_score, validate_train
from detector.data.batches import load_tensor
from detector.data.sampleset import SampleSet
from detector.data.splits import fingerprint, split, split_record
from detector.debias.sampler import debias_weights_fn
from detector.model.bundle import Bundle, save_bundle
from detector.model.device import resolve_device
from detector.model.vae import VAE, resolve_model_config
from detector.scoring.latent import fit_latent_density
from detector.scoring.scorer import score_settings
from detector.training.checkpoint import checkpoint_dir
from detector.training.segmenter import segmenter_budget, train_segmenter
from detector.training.trainer import History, train_vae


def _vector_normalization(model: VAE, train: torch.Tensor) -> None:
    x = train.float().reshape(train.shape[0], -1)
    model.input_mean.copy_(x.mean(0).reshape(model.input_mean.shape))
    model.input_std.copy_(x.std(0).clamp_min(1e-6).reshape(model.input_std.shape))


@dataclass
class TrainResult:
    bundle: Bundle
    history: History
    calibration_warnings: list[str]


def train_bundle(samples: SampleSet, settings: Settings, out: Path, resume: bool = False,
                 progress: bool = True) -> TrainResult | None:
    """Fit, calibrate, write ``out``. Under torchrun every rank trains; rank 0 alone calibrates and
    writes, and the other ranks return None."""
    started = time.perf_counter()
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
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if samples.kind == "image" and tcfg.map_steps:
        budget = segmenter_budget(tcfg, time.perf_counter() - started)
        segmenter = train_segmenter(model, train_data, dataclasses.replace(tcfg, map_budget_s=budget), device, progress)
        config, weights = segmenter.stored_with(config, weights)
    bundle = Bundle(config=config, weights=weights, density=density)
    caught = calibrate_bundle(bundle, splits.val, splits.cal, score_cfg.target_fpr, tcfg.device,
                              score_cfg.batch_size, progress)
    bundle.calibration["calibration_split"] = split_record(dataclasses.asdict(tcfg))
    save_bundle(bundle, out)
    return TrainResult(bundle, history, caught)
