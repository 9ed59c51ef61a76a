import numpy as np
import pytest

from detector.scoring.calibration import CalibrationWarning, calibrate_score


def test_threshold_gives_target_fpr_on_fresh_normal_data():
    rng = np.random.default_rng(0)
    cal = calibrate_score("s", rng.normal(size=5000), 0.01)
    fresh = rng.normal(size=200_000)
    assert cal.is_novel(fresh).mean() == pytest.approx(0.01, abs=0.003)


def test_p_values_are_conformal_and_agree_with_threshold():
    rng = np.random.default_rng(1)
    cal = calibrate_score("s", rng.normal(size=999), 0.05)
    x = rng.normal(size=10_000)
    p = cal.p_values(x)
    assert ((p > 0) & (p <= 1)).all()
    np.testing.assert_array_equal(p <= 0.05, cal.is_novel(x))
    assert cal.p_values(np.array([100.0]))[0] == pytest.approx(1 / 1000)
    assert cal.p_values(np.array([-100.0]))[0] == 1.0


def test_p_values_are_uniform_under_the_null_over_calibration_draws():
    rates = []
    for seed in range(60):
        rng = np.random.default_rng(seed)
        cal = calibrate_score("s", rng.normal(size=999), 0.05)
        rates.append((cal.p_values(rng.normal(size=2000)) <= 0.1).mean())
    assert np.mean(rates) == pytest.approx(0.1, abs=0.006)


def test_small_calibration_set_warns():
    with pytest.warns(CalibrationWarning, match="rests on"):
        calibrate_score("s", np.arange(200.0), 0.01)
    with pytest.warns(CalibrationWarning, match="cannot support"):
        calibrate_score("s", np.arange(50.0), 0.01)


def test_rejects_nonfinite_and_bad_fpr():
    from detector.errors import ConfigError, DataError

    with pytest.raises(DataError, match="not finite"):
        calibrate_score("s", np.array([1.0, np.nan]), 0.01)
    with pytest.raises(ConfigError, match="target FPR"):
        calibrate_score("s", np.arange(10.0), 1.5)
