"""Scorer: model + fusion + calibration -> per-sample scores, verdicts and p-values for a batch.

The one scoring path every consumer uses (CLI, gRPC server, audit), so a sample gets the
same numbers wherever it is scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from detector.config import ModelConfig, ScoreConfig
from detector.data.sampleset import SampleSet
from detector.debias.density import LatentDensity
from detector.errors import ConfigError, InvalidInput, ModelNotReady
from detector.model.bundle import Bundle, load_bundle
from detector.model.device import resolve_device
from detector.model.vae import N_TRANSFORMS, VAE
from detector.progress import progress as progress_bar
from detector.scoring.calibration import ScoreCalibration, calibration_from_bundle
from detector.scoring.complexity import complexity_bpd
from detector.scoring.latent import LEGACY_KNN_K, LatentReference
from detector.model.segmenter import MapSegmenter, model_weights
from detector.scoring.maps import MapScale, require_map_scale
from detector.scoring.novelty import NoveltyFusion
from detector.scoring.scores import DIAGNOSTICS, fixed_noise, raw_scores
from detector.scoring.staging import DeviceStager, Staged

PRIMARY = "novelty"
# Reduced precision runs the networks under autocast; likelihoods and scores stay float32.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Scores that get a threshold and p-values (the diagnostics among them only when asked for); neg_elbo_bpd is
# neg_elbo rescaled, the rest are diagnostics and the novelty score's statistics.
CALIBRATED = ("novelty", "neg_elbo", "iw_nll", "recon_error", "latent_distance", "complexity_corrected")


NOISE_SEED = 1234  # the fixed noise of the ELBO's samples: a sample scores the same in any batch


def score_settings(cfg: ScoreConfig) -> dict:
    """The bundle's "score" section: how the Scorer computes each score."""
    return {"elbo_samples": cfg.elbo_samples, "transform_views": cfg.transform_views, "recon_at": cfg.recon_at,
            "knn_k": cfg.knn_k, "iw_samples": cfg.iw_samples, "iw_chunk": cfg.iw_chunk, "noise_seed": NOISE_SEED}


def calibrated_scores(kind: str) -> tuple[str, ...]:
    return CALIBRATED if kind == "image" else tuple(s for s in CALIBRATED if s != "complexity_corrected")


def check_diagnostics(names) -> frozenset[str]:
    """The asked-for diagnostics as a set, or InvalidInput naming the ones that exist."""
    asked = frozenset(names)
    unknown = sorted(asked - set(DIAGNOSTICS))
    if unknown:
        raise InvalidInput(f"unknown diagnostic {', '.join(map(repr, unknown))}: choose from {', '.join(DIAGNOSTICS)}")
    return asked


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
    anomaly_maps: np.ndarray | None = None  # (B, H, W) float32, standardised (maps.py); only when asked for

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
                           cut(self.latent_mean), cut(self.resample_weight), cut(self.resample), cut(self.anomaly_maps))

    GROUPS = ("score", "p_value", "novel")  # column prefixes of the per-score dicts, in to_columns / from_columns
    ARRAYS = ("resample_weight", "resample", "latent_mean", "anomaly_maps")

    def to_columns(self) -> dict[str, np.ndarray]:
        """One array per column: "score/<name>", "p_value/<name>", "novel/<name>", and "resample_weight",
        "resample", "latent_mean", "anomaly_maps" where present. ``from_columns`` is the inverse: score tables,
        audit chunks and the audit merge all go through this pair."""
        cols = {f"{group}/{name}": values
                for group, d in zip(self.GROUPS, (self.scores, self.p_values, self.novel)) for name, values in d.items()}
        cols.update({key: getattr(self, key) for key in self.ARRAYS if getattr(self, key) is not None})
        return cols

    @classmethod
    def from_columns(cls, cols: dict[str, np.ndarray], thresholds: dict[str, float] | None = None) -> "ScoreResult":
        """The inverse of ``to_columns``; other columns (an index, labels) are ignored."""
        groups = {group: {k.split("/", 1)[1]: v for k, v in cols.items() if k.startswith(f"{group}/")}
                  for group in cls.GROUPS}
        return cls(groups["score"], groups["p_value"], groups["novel"], dict(thresholds or {}),
                   **{key: cols.get(key) for key in cls.ARRAYS})

    @staticmethod
    def concat(parts: list["ScoreResult"]) -> "ScoreResult":
        first = parts[0]
        cat = lambda key: {k: np.concatenate([getattr(p, key)[k] for p in parts]) for k in getattr(first, key)}  # noqa: E731
        arr = lambda key: None if getattr(first, key) is None else np.concatenate([getattr(p, key) for p in parts])  # noqa: E731
        return ScoreResult(cat("scores"), cat("p_values"), cat("novel"), dict(first.thresholds), arr("latent_mean"),
                           arr("resample_weight"), arr("resample"), arr("anomaly_maps"))


_CHECKED = object()  # only Scorer.check makes a CheckedBatch


class CheckedBatch:
    """Samples that passed ``Scorer.check``. Slices and joins of checked batches stay checked."""

    __slots__ = ("samples",)

    def __init__(self, samples: np.ndarray, token: object):
        if token is not _CHECKED:
            raise TypeError("a CheckedBatch comes from Scorer.check")
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, rows: slice) -> "CheckedBatch":
        return CheckedBatch(self.samples[rows], _CHECKED)

    @staticmethod
    def join(parts: list["CheckedBatch"]) -> "CheckedBatch":
        """One batch of several requests' checked samples (one copy; none for a single part)."""
        if len(parts) == 1:
            return parts[0]
        return CheckedBatch(np.concatenate([p.samples for p in parts]), _CHECKED)


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
        self.model.load_state_dict(model_weights(bundle.weights))
        self.model.to(self.device).for_inference()
        self.segmenter = MapSegmenter.from_bundle(cfg, bundle.weights)  # None: residual maps (maps.py)
        if self.segmenter is not None:
            self.segmenter.to(self.device)
        self.stager = DeviceStager(self.device, self.model_cfg.input_shape)
        score_cfg = cfg["score"]
        seed, latent_dim = int(score_cfg["noise_seed"]), self.model_cfg.latent_dim
        k_iw = iw_samples or int(score_cfg["iw_samples"])
        # Bundles written before the on-device score estimated the ELBO with the importance-sampling draws and
        # computed every diagnostic by default: they keep doing so, and score as they did.
        self.legacy = "elbo_samples" not in score_cfg
        k_elbo = int(score_cfg.get("elbo_samples", k_iw))
        self.eps = fixed_noise(k_elbo, latent_dim, seed).to(self.device)
        self.iw_eps = self.eps if self.legacy and k_iw == k_elbo else fixed_noise(k_iw, latent_dim, seed).to(self.device)
        self.chunk = chunk or int(score_cfg.get("iw_chunk", 4096))
        self.transform_views = int(score_cfg.get("transform_views", N_TRANSFORMS))
        self.recon_at = score_cfg.get("recon_at", "mean")  # bundles written before it reconstruct at the mean
        dens = bundle.density
        self.latent_reference = LatentReference.from_arrays(dens, self.model_cfg.latent_dim, self.device,
                                                            int(score_cfg.get("knn_k", LEGACY_KNN_K)))
        self.latent_density = LatentDensity.from_arrays(dens)
        cal = bundle.calibration
        self.fusion = NoveltyFusion.from_json(cal["fusion"], bundle.calibration_arrays) if cal.get("fusion") else None
        if self.fusion is not None and "transform_nll" not in self.fusion.needs:
            # A head left out of the novelty score (images without an orientation) costs nothing at scoring time.
            self.transform_views = 0
        self.calibration: dict[str, ScoreCalibration] = (
            calibration_from_bundle(cal["scores"], bundle.calibration_arrays) if cal.get("scores") else {})
        self.map_scale = MapScale.from_arrays(bundle.calibration_arrays)

    @classmethod
    def from_path(cls, path: str | Path, device: str = "auto", **kwargs) -> "Scorer":
        return cls(load_bundle(path), device=device, **kwargs)

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    @property
    def input_dtype(self) -> str:
        return self.bundle.config["data"].get("storage_dtype", "float32")

    def check(self, batch: np.ndarray) -> CheckedBatch:
        """The one check of samples before scoring: (B >= 1, *sample_shape) of finite model-space values, else
        InvalidInput saying what is wrong."""
        if batch.ndim < 1 or tuple(batch.shape[1:]) != self.sample_shape:
            raise InvalidInput(f"samples must have shape [N, {', '.join(map(str, self.sample_shape))}], "
                               f"got {list(batch.shape)}")
        if batch.shape[0] == 0:
            raise InvalidInput("empty batch")
        if batch.dtype != np.uint8:
            if not np.isfinite(batch).all():
                raise InvalidInput("samples contain NaN or Inf")
            if self.kind == "image" and (batch.min(initial=0.0) < 0.0 or batch.max(initial=0.0) > 1.0):
                raise InvalidInput("float image samples must lie within 0..1 (send UINT8 for 0..255 pixels)")
        return CheckedBatch(batch, _CHECKED)

    def stage(self, batch: np.ndarray | CheckedBatch) -> Staged:
        """The batch (checked here unless it is a CheckedBatch) on its way to the scoring device (staging.py): the
        server stages the next batch while the current one computes."""
        samples = batch.samples if isinstance(batch, CheckedBatch) else self.check(batch).samples
        return self.stager.stage(samples)

    def _to_device(self, batch: np.ndarray) -> torch.Tensor:
        return self.stager.stage(batch).tensor()

    @property
    def default_diagnostics(self) -> frozenset[str]:
        """Diagnostics computed for every batch: none, but for bundles written before the on-device score."""
        return frozenset(DIAGNOSTICS) if self.legacy else frozenset()

    def _raw_tensors(self, batch: np.ndarray, diagnostics=(), x: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Raw scores on the scoring device, and the latent means as "latent_mean_"; ``x``: the batch already on
        the device, when the caller moved it there."""
        want = check_diagnostics(diagnostics) | self.default_diagnostics
        x = self._to_device(batch) if x is None else x
        with torch.autocast("cuda", dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            raw = raw_scores(self.model, x, self.eps, self.latent_reference, self.chunk,
                             self.iw_eps if "iw_nll" in want else None, self.transform_views, self.recon_at)
        if self.kind == "image" and "complexity" in want:  # the CPU codec: only when asked for
            raw["complexity"] = torch.from_numpy(complexity_bpd(batch)).to(self.device)
            raw["complexity_corrected"] = raw["neg_elbo_bpd"] - raw["complexity"]
        return raw

    def raw_scores(self, batch: np.ndarray, diagnostics=()) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Raw scores and latent means for a batch of stored-format samples (uint8 or float), with the named
        ``diagnostics`` (``DIAGNOSTICS``) besides the default scores."""
        raw = self._raw_tensors(batch, diagnostics)
        mu = raw.pop("latent_mean_")
        return {k: v.cpu().numpy() for k, v in raw.items()}, mu.cpu().numpy()

    def check_maps(self) -> MapScale:
        """The map standardisation, or why this model gives no maps."""
        if self.kind != "image":
            raise InvalidInput("anomaly maps are for image models; this one scores feature vectors")
        return require_map_scale(self.map_scale)

    def anomaly_maps(self, batch: np.ndarray, x: torch.Tensor | None = None) -> np.ndarray:
        """Standardised per-pixel anomaly maps (B, H, W) float32 of a checked batch (maps.py); ``x``: the batch
        already on the device."""
        scale = self.check_maps()
        return scale.maps(self.model, self._to_device(batch) if x is None else x, self.segmenter).cpu().numpy()

    def score(self, batch: np.ndarray | CheckedBatch | Staged, diagnostics=(), maps: bool = False) -> ScoreResult:
        """Every default score, verdict and p-value for a batch; ``diagnostics`` names the costlier ones to add
        (``DIAGNOSTICS``); ``maps``: per-pixel anomaly maps too (image models). A batch that is neither a
        CheckedBatch nor Staged is checked first (the server checks each request on arrival, so a batch of them is
        not checked twice). Everything is computed on the scoring device; the results cross to the host once, at
        the end."""
        staged = batch if isinstance(batch, Staged) else self.stage(batch)
        if self.fusion is None or not self.calibration:
            raise ModelNotReady("bundle is not calibrated: run 'detector calibrate'")
        batch, x = staged.samples, staged.tensor()  # on the device once, for the scores and the maps
        anomaly_maps = self.anomaly_maps(batch, x) if maps else None
        raw = self._raw_tensors(batch, diagnostics, x)
        mu = raw.pop("latent_mean_")
        raw[PRIMARY] = self.fusion.apply(raw)
        p_values, novel, thresholds = {}, {}, {}
        for name, cal in self.calibration.items():
            if name in raw:  # a diagnostic not asked for has no column
                p_values[name], novel[name], thresholds[name] = cal.p_values(raw[name]), cal.is_novel(raw[name]), cal.threshold
        weight = flag = None
        if self.latent_density is not None:
            weight, flag = self.latent_density.weights(mu), self.latent_density.flags(mu)
        host = lambda d: {k: v.cpu().numpy() for k, v in d.items()}  # noqa: E731
        return ScoreResult(scores=host(raw), p_values=host(p_values), novel=host(novel), thresholds=thresholds,
                           latent_mean=mu.cpu().numpy(), resample_weight=None if weight is None else weight.cpu().numpy(),
                           resample=None if flag is None else flag.cpu().numpy(), anomaly_maps=anomaly_maps)

    def iter_results(self, samples: SampleSet, batch_size: int = 1024, progress: bool = True,
                     desc: str = "scoring", diagnostics=(), maps: bool = False) -> Iterator[tuple[int, ScoreResult]]:
        with progress_bar(len(samples), desc, enabled=progress) as bar:
            for start, raw in samples.chunks(batch_size, bar=bar):
                yield start, self.score(raw, diagnostics, maps)

    def score_samples(self, samples: SampleSet, batch_size: int = 1024, progress: bool = True,
                      diagnostics=(), on_maps: Callable[[int, np.ndarray], None] | None = None) -> ScoreResult:
        """Every sample's scores; with ``on_maps``, each batch's anomaly maps are handed to it (start index, maps)
        and not kept, so a data set of any size fits in memory."""
        self.check_compatible(samples)
        if on_maps is not None:
            self.check_maps()
        parts = []
        for start, result in self.iter_results(samples, batch_size, progress, diagnostics=diagnostics,
                                               maps=on_maps is not None):
            if on_maps is not None:
                on_maps(start, result.anomaly_maps)
                result.anomaly_maps = None
            parts.append(result)
        return ScoreResult.concat(parts)

    def check_compatible(self, samples: SampleSet) -> None:
        if samples.sample_shape != self.sample_shape:
            raise InvalidInput(f"{samples.name}: samples of shape {list(samples.sample_shape)} do not fit a model "
                               f"trained on {list(self.sample_shape)}")
