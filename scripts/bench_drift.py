#!/usr/bin/env python
"""Drift tests on simulated streams at the server's default settings (window 1000, alert at min p < 0.0005).
Writes docs/benchmarks/drift.{md,json}.

    .venv/bin/python scripts/bench_drift.py --bundle runs/quality/fmnist_seed0      # about 5 minutes on 2 cores

A Fashion-MNIST bundle scores the 10,000 test images (normal), the same images with a subtle global shift, and
the far-OOD suite (anomalies) once; streams are then drawn from those p-values and fed, 50 samples at a time (a
scrape every few seconds at modest traffic), to the server's own DriftWindow:
(1) false alarms: windows of normal traffic drawn with replacement from the test images' p-values; the share of
    windows where the alert fires, against its nominal 0.1% (Bonferroni: 0.05% per test), and each test's;
(2) samples to fire: a window full of normal traffic, then (i) 5% of samples anomalous, (ii) every sample shifted:
    brightness +10%, (iii) slight blur, (iv) both; median and 90th percentile over trials, per test and the alert.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF

from detector.bench.results import stamp, write_results
from detector.data import load_spec, ood_suite
from detector.scoring.drift import DriftWindow
from detector.scoring.scorer import PRIMARY, Scorer

ALERT_P = 0.0005  # per test, as in deploy/prometheus/detector-rules.yml
STEP = 50
HORIZON = 20_000


def p_values(scorer: Scorer, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    return np.concatenate([scorer.score(x[i:i + batch]).p_values[PRIMARY] for i in range(0, len(x), batch)])


def shifted(x: np.ndarray, brightness: float, blur_sigma: float) -> np.ndarray:
    t = torch.from_numpy(x).float() / 255
    if blur_sigma:
        t = TF.gaussian_blur(t, kernel_size=3, sigma=blur_sigma)
    t = (t * brightness).clamp(0, 1)
    return (t * 255).round().to(torch.uint8).numpy()


def false_alarms(normal: np.ndarray, cal, window: int, n_windows: int, rng) -> dict:
    w = DriftWindow(window, cal.target_fpr, cal.n)
    fired = {"ks": 0, "binomial": 0, "alert": 0}
    for _ in range(n_windows):
        w.add(rng.choice(normal, window))
        tests = w.tests()
        for name in ("ks", "binomial"):
            fired[name] += tests[name].p_value < ALERT_P
        fired["alert"] += min(t.p_value for t in tests.values()) < ALERT_P
    return {k: v / n_windows for k, v in fired.items()}


def samples_to_fire(normal: np.ndarray, drifted, cal, window: int, trials: int, rng) -> dict:
    """``drifted(rng, n)``: n p-values of the drifted stream. First sample count after onset at which each test
    (and the alert: either) is below ALERT_P, checked every STEP samples; HORIZON if never."""
    found = {"ks": [], "binomial": [], "alert": []}
    for _ in range(trials):
        w = DriftWindow(window, cal.target_fpr, cal.n)
        w.add(rng.choice(normal, window))
        first = {}
        for seen in range(STEP, HORIZON + 1, STEP):
            w.add(drifted(rng, STEP))
            tests = w.tests()
            for name, t in tests.items():
                if t.p_value < ALERT_P:
                    first.setdefault(name, seen)
            if min(t.p_value for t in tests.values()) < ALERT_P:
                first.setdefault("alert", seen)
            if len(first) == 3:
                break
        for name in found:
            found[name].append(first.get(name, HORIZON + 1))
    return {name: {"median": float(np.median(v)), "p90": float(np.percentile(v, 90)),
                   "fired_within_horizon": float(np.mean(np.array(v) <= HORIZON))} for name, v in found.items()}


def fmt(d: dict) -> str:
    if d["fired_within_horizon"] == 0:
        return f"not within {HORIZON:,}"
    tail = "" if d["fired_within_horizon"] == 1 else f" ({d['fired_within_horizon']:.0%} fired)"
    median, p90 = (f"{v:,.0f}" if v <= HORIZON else f"> {HORIZON:,}" for v in (d["median"], d["p90"]))
    return f"{median} / {p90}{tail}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True, type=Path, help="a Fashion-MNIST bundle (detector train)")
    ap.add_argument("--window", type=int, default=1000)
    ap.add_argument("--windows", type=int, default=10_000, help="no-drift windows for the false-alarm rate")
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    scorer = Scorer.from_path(args.bundle, device="cpu")
    cal = scorer.calibration[PRIMARY]
    test = load_spec("fashion-mnist:test").read(0, 10_000)
    normal = p_values(scorer, test)
    shifts = {"brightness +10%": (1.1, 0.0), "slight blur (sigma 0.6)": (1.0, 0.6),
              "brightness +10% and slight blur": (1.1, 0.6)}
    shifted_p = {name: p_values(scorer, shifted(test, *s)) for name, s in shifts.items()}
    anomalies = np.concatenate([p_values(scorer, make(n=1000, shape=(1, 28, 28)))
                                for make in (ood_suite.handwriting, ood_suite.letters, ood_suite.sketches,
                                             ood_suite.photos, ood_suite.textures)])

    def mixed(share):
        def draw(r, n):
            out = r.choice(normal, n)
            hit = r.uniform(size=n) < share
            out[hit] = r.choice(anomalies, int(hit.sum()))
            return out
        return draw

    alarms = false_alarms(normal, cal, args.window, args.windows, rng)
    scenarios = {"5% of traffic anomalous (far-OOD suite)": mixed(0.05)}
    scenarios.update({name: (lambda p: lambda r, n: r.choice(p, n))(p) for name, p in shifted_p.items()})
    delays = {name: samples_to_fire(normal, draw, cal, args.window, args.trials, rng) for name, draw in scenarios.items()}
    whole = {name: float((p <= cal.target_fpr).mean()) for name, p in {"normal": normal, **shifted_p,
                                                                        "anomalies": anomalies}.items()}
    result = stamp({"bundle": str(args.bundle), "window": args.window, "windows": args.windows, "trials": args.trials,
                    "alert_p_per_test": ALERT_P, "n_calibration": cal.n, "target_fpr": cal.target_fpr,
                    "false_alarm_rate": alarms, "samples_to_fire": delays, "share_flagged": whole})
    write_results(args.out, "drift", result, report(args, result, cal))


def report(args, result: dict, cal) -> list[str]:
    """drift.md, line by line."""
    alarms, delays, whole = result["false_alarm_rate"], result["samples_to_fire"], result["share_flagged"]
    return [
        "# Drift tests on simulated streams",
        "",
        f"Measured by `.venv/bin/python scripts/bench_drift.py --bundle {args.bundle}` on {result['machine']}, "
        f"{result['date']}. The bundle: `detector train --data fashion-mnist:train --seed 0` (defaults; "
        f"{cal.n:,} calibration scores, target FPR {cal.target_fpr:g}). Server defaults: window of the last "
        f"{args.window:,} samples (`--drift-window`), alert `DetectorScoreDrift` when either test's p-value is below "
        f"{ALERT_P} (nominal false-alarm rate {2 * ALERT_P:.1%} per window, Bonferroni over the two tests).",
        "",
        "The streams are drawn from the p-values of Fashion-MNIST's 10,000 test images (normal), of the same images "
        "shifted, and of 5,000 far-OOD images (handwriting, letters, sketches, photo patches, textures from "
        "`detector/data/ood_suite.py`), fed 50 at a time to the server's `DriftWindow`. Share flagged at the 1% "
        "threshold: " + ", ".join(f"{k} {v:.2%}" for k, v in whole.items()) + ".",
        "",
        f"## False alarms over {args.windows:,} no-drift windows",
        "",
        "| | ks | binomial | alert (either) |",
        "|---|---|---|---|",
        f"| share of windows firing | {alarms['ks']:.3%} | {alarms['binomial']:.3%} | **{alarms['alert']:.3%}** |",
        f"| nominal | {ALERT_P:.3%} | {ALERT_P:.3%} | {2 * ALERT_P:.3%} |",
        "",
        "Windows are drawn with replacement from the 10,000 test p-values (a million distinct normal images are not "
        "at hand), so successive windows share images; the calibration set is the bundle's one, fixed, as on a "
        "server.",
        "",
        f"## Samples after the onset until it fires (median / 90th percentile over {args.trials} trials)",
        "",
        "| drift | ks | binomial | alert (either) |",
        "|---|---|---|---|",
        *[f"| {name} | {fmt(d['ks'])} | {fmt(d['binomial'])} | **{fmt(d['alert'])}** |" for name, d in delays.items()],
        "",
        f"Checked every {STEP} samples, up to {HORIZON:,} after the onset. The binomial test counts flagged samples, "
        "so a share of clear anomalies shows there first; the KS test sees the whole score distribution move, as a "
        "global shift does.",
    ]


if __name__ == "__main__":
    main()
