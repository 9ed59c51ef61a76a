"""The reliability scripts stay runnable: small fuzz and auth runs against the tiny bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "reliability.py"


def run(check, bundle, out, *extra):
    return subprocess.run([sys.executable, str(SCRIPT), check, "--bundle", str(bundle), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300)


def test_fuzz_script_finds_no_crash_and_no_wrong_code(bundle_path, tmp_path):
    proc = run("fuzz", bundle_path, tmp_path, "--n", "60", "--streams", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "fuzz.json").read_text())
    assert result["malformed"] == 60 and result["valid"] == 12 and result["streams"]["streams"] == 4
    assert result["crashes"] == 0 and result["wrong_code"] == [] and result["streams"]["wrong"] == 0
    assert result["wrong_answer"] == 0 and result["valid_failed"] == 0 and result["serving_after"]
    assert "0 crashes, 0 wrong codes" in proc.stdout


def test_auth_script_passes(bundle_path, tmp_path):
    proc = run("auth", bundle_path, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "auth.json").read_text())["passed"] is True
