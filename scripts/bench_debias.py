#!/usr/bin/env python
"""DB-VAE debiasing on Fashion-MNIST with one class subsampled to 2% of its share.
Writes docs/benchmarks/debias.{md,json}.

    .venv/bin/python scripts/bench_debias.py [--minority 5] [--share 0.02] [--epochs 20]
    .venv/bin/python scripts/bench_debias.py --every-class BUNDLE [--share 0.02]

Trains the same model twice on the same biased training set, without and with `--debias`,
and reports (1) the minority class's mean resample weight against the rest's, on the
training set, under each model's latent density; (2) the minority class's false-positive
rate (its test images flagged novel) with and without debiasing, beside the other classes'.

--every-class: no training. For each class in turn cut to 2%, the latent means of that biased
training set under BUNDLE's encoder, the density fitted along raw and along whitened axes,
and the class's mean weight against the rest's. Writes docs/benchmarks/debias-classes.{md,json}.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from detector.bench.results import stamp, write_results
from detector.data import load_spec
from detector.data.builtin import FASHION_MNIST_CLASSES
from detector.scoring.scorer import Scorer

ROOT = Path(__file__).resolve().parent.parent

def biased_indices(y: np.ndarray, minority: int, share: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    members = np.flatnonzero(y == minority)
    keep = np.r_[np.flatnonzero(y != minority), rng.choice(members, int(len(members) * share), replace=False)]
    keep.sort()
    return keep


def weight_ratio(weights: np.ndarray, is_min: np.ndarray) -> float:
    """The minority's mean resample weight over the other samples'."""
    return float(weights[is_min].mean() / weights[~is_min].mean())


def cap_sweep(mus: np.ndarray, is_min: np.ndarray, caps=(10, 20, 50, 100, 200)) -> dict[str, dict[str, float]]:
    """The minority's weight ratio and the draws' effective sample size for several caps (max_draw_ratio)."""
    from detector.config import DebiasConfig
    from detector.debias.density import LatentDensity

    out = {}
    for cap in caps:
        w = LatentDensity.from_config(mus, DebiasConfig(max_draw_ratio=cap)).weights(mus).astype(np.float64)
        out[str(cap)] = {"weight_ratio": weight_ratio(w, is_min),
                         "effective_sample_share": float(w.sum() ** 2 / (w ** 2).sum() / len(w))}
    return out


def every_class(bundle: Path, share: float, seed: int, out: Path) -> None:
    import torch

    from detector.config import DebiasConfig
    from detector.debias.density import LatentDensity
    from detector.scoring.latent import latent_means_of

    scorer = Scorer.from_path(bundle)
    train = load_spec("fashion-mnist:train")
    x, y = train.read(0, len(train)), train.labels
    mus = latent_means_of(scorer.model, torch.from_numpy(np.array(x)), scorer.device)
    result = {"bundle": str(bundle), "model_version": scorer.model_version, "share": share, "classes": {}}
    for k, name in enumerate(FASHION_MNIST_CLASSES):
        keep = biased_indices(y, k, share, seed)
        m, is_min = mus[keep], y[keep] == k
        row = {}
        for axes, whiten in (("raw axes", False), ("whitened axes", True)):
            row[axes] = weight_ratio(LatentDensity.from_config(m, DebiasConfig(whiten=whiten)).weights(m), is_min)
        result["classes"][name] = row
        print(f"{k} {name}: {row}", flush=True)
    ratios = np.array([[r["raw axes"], r["whitened axes"]] for r in result["classes"].values()])
    stamp(result)
    lines = ["# Debiasing: every class as the minority", "",
             f"Measured by `.venv/bin/python scripts/bench_debias.py --every-class {bundle} --share {share}` on "
             f"{result['machine']}, {result['date']}. Model {scorer.model_version}, trained on the full training set; "
             f"for each class in turn, the training set with that class cut to {share:.0%}, its latent means, the "
             "default density (10 bins, alpha 0.01, product, weights capped at 50x) along raw and along whitened "
             "axes, and the class's mean resample weight divided by the other classes'.", "",
             "| minority class | raw axes | whitened axes (default) |", "|---|---|---|"]
    lines += [f"| {k} {name} | {r['raw axes']:.2f} | {r['whitened axes']:.2f} |"
              for k, (name, r) in enumerate(result["classes"].items())]
    lines += [f"| median | {np.median(ratios[:, 0]):.2f} | {np.median(ratios[:, 1]):.2f} |",
              f"| classes >= 3 | {(ratios[:, 0] >= 3).sum()} | {(ratios[:, 1] >= 3).sum()} |"]
    write_results(out, "debias-classes", result, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minority", type=int, default=5)
    parser.add_argument("--share", type=float, default=0.02)
    parser.add_argument("--epochs", type=int, default=20)  # the training default
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every-class", type=Path, metavar="BUNDLE")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    if args.every_class:
        every_class(args.every_class, args.share, args.seed, args.out)
        return
    train = load_spec("fashion-mnist:train")
    x, y = train.read(0, len(train)), train.labels
    minority = np.flatnonzero(y == args.minority)
    keep = biased_indices(y, args.minority, args.share, args.seed)
    test = load_spec("fashion-mnist:test")
    tx, ty = test.read(0, len(test)), test.labels
    result = {"minority_class": args.minority, "minority_name": FASHION_MNIST_CLASSES[args.minority],
              "minority_train_samples": int((y[keep] == args.minority).sum()), "train_samples": int(len(keep)),
              "epochs": args.epochs, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "biased.npz"
        np.savez(data, x=x[keep][:, 0], y=y[keep])
        for name, flags in (("without --debias", []), ("with --debias", ["--debias"])):
            bundle = Path(tmp) / name.replace(" ", "_")
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "detector", "--quiet", "train", "--data", str(data), "--out",
                            str(bundle), "--epochs", str(args.epochs), "--seed", str(args.seed), *flags], check=True)
            seconds = time.perf_counter() - t0
            scorer = Scorer.from_path(bundle)
            biased = load_spec(str(data))
            tr = scorer.score_samples(biased, progress=False)
            is_min = biased.labels == args.minority
            w_min, w_rest = float(tr.resample_weight[is_min].mean()), float(tr.resample_weight[~is_min].mean())
            te = scorer.score(tx)
            t_min = ty == args.minority
            if not flags:
                result["cap_sweep"] = cap_sweep(tr.latent_mean, is_min)
            result["runs"][name] = {
                "train_seconds": seconds,
                "minority_mean_weight": w_min, "rest_mean_weight": w_rest, "weight_ratio": w_min / w_rest,
                "minority_resample_flag_rate": float(tr.resample[is_min].mean()),
                "minority_test_fpr": float(te.novel["novelty"][t_min].mean()),
                "rest_test_fpr": float(te.novel["novelty"][~t_min].mean()),
            }
            print(f"{name}: {result['runs'][name]}", flush=True)
    stamp(result)
    write_results(args.out, "debias", result, report(args, result, len(minority)))


def report(args, result: dict, minority_images: int) -> list[str]:
    """debias.md, line by line."""
    a, b = result["runs"]["without --debias"], result["runs"]["with --debias"]
    lines = ["# Debiasing (DB-VAE)", "",
             f"Measured by `.venv/bin/python scripts/bench_debias.py --minority {args.minority} --share {args.share} "
             f"--epochs {args.epochs}` on {result['machine']}, {result['date']}. Training set: Fashion-MNIST train with "
             f"class {args.minority} ({result['minority_name']}) cut to {result['minority_train_samples']} of "
             f"{minority_images} images ({args.share:.0%}); {result['train_samples']} images in all. Test: the 10,000 "
             "test images, every one of them normal (all ten classes are in-distribution).", "",
             "| | without --debias | with --debias |", "|---|---|---|",
             f"| minority mean resample weight / rest's | {a['weight_ratio']:.2f} | {b['weight_ratio']:.2f} |",
             f"| minority flagged for resampling (train) | {a['minority_resample_flag_rate']:.1%} | "
             f"{b['minority_resample_flag_rate']:.1%} |",
             f"| minority false-positive rate (test, flagged novel) | {a['minority_test_fpr']:.2%} | "
             f"{b['minority_test_fpr']:.2%} |",
             f"| other classes' false-positive rate (test) | {a['rest_test_fpr']:.2%} | {b['rest_test_fpr']:.2%} |",
             f"| training time | {a['train_seconds']:.0f} s | {b['train_seconds']:.0f} s |"]
    lines += ["", "The cap (`[debias] max_draw_ratio`, default 50) under the model trained without `--debias`: the "
              "density refitted on the latent means of all the biased training set's images (the bundle's own "
              "density, in the table above, saw only its 80% training split), the minority's weight ratio, and the "
              "effective sample size of drawing with those weights, as a share of the set. The two fits of one "
              "model differ at the same cap: the ratio depends on which images the histograms see.", "",
              "| cap | minority weight / rest's | effective sample share |", "|---|---|---|"]
    lines += [f"| {cap} | {r['weight_ratio']:.2f} | {r['effective_sample_share']:.1%} |"
              for cap, r in result["cap_sweep"].items()]
    return lines


if __name__ == "__main__":
    main()
