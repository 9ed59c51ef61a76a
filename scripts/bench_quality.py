#!/usr/bin/env python
"""Detection quality: one-class Fashion-MNIST, far-OOD sets, calibration. Writes docs/benchmarks/quality.{md,json}.

    .venv/bin/python scripts/bench_quality.py                 # everything (about 40 minutes on 2 cores)
    .venv/bin/python scripts/bench_quality.py --classes 0,6   # a subset of the one-class runs

(1) one-class: a default-settings model per class, trained on that class's training images,
    tested on all 10,000 test images (the other nine classes anomalous);
(2) far-OOD: a default-settings model of all of Fashion-MNIST, trained with `detector train`
    (wall time reported), against simpler and more complex sets (scripts/far_ood.py);
(3) calibration: share of the Fashion-MNIST test set flagged at the 1% thresholds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import far_ood  # noqa: E402
from benchlib import stamp  # noqa: E402

from detector.config import Settings  # noqa: E402
from detector.data import load_spec  # noqa: E402
from detector.data.builtin import FASHION_MNIST_CLASSES  # noqa: E402
from detector.scoring.metrics import auroc  # noqa: E402
from detector.scoring.scorer import Scorer  # noqa: E402
from detector.training.pipeline import train_bundle  # noqa: E402

SHOWN = ("novelty", "neg_elbo", "iw_nll", "recon_error", "latent_distance", "latent_knn", "complexity_corrected")


def aurocs(normal, anomalous) -> dict[str, float]:
    return {k: auroc(normal.scores[k], anomalous.scores[k]) for k in SHOWN}


def one_class(classes: list[int], work: Path) -> dict:
    test = load_spec("fashion-mnist:test")
    labels = test.labels
    rows = {}
    for c in classes:
        t0 = time.perf_counter()
        out = work / f"class{c}"
        train_bundle(load_spec(f"fashion-mnist:train:classes={c}"), Settings(), out, progress=False)
        result = Scorer.from_path(out).score_samples(test, progress=False)
        normal = labels == c
        rows[c] = {k: auroc(result.scores[k][normal], result.scores[k][~normal]) for k in SHOWN}
        rows[c]["seconds"] = time.perf_counter() - t0
        print(f"class {c} ({FASHION_MNIST_CLASSES[c]}): " + ", ".join(f"{k} {v:.3f}" for k, v in rows[c].items()
                                                                      if k != "seconds"), flush=True)
    return rows


def far(work: Path, bundle: Path | None) -> dict:
    train_seconds = None
    if bundle is None:
        bundle = work / "fmnist"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "detector", "--quiet", "train", "--data", "fashion-mnist:train",
                        "--out", str(bundle)], check=True)
        train_seconds = time.perf_counter() - t0
        print(f"detector train --data fashion-mnist:train (defaults): {train_seconds:.0f} s", flush=True)
    scorer = Scorer.from_path(bundle)
    normal = scorer.score_samples(load_spec("fashion-mnist:test"), progress=False)
    sets = {}
    for name, make in far_ood.FAR_OOD_SETS.items():
        anomalous = scorer.score(make())
        sets[name] = aurocs(normal, anomalous)
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in sets[name].items()), flush=True)
    flagged = {k: float(v.mean()) for k, v in normal.novel.items()}
    print("flagged share of fashion-mnist:test at the 1% thresholds: "
          + ", ".join(f"{k} {v:.4f}" for k, v in flagged.items()), flush=True)
    return {"train_seconds": train_seconds, "sets": sets, "calibration_flagged": flagged,
            "model_version": scorer.model_version}


def write_report(result: dict, path: Path) -> None:
    lines = ["# Detection quality", "", "Measured by `.venv/bin/python scripts/bench_quality.py` on "
             f"{result['machine']}, {result['date']}. Default settings throughout.", ""]
    oc = result.get("one_class")
    if oc:
        lines += ["## One-class Fashion-MNIST (AUROC; train on one class, test on all 10,000 test images)", "",
                  "| class | " + " | ".join(SHOWN) + " |", "|---" * (len(SHOWN) + 1) + "|"]
        for c, row in oc.items():
            lines.append(f"| {c} {FASHION_MNIST_CLASSES[int(c)]} | " + " | ".join(f"{row[k]:.3f}" for k in SHOWN) + " |")
        means = {k: float(np.mean([row[k] for row in oc.values()])) for k in SHOWN}
        lines.append("| **mean** | " + " | ".join(f"**{means[k]:.3f}**" for k in SHOWN) + " |")
        lines.append("")
    fo = result.get("far_ood")
    if fo:
        lines += ["## Far-OOD: a Fashion-MNIST model against simpler and more complex inputs (AUROC)", ""]
        if fo["train_seconds"]:
            lines += [f"`detector train --data fashion-mnist:train` with default settings took "
                      f"{fo['train_seconds'] / 60:.1f} minutes.", ""]
        lines += ["| set | " + " | ".join(SHOWN) + " |", "|---" * (len(SHOWN) + 1) + "|"]
        for name, row in fo["sets"].items():
            lines.append(f"| {name} | " + " | ".join(f"{row[k]:.3f}" for k in SHOWN) + " |")
        lines += ["", "## Calibration: share of fashion-mnist:test flagged at the 1% thresholds", "",
                  "| score | flagged |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in fo["calibration_flagged"].items()]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--skip-one-class", action="store_true")
    parser.add_argument("--skip-far", action="store_true")
    parser.add_argument("--bundle", type=Path, help="reuse a Fashion-MNIST bundle instead of training one")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()

    result = stamp({})
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_far:
            result["far_ood"] = far(Path(tmp), args.bundle)
        if not args.skip_one_class:
            result["one_class"] = one_class([int(c) for c in args.classes.split(",")], Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(result, indent=2))
    write_report(result, args.out / "quality.md")
    print(f"wrote {args.out / 'quality.md'}")


if __name__ == "__main__":
    main()
