#!/usr/bin/env python
"""Training, scoring and serving on the scoring device (a GPU), fp32 and bf16, at 1x28x28 and 3x64x64.
Writes docs/benchmarks/gpu.{md,json} (or DEVICE.{md,json} with --device cpu, a dry run of the script itself).

    python scripts/bench_device.py                 # what scripts/gpu_check.sh runs (about 4 minutes on an H200)
    python scripts/bench_device.py --device cpu --epochs 1 --seconds 2 --n-train 2000   # dry run

Per input size, in one run on one machine:
(train) `train_bundle` with default settings but --epochs on generated scenes (detector/data/ood_suite.py:
    coloured objects; their grey mean at 1 channel), samples/s of the training loop as the trainer reports it;
(a) in-process `Scorer.score` (what the server calls) at batches 256, 1024 and 4096, beside one encoder + decoder
    pass of the same model at the same batch (the cost ratio of issue 13), fp32 and bf16;
(overlap) in process, batches of 1024 staged ahead of their compute (the server's pipeline: the copy of batch n+1
    while batch n computes, scoring/staging.py) against staging and scoring one after the other;
(d) the real gRPC server (scripts/bench_serve.py's), 8 clients x 64 samples, fp32 and bf16.
Every timing synchronises the device before reading the clock.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from bench_serve import server

from detector.bench.loadgen import load
from detector.bench.results import stamp, write_results
from detector.config import Settings
from detector.data.ood_suite import coloured_objects
from detector.data.sampleset import SampleSet
from detector.scoring.scorer import Scorer
from detector.timing import PAIRED_ROUNDS, best_rate, paired_ratios
from detector.training.pipeline import train_bundle

ROOT = Path(__file__).resolve().parent.parent

SHAPES = ((1, 28, 28), (3, 64, 64))
BATCHES = (256, 1024, 4096)
PRECISIONS = ("fp32", "bf16")


def scenes(n: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    rgb = coloured_objects(n, (3, *shape[1:]), seed=seed)
    return rgb if shape[0] == 3 else rgb.mean(axis=1, keepdims=True).round().astype(np.uint8)


def scoring(bundle: Path, x: np.ndarray, device: str) -> dict:
    out = {}
    for precision in PRECISIONS if device == "cuda" else ("fp32",):
        scorer = Scorer.from_path(bundle, device=device, precision=precision)
        model = scorer.model
        for batch in BATCHES:
            xb = np.concatenate([x] * (1 + batch // len(x)))[:batch]
            xt = scorer._to_device(xb)

            def passes():
                with torch.inference_mode(), torch.autocast("cuda", dtype=scorer.autocast_dtype or torch.float32,
                                                            enabled=scorer.autocast_dtype is not None):
                    return model.decode(model.encode(xt)[0])

            model_rate = best_rate(passes, batch, device=scorer.device)
            score = lambda: scorer.score(xb)  # noqa: E731
            scorer_rate = best_rate(score, batch, device=scorer.device)
            paired = float(np.median(paired_ratios(score, passes, device=scorer.device)))
            out[f"{precision}/{batch}"] = {"model_pass": model_rate, "scorer": scorer_rate,
                                           "ratio": scorer_rate / model_rate, "ratio_paired": paired}
            print(f"  {precision} batch {batch}: Scorer {scorer_rate:.0f}/s, model pass {model_rate:.0f}/s, ratio "
                  f"{scorer_rate / model_rate:.3f} (median of {PAIRED_ROUNDS} paired rounds {paired:.3f})", flush=True)
    return out


def overlap(bundle: Path, x: np.ndarray, device: str, batch: int = 1024, batches: int = 8) -> dict:
    """Samples/s of ``batches`` batches staged and scored one after the other, and with each next batch staged in
    a thread while the current one computes (as the server's batcher does)."""
    scorer = Scorer.from_path(bundle, device=device)
    checked = scorer.check(np.concatenate([x] * (1 + batch // len(x)))[:batch])

    def one_after_the_other():
        for _ in range(batches):
            scorer.score(scorer.stage(checked))

    def staged_ahead():
        with ThreadPoolExecutor(1) as stager:
            upcoming = stager.submit(scorer.stage, checked)
            for i in range(batches):
                staged = upcoming.result()
                if i + 1 < batches:
                    upcoming = stager.submit(scorer.stage, checked)
                scorer.score(staged)

    out = {name: best_rate(fn, batch * batches, repeat=3, device=scorer.device)
           for name, fn in (("one_after_the_other", one_after_the_other), ("staged_ahead", staged_ahead))}
    out["ratio"] = out["staged_ahead"] / out["one_after_the_other"]
    print(f"  overlap: staged ahead {out['staged_ahead']:.0f}/s, one after the other {out['one_after_the_other']:.0f}/s, "
          f"ratio {out['ratio']:.2f}", flush=True)
    return out


def serving(bundle: Path, x: np.ndarray, device: str, seconds: float) -> dict:
    out = {}
    for precision in PRECISIONS if device == "cuda" else ("fp32",):
        with server(bundle, precision=precision, device=device) as s:
            out[precision] = load(s.target, x, seconds, 64, 8)
        print(f"  (d) {precision}, 8 clients x 64: {out[precision]['samples_per_s']:.0f} samples/s, "
              f"p99 {out[precision]['p99_ms']:.1f} ms, errors {out[precision]['errors']}", flush=True)
    return out


def measure(shape, args, work: Path) -> dict:
    print(f"{'x'.join(map(str, shape))}:", flush=True)
    settings = Settings()
    settings.train.epochs, settings.train.device = args.epochs, args.device
    train = SampleSet(x=scenes(args.n_train, shape, seed=0), y=None, kind="image", name=f"scenes {shape}")
    bundle = work / f"bundle_{'x'.join(map(str, shape))}"
    t0 = time.perf_counter()
    train_bundle(train, settings, bundle, progress=False)
    config = json.loads((bundle / "config.json").read_text())
    result = {"train_samples_per_s": config["train"]["samples_per_second"], "train_wall_s": time.perf_counter() - t0,
              "epochs": args.epochs, "n_train": config["data"]["n_train"]}
    print(f"  training: {result['train_samples_per_s']:.0f} samples/s ({result['train_wall_s']:.0f} s with "
          "calibration)", flush=True)
    x = scenes(2048, shape, seed=1)
    result["scoring"] = scoring(bundle, x, args.device)
    result["overlap"] = overlap(bundle, x, args.device)
    result["serving"] = serving(bundle, x, args.device, args.seconds)
    return result


def report(result: dict, command: str) -> list[str]:
    lines = ["# On the scoring device", "", f"Measured by `{command}` on {result['machine']}, {result['date']}.",
             "Samples/s; every timing synchronises the device. The Scorer is what the server calls (default scores, "
             "novelty, verdicts, p-values, resample weights); its ratio to one encoder + decoder pass of the same model "
             "is the cost figure of issue 13.", ""]
    for shape, part in result["shapes"].items():
        lines += [f"## {shape}", "", f"Training ({part['epochs']} epochs, {part['n_train']} samples): "
                  f"**{part['train_samples_per_s']:.0f} samples/s**.", "",
                  "| precision / batch | (a) Scorer.score | one encoder + decoder pass | ratio | ratio, median of "
                  f"{PAIRED_ROUNDS} paired rounds |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['scorer']:.0f} | {v['model_pass']:.0f} | {v['ratio']:.3f} | {v['ratio_paired']:.3f} |"
                  for k, v in part["scoring"].items()]
        o = part["overlap"]
        lines += ["", f"Batches of 1024 staged ahead of their compute (the server's pipeline): **{o['staged_ahead']:.0f} "
                  f"samples/s**, against {o['one_after_the_other']:.0f} staged and scored one after the other "
                  f"(ratio {o['ratio']:.2f}).", ""]
        lines += ["", "| precision | (d) server, 8 clients x 64 samples | p99 ms | errors | lost/swapped |",
                  "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['samples_per_s']:.0f} | {v['p99_ms']:.1f} | {v['errors']} | {v['bad']} |"
                  for k, v in part["serving"].items()]
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=12000)
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each serving load")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_device.py: no CUDA device visible (use --device cpu for a dry run)")
    result = stamp({"command": "scripts/bench_device.py " + " ".join(sys.argv[1:]), "shapes": {}})
    with tempfile.TemporaryDirectory() as tmp:
        for shape in SHAPES:
            result["shapes"]["x".join(map(str, shape))] = measure(shape, args, Path(tmp))
    write_results(args.out, "gpu" if args.device == "cuda" else args.device, result,
                  report(result, "python " + result["command"]))


if __name__ == "__main__":
    main()
