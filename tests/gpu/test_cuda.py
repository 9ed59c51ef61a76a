"""The CUDA path: device placement, reduced precision against fp32, pinned non-blocking copies, training on the
device, a 2-process NCCL step. Marked ``gpu``; each test skips with a reason where CUDA (or a second GPU) is
missing, so the suite passes on CPU. `scripts/gpu_check.sh` runs them on a machine that has the device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.data.synthetic import bars
from detector.scoring.scorer import Scorer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible)")]

# Reduced precision runs the networks in bf16/fp16 while the likelihood and every score stay float32: the
# difference to fp32 is the networks' rounding. Measured tolerances (relative to the spread of each score on
# the batch) are stated here and in docs/benchmarks/gpu.md.
PRECISION_TOLERANCE = {"bf16": 0.05, "fp16": 0.02}


@pytest.fixture(scope="module")
def x():
    return np.concatenate([bars(96, size=16, seed=5), bars(32, size=16, seed=6, vertical=True)])


def test_the_scorer_lives_on_the_device_and_matches_the_cpu(bundle_path, x):
    gpu, cpu = Scorer.from_path(bundle_path, device="cuda"), Scorer.from_path(bundle_path, device="cpu")
    assert next(gpu.model.parameters()).device.type == "cuda"
    assert gpu.latent_reference.points is None or gpu.latent_reference.points.device.type == "cuda"
    a, b = gpu.score(x), cpu.score(x)
    for name in ("novelty", "neg_elbo", "recon_error", "latent_distance"):
        np.testing.assert_allclose(a.scores[name], b.scores[name], rtol=1e-3, atol=1e-3, err_msg=name)
    np.testing.assert_array_equal(a.novel["novelty"], b.novel["novelty"])


def test_a_sample_scores_the_same_in_any_batch_on_the_device(bundle_path, x):
    gpu = Scorer.from_path(bundle_path, device="cuda")
    whole = gpu.score(x).scores["novelty"]
    parts = np.concatenate([gpu.score(x[i:i + 37]).scores["novelty"] for i in range(0, len(x), 37)])
    np.testing.assert_allclose(parts, whole, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("precision", sorted(PRECISION_TOLERANCE))
def test_reduced_precision_stays_within_its_stated_tolerance_of_fp32(bundle_path, x, precision):
    fp32 = Scorer.from_path(bundle_path, device="cuda").score(x)
    low = Scorer.from_path(bundle_path, device="cuda", precision=precision).score(x)
    for name in ("novelty", "neg_elbo", "recon_error"):
        a, b = low.scores[name], fp32.scores[name]
        assert a.dtype == np.float32
        spread = float(np.std(b)) or 1.0
        assert np.max(np.abs(a - b)) / spread < PRECISION_TOLERANCE[precision], (name, np.max(np.abs(a - b)), spread)


def test_batches_are_copied_from_pinned_memory_without_blocking(bundle_path, x):
    gpu = Scorer.from_path(bundle_path, device="cuda")
    t = gpu._to_device(x)
    assert t.device.type == "cuda" and t.shape == (len(x), 1, 16, 16)
    torch.cuda.synchronize()
    np.testing.assert_allclose(t.cpu().numpy(), x.astype(np.float32) / 255, atol=1e-7)


def test_staging_reuses_two_pinned_buffers_and_batches_staged_ahead_score_right(bundle_path, x):
    """The server stages batch n+1 (and may stage n+2) before batch n is scored: each staged copy must stay right
    while the pinned buffers it came through are refilled, and the buffers are allocated once, not per batch."""
    gpu, cpu = Scorer.from_path(bundle_path, device="cuda"), Scorer.from_path(bundle_path, device="cpu")
    parts = [x[:50], x[50:100], x[100:]]
    staged = [gpu.stage(p) for p in parts]  # three stagings through two buffers before any compute
    addresses = gpu.stager.buffer_addresses()
    assert len(addresses) == 2
    for p, s in zip(parts, staged):
        np.testing.assert_allclose(gpu.score(s).scores["novelty"], cpu.score(p).scores["novelty"], rtol=1e-3, atol=1e-3)
    for _ in range(3):
        gpu.score(gpu.stage(x[:40]))  # smaller batches fit the buffers already there
    assert gpu.stager.buffer_addresses() == addresses
    floats = gpu.stage(x.astype(np.float32) / 255).tensor()  # float samples take the same buffers, as float32
    np.testing.assert_allclose(floats.cpu().numpy(), gpu.stage(x).tensor().cpu().numpy(), atol=1e-7)


def test_the_server_stages_ahead_on_the_device_and_answers_each_request_its_rows(bundle_path, x):
    """Over gRPC on the device: concurrent requests, batches staged ahead of their compute, each request gets
    its own rows, as the CPU scores them."""
    from concurrent.futures import ThreadPoolExecutor

    from detector.client import DetectorClient
    from tests.integration.serving_helpers import ServerThread

    cpu = Scorer.from_path(bundle_path, device="cpu").score(x).scores["novelty"]
    with ServerThread(Scorer.from_path(bundle_path, device="cuda"), max_delay_ms=5, max_batch_samples=32) as s:
        def one(start):
            with DetectorClient(s.target) as client:
                return start, client.score(x[start:start + 8]).novelty_score
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, range(0, len(x), 8)))
    for start, novelty in answers:
        np.testing.assert_allclose(novelty, cpu[start:start + 8], rtol=1e-3, atol=1e-3)


def test_training_runs_on_the_device(data_dir, tmp_path):
    from detector.data import load_spec
    from detector.training.pipeline import train_bundle
    from tests.conftest import tiny_settings

    settings = tiny_settings(epochs=2)
    settings.train.device = "cuda"
    train_bundle(load_spec(str(data_dir / "normal.npz")), settings, tmp_path / "b", progress=False)
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert np.isfinite(config["train"]["val_loss"]).all()
    scorer = Scorer.from_path(tmp_path / "b", device="cuda")
    assert scorer.score(bars(4, size=16)).scores["novelty"].shape == (4,)
    # The map segmenter trained on the device too, and maps come from it there.
    assert scorer.segmenter is not None and next(scorer.segmenter.parameters()).device.type == "cuda"
    maps = scorer.score(bars(4, size=16), maps=True).anomaly_maps
    assert maps.shape == (4, 16, 16) and np.isfinite(maps).all()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="a 2-process NCCL step needs 2 GPUs")
def test_two_process_nccl_training(data_dir, tmp_path):
    toml = "[model]\nlatent_dim = 4\nbase_channels = 8\n[train]\nbatch_size = 32\nwarmup_epochs = 1\ndevice = \"cuda\"\n"
    (tmp_path / "t.toml").write_text(toml)
    torchrun = str(Path(sys.executable).parent / "torchrun")
    run = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "detector", "--quiet", "train",
                          "--data", str(data_dir / "normal.npz"), "--config", str(tmp_path / "t.toml"), "--epochs", "2",
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "two" / "manifest.json").exists()
