"""Settings for model, training, scoring, serving and audits. Plain dataclasses; no torch import.

Defaults carry a one-line reason. A TOML file passed with ``--config`` may set any field, in
tables named after the dataclasses: ``[model]``, ``[train]``, ``[score]``, ``[debias]``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detector.errors import ConfigError

LIKELIHOODS = ("cbernoulli", "gaussian", "logistic")
RECON_AT = ("draw", "mean")  # where recon_error's reconstruction is decoded: the ELBO's first draw, the posterior mean


@dataclass
class ModelConfig:
    """Architecture. Stored in the bundle's config.json; rebuilds the model exactly."""

    kind: str = "auto"  # "conv" for images, "mlp" for vectors; "auto" picks from the data
    input_shape: tuple[int, ...] = ()  # (C, H, W) or (D,); filled in from the data
    latent_dim: int = 16  # enough for 28x28 garments; larger dims added no AUROC (README)
    base_channels: int = 32  # conv width at full resolution, doubled per level (capped at 256)
    hidden: tuple[int, ...] = (512, 256)  # MLP widths for vector data
    likelihood: str = "auto"  # "logistic" (discretized, 8-bit) for images, "gaussian" for vectors
    min_log_scale: float = -4.5  # variance floor: stops the decoder collapsing on flat pixels
    transform_head: bool = True  # conv VAEs: a head that tells rotations apart, for the transform_nll score
    # (one-class Fashion-MNIST mean novelty AUROC 0.946 without it; README "Scores")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ModelConfig":
        """The config.json form; bundles written before the transform head existed have none."""
        return cls(**{"transform_head": False, **data, "input_shape": tuple(data["input_shape"]),
                      "hidden": tuple(data["hidden"])})


@dataclass
class TrainConfig:
    epochs: int = 0  # 0 = auto (resolve_epochs): 20, or more on small sets; early stopping may end sooner
    min_steps: int = 3000  # auto epochs give at least this many optimiser steps: one-class Fashion-MNIST
    # (4,800 images, 37 steps an epoch) got 750 at 20 epochs; 80 epochs raised its mean novelty AUROC 0.941 -> 0.945
    batch_size: int = 128  # small enough for useful gradient noise, large enough for 2 cores
    lr: float = 2e-3  # Adam; stable for these small conv nets
    beta: float = 1.0  # KL weight after warm-up; 1.0 keeps the ELBO a true bound
    warmup_epochs: int = 3  # KL weight rises linearly from 0: avoids posterior collapse
    patience: int = 4  # epochs without validation improvement before stopping
    val_fraction: float = 0.1  # early stopping and score standardisation
    cal_fraction: float = 0.1  # threshold calibration, never seen by training
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA only; CPU stays full precision
    debias: bool = False  # DB-VAE adaptive resampling (issue 4)
    num_threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    map_steps: int = 3000  # image models: optimiser steps of the anomaly-map segmenter, at any image size (0: no
    # segmenter, residual maps instead; scripts/bench_maps.py, docs/benchmarks/maps.md). Scaling them down by pixels
    # starved larger images: at 3x64x64, 375 steps gave pixel AUROC 0.850, 1,000 steps 0.975 (maps-rgb64*.md)
    map_epochs: int = 20  # ... but no more than this many passes over the training images (small sets)
    map_budget_s: float = 300.0  # ... and no more steps than fit in this many seconds (0: no limit)
    map_deadline_s: float = 810.0  # ... nor past this many seconds into the run, the VAE's training counted (but
    # at least segmenter.MIN_BUDGET_S; 0: no deadline): the budget follows the machine, so `detector train --data
    # fashion-mnist:train` ends inside 15 minutes (calibration after it took ~30 s) on cores slow enough that the VAE
    # takes 10 minutes. Training on large sets, where the VAE takes longer, raise it or set 0


@dataclass
class ScoreConfig:
    elbo_samples: int = 1  # draws for the default neg_elbo estimate; each costs one decoder pass on every request
    transform_views: int = 1  # turns the transform head scores (of 4); each but the first costs an encoder pass.
    # 1 (upright alone, free) kept the far-OOD and one-class AUROC of 2 within 0.001 (README "Scores"); bundles
    # written with 2 keep 2
    recon_at: str = "draw"  # recon_error's reconstruction: at the ELBO's first draw (no decoder pass of its own;
    # one-class and far-OOD AUROC as at the posterior mean, README "Scores") or "mean" (bundles written before keep it)
    knn_k: int = 2  # training latents latent_knn averages over (README "Scores")
    iw_samples: int = 8  # K for the importance-weighted NLL (a diagnostic, computed when asked for)
    iw_chunk: int = 4096  # samples x K evaluated per decoder call, in 28x28 images' worth (scores.CHUNK_DIMS)
    target_fpr: float = 0.01  # false-positive rate the thresholds are set at
    batch_size: int = 1024  # scoring batch


@dataclass
class DebiasConfig:
    bins: int = 10  # per-dimension histogram bins (DB-VAE's default)
    alpha: float = 0.01  # weight = 1 / (density + alpha): alpha bounds the largest weight
    combine: str = "product"  # "product" (the paper, in log space) or "max" (the MIT lab's variant)
    rare_fraction: float = 0.05  # flag samples whose latent region is among the rarest 5% of training
    whiten: bool = True  # histograms along whitened principal axes of the latent means: a class cut to 2%
    # got 0.16x the others' mean weight along raw axes, 2-4x along whitened ones (bench_debias.py)
    max_draw_ratio: float = 50.0  # no weight above 50x the average (reported and drawn). Uncapped, a product over
    # 16 dimensions drew a handful of samples over and over and training diverged; a cap of 10 cannot undo a class
    # cut to 2% (it needs ~50x): its weight ratio was 2.00 at 10, 2.95 at 50 with one model (bench_debias.py)


@dataclass
class Settings:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    debias: DebiasConfig = field(default_factory=DebiasConfig)


def _coerce(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown setting '{key}' (known: {', '.join(sorted(known))})")
        default = getattr(cls(), key)
        if isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where}.{key}: expected a list, got {value!r}")
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{key}: expected true/false, got {value!r}")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
            value = type(default)(value)
        elif isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{where}.{key}: expected a string, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def load_settings(path: str | Path | None) -> Settings:
    """Settings from a TOML file, defaults for what it leaves out."""
    if path is None:
        return Settings()
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(raw) - {"model", "train", "score", "debias"}
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {sorted(unknown)}; use [model], [train], [score], [debias]")
    settings = Settings(
        model=_coerce(ModelConfig, raw.get("model", {}), f"{path}[model]"),
        train=_coerce(TrainConfig, raw.get("train", {}), f"{path}[train]"),
        score=_coerce(ScoreConfig, raw.get("score", {}), f"{path}[score]"),
        debias=_coerce(DebiasConfig, raw.get("debias", {}), f"{path}[debias]"),
    )
    validate_debias(settings.debias)
    return settings


def validate_debias(cfg: DebiasConfig) -> None:
    if cfg.bins < 2 or cfg.alpha <= 0 or not 0 < cfg.rare_fraction < 1 or cfg.max_draw_ratio < 1:
        raise ConfigError("debias: bins must be >= 2, alpha > 0, rare_fraction in (0, 1), max_draw_ratio >= 1")
    if cfg.combine not in ("product", "max"):
        raise ConfigError(f"debias.combine must be 'product' or 'max', got '{cfg.combine}'")


AUTO_EPOCHS = 20  # fits `detector train --data fashion-mnist:train` in the 15-minute budget on 2 cores
MAX_AUTO_EPOCHS = 200  # tiny sets: min_steps is not worth more passes than this


def resolve_epochs(cfg: TrainConfig, n_train: int) -> int:
    """``cfg.epochs`` when set; otherwise 20, raised so that ``n_train`` samples give ``min_steps`` steps."""
    if cfg.epochs:
        return cfg.epochs
    steps_per_epoch = max(1, n_train // cfg.batch_size)
    return min(MAX_AUTO_EPOCHS, max(AUTO_EPOCHS, -(-cfg.min_steps // steps_per_epoch)))


def validate_train(cfg: TrainConfig) -> None:
    if cfg.epochs < 0:
        raise ConfigError(f"epochs must be >= 1 (or 0 for auto), got {cfg.epochs}")
    if cfg.min_steps < 0:
        raise ConfigError(f"min_steps must be >= 0, got {cfg.min_steps}")
    if cfg.map_steps < 0 or cfg.map_epochs < 1 or cfg.map_budget_s < 0 or cfg.map_deadline_s < 0:
        raise ConfigError(f"map_steps, map_budget_s and map_deadline_s must be >= 0 and map_epochs >= 1, got "
                          f"{cfg.map_steps}, {cfg.map_budget_s}, {cfg.map_deadline_s} and {cfg.map_epochs}")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if not 0 < cfg.val_fraction < 0.5 or not 0 < cfg.cal_fraction < 0.5:
        raise ConfigError("val_fraction and cal_fraction must lie in (0, 0.5)")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got '{cfg.device}'")


def validate_score(cfg: ScoreConfig) -> None:
    if cfg.recon_at not in RECON_AT:
        raise ConfigError(f"recon_at must be one of {', '.join(RECON_AT)}, got {cfg.recon_at!r}")
    if cfg.elbo_samples < 1 or cfg.iw_samples < 1:
        raise ConfigError(f"elbo_samples and iw_samples must be >= 1, got {cfg.elbo_samples} and {cfg.iw_samples}")
    if cfg.knn_k < 1:
        raise ConfigError(f"knn_k must be >= 1, got {cfg.knn_k}")
    if not 1 <= cfg.transform_views <= 4:
        raise ConfigError(f"transform_views must lie in 1..4, got {cfg.transform_views}")


def validate_model(cfg: ModelConfig) -> None:
    if cfg.kind not in ("auto", "conv", "mlp"):
        raise ConfigError(f"model kind must be auto, conv or mlp, got '{cfg.kind}'")
    if cfg.likelihood not in ("auto", *LIKELIHOODS):
        raise ConfigError(f"likelihood must be one of auto, {', '.join(LIKELIHOODS)}; got '{cfg.likelihood}'")
    if cfg.latent_dim < 1:
        raise ConfigError(f"latent_dim must be >= 1, got {cfg.latent_dim}")


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_host: str = "127.0.0.1"  # may differ from host: keep metrics on an internal address
    metrics_port: int = 9090  # 0 picks a free port; -1 disables the metrics endpoint
    device: str = "auto"
    max_batch_samples: int = 256  # samples per forward pass, at most; ~1 batch fills 2 CPU cores for a few ms
    tune_batch: bool = True  # at start-up, batch only as many as the device scores fastest (serving/service.py)
    max_delay_ms: float = 2.0  # longest a request waits for others to share its batch
    max_queue_samples: int = 4096  # beyond this, RESOURCE_EXHAUSTED at once instead of growing latency
    max_queue_wait_ms: float = 5000.0  # also refuse when the queue holds more than this much scoring; 0: off.
    # 1000 refused most of 8 clients x 64 samples on 2 CPU cores (bench_serve.py (d)); set it to the latency target
    max_request_samples: int = 4096  # largest single request
    max_message_bytes: int = 64 * 1024 * 1024  # gRPC receive/send limit
    batching: bool = True  # off: one request per forward pass (benchmark baseline)
    novelty_window_s: float = 60.0  # sliding window of detector_novelty_rate
    drift_window_samples: int = 1000  # the last this many primary p-values are tested for drift (scoring/drift.py)
    grace_s: float = 20.0  # SIGTERM: in-flight requests get this long to finish
    stream_max_in_flight: int = 32  # per ScoreStream: requests scored ahead of the one being answered
    max_stream_requests: int = 1_000_000  # per ScoreStream, then RESOURCE_EXHAUSTED (reconnects rebalance); 0: none
    tls_cert: str | None = None  # PEM certificate chain: serve TLS instead of plaintext
    tls_key: str | None = None
    tls_client_ca: str | None = None  # PEM CA: require client certificates (mutual TLS)
    auth_token: str | None = None  # require "authorization: Bearer <token>" metadata

    def __post_init__(self) -> None:
        self.validate()  # the one check: a ServeConfig that exists makes sense

    def validate(self) -> None:
        if self.max_batch_samples < 1 or self.max_request_samples < 1 or self.max_queue_samples < 1:
            raise ConfigError("batch, request and queue limits must be >= 1")
        if self.drift_window_samples < 30:
            raise ConfigError("the drift window needs at least 30 samples for its tests to hold")
        if self.max_stream_requests < 0:
            raise ConfigError("max_stream_requests must be >= 0 (0: no limit)")
        if self.max_delay_ms < 0 or self.max_queue_wait_ms < 0:
            raise ConfigError("max_delay_ms and max_queue_wait_ms must be >= 0")
        if not 0 <= self.port <= 65535 or not -1 <= self.metrics_port <= 65535:
            raise ConfigError("ports must lie in 0..65535")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both a certificate and a key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("mutual TLS (client CA) needs TLS: give a certificate and key too")
