"""Bundles written before the on-device novelty score: they load and score as before, and `detector calibrate`
moves them to the current score."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from detector.calibrate import raw_columns
from detector.data.splits import split
from detector.data.synthetic import bars
from detector.model.bundle import load_bundle, save_bundle
from detector.scoring.novelty import Component, NoveltyFusion
from detector.scoring.scorer import Scorer


@pytest.fixture(scope="module")
def legacy_bundle(tmp_path_factory, bundle_path, data_dir):
    """The tiny bundle as the previous release wrote it: no elbo_samples / transform_views, K = 8 for the ELBO,
    and a fusion of JPEG 2000 complexity_corrected, recon_error, latent_knn and transform_nll."""
    from detector.data import load_spec

    path = tmp_path_factory.mktemp("legacy") / "old"
    shutil.copytree(bundle_path, path)
    bundle = load_bundle(path)
    bundle.config["score"] = {"iw_samples": 8, "iw_chunk": 4096, "noise_seed": 1234}
    cfg = bundle.config["train"]
    val = split(load_spec(str(data_dir / "normal.npz")), cfg["val_fraction"], cfg["cal_fraction"], cfg["seed"]).val
    raw = raw_columns(Scorer(bundle, device="cpu"), val, 256, False, "")
    components = (Component("complexity_corrected", False, False), Component("recon_error", False, True, True),
                  Component("latent_knn", False, True), Component("transform_nll", False, True, True))
    bundle.calibration["fusion"] = NoveltyFusion.fit(raw, components, "sum").to_json()
    save_bundle(bundle, path)
    return path


def test_a_legacy_bundle_scores_as_it_did(legacy_bundle):
    scorer = Scorer.from_path(legacy_bundle, device="cpu")
    assert scorer.legacy and scorer.eps.shape[0] == 8 and scorer.transform_views == 4 and scorer.recon_at == "mean"
    x = bars(6, size=16, seed=11)
    result = scorer.score(x)
    # Every diagnostic computed by default, as that release did, and its novelty is its own fusion of them.
    assert {"iw_nll", "complexity", "complexity_corrected"} <= set(result.scores)
    np.testing.assert_allclose(result.scores["novelty"], scorer.fusion.apply(result.scores), rtol=1e-5)
    assert np.isfinite(result.p_values["novelty"]).all()


def test_calibrate_moves_a_legacy_bundle_to_the_on_device_score(legacy_bundle, data_dir, tmp_path):
    path = tmp_path / "b"
    shutil.copytree(legacy_bundle, path)
    proc = subprocess.run([sys.executable, "-m", "detector", "--quiet", "calibrate", "--model", str(path), "--data",
                           str(data_dir / "normal.npz"), "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((path / "config.json").read_text())
    assert config["score"]["elbo_samples"] == 1 and config["score"]["transform_views"] == 1
    assert config["score"]["recon_at"] == "draw"
    scorer = Scorer.from_path(path, device="cpu")
    assert not scorer.legacy and scorer.fusion.typicality is not None
    result = scorer.score(bars(6, size=16, seed=11))
    assert "iw_nll" not in result.scores and "complexity" not in result.scores
