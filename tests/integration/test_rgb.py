"""An RGB bundle end to end on tiny data: train -> serve -> score, channels-first and channels-last, over gRPC
and the CLI, with the numbers of the in-process Scorer."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from detector.client import DetectorClient
from detector.data import load_spec
from detector.data.synthetic import bars
from detector.scoring.scorer import Scorer
from detector.training.pipeline import train_bundle
from tests.conftest import NOVELTY_TOLERANCE, tiny_settings
from tests.integration.serving_helpers import ServerThread

TINT = np.array([1.0, 0.55, 0.2], np.float32)[None, :, None, None]  # channels differ: a wrong transpose shows


def tinted(n, seed, vertical=False):
    return (bars(n, size=12, channels=3, seed=seed, vertical=vertical) * TINT).round().astype(np.uint8)


@pytest.fixture(scope="module")
def rgb_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rgb")
    np.savez(folder / "train.npz", x=tinted(600, 1))
    out = folder / "bundle"
    train_bundle(load_spec(str(folder / "train.npz")), tiny_settings(epochs=3), out, progress=False)
    return out


def test_rgb_bundle_scores_the_same_in_every_layout_over_grpc_and_the_cli(rgb_bundle, tmp_path):
    scorer = Scorer.from_path(rgb_bundle, device="cpu")
    assert scorer.sample_shape == (3, 12, 12)
    x = np.concatenate([tinted(6, 2), tinted(6, 3, vertical=True)])
    local = scorer.score(x)
    assert local.scores["novelty"][6:].mean() > local.scores["novelty"][:6].mean()  # the model learnt something
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    with ServerThread(scorer) as s:
        with DetectorClient(s.target) as client:
            remote = {"NCHW": client.score(x), "NHWC": client.score(nhwc, layout="NHWC")}
        np.save(tmp_path / "frames.npy", nhwc)  # channels-last on disk, as numpy / OpenCV hold images
        out = tmp_path / "remote.csv"
        run = subprocess.run([sys.executable, "-m", "detector", "--quiet", "score", "--server", s.target,
                              "--data", str(tmp_path / "frames.npy"), "--out", str(out)],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
    for name, r in remote.items():
        np.testing.assert_allclose(r.novelty_score, local.scores["novelty"], **NOVELTY_TOLERANCE, err_msg=name)
        np.testing.assert_allclose(r.neg_elbo, local.scores["neg_elbo"], rtol=1e-4, atol=1e-3, err_msg=name)
    rows = list(csv.DictReader(open(out)))
    np.testing.assert_allclose([float(r["novelty"]) for r in rows], local.scores["novelty"], **NOVELTY_TOLERANCE)
