#!/usr/bin/env python
"""Score a few normal and odd samples through a running server and print verdicts and metrics.

    .venv/bin/python scripts/demo_client.py HOST:PORT METRICS_URL
"""

from __future__ import annotations

import argparse
import urllib.request

import numpy as np

from detector.client import DetectorClient
from detector.data import load_spec, ood_suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="the server's gRPC address, HOST:PORT")
    parser.add_argument("metrics_url", help="its Prometheus endpoint, e.g. http://127.0.0.1:9090/metrics")
    args = parser.parse_args()
    target, metrics_url = args.target, args.metrics_url
    garments = load_spec("fashion-mnist:test").read(0, 6)
    sets = {"fashion-mnist:test": garments, "handwriting": ood_suite.handwriting(6), "photo patches": ood_suite.photos(6),
            "blank": ood_suite.blank(6)}
    with DetectorClient(target) as client:
        info = client.model_info()
        print(f"model {info.model_version}: input {list(info.input_shape)}, primary score {info.primary_score}, "
              f"threshold {info.thresholds['novelty']:.3f} at FPR {info.target_fpr}")
        for name, x in sets.items():
            r = client.score(x, sample_ids=[f"{name}#{i}" for i in range(len(x))])
            verdicts = " ".join("NOVEL" if v else "ok" for v in r.is_novel)
            print(f"{name:>20}: novelty {np.array2string(r.novelty_score, precision=1)}  p {np.array2string(r.p_value, precision=3)}  -> {verdicts}")
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    print("\nmetrics (selection):")
    for line in text.splitlines():
        if line.startswith(("detector_samples_scored_total", "detector_samples_novel_total", "detector_novelty_rate",
                            "detector_requests_total", "detector_batch_size_samples_count", "detector_model_info",
                            "detector_queue_depth_samples")):
            print("  " + line)


if __name__ == "__main__":
    main()
