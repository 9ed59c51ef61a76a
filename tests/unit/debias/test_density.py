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
@pytest.mark.parametrize("whiten", [True, False])
def test_rare_mode_gets_larger_weights_and_flags(combine, whiten):
    mus, is_rare = toy(rare=0.01)
    density = LatentDensity.fit(mus, bins=10, alpha=0.01, combine=combine, rare_fraction=0.05, whiten=whiten,
                                max_ratio=10.0)
    w = density.weights(mus)
    assert w.mean() == pytest.approx(1.0, rel=1e-3)  # normalised on the training set
    assert w[is_rare].mean() >= 3 * w[~is_rare].mean()
    flags = density.flags(mus)
    assert 0.045 <= flags.mean() <= 0.065  # the rarest 5%, plus ties at the cut ("max" weights are discrete)
    assert flags[is_rare].mean() > 5 * flags[~is_rare].mean()


def test_config_reaches_the_density():
    from detector.config import DebiasConfig

    mus, _ = toy(2000)
    d = LatentDensity.from_config(mus, DebiasConfig(bins=7, whiten=False, max_draw_ratio=4.0))
    assert d.edges.shape == (4, 8) and d.center is None and d.log_cap == pytest.approx(np.log(4.0))


def test_jointly_rare_region_found_along_whitened_axes():
    # Two correlated dimensions; the rare samples sit off the diagonal, inside each axis's common range.
    rng = np.random.default_rng(1)
    t = rng.normal(0, 1, 20_000)
    mus = np.c_[t, t + rng.normal(0, 0.05, t.shape)]
    is_rare = np.zeros(len(t), bool)
    is_rare[:200] = True
    mus[:200] = np.c_[rng.normal(0.8, 0.05, 200), rng.normal(-0.8, 0.05, 200)]
    ratio = {}
    for whiten in (False, True):
        w = LatentDensity.fit(mus, whiten=whiten, max_ratio=10.0).weights(mus)
        ratio[whiten] = w[is_rare].mean() / w[~is_rare].mean()
    assert ratio[False] < 1.5 and ratio[True] >= 3, ratio


def test_round_trip_through_arrays_and_out_of_range_inputs():
    mus, _ = toy(2000)
    density = LatentDensity.fit(mus, combine="max", max_ratio=10.0)
    again = LatentDensity.from_arrays(density.to_arrays())
    np.testing.assert_allclose(again.weights(mus), density.weights(mus))
    far = np.full((1, 4), 1e6)
    assert np.isfinite(density.weights(far)).all()
    assert LatentDensity.from_arrays({}) is None


def test_bundles_from_before_whitening_still_load_with_raw_axes():
    mus, _ = toy(2000)
    raw = LatentDensity.fit(mus, whiten=False)
    old = {k: v for k, v in raw.to_arrays().items() if k not in ("hist_center", "hist_transform")}
    old["hist_params"] = old["hist_params"][:4]
    np.testing.assert_allclose(LatentDensity.from_arrays(old).weights(mus), raw.weights(mus), rtol=1e-6)


def test_weights_are_capped_at_the_ratio_with_mean_one_and_flags_keep_the_uncapped_order():
    mus, is_rare = toy()
    mus[:10] = 50.0  # a few far outliers that an uncapped product would weight enormously
    uncapped = LatentDensity.fit(mus)
    capped = LatentDensity.fit(mus, max_ratio=10.0)
    assert uncapped.weights(mus).max() > 10
    w = capped.weights(mus)
    assert w.mean() == pytest.approx(1.0, rel=1e-4)
    assert w.max() <= 10.0 * (1 + 1e-5)
    assert w[:10].min() == pytest.approx(w.max())  # still oversampled, just not without bound
    np.testing.assert_array_equal(capped.flags(mus), uncapped.flags(mus))
