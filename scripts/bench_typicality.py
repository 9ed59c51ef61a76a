#!/usr/bin/env python
"""The typicality test on normal data unlike garments or drawn objects: natural-photo patches.

    .venv/bin/python scripts/bench_typicality.py --work runs/typicality      # about 10 minutes on 2 cores

Normal data: 64x64 RGB patches, from several scales, of the nature photographs of Debian's `mate-backgrounds`
(`apt-get install -y mate-backgrounds`): smooth skies and bokeh beside busy foliage, flowers and water, so the
statistics the typicality test reads are far from one elliptical cloud. A bundle is trained on 8,000 of them for
4 epochs (default settings otherwise) and reused from --work; its novelty score is then fitted on its own
validation split three times: with the typicality test of this code (k-NN over thirteen statistics), with the
same test without the three wavelet statistics (as it was before them) and with the one Gaussian over the
thirteen used before the k-NN test; each is measured against 1,000 held-out patches, the far-OOD suite at
3x64x64 and printed house numbers (SVHN-like: digits in printed fonts on flat colour). Writes
docs/benchmarks/typicality.{md,json}.
"""

from __future__ import annotations

import argparse
import glob
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import earlier_fusions, recalibrate, trained  # noqa: E402  (the same training and fits)

from detector.bench.results import stamp, write_results  # noqa: E402
from detector.calibrate import raw_columns  # noqa: E402
from detector.data import load_spec, ood_suite  # noqa: E402
from detector.data.sampleset import SampleSet  # noqa: E402
from detector.data.splits import split_as  # noqa: E402
from detector.scoring.detection_metrics import auroc  # noqa: E402
from detector.scoring.novelty import NoveltyFusion, TypicalityTest, _scale  # noqa: E402
from detector.scoring.scorer import Scorer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHAPE = (3, 64, 64)
PHOTOS = "/usr/share/backgrounds/mate/nature/*.jpg"


def nature_patches(n: int, seed: int) -> np.ndarray:
    paths = sorted(glob.glob(PHOTOS))
    if not paths:
        sys.exit(f"bench_typicality: no photographs at {PHOTOS}; apt-get install -y mate-backgrounds")
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    return ood_suite._patches(images, n, SHAPE, np.random.default_rng(seed))


def house_numbers(n: int, shape=SHAPE, seed: int = 5) -> np.ndarray:
    """One to three digits in a printed font on a flat colour, slightly blurred and noisy (SVHN-like)."""
    rng = np.random.default_rng(seed)
    fonts = [f for f in ood_suite.hand_fonts() if "DejaVu" in f or "Free" in f] or list(ood_suite.hand_fonts())
    out = np.empty((n, *shape), np.uint8)
    for i in range(n):
        bg = rng.integers(0, 256, 3)
        fg = 255 - bg if rng.random() < 0.5 else rng.integers(0, 256, 3)
        img = Image.new("RGB", shape[:0:-1], tuple(int(v) for v in bg))
        font = ImageFont.truetype(fonts[int(rng.integers(len(fonts)))], int(rng.integers(28, 50)))
        text = "".join(str(int(rng.integers(10))) for _ in range(int(rng.integers(1, 4))))
        ImageDraw.Draw(img).text((int(rng.integers(-4, 20)), int(rng.integers(-8, 14))), text,
                                 fill=tuple(int(v) for v in fg), font=font)
        a = np.asarray(img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2))))).astype(np.float32)
        a += rng.normal(0, rng.uniform(0, 8), a.shape)
        out[i] = np.clip(a, 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return out


def gaussian_fusion(knn: NoveltyFusion, raw_val: dict) -> NoveltyFusion:
    """The same components, with the typicality test as it was before: the Mahalanobis distance to the centre,
    standardised on the same validation split."""
    t = knn.typicality
    g = TypicalityTest(t.statistics, t.center, t.precision, 0.0, 1.0)
    lo, med, hi = np.quantile(g.distance(raw_val).numpy(), [0.01, 0.5, 0.99])
    return NoveltyFusion(knn.fits, knn.combine, TypicalityTest(t.statistics, t.center, t.precision, float(med),
                                                               _scale(med, lo, hi)[1], weight=t.weight))


def raw_of(scorer: Scorer, samples: SampleSet | np.ndarray) -> dict[str, np.ndarray]:
    """Raw scores of a sample set or of images (N, C, H, W), as columns."""
    if isinstance(samples, np.ndarray):
        samples = SampleSet(x=samples, y=None, kind="image", name="generated")
    return raw_columns(scorer, samples, 512, False, "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="folder for the bundle, reused by later runs (default: temporary)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    result = stamp({"command": "scripts/bench_typicality.py " + " ".join(sys.argv[1:])})
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = work / "nature_train.npz"
        if not data.exists():
            np.savez(data, x=nature_patches(8000, seed=10))
        samples, path = load_spec(str(data)), work / "nature_seed0"
        result["train_seconds"] = trained(path, samples, 0, None, epochs=4)
        scorer = recalibrate(path, samples)
        parts = split_as(samples, scorer.bundle.config["train"])
        raw_val, raw_cal = raw_of(scorer, parts.val), raw_of(scorer, parts.cal)
        fusions = {"k-NN (this code)": scorer.fusion, **earlier_fusions(scorer.fusion, raw_val),
                   "one Gaussian": gaussian_fusion(scorer.fusion, raw_val)}
        fusions |= {f"{name}, typicality only": NoveltyFusion([], f.combine, f.typicality)
                    for name, f in list(fusions.items())}
        thresholds = {name: float(np.quantile(f.apply(raw_cal), 0.99)) for name, f in fusions.items()}
        normal = {name: f.apply(raw_of(scorer, nature_patches(1000, seed=11))) for name, f in fusions.items()}
        sets = {f"{name} ({kind})": make for name, kind, make in ood_suite.SUITE}
        sets["house numbers (simpler)"] = house_numbers
        sets["coloured objects (simpler)"] = lambda n, shape: ood_suite.coloured_objects(n, shape, seed=100)
        rows = {}
        for set_name, make in sets.items():
            raw = raw_of(scorer, make(1000, SHAPE))
            anomalous = {name: f.apply(raw) for name, f in fusions.items()}
            rows[set_name] = {name: {"auroc": auroc(normal[name], anomalous[name]),
                                     "detection_rate": float((anomalous[name] > thresholds[name]).mean())}
                              for name in fusions}
            print(f"  {set_name}: " + ", ".join(f"{n} {v['auroc']:.3f}/{v['detection_rate']:.2f}"
                                                for n, v in rows[set_name].items()), flush=True)
        result["sets"] = rows
        result["normal_flagged"] = {name: float((normal[name] > thresholds[name]).mean()) for name in fusions}
    names = list(fusions)
    lines = ["# The typicality test on natural-photo patches", "",
             f"Measured by `{result['command']}` on {result['machine']}, {result['date']}. A bundle trained for 4 "
             "epochs on 8,000 64x64 patches of the nature photographs of Debian's `mate-backgrounds`; the novelty "
             "score fitted on its validation split with each typicality test; thresholds at the 99th percentile "
             "of its calibration split.", "", "AUROC / share flagged at the 1% threshold:", "",
             "| set | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join(f"{r[n]['auroc']:.3f} / {r[n]['detection_rate']:.2f}" for n in names) + " |"
              for s, r in rows.items()]
    lines += ["", "Held-out normal patches flagged: " + ", ".join(f"{n} {v:.3f}"
                                                                 for n, v in result["normal_flagged"].items()), ""]
    write_results(args.out, "typicality", result, lines)


if __name__ == "__main__":
    main()
