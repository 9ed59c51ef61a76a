#!/usr/bin/env python
"""Audit throughput against the in-process Scorer ceiling, and peak memory at 100k vs 1M samples.
Writes docs/benchmarks/audit.{md,json}.

    .venv/bin/python scripts/bench_audit.py --bundle BUNDLE [--small 100000 --large 1000000]

(1) samples/s of `run_audit` over fashion-mnist:test (10,000 images, Parquet output,
    report included) against Scorer.score at batch 1024 on the same images;
(2) peak RSS of `detector audit` (a subprocess each) over 100,000 and 1,000,000 synthetic
    28x28 uint8 images in memory-mapped .npy files: the ratio shows memory stays bounded.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from detector.audit.runner import run_audit
from detector.bench.results import stamp, write_results
from detector.data import load_spec
from detector.data.synthetic import bars
from detector.scoring.scorer import Scorer

ROOT = Path(__file__).resolve().parent.parent

RSS_PROBE = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def synthetic_npy(path: Path, n: int, chunk: int = 50_000) -> None:
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 1, 28, 28))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        out[start:stop] = bars(stop - start, size=28, seed=start)
    out.flush()
    del out


def peak_rss_mb(bundle: str, data: Path, out: Path) -> tuple[float, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RSS_PROBE, sys.executable, "-m", "detector", "--quiet", "audit",
                           "--model", bundle, "--data", str(data), "--out", str(out)], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout.strip().splitlines()[-1]) / 1024, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    scorer = Scorer.from_path(args.bundle)
    test = load_spec("fashion-mnist:test")
    x = test.read(0, len(test))
    scorer.score(x[:1024])
    t0 = time.perf_counter()
    for start in range(0, len(x), 1024):
        scorer.score(x[start:start + 1024])
    ceiling = len(x) / (time.perf_counter() - t0)
    res = {"scorer_ceiling_samples_per_s": ceiling}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        run_audit(Path(args.bundle), "fashion-mnist:test", tmp / "fm", progress=False)
        res["audit_samples_per_s"] = len(x) / (time.perf_counter() - t0)
        res["audit_ratio"] = res["audit_samples_per_s"] / ceiling
        print(f"audit {res['audit_samples_per_s']:.0f} samples/s, Scorer {ceiling:.0f} samples/s, "
              f"ratio {res['audit_ratio']:.2f}", flush=True)
        for label, n in (("small", args.small), ("large", args.large)):
            data = tmp / f"{label}.npy"
            synthetic_npy(data, n)
            rss, seconds = peak_rss_mb(args.bundle, data, tmp / f"audit_{label}")
            res[label] = {"n": n, "peak_rss_mb": rss, "seconds": seconds, "samples_per_s": n / seconds}
            print(f"{n} samples: peak RSS {rss:.0f} MB, {seconds:.0f} s", flush=True)
            data.unlink()
    res["rss_ratio"] = res["large"]["peak_rss_mb"] / res["small"]["peak_rss_mb"]
    stamp(res)
    print(f"peak RSS ratio {args.large} / {args.small}: {res['rss_ratio']:.2f}")
    lines = ["# Audit throughput and memory", "",
             f"Measured by `.venv/bin/python scripts/bench_audit.py --bundle BUNDLE --small {args.small} --large "
             f"{args.large}` on {res['machine']}, {res['date']}.", "",
             "| measure | value |", "|---|---|",
             f"| in-process Scorer, batch 1024, fashion-mnist:test | {ceiling:.0f} samples/s |",
             f"| `run_audit` on fashion-mnist:test (Parquet, weights, summary, report) | "
             f"{res['audit_samples_per_s']:.0f} samples/s |",
             f"| **audit / Scorer** | **{res['audit_ratio']:.2f}** |",
             f"| peak RSS, {args.small:,} synthetic 28x28 samples | {res['small']['peak_rss_mb']:.0f} MB "
             f"({res['small']['seconds']:.0f} s) |",
             f"| peak RSS, {args.large:,} synthetic 28x28 samples | {res['large']['peak_rss_mb']:.0f} MB "
             f"({res['large']['seconds']:.0f} s) |",
             f"| **peak RSS ratio** | **{res['rss_ratio']:.2f}** |"]
    write_results(args.out, "audit", res, lines)


if __name__ == "__main__":
    main()
