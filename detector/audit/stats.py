"""Streaming statistics of an audit: counts, per-label rates, top novel samples, a bounded
subsample for plots, and score histograms. Memory stays bounded whatever the dataset size."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict

import numpy as np

from detector.scoring.drift import PValueHistogram
from detector.scoring.scorer import PRIMARY, ScoreResult, Scorer

TOP_K = 16
SUBSAMPLE = 5000
HIST_SCORES = ("novelty", "neg_elbo", "recon_error", "complexity_corrected")
HIST_BINS = 60


class AuditStats:
    def __init__(self, scorer: Scorer):
        self.thresholds = {k: c.threshold for k, c in scorer.calibration.items()}
        self.n = 0
        self.novel = defaultdict(int)
        self.resampled = 0
        self.per_label = defaultdict(lambda: {"n": 0, "novel": 0, "resample": 0, "weight_sum": 0.0})
        self.top_index = np.zeros(0, np.int64)
        self.top_score = np.zeros(0, np.float32)
        self.bottom_index = np.zeros(0, np.int64)
        self.bottom_score = np.zeros(0, np.float32)
        self.primary = scorer.calibration[PRIMARY]
        self.p_values = PValueHistogram()  # the primary score's p-values, for the drift tests
        self._sub: dict[str, list] = defaultdict(list)
        self.hist_edges: dict[str, np.ndarray] = {}
        self.hist_counts: dict[str, np.ndarray] = {}

    def add(self, c: dict[str, np.ndarray]) -> None:
        n = len(c["index"])
        self.n += n
        for name, flags in ScoreResult.from_columns(c).novel.items():
            self.novel[name] += int(flags.sum())
        if "resample" in c:
            self.resampled += int(c["resample"].sum())
        if "label" in c:
            for label in np.unique(c["label"]):
                m = c["label"] == label
                row = self.per_label[int(label)]
                row["n"] += int(m.sum())
                row["novel"] += int(c[f"novel/{PRIMARY}"][m].sum())
                if "resample" in c:
                    row["resample"] += int(c["resample"][m].sum())
                    row["weight_sum"] += float(c["resample_weight"][m].sum())
        score = c[f"score/{PRIMARY}"]
        self.top_index, self.top_score = _extreme(self.top_index, self.top_score, c["index"], score, -1)
        self.bottom_index, self.bottom_score = _extreme(self.bottom_index, self.bottom_score, c["index"], score, 1)
        self.p_values.add(c[f"p_value/{PRIMARY}"])
        # A strided subsample (every k-th sample of the dataset) for plots: deterministic, bounded.
        pick = c["index"] % self._stride == 0 if hasattr(self, "_stride") else slice(None)
        for key in ("latent_mean", "resample_weight", "label", *(f"score/{s}" for s in HIST_SCORES)):
            if key in c:
                self._sub[key].append(c[key][pick])

    def set_total(self, n_total: int) -> None:
        self._stride = max(1, int(np.ceil(n_total / SUBSAMPLE)))

    def subsample(self, key: str) -> np.ndarray | None:
        parts = self._sub.get(key)
        return np.concatenate(parts) if parts else None

    def add_histograms(self, c: dict[str, np.ndarray]) -> None:
        for name in HIST_SCORES:
            key = f"score/{name}"
            if key not in c:
                continue
            if name not in self.hist_edges:
                sub = self.subsample(key)
                lo, hi = np.quantile(sub, [0.001, 0.999])
                t = self.thresholds.get(name)
                if t is not None and np.isfinite(t):
                    lo, hi = min(lo, t), max(hi, t)
                pad = 0.05 * (hi - lo or 1.0)
                self.hist_edges[name] = np.linspace(lo - pad, hi + pad, HIST_BINS + 1)
                self.hist_counts[name] = np.zeros(HIST_BINS, np.int64)
            edges = self.hist_edges[name]
            clipped = np.clip(c[key], edges[0], edges[-1])  # outliers land in the edge bins
            self.hist_counts[name] += np.histogram(clipped, bins=edges)[0]

    def summary(self, plan: dict, scorer: Scorer) -> dict:
        labels = {}
        for label, row in sorted(self.per_label.items()):
            labels[str(label)] = {"n": row["n"], "novelty_rate": row["novel"] / row["n"],
                                  "resample_rate": row["resample"] / row["n"],
                                  "mean_resample_weight": row["weight_sum"] / row["n"]}
        return {
            "model_version": scorer.model_version, "data": plan["data_name"],
            "data_fingerprint": plan["data_fingerprint"], "n_samples": self.n,
            "primary_score": PRIMARY, "target_fpr": scorer.calibration[PRIMARY].target_fpr,
            "thresholds": self.thresholds,
            "novel": dict(self.novel), "novelty_rate": {k: v / self.n for k, v in self.novel.items()},
            "resample_flagged": self.resampled, "resample_rate": self.resampled / self.n,
            "per_label": labels,
            "most_novel": [{"index": int(i), "novelty": float(s)} for i, s in zip(self.top_index, self.top_score)],
            "least_novel": [{"index": int(i), "novelty": float(s)}
                            for i, s in zip(self.bottom_index, self.bottom_score)],
            # The live server's drift tests, on the whole data set against the calibration set (scoring/drift.py).
            "drift": {name: asdict(test) for name, test in self.p_values.tests(self.primary.target_fpr,
                                                                               self.primary.n).items()},
            "n_calibration": self.primary.n,
        }


def _extreme(index: np.ndarray, score: np.ndarray, new_index: np.ndarray, new_score: np.ndarray, sign: int):
    """The TOP_K lowest of ``sign * score`` among the kept and the new samples (ties: earlier samples first)."""
    idx = np.concatenate([index, new_index])
    val = np.concatenate([score, new_score])
    keep = np.argsort(sign * val, kind="stable")[:TOP_K]
    return idx[keep], val[keep]
