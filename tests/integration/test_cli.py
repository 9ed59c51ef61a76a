"""The CLI end to end on synthetic data, as a user runs it: real processes, real files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import NOVELTY_TOLERANCE, tiny_settings  # noqa: F401  (keeps the settings in one place)


def detector(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detector", "--quiet", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


TINY_TOML = """
[model]
latent_dim = 4
base_channels = 8
[train]
batch_size = 32
warmup_epochs = 1
patience = 2
map_steps = 90
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    work = tmp_path_factory.mktemp("cli")
    (work / "tiny.toml").write_text(TINY_TOML)
    out = work / "bundle"
    proc = detector("train", "--data", str(data_dir / "normal.npz"), "--out", str(out), "--config",
                    str(work / "tiny.toml"), "--epochs", "8", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout
    return work, out


def test_train_writes_a_complete_bundle(trained):
    _, out = trained
    names = sorted(p.name for p in out.iterdir())
    assert names == ["calibration.json", "calibration.safetensors", "config.json", "density.safetensors",
                     "manifest.json", "model.safetensors"]
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["primary"] == "novelty" and cal["scores"]["novelty"]["target_fpr"] == 0.01


def test_evaluate_json_contract(trained, data_dir):
    _, out = trained
    proc = detector("evaluate", "--model", str(out), "--normal", str(data_dir / "normal_test.npz"),
                    "--anomalous", str(data_dir / "anomalous.npz"), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["primary"] == "novelty"
    for name in ("novelty", "neg_elbo", "recon_error"):
        assert set(report["scores"][name]) >= {"auroc", "auprc", "fpr_at_95_tpr", "calibrated_fpr", "detection_rate"}
    # Vertical bars against a model of horizontal ones: an easy, real separation.
    assert report["scores"]["novelty"]["auroc"] > 0.9
    assert report["scores"]["novelty"]["calibrated_fpr"] < 0.1


def test_score_csv_rows_match_in_process_scorer(trained, data_dir):
    work, out = trained
    csv_path = work / "scores.csv"
    proc = detector("score", "--model", str(out), "--data", str(data_dir / "anomalous.npz"), "--out", str(csv_path))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 200 and rows[0]["index"] == "0"
    from detector.data import load_spec
    from detector.scoring.scorer import Scorer

    result = Scorer.from_path(out, device="cpu").score_samples(load_spec(str(data_dir / "anomalous.npz")),
                                                              progress=False)
    np.testing.assert_allclose([float(r["novelty"]) for r in rows], result.scores["novelty"], **NOVELTY_TOLERANCE)
    assert [r["is_novel_novelty"] == "1" for r in rows] == result.novel["novelty"].tolist()


def test_calibrate_in_place_changes_threshold_and_keeps_bundle_valid(trained, data_dir):
    _, out = trained
    before = json.loads((out / "calibration.json").read_text())["scores"]["novelty"]["threshold"]
    proc = detector("calibrate", "--model", str(out), "--data", str(data_dir / "normal_test.npz"), "--fpr", "0.05")
    assert proc.returncode == 0, proc.stderr
    after = json.loads((out / "calibration.json").read_text())["scores"]["novelty"]
    assert after["target_fpr"] == 0.05 and after["threshold"] != before
    from detector.model.bundle import load_bundle

    load_bundle(out)  # manifest still matches


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    """A 3-epoch run to compare resumed runs with, and the arguments that made it."""
    work = tmp_path_factory.mktemp("resume")
    (work / "tiny.toml").write_text(TINY_TOML)
    common = ["--data", str(data_dir / "normal.npz"), "--config", str(work / "tiny.toml"), "--seed", "3"]
    full = detector("train", *common, "--out", str(work / "full"), "--epochs", "3")
    assert full.returncode == 0, full.stderr
    return common, (work / "full" / "model.safetensors").read_bytes()


def test_train_resume_after_stopping_gives_identical_weights(tmp_path, uninterrupted):
    common, reference = uninterrupted
    part = detector("train", *common, "--out", str(tmp_path / "resumed"), "--epochs", "2")
    assert part.returncode == 0, part.stderr
    resumed = detector("train", *common, "--out", str(tmp_path / "resumed"), "--epochs", "3", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "resumed" / "model.safetensors").read_bytes() == reference


def test_train_resume_after_sigkill_gives_identical_weights(tmp_path, uninterrupted):
    import signal
    import time

    common, reference = uninterrupted
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "detector", "--quiet", "train", *common, "--out", str(out),
                             "--epochs", "3"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = out.with_name(out.name + ".ckpt") / "meta.json"
    deadline = time.time() + 120
    while not checkpoint.exists():  # the first epoch's checkpoint is written: kill mid-training
        assert time.time() < deadline and proc.poll() is None, "training finished or stalled before the kill"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists()
    resumed = detector("train", *common, "--out", str(out), "--epochs", "3", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "model.safetensors").read_bytes() == reference


@pytest.mark.parametrize("args,message", [
    (["train", "--data", "nope.npz", "--out", "b"], "no such file"),
    (["train", "--data", "fashion-mnist:valid", "--out", "b"], "'train' or 'test'"),
    (["train", "--data", "fashion-mnist:train:classes=x", "--out", "b"], "must be integers"),
    (["train", "--data", "fashion-mnist:train", "--out", "b", "--epochs", "0"], "positive integer"),
    (["train", "--data", "fashion-mnist:train", "--out", "b", "--config", "missing.toml"], "config file not found"),
    (["score", "--model", "nobundle", "--data", "fashion-mnist:test", "--out", "s.csv"], "no model bundle"),
    (["score", "--model", "b", "--data", "fashion-mnist:test", "--out", "s.txt"], "must end in .csv"),
    (["evaluate", "--model", "nobundle", "--normal", "a", "--anomalous", "b"], "no model bundle"),
    (["calibrate", "--model", "nobundle", "--data", "fashion-mnist:test", "--fpr", "2"], "rate in (0, 1)"),
])
def test_user_mistakes_exit_2_with_one_line(tmp_path, args, message):
    proc = detector(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1


def test_bad_data_files_exit_2(tmp_path, trained):
    _, out = trained
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    (tmp_path / "wrong.npz").write_bytes(b"")
    np.savez(tmp_path / "shape.npz", x=np.zeros((4, 9, 9), np.uint8))
    for spec in ("bad.npz", "wrong.npz"):
        proc = detector("train", "--data", spec, "--out", "b", cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    proc = detector("score", "--model", str(out), "--data", "shape.npz", "--out", "s.csv", cwd=tmp_path)
    assert proc.returncode == 2 and "do not fit a model trained on [1, 16, 16]" in proc.stderr


def test_tampered_bundle_exit_2_naming_file(tmp_path, trained, data_dir):
    import shutil

    _, out = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    proc = detector("evaluate", "--model", str(copy), "--normal", str(data_dir / "normal_test.npz"),
                    "--anomalous", str(data_dir / "anomalous.npz"))
    assert proc.returncode == 2 and "model.safetensors" in proc.stderr


def test_images_without_an_orientation_train_without_the_transform_component(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "noise.npy", rng.integers(0, 256, (600, 1, 12, 12), dtype=np.uint8))  # no up, no down
    proc = detector("train", "--data", str(tmp_path / "noise.npy"), "--out", str(tmp_path / "b"), "--config",
                    str(tmp_path / "tiny.toml"), "--epochs", "3")
    assert proc.returncode == 0, proc.stderr
    assert "transform_nll left out of novelty" in proc.stderr and "Traceback" not in proc.stderr
    fusion = json.loads((tmp_path / "b" / "calibration.json").read_text())["fusion"]
    assert [c["score"] for c in fusion["components"]] == ["recon_error_lowpass", "latent_knn",
                                                               "posterior_log_var"]


def test_diagnostics_flag_adds_columns_and_an_unknown_name_is_one_line(bundle_path, data_dir, tmp_path):
    out = tmp_path / "s.csv"
    proc = detector("score", "--model", str(bundle_path), "--data", str(data_dir / "normal_test.npz"), "--out",
                    str(out), "--diagnostics", "iw_nll", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    header = out.read_text().splitlines()[0].split(",")
    assert "iw_nll" in header and "p_value_iw_nll" in header and "complexity" not in header
    bad = detector("score", "--model", str(bundle_path), "--data", str(data_dir / "normal_test.npz"), "--out",
                   str(tmp_path / "t.csv"), "--diagnostics", "regret")
    assert bad.returncode == 2 and "unknown diagnostic 'regret'" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "t.csv").exists()


def test_a_conv_model_asked_for_vectors_is_one_line_not_a_traceback(tmp_path):
    np.save(tmp_path / "v.npy", np.random.default_rng(0).random((64, 8)).astype(np.float32))
    (tmp_path / "c.toml").write_text('[model]\nkind = "conv"\n')
    proc = detector("train", "--data", str(tmp_path / "v.npy"), "--config", str(tmp_path / "c.toml"),
                    "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert 'kind = "conv" needs images' in proc.stderr and 'use kind = "mlp" or "auto"' in proc.stderr
    assert not (tmp_path / "b").exists()


def test_score_maps_writes_a_map_and_an_overlay_per_sample(bundle_path, data_dir, tmp_path):
    from PIL import Image

    proc = detector("score", "--model", str(bundle_path), "--data", str(data_dir / "anomalous.npz"), "--out",
                    str(tmp_path / "s.csv"), "--maps", str(tmp_path / "maps"), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert f"overlays (.png) in {tmp_path / 'maps'}" in proc.stdout
    names = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert names == sorted(f"{i:03d}.{ext}" for i in range(200) for ext in ("npy", "png"))
    first = np.load(tmp_path / "maps/000.npy")
    assert first.shape == (16, 16) and first.dtype == np.float32 and np.isfinite(first).all()
    with Image.open(tmp_path / "maps/199.png") as png:
        png.load()
        assert png.mode == "RGB" and png.size == (112, 112)
    np.save(tmp_path / "v.npy", np.random.default_rng(0).random((4, 8)).astype(np.float32))
    bad = detector("score", "--model", str(bundle_path), "--data", str(tmp_path / "v.npy"), "--out",
                   str(tmp_path / "v.csv"), "--maps", str(tmp_path / "vmaps"))
    assert bad.returncode == 2 and "anomaly maps are for images" in bad.stderr and "Traceback" not in bad.stderr
