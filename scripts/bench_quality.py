#!/usr/bin/env python
"""Detection quality: the far-OOD suite at 1x28x28 and 3x64x64, one-class Fashion-MNIST over seeds, calibration.
Writes docs/benchmarks/quality.{md,json}.

    .venv/bin/python scripts/bench_quality.py --work runs/quality          # everything (about 2 hours on 2 cores)
    .venv/bin/python scripts/bench_quality.py --work runs/quality --skip-one-class   # the suites (about 15 minutes)
    .venv/bin/python scripts/bench_quality.py --work runs/quality --seeds 0 --classes 0,6
    .venv/bin/python scripts/bench_quality.py --work runs/q-beta05 --config beta05.toml --skip-far --seeds 0 \
        --classes 2,4,6 --out /tmp/q-beta05     # a training setting tried on the hard classes, docs left alone

Bundles are trained into --work (default: a temporary folder) with default settings (or those of --config) and
reused from there by a later run; every run re-derives all they hold beside the weights (latent statistics, novelty
score, thresholds) with the current code on their own splits, so a scoring change is measured without retraining.

(1) far-OOD at 1x28x28: a Fashion-MNIST model (`detector train --data fashion-mnist:train`, wall time reported)
    against every set of detector/data/ood_suite.py, and scikit-learn's upscaled digits (the first proxy);
(2) far-OOD at 3x64x64 RGB: a model trained for 4 epochs on 7,500 coloured-object scenes (its 80% split), against
    1,000 held-out scenes and the suite at that size;
(3) calibration: share of the normal test sets flagged at the 1% thresholds;
(4) one-class: a default-settings model per class and seed, tested on all 10,000 test images.
AUROC and detection rate (share flagged at the calibrated threshold) for every calibrated score; the costlier
diagnostics (iw_nll, complexity_corrected) are asked for on the far-OOD sets, so they are shown beside the default
scores there (not in the one-class runs, which would take twice as long).
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

from detector.bench.results import stamp
from detector.calibrate import calibrate_bundle, raw_columns
from detector.config import DebiasConfig, ModelConfig, load_settings
from detector.data import load_spec, ood_suite
from detector.data.batches import load_tensor
from detector.data.builtin import FASHION_MNIST_CLASSES
from detector.data.splits import split_as
from detector.model.bundle import load_bundle, save_bundle
from detector.model.device import resolve_device
from detector.model.segmenter import model_weights
from detector.model.vae import VAE
from detector.scoring.complexity import WAVELET_SCORES
from detector.scoring.detection_metrics import auroc
from detector.scoring.latent import fit_latent_density
from detector.scoring.novelty import NoveltyFusion, TypicalityTest
from detector.scoring.scorer import Scorer, score_settings
from detector.scoring.scores import DIAGNOSTICS
from detector.training.pipeline import train_bundle

ROOT = Path(__file__).resolve().parent.parent

SHOWN = ("novelty", "neg_elbo", "iw_nll", "recon_error", "recon_error_lowpass", "latent_distance", "latent_knn",
         "transform_nll", "complexity_corrected")
RGB_SHAPE = (3, 64, 64)
LOWPASS = "recon_error_lowpass"


def recalibrate(path: Path, samples, config: Path | None = None) -> Scorer:
    """Re-derive what the bundle at ``path`` holds beside its weights with the current code: the score settings
    (``config``'s, else the defaults: what training writes today), the latent statistics from its training split,
    the novelty score and thresholds from its validation and calibration splits."""
    bundle = load_bundle(path)
    bundle.config["score"] = score_settings(load_settings(config).score)
    cfg = bundle.config["train"]
    parts = split_as(samples, cfg)
    model = VAE(ModelConfig.from_json(bundle.config["model"]))
    model.load_state_dict(model_weights(bundle.weights))
    train = load_tensor(parts.train).reshape(len(parts.train), *model.cfg.input_shape)
    bundle.density = fit_latent_density(model, train, resolve_device("auto"), DebiasConfig(**bundle.config["debias"]))
    calibrate_bundle(bundle, parts.val, parts.cal, 0.01, "auto", 1024, progress=False)
    save_bundle(bundle, path)
    return Scorer(bundle)


def validation_raw(scorer: Scorer, samples) -> dict[str, np.ndarray]:
    """Raw scores of the bundle's validation split of ``samples`` (what its fusion was fitted on)."""
    return raw_columns(scorer, split_as(samples, scorer.bundle.config["train"]).val, 1024, False, "")


def earlier_fusions(fusion: NoveltyFusion, raw_val: dict) -> dict[str, NoveltyFusion]:
    """``fusion`` as it was before three of its changes, refitted on ``raw_val`` (the validation split's raw scores):
    its typicality term weighted 1 in the sum, its typicality test without the wavelet statistics, and the
    unblurred recon_error in place of recon_error_lowpass (as part and as statistic). Fusion variants, measured in
    the same run."""
    out = {}
    if fusion.typicality is not None and fusion.typicality.weight != 1.0:
        out["typicality weighted 1 (before TYPICALITY_WEIGHT)"] = NoveltyFusion(
            fusion.fits, fusion.combine, dataclasses.replace(fusion.typicality, weight=1.0))
    if fusion.typicality is not None:
        statistics = tuple(s for s in fusion.typicality.statistics if s.score not in WAVELET_SCORES)
        out["typicality without the wavelet statistics (before them)"] = NoveltyFusion(
            fusion.fits, fusion.combine, TypicalityTest.fit(raw_val, statistics))
    if any(f.component.score == LOWPASS for f in fusion.fits):
        def swap(item):  # a Component or a Statistic
            return dataclasses.replace(item, score="recon_error") if item.score == LOWPASS else item

        statistics = tuple(map(swap, fusion.typicality.statistics)) if fusion.typicality else ()
        out["recon_error unblurred (before recon_error_lowpass)"] = NoveltyFusion.fit(
            raw_val, tuple(swap(f.component) for f in fusion.fits), fusion.combine, statistics)
    return out


def trained(path: Path, samples, seed: int, config: Path | None, epochs: int = 0) -> float | None:
    """Train a bundle at ``path`` unless one is there, with the settings of ``config`` (None: the defaults) but
    ``seed`` and ``epochs``; the seconds it took, or None if reused."""
    if (path / "manifest.json").exists():
        return None
    t0 = time.perf_counter()
    settings = load_settings(config)
    settings.train.seed, settings.train.epochs = seed, epochs
    train_bundle(samples, settings, path, progress=False)
    return time.perf_counter() - t0


def variants(fusion: NoveltyFusion) -> dict[str, NoveltyFusion]:
    """The default novelty score and what it is without each of its parts, from the same fitted standardisation."""
    names = [f.component.score for f in fusion.fits]
    out = {"default (components + typicality)": fusion,
           "components only": NoveltyFusion(fusion.fits, fusion.combine)}
    if fusion.typicality is not None:
        out["typicality only"] = NoveltyFusion([], fusion.combine, fusion.typicality)
    for name in names:
        out[f"without {name}"] = NoveltyFusion([f for f in fusion.fits if f.component.score != name], fusion.combine,
                                               fusion.typicality)
    return out


def labelled_bound(fusion: NoveltyFusion, normal: dict, anomalous: dict) -> float:
    """AUROC of a logistic regression fitted with the test labels (5-fold cross-validated predictions) on the
    fusion's standardised parts and the typicality test's statistics: the most any weighting of what the model
    computes could reach on this test set; no fusion fitted on normal data alone can be expected to reach it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def features(scores: dict) -> np.ndarray:
        cols = [v.numpy()[:, None] for v in fusion.standardized(scores).values()]
        return np.hstack(cols + ([fusion.typicality.values(scores).numpy()] if fusion.typicality else []))

    xn, xa = features(normal), features(anomalous)
    x, y = np.vstack([xn, xa]), np.r_[np.zeros(len(xn)), np.ones(len(xa))]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    p = cross_val_predict(model, x, y, cv=5, method="predict_proba")[:, 1]
    return auroc(p[y == 0], p[y == 1])


def compare(scorer: Scorer, normal, anomalous, extra: dict[str, NoveltyFusion]) -> dict:
    """AUROC and detection rate of each shown score, and AUROC of each fusion variant (and of ``extra``)."""
    row = {}
    for k in SHOWN:
        if k in normal.scores and k in anomalous.scores:
            row[k] = {"auroc": auroc(normal.scores[k], anomalous.scores[k])}
            if k in anomalous.novel:
                row[k]["detection_rate"] = float(anomalous.novel[k].mean())
    row["fusions"] = {name: auroc(v.apply(normal.scores), v.apply(anomalous.scores))
                      for name, v in (variants(scorer.fusion) | extra).items()}
    return row


def suite(scorer: Scorer, normal, shape, fusions: dict[str, NoveltyFusion], extra: dict | None = None) -> dict:
    sets = {}
    makers = {f"{name} ({kind})": make for name, kind, make in ood_suite.SUITE}
    makers.update(extra or {})
    for name, make in makers.items():
        sets[name] = compare(scorer, normal, scorer.score(make(1000, shape), DIAGNOSTICS), fusions)
        print(f"  {name}: " + ", ".join(f"{k} {v['auroc']:.3f}" + (f"/{v['detection_rate']:.2f}" if "detection_rate" in v else "")
                                      for k, v in sets[name].items() if k != "fusions"), flush=True)
    return sets


def sklearn_digits(n: int, shape) -> np.ndarray:
    """scikit-learn's 8x8 digits upscaled to 20x20 in 28x28: the first proxy for handwriting, kept for comparison."""
    from PIL import Image
    from sklearn.datasets import load_digits

    imgs = load_digits().images[:n]
    out = np.zeros((len(imgs), 1, 28, 28), np.uint8)
    for i, img in enumerate(imgs):
        out[i, 0, 4:24, 4:24] = np.asarray(Image.fromarray((img * (255 / 16)).astype(np.uint8)).resize((20, 20),
                                                                                                      Image.BILINEAR))
    return out


def far_gray(work: Path, seed: int, config: Path | None) -> dict:
    path = work / f"fmnist_seed{seed}"
    train_seconds = None
    if not (path / "manifest.json").exists():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "detector", "--quiet", "train", "--data", "fashion-mnist:train",
                        "--out", str(path), "--seed", str(seed), *(["--config", str(config)] if config else [])],
                       check=True)
        train_seconds = time.perf_counter() - t0
        print(f"detector train --data fashion-mnist:train ({config or 'defaults'}): {train_seconds:.0f} s", flush=True)
    samples = load_spec("fashion-mnist:train")
    scorer = recalibrate(path, samples, config)
    normal = scorer.score_samples(load_spec("fashion-mnist:test"), progress=False, diagnostics=DIAGNOSTICS)
    print("far-OOD at 1x28x28 (Fashion-MNIST model):", flush=True)
    sets = suite(scorer, normal, (1, 28, 28), earlier_fusions(scorer.fusion, validation_raw(scorer, samples)),
                 {"scikit-learn digits, upscaled (first proxy)": sklearn_digits})
    return {"train_seconds": train_seconds, "sets": sets, "model_version": scorer.model_version,
            "calibration_flagged": {k: float(v.mean()) for k, v in normal.novel.items()}}


def far_rgb(work: Path, seed: int, config: Path | None) -> dict:
    data = work / "coloured_objects_train.npz"
    if not data.exists():
        np.savez(data, x=ood_suite.coloured_objects(7500, RGB_SHAPE, seed=0))
    path = work / f"rgb_seed{seed}"
    samples = load_spec(str(data))
    seconds = trained(path, samples, seed, config, epochs=4)
    scorer = recalibrate(path, samples, config)
    normal = scorer.score(ood_suite.coloured_objects(1000, RGB_SHAPE, seed=100), DIAGNOSTICS)
    print("far-OOD at 3x64x64 (coloured-object model, 4 epochs):", flush=True)
    sets = suite(scorer, normal, RGB_SHAPE, earlier_fusions(scorer.fusion, validation_raw(scorer, samples)))
    return {"train_seconds": seconds, "sets": sets, "model_version": scorer.model_version,
            "calibration_flagged": {k: float(v.mean()) for k, v in normal.novel.items()},
            "transform_head_used": any(f.component.score == "transform_nll" for f in scorer.fusion.fits)}


def one_class(work: Path, classes: list[int], seeds: list[int], config: Path | None) -> dict:
    test = load_spec("fashion-mnist:test")
    labels = test.labels
    rows = {}
    for seed in seeds:
        for c in classes:
            samples = load_spec(f"fashion-mnist:train:classes={c}")
            path = work / f"class{c}_seed{seed}"
            seconds = trained(path, samples, seed, config)
            scorer = recalibrate(path, samples, config)
            result = scorer.score_samples(test, progress=False)  # diagnostics on the far-OOD sets only: time
            normal = labels == c
            part = lambda keep: dataclasses.replace(result, scores={k: v[keep] for k, v in result.scores.items()},  # noqa: E731
                                                    novel={k: v[keep] for k, v in result.novel.items()})
            before = earlier_fusions(scorer.fusion, validation_raw(scorer, samples))
            row = compare(scorer, part(normal), part(~normal), before)
            row["fusions"]["labelled bound (logistic regression with the test labels, 5-fold CV)"] = labelled_bound(
                scorer.fusion, part(normal).scores, part(~normal).scores)
            row["seconds"] = seconds
            rows[f"{c}/{seed}"] = row
            print(f"class {c} ({FASHION_MNIST_CLASSES[c]}), seed {seed}: "
                  + ", ".join(f"{k} {row[k]['auroc']:.3f}" for k in SHOWN if k in row), flush=True)
    return rows


def _cell(v: dict | None) -> str:
    if v is None:
        return "-"
    return f"{v['auroc']:.3f}" + (f" / {v['detection_rate']:.2f}" if "detection_rate" in v else "")


def _suite_lines(title: str, part: dict) -> list[str]:
    lines = [f"## {title}", "", "AUROC / share flagged at the calibrated 1% threshold (scores without a threshold: "
             "AUROC only).", "", "| set | " + " | ".join(SHOWN) + " |", "|---" * (len(SHOWN) + 1) + "|"]
    for name, row in part["sets"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(row.get(k)) for k in SHOWN) + " |")
    flagged = part["calibration_flagged"]
    lines += ["", "Normal test data flagged at the 1% thresholds: " + ", ".join(f"{k} {v:.4f}" for k, v in flagged.items()),
              "", "Fusion variants (AUROC):", "", "| fusion | " + " | ".join(part["sets"]) + " |",
              "|---" * (len(part["sets"]) + 1) + "|"]
    for name in next(iter(part["sets"].values()))["fusions"]:
        lines.append(f"| {name} | " + " | ".join(f"{row['fusions'][name]:.3f}" for row in part["sets"].values()) + " |")
    return lines + [""]


def _settings_line(config: str | None) -> str:
    if not config:
        return "Default settings throughout"
    return f"Bundles trained with these settings in place of the defaults: `{' '.join(config.split())}`"


def write_report(result: dict, path: Path) -> None:
    lines = ["# Detection quality", "", f"Measured by `{result['command']}` on {result['machine']}, "
             f"{result['date']}. {_settings_line(result.get('config'))}; every bundle recalibrated with the code of "
             "that run.", ""]
    if "far_gray" in result:
        fg = result["far_gray"]
        if fg["train_seconds"]:
            lines += [f"`detector train --data fashion-mnist:train` with "
                      f"{'the settings above' if result.get('config') else 'default settings'} took "
                      f"{fg['train_seconds'] / 60:.1f} minutes.", ""]
        lines += _suite_lines("Far-OOD at 1x28x28: a Fashion-MNIST model", fg)
    if "far_rgb" in result:
        lines += _suite_lines("Far-OOD at 3x64x64 RGB: a coloured-object model trained for 4 epochs", result["far_rgb"])
    oc = result.get("one_class")
    if oc:
        lines += ["## One-class Fashion-MNIST (AUROC; train on one class, test on all 10,000 test images)", "",
                  "| class / seed | " + " | ".join(SHOWN) + " |", "|---" * (len(SHOWN) + 1) + "|"]
        for key, row in oc.items():
            c, seed = key.split("/")
            lines.append(f"| {c} {FASHION_MNIST_CLASSES[int(c)]} / {seed} | "
                         + " | ".join(f"{row[k]['auroc']:.3f}" if k in row else "-" for k in SHOWN) + " |")
        for seed in sorted({k.split("/")[1] for k in oc}):
            rows = [r for k, r in oc.items() if k.split("/")[1] == seed]
            lines.append(f"| **mean, seed {seed}** | " + " | ".join(
                f"**{np.mean([r[k]['auroc'] for r in rows]):.3f}**" if k in rows[0] else "-" for k in SHOWN) + " |")
        lines.append("| **mean, all** | " + " | ".join(
            f"**{np.mean([r[k]['auroc'] for r in oc.values()]):.3f}**" if k in next(iter(oc.values())) else "-"
            for k in SHOWN) + " |")
        names = list(next(iter(oc.values()))["fusions"])
        lines += ["", "Fusion variants, one-class mean AUROC over every class and seed:", "", "| fusion | mean |",
                  "|---|---|"] + [f"| {n} | {np.mean([r['fusions'][n] for r in oc.values()]):.3f} |" for n in names]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="folder for the bundles, reused by later runs (default: temporary)")
    parser.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--seeds", default="0,1", help="training seeds of the one-class models")
    parser.add_argument("--seed", type=int, default=0, help="training seed of the far-OOD models")
    parser.add_argument("--skip-one-class", action="store_true")
    parser.add_argument("--skip-far", action="store_true")
    parser.add_argument("--config", type=Path,
                        help="settings (.toml, as `detector train --config`) for the bundles this run trains, in place "
                             "of the defaults; give it a --work of its own, as bundles already there are reused")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()

    result = stamp({"command": "scripts/bench_quality.py " + " ".join(sys.argv[1:]),
                    "config": args.config.read_text() if args.config else None})
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not args.skip_far:
            result["far_gray"] = far_gray(work, args.seed, args.config)
            result["far_rgb"] = far_rgb(work, args.seed, args.config)
        if not args.skip_one_class:
            result["one_class"] = one_class(work, [int(c) for c in args.classes.split(",")],
                                            [int(s) for s in args.seeds.split(",")], args.config)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(result, indent=2))
    write_report(result, args.out / "quality.md")
    print(f"wrote {args.out / 'quality.md'}")


if __name__ == "__main__":
    main()
