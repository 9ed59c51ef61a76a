"""Thresholds at a target false-positive rate and conformal p-values, per score.

With n held-out normal scores, the threshold is the ceil((n+1)(1-fpr))-th smallest: a new
exchangeable normal sample exceeds it with probability at most fpr (split conformal), and
its p-value (1 + #{calibration >= s}) / (n + 1) is <= fpr exactly when it is flagged.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from detector.errors import ConfigError, DataError
from detector.model.device import numpy_or_tensor, on_device

MIN_EXCEEDANCES = 10  # fewer calibration samples above the threshold than this: a noisy threshold


class CalibrationWarning(UserWarning):
    pass


@dataclass
class ScoreCalibration:
    name: str
    target_fpr: float
    threshold: float
    sorted_scores: np.ndarray  # (n,) ascending, float64
    _on_device: dict = field(default_factory=dict, repr=False, compare=False)  # tensor copies (on_device)

    @property
    def n(self) -> int:
        return len(self.sorted_scores)

    @numpy_or_tensor
    def p_values(self, scores: torch.Tensor) -> torch.Tensor:
        """Conformal p-values, float32; numpy or tensors (on any device)."""
        ref = on_device(self._on_device, "sorted", self.sorted_scores, scores.device)
        at_or_above = self.n - torch.searchsorted(ref, scores.contiguous(), right=False)
        return ((1 + at_or_above) / (self.n + 1)).float()

    def is_novel(self, scores):
        return scores > self.threshold


def calibrate_score(name: str, scores: np.ndarray, target_fpr: float) -> ScoreCalibration:
    if not 0 < target_fpr < 1:
        raise ConfigError(f"target FPR must lie in (0, 1), got {target_fpr}")
    values = np.sort(np.asarray(scores, dtype=np.float64))
    if len(values) == 0 or not np.isfinite(values).all():
        raise DataError(f"calibration scores for {name} are empty or not finite: the held-out data gives the model "
                        "no usable scores (check it is the data the model was trained on, and finite)")
    n = len(values)
    rank = math.ceil((n + 1) * (1 - target_fpr))
    if rank > n:
        warnings.warn(f"{name}: {n} calibration samples cannot support FPR {target_fpr}: need at least "
                      f"{math.ceil(1 / target_fpr) - 1}; threshold set above every calibration score",
                      CalibrationWarning, stacklevel=2)
        threshold = float(values[-1])
    else:
        threshold = float(values[rank - 1])
        if n - rank + 1 < MIN_EXCEEDANCES:
            warnings.warn(f"{name}: threshold for FPR {target_fpr} rests on {n - rank + 1} of {n} calibration "
                          f"samples; use at least {math.ceil(MIN_EXCEEDANCES / target_fpr)} for a stable rate",
                          CalibrationWarning, stacklevel=2)
    return ScoreCalibration(name, target_fpr, threshold, values)


def calibration_to_bundle(cals: dict[str, ScoreCalibration]) -> tuple[dict, dict[str, np.ndarray]]:
    meta = {name: {"target_fpr": c.target_fpr, "threshold": c.threshold, "n": c.n} for name, c in cals.items()}
    arrays = {f"sorted/{name}": c.sorted_scores for name, c in cals.items()}
    return meta, arrays


def calibration_from_bundle(meta: dict, arrays: dict[str, np.ndarray]) -> dict[str, ScoreCalibration]:
    return {name: ScoreCalibration(name, float(m["target_fpr"]), float(m["threshold"]), arrays[f"sorted/{name}"])
            for name, m in meta.items()}
