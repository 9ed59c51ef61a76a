"""Scorer: model + fusion + calibration -> per-sample scores, verdicts and p-values for a batch.

The one scoring path every consumer uses (CLI, gRPC server, audit), so a sample gets the
same numbers wherever it is scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from detector.config import ModelConfig
from detector.data.sampleset import SampleSet, to_model_space
from detector.debias.density import LatentDensity
from detector.errors import ConfigError, InvalidInput, ModelNotReady
from detector.model.bundle import Bundle, load_bundle
from detector.model.device import resolve_device
from detector.model.vae import VAE
from detector.scoring.calibration import ScoreCalibration, calibration_from_bundle
from detector.scoring.complexity import complexity_bpd
from detector.scoring.latent import LatentReference
from detector.scoring.novelty import NoveltyFusion
from detector.scoring.scores import fixed_noise, raw_scores

PRIMARY = "novelty"
# Reduced precision runs the networks under autocast; likelihoods and scores stay float32.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Scores that get a threshold and p-values; neg_elbo_bpd is neg_elbo rescaled, kl and
# complexity are diagnostics.
CALIBRATED = ("novelty", "neg_elbo", "iw_nll", "recon_error", "latent_distance", "complexity_corrected")


def calibrated_scores(kind: str) -> tuple[str, ...]:
    return CALIBRATED if kind == "image" else tuple(s for s in CALIBRATED if s != "complexity_corrected")


@dataclass
class ScoreResult:
    """Arrays over a batch, one entry per sample, in input order."""

    scores: dict[str, np.ndarray]
    p_values: dict[str, np.ndarray] = field(default_factory=dict)
    novel: dict[str, np.ndarray] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    latent_mean: np.ndarray | None = None  # (B, Z), for debiasing and audit plots
    resample_weight: np.ndarray | None = None  # (B,) DB-VAE weights, when the bundle has a latent histogram
    resample: np.ndarray | None = None  # (B,) bool

    def __len__(self) -> int:
        return len(next(iter(self.scores.values())))

    def split(self, sizes: list[int]) -> list["ScoreResult"]:
        """Consecutive parts of ``sizes`` samples each (the inverse of concat)."""
        bounds = np.cumsum([0, *sizes])
        return [self.slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def slice(self, start: int, stop: int) -> "ScoreResult":
        part = lambda d: {k: v[start:stop] for k, v in d.items()}  # noqa: E731
        cut = lambda a: None if a is None else a[start:stop]  # noqa: E731
        return ScoreResult(part(self.scores), part(self.p_values), part(self.novel), dict(self.thresholds),
                           cut(self.latent_mean), cut(self.resample_weight), cut(self.resample))

    @staticmethod
    def concat(parts: list["ScoreResult"]) -> "ScoreResult":
        first = parts[0]
        cat = lambda key: {k: np.concatenate([getattr(p, key)[k] for p in parts]) for k in getattr(first, key)}  # noqa: E731
        arr = lambda key: None if getattr(first, key) is None else np.concatenate([getattr(p, key) for p in parts])  # noqa: E731
        return ScoreResult(cat("scores"), cat("p_values"), cat("novel"), dict(first.thresholds), arr("latent_mean"),
                           arr("resample_weight"), arr("resample"))


class Scorer:
    def __init__(self, bundle: Bundle, device: str = "auto", iw_samples: int | None = None, chunk: int | None = None,
                 precision: str = "fp32"):
        self.bundle = bundle
        cfg = bundle.config
        self.model_cfg = ModelConfig.from_json(cfg["model"])
        self.sample_shape = tuple(cfg["data"]["sample_shape"])
        self.kind = cfg["data"]["kind"]
        self.device = resolve_device(device)
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
        if precision != "fp32" and self.device.type != "cuda":
            raise ConfigError(f"--precision {precision} needs a CUDA device; the CPU scores in full precision")
        self.precision = precision
        self.autocast_dtype = PRECISIONS[precision]
        self.model = VAE(self.model_cfg)
        self.model.load_state_dict(bundle.weights)
        self.model.to(self.device).eval()
        k = iw_samples or int(cfg["score"]["iw_samples"])
        self.eps = fixed_noise(k, self.model_cfg.latent_dim, int(cfg["score"]["noise_seed"])).to(self.device)
        self.chunk = chunk or int(cfg["score"].get("iw_chunk", 4096))
        dens = bundle.density
        self.latent_reference = LatentReference.from_arrays(dens, self.model_cfg.latent_dim, self.device)
        self.latent_density = LatentDensity.from_arrays(dens)
        cal = bundle.calibration
        self.fusion = NoveltyFusion.from_json(cal["fusion"]) if cal.get("fusion") else None
        self.calibration: dict[str, ScoreCalibration] = (
            calibration_from_bundle(cal["scores"], bundle.calibration_arrays) if cal.get("scores") else {})

    @classmethod
    def from_path(cls, path: str | Path, device: str = "auto", **kwargs) -> "Scorer":
        return cls(load_bundle(path), device=device, **kwargs)

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    @property
    def input_dtype(self) -> str:
        return self.bundle.config["data"].get("storage_dtype", "float32")

    def check_batch(self, batch: np.ndarray) -> None:
        """Raise InvalidInput unless ``batch`` is (B, *sample_shape) of finite model-space values."""
        if batch.ndim < 1 or tuple(batch.shape[1:]) != self.sample_shape:
            raise InvalidInput(f"samples must have shape [N, {', '.join(map(str, self.sample_shape))}], "
                               f"got {list(batch.shape)}")
        if batch.dtype != np.uint8:
            if not np.isfinite(batch).all():
                raise InvalidInput("samples contain NaN or Inf")
            if self.kind == "image" and (batch.min(initial=0.0) < 0.0 or batch.max(initial=0.0) > 1.0):
                raise InvalidInput("float image samples must lie within 0..1 (send UINT8 for 0..255 pixels)")

    def _to_device(self, batch: np.ndarray) -> torch.Tensor:
        x = np.ascontiguousarray(to_model_space(batch))
        if not x.flags.writeable:  # views of request bytes are read-only; torch wants its own copy
            x = x.copy()
        x = torch.from_numpy(x)
        x = x.reshape(x.shape[0], *self.model_cfg.input_shape)
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x

    def raw_scores(self, batch: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Raw scores and latent means for a batch of stored-format samples (uint8 or float)."""
        x = self._to_device(batch)
        with torch.autocast("cuda", dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            raw = raw_scores(self.model, x, self.eps, self.latent_reference, self.chunk)
        mu = raw.pop("latent_mean_")
        scores = {k: v.cpu().numpy() for k, v in raw.items()}
        if self.kind == "image":
            scores["complexity"] = complexity_bpd(batch)
            scores["complexity_corrected"] = scores["neg_elbo_bpd"] - scores["complexity"]
        return scores, mu.cpu().numpy()

    def score(self, batch: np.ndarray) -> ScoreResult:
        """Every score, verdict and p-value for a batch, checked first."""
        self.check_batch(batch)
        if batch.shape[0] == 0:
            raise InvalidInput("empty batch")
        return self.score_checked(batch)

    def score_checked(self, batch: np.ndarray) -> ScoreResult:
        """``score`` for a non-empty batch that already passed ``check_batch`` (the server checks each
        request before batching, so the batch is not checked twice on the hot path)."""
        if self.fusion is None or not self.calibration:
            raise ModelNotReady("bundle is not calibrated: run 'detector calibrate'")
        scores, mu = self.raw_scores(batch)
        scores[PRIMARY] = self.fusion.apply(scores)
        result = ScoreResult(scores=scores, latent_mean=mu)
        if self.latent_density is not None:
            result.resample_weight = self.latent_density.weights(mu)
            result.resample = self.latent_density.flags(mu)
        for name, cal in self.calibration.items():
            result.p_values[name] = cal.p_values(scores[name])
            result.novel[name] = cal.is_novel(scores[name])
            result.thresholds[name] = cal.threshold
        return result

    def iter_results(self, samples: SampleSet, batch_size: int = 1024, progress: bool = True,
                     desc: str = "scoring") -> Iterator[tuple[int, ScoreResult]]:
        with tqdm(total=len(samples), desc=desc, unit="sample", disable=not progress, leave=False) as bar:
            for start, raw in samples.chunks(batch_size):
                yield start, self.score(raw)
                bar.update(len(raw))

    def score_samples(self, samples: SampleSet, batch_size: int = 1024, progress: bool = True) -> ScoreResult:
        self.check_compatible(samples)
        return ScoreResult.concat([r for _, r in self.iter_results(samples, batch_size, progress)])

    def check_compatible(self, samples: SampleSet) -> None:
        if samples.sample_shape != self.sample_shape:
            raise InvalidInput(f"{samples.name}: samples of shape {list(samples.sample_shape)} do not fit a model "
                               f"trained on {list(self.sample_shape)}")
