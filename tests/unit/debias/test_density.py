import numpy as np
import pytest

from detector.debias.density import LatentDensity


def toy(n=20_000, rare=0.03, seed=0):
    rng = np.random.default_rng(seed)
    is_rare = rng.random(n) < rare
    mus = rng.normal(0, 1, (n, 4))
    mus[is_rare, :2] = rng.normal(4.0, 0.3, (is_rare.sum(), 2))  # a rare mode in two dimensions
    return mus, is_rare


@pytest.mark.parametrize("combine", ["product", "max"])
def test_rare_mode_gets_larger_weights_and_flags(combine):
    mus, is_rare = toy()
    density = LatentDensity.fit(mus, bins=10, alpha=0.01, combine=combine, rare_fraction=0.05)
    w = density.weights(mus)
    assert w.mean() == pytest.approx(1.0, rel=1e-3)  # normalised on the training set
    assert w[is_rare].mean() >= 3 * w[~is_rare].mean()
    flags = density.flags(mus)
    assert flags.mean() == pytest.approx(0.05, abs=0.01)
    assert flags[is_rare].mean() > 5 * flags[~is_rare].mean()


def test_round_trip_through_arrays_and_out_of_range_inputs():
    mus, _ = toy(2000)
    density = LatentDensity.fit(mus, combine="max")
    again = LatentDensity.from_arrays(density.to_arrays())
    np.testing.assert_allclose(again.weights(mus), density.weights(mus))
    far = np.full((1, 4), 1e6)
    assert np.isfinite(density.weights(far)).all()
    assert LatentDensity.from_arrays({}) is None


def test_training_draw_weights_are_capped_at_the_ratio_with_mean_one():
    from detector.debias.sampler import cap_weights

    w = np.r_[np.ones(990), np.full(10, 1e6)]
    capped = cap_weights(w, 10.0)
    assert capped.mean() == pytest.approx(1.0)
    assert capped.max() <= 10.0 * (1 + 1e-6)
    assert capped[-1] > capped[0]  # still oversampled, just not without bound
