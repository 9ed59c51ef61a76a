"""Detection metrics on score arrays (higher = more anomalous). numpy only."""

from __future__ import annotations

import numpy as np


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (1-based), ties sharing their mean rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_vals)) + 1]
    ends = np.r_[starts[1:], len(values)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """Probability that an anomalous sample outscores a normal one (ties count half)."""
    normal, anomalous = np.asarray(normal, np.float64), np.asarray(anomalous, np.float64)
    ranks = _ranks(np.concatenate([normal, anomalous]))
    n0, n1 = len(normal), len(anomalous)
    return float((ranks[n0:].sum() - n1 * (n1 + 1) / 2.0) / (n0 * n1))


def auprc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """Average precision with anomalies as the positive class."""
    scores = np.concatenate([normal, anomalous]).astype(np.float64)
    labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    order = np.argsort(-scores, kind="mergesort")
    labels, scores = labels[order], scores[order]
    tp = np.cumsum(labels)
    # Evaluate only at the last index of each run of tied scores.
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    precision = tp[last] / (last + 1)
    recall = tp[last] / max(labels.sum(), 1)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(normal: np.ndarray, anomalous: np.ndarray, tpr: float = 0.95) -> float:
    """Share of normal samples at or above the score that catches ``tpr`` of the anomalies."""
    cut = np.quantile(np.asarray(anomalous, np.float64), 1.0 - tpr, method="lower")
    return float(np.mean(np.asarray(normal) >= cut))
