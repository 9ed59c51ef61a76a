"""A client in another language, written from the proto alone: grpcurl (Go) over server reflection, JSON in and
out, sending [N, H, W] and channels-last frames as a camera pipeline would."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from detector.data.synthetic import bars
from detector.scoring.scorer import Scorer
from tests.conftest import NOVELTY_TOLERANCE
from tests.integration.serving_helpers import ServerThread

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
pytestmark = pytest.mark.skipif(not Path(GRPCURL).exists(), reason="grpcurl not installed (dev extras)")


def grpcurl(target: str, method: str, body: dict | None = None) -> subprocess.CompletedProcess:
    args = [GRPCURL, "-plaintext", "-max-time", "30"] + (["-d", json.dumps(body)] if body is not None else [])
    return subprocess.run([*args, target, method], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("refusing", [False, True], ids=["unary", "admitted-before-reading"])
def test_grpcurl_scores_n_h_w_and_channels_last_like_the_python_client(bundle_path, refusing):
    scorer = Scorer.from_path(bundle_path, device="cpu")
    x = bars(3, size=16, seed=21)  # (3, 1, 16, 16)
    local = scorer.score(x)
    with ServerThread(scorer) as s:
        if refusing:  # as if it had just refused a call: Score reads each request after admission
            s.running.service.last_overloaded = time.monotonic() + 600
        info = grpcurl(s.target, "detector.v1.Detector/GetModelInfo", {})
        assert info.returncode == 0, info.stderr
        shapes = json.loads(info.stdout)["accepted_shapes"]
        assert {"shape": ["16", "16", "1"], "layout": "NHWC"} in shapes

        def score(array, layout):
            body = {"requestId": layout, "samples": {"shape": list(array.shape), "dtype": "UINT8", "layout": layout,
                                                     "data": base64.b64encode(array.tobytes()).decode()}}
            return grpcurl(s.target, "detector.v1.Detector/Score", body)

        for array, layout in ((x[:, 0], "NCHW"), (np.ascontiguousarray(x.transpose(0, 2, 3, 1)), "NHWC")):
            out = score(array, layout)
            assert out.returncode == 0, out.stderr
            results = json.loads(out.stdout)["results"]
            np.testing.assert_allclose([r["novelty_score"] for r in results], local.scores["novelty"],
                                       **NOVELTY_TOLERANCE)
        wrong = score(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), "NCHW")
        assert wrong.returncode != 0 and "InvalidArgument" in wrong.stderr and "send layout NHWC" in wrong.stderr
