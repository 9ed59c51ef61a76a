import numpy as np
import pytest

from detector.scoring.detection_metrics import auprc, auroc, fpr_at_tpr


def test_auroc_perfect_reversed_and_ties():
    assert auroc(np.array([0, 1]), np.array([2, 3])) == 1.0
    assert auroc(np.array([2, 3]), np.array([0, 1])) == 0.0
    assert auroc(np.array([1, 1]), np.array([1, 1])) == 0.5


def test_auroc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    n, a = rng.normal(size=300).round(1), rng.normal(0.5, size=200).round(1)
    pairs = (a[:, None] > n[None]).mean() + 0.5 * (a[:, None] == n[None]).mean()
    assert auroc(n, a) == pytest.approx(pairs)


def test_auprc_and_fpr_at_tpr():
    assert auprc(np.array([0.0, 0.1]), np.array([1.0, 2.0])) == 1.0
    rng = np.random.default_rng(1)
    n, a = rng.normal(size=2000), rng.normal(size=2000)
    assert auprc(n, a) == pytest.approx(0.5, abs=0.05)
    assert fpr_at_tpr(np.arange(100.0), np.arange(100.0, 200.0)) == 0.0
    assert fpr_at_tpr(n, a) == pytest.approx(0.95, abs=0.03)
