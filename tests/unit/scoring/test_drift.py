import numpy as np
import pytest

from detector.scoring.calibration import calibrate_score
from detector.scoring.drift import DriftWindow, PValueHistogram, beta_binomial_sf, drift_tests_of

# Small calibration sets on purpose: the tests must hold exactly there.
pytestmark = pytest.mark.filterwarnings("ignore::detector.scoring.calibration.CalibrationWarning")
stats = pytest.importorskip("scipy.stats")  # comes with scikit-learn (dev extras): the reference implementation


def test_ks_and_binomial_match_scipy():
    rng = np.random.default_rng(0)
    for n in (40, 300, 2000):
        p = rng.uniform(size=n) ** 1.15
        ks = drift_tests_of(p, 0.01, n_calibration=10**12)["ks"]  # a calibration so large it is the Uniform itself
        ref = stats.kstest(p, "uniform")
        assert ks.statistic == pytest.approx(ref.statistic, rel=1e-12) and ks.n == n
        assert ks.p_value == pytest.approx(ref.pvalue, abs=0.02)  # asymptotic with Stephens' correction
    # Against a calibration of m scores the test is the two-sample one between the window's and the calibration's.
    cal = calibrate_score("novelty", rng.normal(size=500), 0.01)
    window = rng.normal(0.15, 1, size=800)
    ks = drift_tests_of(cal.p_values(window), 0.01, cal.n)["ks"]
    ref = stats.ks_2samp(window, cal.sorted_scores, method="asymp")
    assert ks.statistic == pytest.approx(ref.statistic, abs=1 / cal.n) and ks.p_value == pytest.approx(ref.pvalue, abs=0.02)
    for k, n, a, b in [(22, 1000, 3, 297), (5, 100, 1, 99), (60, 1000, 60, 5941), (1, 30, 2, 40)]:
        assert beta_binomial_sf(k, n, a, b) == pytest.approx(stats.betabinom.sf(k - 1, n, a, b), rel=1e-8)


def conformal_windows(rng, n_windows: int, size: int, m: int = 300, shift: float = 0.0, anomalous: float = 0.0):
    """Windows of conformal p-values as the server computes them, each against its own calibration of ``m`` normal
    scores (a fresh bundle each), of normal scores (optionally shifted, with a share of clear anomalies)."""
    for _ in range(n_windows):
        cal = calibrate_score("novelty", rng.normal(size=m), 0.01)
        scores = rng.normal(size=size) + shift
        scores[rng.uniform(size=size) < anomalous] = 50.0
        yield cal.p_values(scores), cal.n


def test_no_drift_false_alarms_are_at_most_nominal_and_shifts_fire():
    rng = np.random.default_rng(1)
    # Small calibration sets (300) against windows of 1000: a test that took the p-values as exactly uniform
    # would fire on a third of these windows at the 5% level.
    tests = [drift_tests_of(p, 0.01, m) for p, m in conformal_windows(rng, 400, 1000)]
    for name in ("ks", "binomial"):  # 400 windows: +-0.03 at 0.05
        p = np.array([t[name].p_value for t in tests])
        for alpha in (0.01, 0.05, 0.2):
            assert (p < alpha).mean() <= alpha + 0.03, (name, alpha)
    ks = np.array([t["ks"].p_value for t in tests])  # continuous: near uniform, not merely conservative
    assert (ks < 0.5).mean() == pytest.approx(0.5, abs=0.1)
    (shifted, m), = conformal_windows(rng, 1, 1000, m=5000, shift=0.5)
    assert drift_tests_of(shifted, 0.01, m)["ks"].p_value < 1e-6
    (anomalous, m), = conformal_windows(rng, 1, 1000, m=5000, anomalous=0.05)
    tests = drift_tests_of(anomalous, 0.01, m)
    assert tests["binomial"].p_value < 1e-6 and tests["binomial"].statistic == pytest.approx(0.06, abs=0.02)


def test_histogram_over_chunks_equals_the_whole():
    (p, m), = conformal_windows(np.random.default_rng(2), 1, 3000, m=1000, shift=0.1)
    hist = PValueHistogram()
    for chunk in np.array_split(p, 7):
        hist.add(chunk)
    whole, merged = drift_tests_of(p, 0.01, m), hist.tests(0.01, m)
    for name in ("ks", "binomial"):
        assert merged[name] == whole[name]
    assert PValueHistogram().tests(0.01, m) == {}


def test_window_holds_the_latest_samples_only():
    window = DriftWindow(size=200, target_fpr=0.01, n_calibration=10**6, min_samples=50)
    window.add(np.full(49, 0.5))
    assert window.tests() == {} and window.filled == 49
    window.add(np.random.default_rng(3).uniform(size=1000))
    assert window.filled == 200 and window.tests()["ks"].p_value > 1e-3
    for _ in range(4):
        window.add(np.full(50, 0.001))  # the last 200 are all flagged
    tests = window.tests()
    assert tests["binomial"].statistic == 1.0 and tests["ks"].statistic == pytest.approx(0.999)
