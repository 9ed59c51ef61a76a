"""Anomaly maps on the tiny bars bundle (the segmenter's maps) and on one trained without a segmenter (residual
maps, as bundles written before it): shape, cost only when asked, where the anomaly is, clear refusals."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from detector.data.synthetic import bars, manifold_vectors
from detector.errors import BundleError, InvalidInput
from detector.model.segmenter import PREFIX
from detector.scoring.maps import CENTER, LEGACY_SMOOTHING, SMOOTHING, SMOOTHING_KEY, SPREAD, MapScale, fitted_smoothing
from detector.scoring.overlay import MapWriter, overlay
from detector.scoring.scorer import Scorer


@pytest.fixture(scope="module")
def scorer(bundle_path):
    return Scorer.from_path(bundle_path, device="cpu")


@pytest.fixture(scope="module")
def residual_scorer(tmp_path_factory, data_dir):
    """A bundle trained without the map segmenter (map_steps = 0): residual x gradient maps."""
    from detector.data import load_spec
    from detector.training.pipeline import train_bundle
    from tests.conftest import tiny_settings

    out = tmp_path_factory.mktemp("bundles") / "no-segmenter"
    train_bundle(load_spec(str(data_dir / "normal.npz")), tiny_settings(map_steps=0), out, progress=False)
    return Scorer.from_path(out, device="cpu")


@pytest.fixture(params=["segmenter", "residual"])
def any_scorer(request, scorer, residual_scorer):
    return scorer if request.param == "segmenter" else residual_scorer


def pasted(n: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normal (horizontal) bars with a 6x6 patch of a vertical-bar image pasted in; the changed pixels."""
    clean = bars(n, size=16, seed=20)
    donor = bars(n, size=16, seed=21, vertical=True)
    x = clean.copy()
    x[:, :, 5:11, 3:9] = donor[:, :, 5:11, 3:9]
    return x, clean, np.abs(x.astype(int) - clean.astype(int))[:, 0] > 2


def test_maps_shape_dtype_and_nothing_else_changes(any_scorer):
    scorer = any_scorer
    x = bars(9, size=16, seed=22)
    plain, with_maps = scorer.score(x), scorer.score(x, maps=True)
    assert plain.anomaly_maps is None
    assert with_maps.anomaly_maps.shape == (9, 16, 16) and with_maps.anomaly_maps.dtype == np.float32
    assert np.isfinite(with_maps.anomaly_maps).all()
    for name, values in plain.scores.items():
        np.testing.assert_array_equal(values, with_maps.scores[name], err_msg=name)
    # One sample's map does not depend on the batch it travels in.
    np.testing.assert_allclose(scorer.score(x[4:6], maps=True).anomaly_maps, with_maps.anomaly_maps[4:6], atol=1e-4)


def test_map_is_higher_inside_a_pasted_patch_than_outside(any_scorer):
    scorer = any_scorer
    x, clean, changed = pasted()
    maps = scorer.score(x, maps=True).anomaly_maps
    inside = np.array([m[c].mean() for m, c in zip(maps, changed) if c.any()])
    outside = np.array([m[~c].mean() for m, c in zip(maps, changed) if c.any()])
    assert len(inside) > 30 and (inside > outside).mean() >= 0.9 and np.median(inside - outside) > 1.0
    # Normal images: 0 is the typical pixel, the patch's pixels stand out against them too.
    normal = scorer.score(clean, maps=True).anomaly_maps
    assert abs(np.median(normal)) < 1.0 and np.median(inside) > np.quantile(normal, 0.99)


def test_no_maps_for_vectors_or_bundles_calibrated_before_maps(scorer, tmp_path):
    from detector.data import load_spec
    from detector.training.pipeline import train_bundle
    from tests.conftest import tiny_settings

    np.save(tmp_path / "v.npy", manifold_vectors(600, dim=6))
    train_bundle(load_spec(str(tmp_path / "v.npy")), tiny_settings(epochs=1), tmp_path / "vec", progress=False)
    vector = Scorer.from_path(tmp_path / "vec", device="cpu")
    with pytest.raises(InvalidInput, match="image models"):
        vector.score(manifold_vectors(3, dim=6), maps=True)
    old = dataclasses.replace(scorer.bundle, calibration_arrays={k: v for k, v in scorer.bundle.calibration_arrays.items()
                                                                  if k not in (CENTER, SPREAD)})
    with pytest.raises(BundleError, match="detector calibrate"):
        Scorer(old, device="cpu").score(bars(2, size=16), maps=True)


def test_which_map_a_bundle_gives(scorer, residual_scorer):
    """A bundle trained with the segmenter stores it with the VAE's weights (part of the model version) and says so
    in its config; one without (map_steps = 0, or written before the segmenter) gives residual maps."""
    assert scorer.segmenter is not None and "map_segmenter" in scorer.bundle.config
    assert any(k.startswith(PREFIX) for k in scorer.bundle.weights)
    assert residual_scorer.segmenter is None and "map_segmenter" not in residual_scorer.bundle.config
    assert not any(k.startswith(PREFIX) for k in residual_scorer.bundle.weights)
    x = pasted(4)[0]
    assert not np.allclose(scorer.score(x, maps=True).anomaly_maps, residual_scorer.score(x, maps=True).anomaly_maps)


def test_maps_are_smoothed_as_their_scale_was_fitted(scorer, residual_scorer):
    """The bundle stores the smoothing its map scale was fitted with; a bundle calibrated before that was stored
    keeps the smoothing it was fitted with, so its 0 is still 'as normal as usual'."""
    for s in (scorer, residual_scorer):
        assert float(s.bundle.calibration_arrays[SMOOTHING_KEY][0]) == s.map_scale.smoothing == \
            fitted_smoothing(s.segmenter)
    assert residual_scorer.map_scale.smoothing == SMOOTHING
    arrays = residual_scorer.bundle.calibration_arrays
    legacy = MapScale.from_arrays({k: v for k, v in arrays.items() if k != SMOOTHING_KEY})
    assert legacy.smoothing == LEGACY_SMOOTHING < SMOOTHING
    old = dataclasses.replace(residual_scorer.bundle,
                              calibration_arrays={k: v for k, v in arrays.items() if k != SMOOTHING_KEY})
    x = pasted(4)[0]
    sharp = Scorer(old, device="cpu").score(x, maps=True).anomaly_maps
    smooth = residual_scorer.score(x, maps=True).anomaly_maps
    # Same centre and spread, wider Gaussian: smaller peaks and smaller steps from pixel to pixel.
    assert smooth.max() < sharp.max()
    assert np.abs(np.diff(smooth, axis=-1)).mean() < np.abs(np.diff(sharp, axis=-1)).mean()


def test_overlay_and_map_files(scorer, tmp_path):
    x, _, _ = pasted(3)
    maps = scorer.score(x, maps=True).anomaly_maps
    rgb = overlay(x[0], maps[0])
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    MapWriter(tmp_path / "maps", digits=2).write(7, x, maps)
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == [f"{i:02d}.{e}" for i in (7, 8, 9) for e in ("npy", "png")]
    np.testing.assert_array_equal(np.load(tmp_path / "maps/08.npy"), maps[1])
    with Image.open(tmp_path / "maps/09.png") as png:
        assert png.size[0] >= 112 and png.mode == "RGB"
