#!/usr/bin/env python
"""Training and scoring throughput. Writes docs/benchmarks/train.{md,json}.

    .venv/bin/python scripts/bench_train.py [--epochs 2] [--data SPEC --name train-NAME]

(1) training samples/s: `detector train` (subprocess, its own timing of the training loop)
    against a textbook PyTorch loop (DataLoader over an in-memory float TensorDataset,
    shuffle=True) fitting the same model with the same loss, batch size and epochs, in
    this one run;
(2) in-process scoring samples/s at batch 1024: one encoder + decoder pass of the model (its own cost), the
    costlier parts, the Scorer with default settings (what the server calls) and with each diagnostic; the ratio
    of the Scorer's rate to the model's own is the cost figure, the median of rounds that time the two back to
    back. `--bundle B` measures (2) alone, with B, into scoring.{md,json}.
`--data SPEC` trains on other images (default fashion-mnist:train; e.g. an .npz of 3x64x64 frames made by
`python -m detector.data.ood_suite`), `--name` names the report (default train). Both loops train the VAE alone:
`detector train` runs with `[train] map_steps = 0` (the map segmenter trains after the VAE, outside the loop timed).
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
import torch
from torch.utils.data import DataLoader, TensorDataset

from detector.bench.results import stamp
from detector.timing import best_rate, paired_ratios
from detector.config import ModelConfig, TrainConfig
from detector.data import load_spec
from detector.data.sampleset import to_model_space
from detector.model.vae import VAE, resolve_model_config
from detector.scoring.scorer import Scorer
from detector.training.trainer import kl_weight, loss_per_sample

ROOT = Path(__file__).resolve().parent.parent


def textbook(spec: str, epochs: int, n_train: int) -> float:
    """The loop from a tutorial: float tensors in memory, DataLoader(shuffle=True), same model and loss."""
    samples = load_spec(spec)
    x = torch.from_numpy(np.array(to_model_space(samples.read(0, n_train))))  # uint8 / 255; floats as they are
    cfg = TrainConfig()
    torch.manual_seed(0)
    model = VAE(resolve_model_config(ModelConfig(), "image", samples.sample_shape))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loader = DataLoader(TensorDataset(x), batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    seen, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        for step, (batch,) in enumerate(loader):
            eps = torch.randn(batch.shape[0], model.latent_dim)
            loss, _ = loss_per_sample(model, batch, eps, kl_weight(cfg, epoch, step, len(loader)))
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
            seen += batch.shape[0]
    return seen / (time.perf_counter() - t0)


def ours(spec: str, epochs: int, work: Path) -> tuple[float, int, Path]:
    out, config = work / "bundle", work / "vae-alone.toml"
    config.write_text("[train]\nmap_steps = 0\n")
    subprocess.run([sys.executable, "-m", "detector", "--quiet", "train", "--data", spec, "--out", str(out),
                    "--epochs", str(epochs), "--config", str(config)], check=True)
    cfg = json.loads((out / "config.json").read_text())
    return cfg["train"]["samples_per_second"], cfg["data"]["n_train"], out


def scoring(bundle: Path, batch_size: int) -> tuple[dict[str, float], list[float], tuple[int, ...]]:
    """Samples/s of each part of scoring and of the whole Scorer, beside one encoder + decoder pass of the same model
    (the model's own cost) at the same batch, all in this one run; the cost ratio of each of the rounds that time
    the default Scorer and the model's pass one after the other (timing.paired_ratios); and the model's sample
    shape."""
    scorer = Scorer.from_path(bundle)
    x_np = load_spec("fashion-mnist:test").read(0, batch_size) if scorer.sample_shape == (1, 28, 28) else \
        np.random.default_rng(0).integers(0, 256, (batch_size, *scorer.sample_shape), dtype=np.uint8)
    x = scorer._to_device(x_np)
    model, eps = scorer.model, scorer.eps
    with torch.inference_mode():
        passes = lambda: model.decode(model.encode(x)[0])  # noqa: E731
        knn = lambda: scorer.latent_reference.distances(model.encode(x)[0])  # noqa: E731
        knn_points = len(scorer.latent_reference.points)
        turn = lambda: model.transform_nll(x, views=scorer.transform_views)  # noqa: E731
        timed = {
            "one encoder + decoder pass (the model's own cost)": passes,
            f"latent_knn (encoder + distances to {knn_points} training latents)": knn,
            f"transform_nll ({scorer.transform_views} views: encoder passes + transform head)": turn,
            f"Scorer.score, defaults (every default score, novelty, verdicts, p-values, weights; "
            f"{eps.shape[0]} ELBO draw(s)): what the server calls": lambda: scorer.score(x_np),
            f"Scorer.score + iw_nll ({scorer.iw_eps.shape[0]} draws)": lambda: scorer.score(x_np, ["iw_nll"]),
        }
        rates = {name: best_rate(fn, batch_size, repeat=3) for name, fn in timed.items()}
        rates["Scorer.score + complexity (JPEG 2000, CPU)"] = best_rate(lambda: scorer.score(x_np, ["complexity"]),
                                                                        batch_size, repeat=1)
        ratios = paired_ratios(lambda: scorer.score(x_np), passes)
        return rates, ratios, scorer.sample_shape


COST_RATIO = "Scorer.score, defaults / one encoder + decoder pass"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data", default="fashion-mnist:train", help="training images (a SPEC)")
    parser.add_argument("--name", default="train", help="report name: OUT/NAME.{md,json}")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--keep", type=Path, help="copy the trained bundle here (for bench_serve / bench_audit)")
    parser.add_argument("--bundle", type=Path, help="measure scoring only, with this bundle (no training)")
    args = parser.parse_args()
    result = {**stamp({}), "command": "scripts/bench_train.py " + " ".join(sys.argv[1:])}
    lines = ["# Training and scoring throughput", "", f"Measured by `.venv/bin/python {result['command']}` on "
             f"{result['machine']}, {result['date']}.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle
        if bundle is None:
            ours_rate, n_train, bundle = ours(args.data, args.epochs, Path(tmp))
            book_rate = textbook(args.data, args.epochs, n_train)
            print(f"training: detector train {ours_rate:.0f} samples/s, textbook loop {book_rate:.0f} samples/s, "
                  f"ratio {ours_rate / book_rate:.2f}", flush=True)
            result.update({"epochs": args.epochs, "n_train": n_train, "train_samples_per_s": {
                "detector train": ours_rate, "textbook DataLoader loop": book_rate, "ratio": ours_rate / book_rate}})
            shape = "x".join(map(str, load_spec(args.data).sample_shape))
            lines += [f"`{args.data}`, {n_train} training images of {shape}, default model, "
                      f"batch {TrainConfig().batch_size}.", "",
                      "| training loop | samples/s |", "|---|---|", f"| `detector train` | {ours_rate:.0f} |",
                      f"| textbook PyTorch loop (DataLoader, float tensors) | {book_rate:.0f} |",
                      f"| **ratio** | **{ours_rate / book_rate:.2f}** |", ""]
        score_rates, ratios, sample_shape = scoring(bundle, args.batch_size)
        if args.keep:
            import shutil

            shutil.rmtree(args.keep, ignore_errors=True)
            shutil.copytree(bundle, args.keep)
    model_rate, default_rate = list(score_rates.values())[0], list(score_rates.values())[3]
    for k, v in score_rates.items():
        print(f"scoring {k}: {v:.0f} samples/s")
    ratio = float(np.median(ratios))
    spread = f"median of {len(ratios)} paired rounds, {min(ratios):.3f} to {max(ratios):.3f}"
    print(f"{COST_RATIO}: {ratio:.3f} ({spread}; {default_rate / model_rate:.3f} from the fastest-of-3 rates)")
    result.update({"scoring_samples_per_s_batch": args.batch_size, "scoring_samples_per_s": score_rates,
                   "cost_ratio": ratio, "cost_ratio_rounds": ratios,
                   "cost_ratio_of_rates": default_rate / model_rate})
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name if args.bundle is None else "scoring"  # scoring alone does not overwrite the training figures
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2))
    lines += [f"| in-process scoring at batch {args.batch_size}, {sample_shape} | samples/s |",
              "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in score_rates.items()]
    lines += ["", f"**{COST_RATIO}: {ratio:.3f}** (goal 0.33): the {spread}, each round timing one call of the "
              "default Scorer and one encoder + decoder pass back to back, so that the machine's speed, which drifts "
              f"on a shared VM, is the same for both. From the fastest-of-3 rates above, measured apart: "
              f"{default_rate / model_rate:.3f}."]
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / (name + '.md')}")


if __name__ == "__main__":
    main()
