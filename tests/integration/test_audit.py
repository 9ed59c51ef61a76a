"""`detector audit` end to end: outputs, resume after SIGKILL, torchrun sharding, report in Chromium."""

from __future__ import annotations

import json
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from detector.data.synthetic import bars
from tests.conftest import NOVELTY_TOLERANCE

PY = sys.executable
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def audit_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("audit")
    x = np.concatenate([bars(1200, size=16, seed=10), bars(300, size=16, seed=11, vertical=True)])
    y = np.r_[np.zeros(1200, np.int64), np.ones(300, np.int64)]
    np.savez(d / "mixed.npz", x=x[:, 0], y=y)
    return d / "mixed.npz"


def audit(bundle, data, out, *extra, runner=(PY, "-m", "detector"), umask=0o022):
    return subprocess.run([*runner, "--quiet", "audit", "--model", str(bundle), "--data", str(data), "--out", str(out),
                           *extra], capture_output=True, text=True, timeout=600, umask=umask)


def outputs(out: Path) -> tuple:
    table = pq.read_table(out / "scores.parquet").to_pydict()
    summary = json.loads((out / "summary.json").read_text())
    return table, (out / "weights.npy").read_bytes(), summary


@pytest.fixture(scope="module")
def reference(bundle_path, audit_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "audit"
    proc = audit(bundle_path, audit_data, out, "--chunk-size", "200")
    assert proc.returncode == 0, proc.stderr
    return out


def test_outputs_rows_weights_summary(reference, bundle_path, audit_data):
    table, weights, summary = outputs(reference)
    assert len(table["index"]) == 1500 and table["index"] == list(range(1500))
    for col in ("label", "novelty", "neg_elbo", "recon_error", "p_value_novelty", "is_novel_novelty",
                "resample_weight", "resample"):
        assert col in table, col
    w = np.load(reference / "weights.npy")
    np.testing.assert_allclose(w, table["resample_weight"], rtol=1e-6)
    assert summary["n_samples"] == 1500
    # Written under umask 022, every output is readable by the dashboards' and reviewers' users.
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in reference.rglob("*")}
    assert all(m & 0o444 == 0o444 for m in modes.values()), modes
    # Vertical bars (label 1) are novel, horizontal ones (label 0) are not.
    assert summary["per_label"]["1"]["novelty_rate"] > 0.9 > 0.1 > summary["per_label"]["0"]["novelty_rate"]
    assert summary["novel"]["novelty"] == sum(table["is_novel_novelty"])
    # The least novel are normal (horizontal) samples, in ascending order of the score.
    least = summary["least_novel"]
    assert len(least) == 16 and [r["novelty"] for r in least] == sorted(r["novelty"] for r in least)
    assert all(table["label"][r["index"]] == 0 for r in least)
    # Drift against the calibration set: a fifth of the data anomalous is far more flagged than the target FPR.
    drift = summary["drift"]
    assert set(drift) == {"ks", "binomial"} and drift["binomial"]["n"] == 1500
    assert drift["binomial"]["statistic"] == pytest.approx(summary["novelty_rate"]["novelty"])
    assert drift["binomial"]["p_value"] < 1e-9 and drift["ks"]["p_value"] < 1e-4  # ks: only 200 calibration scores
    # Audit rows agree with the in-process Scorer, as they must with gRPC results.
    from detector.data import load_spec
    from detector.scoring.scorer import Scorer

    local = Scorer.from_path(bundle_path, device="cpu").score(load_spec(str(audit_data)).read(0, 50))
    np.testing.assert_allclose(table["novelty"][:50], local.scores["novelty"], **NOVELTY_TOLERANCE)


def test_resume_after_sigkill_gives_identical_output(reference, bundle_path, audit_data, tmp_path):
    out = tmp_path / "audit"
    proc = subprocess.Popen([PY, "-m", "detector", "--quiet", "audit", "--model", str(bundle_path), "--data",
                             str(audit_data), "--out", str(out), "--chunk-size", "200", "--batch-size", "50"])
    deadline = time.time() + 120
    while not (out / "chunks" / "chunk-000001.npz").exists():
        assert time.time() < deadline and proc.poll() is None, "audit finished or stalled before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists()
    done_before = sorted(p.name for p in (out / "chunks").glob("chunk-*.npz"))
    rerun = audit(bundle_path, audit_data, out, "--chunk-size", "200")
    assert rerun.returncode == 0, rerun.stderr
    assert outputs(out)[0] == outputs(reference)[0]
    assert outputs(out)[1] == outputs(reference)[1]
    assert outputs(out)[2]["novel"] == outputs(reference)[2]["novel"]
    assert len(done_before) >= 2


def test_torchrun_two_processes_equal_single_process(reference, bundle_path, audit_data, tmp_path):
    out = tmp_path / "sharded"
    env_runner = (str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "detector")
    proc = audit(bundle_path, audit_data, out, "--chunk-size", "200", "--device", "cpu", runner=env_runner)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = outputs(out), outputs(reference)
    assert a[0] == b[0] and a[1] == b[1] and a[2]["per_label"] == b[2]["per_label"]


def test_other_data_in_same_out_dir_is_refused(reference, bundle_path, data_dir, tmp_path):
    out = tmp_path / "a"
    shutil.copytree(reference, out)
    proc = audit(bundle_path, data_dir / "anomalous.npz", out)
    assert proc.returncode == 2 and "holds an audit of other data" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("spec,message", [("nope.npz", "no such file"), ("fashion-mnist:test", "do not fit")])
def test_bad_specs_exit_2_with_one_line(bundle_path, tmp_path, spec, message):
    proc = audit(bundle_path, spec, tmp_path / "o")
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian package chromium not installed")
def test_report_opens_in_headless_chromium_and_images_load(reference, tmp_path):
    proc = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
                           (reference / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    import re

    match = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert match, proc.stderr[-2000:]
    loaded, total = map(int, match.groups())
    assert total >= 9 and loaded == total  # scores, galleries, labels, latents, weights, p-values, traversals, prior
    for section in ("Drift against the calibration data", "What the model learned", "Traversals along the principal",
                    "Samples from the prior", "Least novel samples"):
        assert section in dom, section
