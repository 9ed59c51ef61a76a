import subprocess
import sys


def test_client_starts_without_torch():
    """Driving pipelines import the client; it must not pull in torch (seconds of start-up, GBs of RSS)."""
    code = "import sys, detector.client; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
