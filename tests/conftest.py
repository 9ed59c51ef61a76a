"""Shared fixtures: tiny synthetic datasets on disk and one tiny trained bundle per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from detector.config import ModelConfig, Settings, TrainConfig
from detector.data.synthetic import bars

torch.set_num_threads(2)

# One sample scored in different batches: float32 convolutions differ by ~1e-7 relative between batch
# compositions, and the novelty sum divides each component by its spread on normal data. On the tiny bars
# bundle transform_nll's spread is 1% of its value (a half-turned bar looks the same), so novelty moves by
# up to ~1e-4 with the batching; mixing up samples moves it by whole units.
NOVELTY_TOLERANCE = {"rtol": 1e-3, "atol": 1e-3}


def tiny_settings(epochs: int = 8, **train) -> Settings:
    """A tiny model, trained briefly; its map segmenter gets 90 steps (tests/unit/scoring/test_maps.py checks that
    they are enough to find a pasted patch)."""
    train = {"map_steps": 90, **train}
    return Settings(
        model=ModelConfig(latent_dim=4, base_channels=8, hidden=(32, 16)),
        train=TrainConfig(epochs=epochs, batch_size=32, warmup_epochs=1, patience=2, **train),
    )


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    np.savez(d / "normal.npz", x=bars(2000, seed=1)[:, 0], y=np.zeros(2000, np.int64))
    np.savez(d / "normal_test.npz", x=bars(200, seed=2)[:, 0])
    np.savez(d / "anomalous.npz", x=bars(200, seed=3, vertical=True)[:, 0])
    return d


@pytest.fixture(scope="session")
def bundle_path(tmp_path_factory, data_dir) -> Path:
    from detector.data import load_spec
    from detector.training.pipeline import train_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    train_bundle(load_spec(str(data_dir / "normal.npz")), tiny_settings(), out, progress=False)
    return out


@pytest.fixture(scope="session")
def other_bundle(tmp_path_factory, data_dir) -> Path:
    """Same data and input shape as ``bundle_path``, another seed: another model version (hot reload)."""
    from detector.data import load_spec
    from detector.training.pipeline import train_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-seed7"
    train_bundle(load_spec(str(data_dir / "normal.npz")), tiny_settings(epochs=2, seed=7), out, progress=False)
    return out
