"""What `detector train` writes: the splits it recorded, the sections a bundle must hold, its refusals."""

from __future__ import annotations

import numpy as np
import pytest

from detector.data import load_spec
from detector.data.synthetic import bars
from detector.errors import ConfigError, DataError
from detector.model.bundle import load_bundle
from detector.training import pipeline
from detector.training.pipeline import train_bundle
from tests.conftest import tiny_settings


def test_the_bundle_records_its_splits_and_every_section(bundle_path):
    bundle = load_bundle(bundle_path)
    data = bundle.config["data"]
    assert data["n_train"] + data["n_val"] + data["n_cal"] == 2000
    assert set(bundle.config) >= {"model", "score", "data", "debias", "train"}
    train = bundle.config["train"]
    assert bundle.calibration["calibration_split"] == {k: train[k] for k in ("seed", "val_fraction", "cal_fraction")}
    assert bundle.calibration["n_calibrate"] == data["n_cal"] and bundle.calibration["n_standardise"] == data["n_val"]
    assert {"latent_mean", "latent_precision", "knn_reference"} <= set(bundle.density)


def test_too_little_data_or_a_bad_setting_is_refused_before_training(tmp_path):
    np.savez(tmp_path / "few.npz", x=bars(20, size=16)[:, 0])
    with pytest.raises(DataError, match="at least 50"):
        train_bundle(load_spec(str(tmp_path / "few.npz")), tiny_settings(epochs=1), tmp_path / "b", progress=False)
    np.savez(tmp_path / "ok.npz", x=bars(100, size=16)[:, 0])
    with pytest.raises(ConfigError):
        train_bundle(load_spec(str(tmp_path / "ok.npz")), tiny_settings(epochs=1, val_fraction=0.9), tmp_path / "b",
                     progress=False)
    assert not (tmp_path / "b").exists()


def test_the_segmenter_gets_what_the_run_deadline_leaves(tmp_path, monkeypatch):
    np.savez(tmp_path / "ok.npz", x=bars(200, size=16)[:, 0])
    budgets = []
    real = pipeline.train_segmenter

    def recording(model, data, cfg, *args, **kwargs):
        budgets.append(cfg.map_budget_s)
        return real(model, data, cfg, *args, **kwargs)

    monkeypatch.setattr(pipeline, "train_segmenter", recording)
    for deadline in (1000.0, 0.0):
        train_bundle(load_spec(str(tmp_path / "ok.npz")), tiny_settings(epochs=1, map_steps=5, map_budget_s=0,
                                                                         map_deadline_s=deadline),
                     tmp_path / f"b{deadline}", progress=False)
    # The deadline, less the seconds the run had taken before the segmenter; without one, no limit.
    assert 900.0 < budgets[0] < 1000.0 and budgets[1] == 0.0
    assert load_bundle(tmp_path / "b1000.0").config["train"]["map_deadline_s"] == 1000.0  # the setting, as given
