"""Is the stream drifting? Tests on the primary score's conformal p-values, against the calibration set.

A conformal p-value is p = (1 + #{calibration scores >= s}) / (m + 1) for m calibration scores. Under no drift a
window of them is uniform only on average over calibration sets: given one calibration set of a few hundred or
thousand scores, its own sampling error is as large as a window's. Both tests therefore count the calibration
set as the second sample it is:

- ``ks``: Kolmogorov-Smirnov, D = sup |F_n(u) - u| over the window's p-values, which is the two-sample statistic
  between the window's scores and the calibration scores; its p-value uses the two-sample size n m / (n + m) and
  the Kolmogorov distribution with Stephens' correction. Sees any change of the score distribution, either way:
  a subtle global shift moves every p-value a little.
- ``binomial``: the number of p-values <= the target FPR (the samples flagged). Given the calibration set each is
  flagged with the exceedance probability of one calibration order statistic, Beta(c + 1, m - c) distributed
  (c = floor((m + 1) fpr) - 1), so the count is beta-binomial: tested one-sided, exactly. Sees a few clear
  anomalies: 5% of traffic flagged against 1% expected. As m grows it becomes the plain binomial test.

Both take counts on a grid of p-values, so a whole audit (millions of samples) is tested exactly from a histogram;
a window is the same with counts of one.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import torch

TESTS = ("ks", "binomial")


@dataclass(frozen=True)
class DriftTest:
    statistic: float  # ks: D; binomial: share of p-values <= target FPR
    p_value: float
    n: int


def _grid(p_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.unique(np.asarray(p_values, dtype=np.float64), return_counts=True)


def kolmogorov_sf(d: float, n: float) -> float:
    """P(D_n >= d) under H0, asymptotic with Stephens' correction; ``n`` may be a two-sample effective size."""
    root = math.sqrt(n)
    lam = (root + 0.12 + 0.11 / root) * d
    if lam < 0.3:
        return 1.0
    k = np.arange(1, 101)
    return float(np.clip(2 * np.sum((-1.0) ** (k - 1) * np.exp(-2 * k**2 * lam**2)), 0.0, 1.0))


def ks_uniform(values: np.ndarray, counts: np.ndarray, n_calibration: int) -> DriftTest:
    """KS test of p-values ``values`` (ascending, distinct) seen ``counts`` times each."""
    n = int(counts.sum())
    after = np.cumsum(counts) / n
    before = after - counts / n
    d = float(max(np.max(after - values), np.max(values - before), 0.0))
    return DriftTest(d, kolmogorov_sf(d, n * n_calibration / (n + n_calibration)), n)


def _log_beta(a, b):
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)


def beta_binomial_sf(k: int, n: int, a: float, b: float) -> float:
    """P(K >= k) for K ~ BetaBinomial(n, a, b), exact (log-space sum of the tail)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    j = torch.arange(k, n + 1, dtype=torch.float64)
    n_, a_, b_ = (torch.tensor(float(v), dtype=torch.float64) for v in (n, a, b))
    log_pmf = (torch.lgamma(n_ + 1) - torch.lgamma(j + 1) - torch.lgamma(n_ - j + 1)
               + _log_beta(j + a_, n_ - j + b_) - _log_beta(a_, b_))
    return float(torch.logsumexp(log_pmf, 0).exp().clamp(max=1.0))


def flagged_excess(values: np.ndarray, counts: np.ndarray, target_fpr: float, n_calibration: int) -> DriftTest:
    """One-sided test that more p-values are <= ``target_fpr`` than a calibration of ``n_calibration`` allows."""
    n = int(counts.sum())
    k = int(counts[values <= target_fpr].sum())
    c = math.floor((n_calibration + 1) * target_fpr + 1e-9) - 1  # at most c calibration scores above a flagged one
    p_value = 1.0 if c < 0 else beta_binomial_sf(k, n, c + 1, n_calibration - c)
    return DriftTest(k / n, p_value, n)


def drift_tests(values: np.ndarray, counts: np.ndarray, target_fpr: float, n_calibration: int) -> dict[str, DriftTest]:
    return {"ks": ks_uniform(values, counts, n_calibration),
            "binomial": flagged_excess(values, counts, target_fpr, n_calibration)}


def drift_tests_of(p_values: np.ndarray, target_fpr: float, n_calibration: int) -> dict[str, DriftTest]:
    """Both tests on a sample of p-values."""
    return drift_tests(*_grid(p_values), target_fpr, n_calibration)


class PValueHistogram:
    """Counts of p-values, mergeable chunk by chunk: a dataset's drift tests in bounded memory."""

    def __init__(self):
        self._counts: dict[float, int] = {}

    def add(self, p_values: np.ndarray) -> None:
        for value, count in zip(*_grid(p_values)):
            self._counts[float(value)] = self._counts.get(float(value), 0) + int(count)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct p-values seen, ascending, and how often each was."""
        values = np.array(sorted(self._counts), dtype=np.float64)
        return values, np.array([self._counts[v] for v in values], dtype=np.int64)

    def tests(self, target_fpr: float, n_calibration: int) -> dict[str, DriftTest]:
        return drift_tests(*self.grid(), target_fpr, n_calibration) if self._counts else {}


class DriftWindow:
    """The last ``size`` p-values of a stream (a ring buffer) and the drift tests on them."""

    def __init__(self, size: int, target_fpr: float, n_calibration: int, min_samples: int = 100):
        self.size = size
        self.target_fpr = target_fpr
        self.n_calibration = n_calibration
        self.min_samples = min(min_samples, size)
        self._ring = np.empty(size, dtype=np.float64)
        self._seen = 0
        self._lock = threading.Lock()  # added to by the batch thread, tested at scrape time

    def add(self, p_values: np.ndarray) -> None:
        p = np.asarray(p_values, dtype=np.float64)[-self.size:]
        with self._lock:
            self._ring[(self._seen + np.arange(len(p))) % self.size] = p
            self._seen += len(p)

    @property
    def filled(self) -> int:
        return min(self._seen, self.size)

    def tests(self) -> dict[str, DriftTest]:
        """Both tests once ``min_samples`` are in the window, else nothing (too few to say)."""
        with self._lock:
            window = self._ring[:self.filled].copy()
        if len(window) < self.min_samples:
            return {}
        return drift_tests_of(window, self.target_fpr, self.n_calibration)
