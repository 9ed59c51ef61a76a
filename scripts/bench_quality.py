#!/usr/bin/env python
"""Detection quality: one-class Fashion-MNIST, far-OOD sets, calibration. Writes docs/benchmarks/quality.{md,json}.

    .venv/bin/python scripts/bench_quality.py                 # everything (about 30 minutes on 2 cores)
    .venv/bin/python scripts/bench_quality.py --classes 0,6   # a subset of the one-class runs
    .venv/bin/python scripts/bench_quality.py --seed 1 --out /tmp/q1   # another training seed

(1) one-class: a default-settings model per class, trained on that class's training images,
    tested on all 10,000 test images (the other nine classes anomalous);
(2) far-OOD: a default-settings model of all of Fashion-MNIST, trained with `detector train`
    (wall time reported), against simpler and more complex sets (scripts/far_ood.py);
(3) calibration: share of the Fashion-MNIST test set flagged at the 1% thresholds.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from detector.scoring.novelty import NoveltyFusion  # noqa: E402
from detector.scoring.scorer import Scorer  # noqa: E402
from detector.training.pipeline import train_bundle  # noqa: E402

SHOWN = ("novelty", "neg_elbo", "iw_nll", "recon_error", "latent_distance", "latent_knn", "transform_nll",
         "complexity_corrected")


def fusion_variants(fusion: NoveltyFusion) -> dict[str, NoveltyFusion]:
    """The default fusion and the alternatives it was chosen over, from the same fitted standardisation."""
    def variant(combine: str, rectify: set[str], keep: set[str] | None = None) -> NoveltyFusion:
        fits = [dataclasses.replace(f, component=dataclasses.replace(f.component, rectify=f.component.score in rectify))
                for f in fusion.fits if keep is None or f.component.score in keep]
        return NoveltyFusion(fits, combine)
    every = {f.component.score for f in fusion.fits}
    default = {f.component.score for f in fusion.fits if f.component.rectify}
    return {"sum, recon_error and transform_nll rectified (default)": variant("sum", default),
            "sum, none rectified": variant("sum", set()),
            "sum, all rectified": variant("sum", every),
            "max of the four": variant("max", set()),
            "sum without transform_nll": variant("sum", default, every - {"transform_nll"}),
            "sum without latent_knn": variant("sum", default, every - {"latent_knn"}),
            "max(complexity_corrected, recon_error) (first release)": variant("max", set(),
                                                                              {"complexity_corrected", "recon_error"})}


def variant_aurocs(fusion: NoveltyFusion, normal: dict, anomalous: dict) -> dict[str, float]:
    return {name: auroc(v.apply(normal), v.apply(anomalous)) for name, v in fusion_variants(fusion).items()}


def aurocs(normal, anomalous) -> dict[str, float]:
    return {k: auroc(normal.scores[k], anomalous.scores[k]) for k in SHOWN}


def one_class(classes: list[int], work: Path, seed: int) -> dict:
    test = load_spec("fashion-mnist:test")
    labels = test.labels
    rows = {}
    for c in classes:
        t0 = time.perf_counter()
        out = work / f"class{c}"
        settings = Settings()
        settings.train.seed = seed
        train_bundle(load_spec(f"fashion-mnist:train:classes={c}"), settings, out, progress=False)
        scorer = Scorer.from_path(out)
        scores = scorer.score_samples(test, progress=False).scores
        normal = labels == c
        rows[c] = {k: auroc(scores[k][normal], scores[k][~normal]) for k in SHOWN}
        rows[c]["fusions"] = variant_aurocs(scorer.fusion, {k: v[normal] for k, v in scores.items()},
                                            {k: v[~normal] for k, v in scores.items()})
        rows[c]["seconds"] = time.perf_counter() - t0
        print(f"class {c} ({FASHION_MNIST_CLASSES[c]}): " + ", ".join(f"{k} {rows[c][k]:.3f}" for k in SHOWN), flush=True)
    return rows


def far(work: Path, bundle: Path | None, seed: int) -> dict:
    train_seconds = None
    if bundle is None:
        bundle = work / "fmnist"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "detector", "--quiet", "train", "--data", "fashion-mnist:train",
                        "--out", str(bundle), "--seed", str(seed)], check=True)
        train_seconds = time.perf_counter() - t0
        print(f"detector train --data fashion-mnist:train (defaults): {train_seconds:.0f} s", flush=True)
    scorer = Scorer.from_path(bundle)
    normal = scorer.score_samples(load_spec("fashion-mnist:test"), progress=False)
    sets = {}
    for name, make in far_ood.FAR_OOD_SETS.items():
        anomalous = scorer.score(make())
        sets[name] = aurocs(normal, anomalous)
        sets[name]["fusions"] = variant_aurocs(scorer.fusion, normal.scores, anomalous.scores)
        print(f"{name}: " + ", ".join(f"{k} {sets[name][k]:.3f}" for k in SHOWN), flush=True)
    flagged = {k: float(v.mean()) for k, v in normal.novel.items()}
    print("flagged share of fashion-mnist:test at the 1% thresholds: "
          + ", ".join(f"{k} {v:.4f}" for k, v in flagged.items()), flush=True)
    return {"train_seconds": train_seconds, "sets": sets, "calibration_flagged": flagged,
            "model_version": scorer.model_version}


def write_report(result: dict, path: Path) -> None:
    seed = result.get("seed", 0)
    lines = ["# Detection quality", "", "Measured by `.venv/bin/python scripts/bench_quality.py"
             f"{f' --seed {seed}' if seed else ''}` on {result['machine']}, {result['date']}. Default settings "
             f"throughout{f' but the training seed ({seed})' if seed else ''}.", ""]
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
        lines += [""]
    if oc or fo:
        lines += ["## Fusion variants (AUROC of the novelty score built other ways from the same models)", "",
                  "Each variant reuses the bundle's standardised components; only how they combine differs.", ""]
        cols = (["one-class mean"] if oc else []) + (list(fo["sets"]) if fo else [])
        names = list(next(iter(oc.values() if oc else fo["sets"].values()))["fusions"])
        lines += ["| fusion | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for name in names:
            vals = ([float(np.mean([row["fusions"][name] for row in oc.values()]))] if oc else []) + \
                   ([row["fusions"][name] for row in fo["sets"].values()] if fo else [])
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
        lines += [""]
    if fo:
        lines += ["## Calibration: share of fashion-mnist:test flagged at the 1% thresholds", "",
                  "| score | flagged |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in fo["calibration_flagged"].items()]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--skip-one-class", action="store_true")
    parser.add_argument("--skip-far", action="store_true")
    parser.add_argument("--bundle", type=Path, help="reuse a Fashion-MNIST bundle instead of training one")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every model (default: the default, 0)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()

    result = stamp({"seed": args.seed})
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_far:
            result["far_ood"] = far(Path(tmp), args.bundle, args.seed)
        if not args.skip_one_class:
            result["one_class"] = one_class([int(c) for c in args.classes.split(",")], Path(tmp), args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(result, indent=2))
    write_report(result, args.out / "quality.md")
    print(f"wrote {args.out / 'quality.md'}")


if __name__ == "__main__":
    main()
