#!/usr/bin/env python
"""Training and scoring throughput. Writes docs/benchmarks/train.{md,json}.

    .venv/bin/python scripts/bench_train.py [--epochs 2]

(1) training samples/s: `detector train` (subprocess, its own timing of the training loop)
    against a textbook PyTorch loop (DataLoader over an in-memory float TensorDataset,
    shuffle=True) fitting the same model with the same loss, batch size and epochs, in
    this one run;
(2) in-process scoring samples/s at batch 1024, per score: each score's cheapest path,
    then the full Scorer (every score, verdicts and p-values: what the server pays).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib import stamp  # noqa: E402

from detector.config import ModelConfig, TrainConfig  # noqa: E402
from detector.data import load_spec  # noqa: E402
from detector.model.vae import N_TRANSFORMS, VAE, resolve_model_config  # noqa: E402
from detector.scoring.complexity import complexity_bpd  # noqa: E402
from detector.scoring.scorer import Scorer  # noqa: E402
from detector.training.trainer import kl_weight, loss_per_sample  # noqa: E402

SPEC = "fashion-mnist:train"


def textbook(epochs: int, n_train: int) -> float:
    """The loop from a tutorial: float tensors in memory, DataLoader(shuffle=True), same model and loss."""
    samples = load_spec(SPEC)
    x = torch.from_numpy(samples.read(0, n_train)).float() / 255.0
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


def ours(epochs: int, work: Path) -> tuple[float, int]:
    out = work / "bundle"
    subprocess.run([sys.executable, "-m", "detector", "--quiet", "train", "--data", SPEC, "--out", str(out),
                    "--epochs", str(epochs)], check=True)
    cfg = json.loads((out / "config.json").read_text())
    return cfg["train"]["samples_per_second"], cfg["data"]["n_train"], out


def rate(fn, n: int, repeat: int = 3) -> float:
    fn()  # warm-up
    best = min(_timed(fn) for _ in range(repeat))
    return n / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def scoring(bundle: Path, batch_size: int) -> dict[str, float]:
    scorer = Scorer.from_path(bundle)
    raw = load_spec("fashion-mnist:test").read(0, batch_size)
    x = scorer._to_device(raw)
    model, eps = scorer.model, scorer.eps
    with torch.inference_mode():
        enc = lambda: model.encode(x)  # noqa: E731
        rec = lambda: model.reconstruct(model.decode(model.encode(x)[0]))  # noqa: E731
        knn = lambda: scorer.latent_reference.distances(model.encode(x)[0])  # noqa: E731
        knn_points = len(scorer.latent_reference.points)
        turn = lambda: model.transform_nll(x)  # noqa: E731
        from detector.scoring.scores import raw_scores

        allraw = lambda: raw_scores(model, x, eps, scorer.latent_reference, scorer.chunk)  # noqa: E731
        return {
            "latent_distance (encoder only)": rate(enc, batch_size),
            "recon_error (encoder + 1 decoder pass)": rate(rec, batch_size),
            f"latent_knn (encoder + distances to {knn_points} training latents)": rate(knn, batch_size),
            f"transform_nll ({N_TRANSFORMS} encoder passes + transform head)": rate(turn, batch_size),
            f"every raw score (the above, {eps.shape[0] + 1} decoder passes for neg_elbo / iw_nll)": rate(allraw, batch_size),
            "complexity (JPEG 2000, CPU)": rate(lambda: complexity_bpd(raw), batch_size, repeat=1),
            "novelty = full Scorer.score (every score, verdicts, p-values)": rate(lambda: scorer.score(raw), batch_size),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--keep", type=Path, help="copy the trained bundle here (for bench_serve / bench_audit)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ours_rate, n_train, bundle = ours(args.epochs, Path(tmp))
        book_rate = textbook(args.epochs, n_train)
        print(f"training: detector train {ours_rate:.0f} samples/s, textbook loop {book_rate:.0f} samples/s, "
              f"ratio {ours_rate / book_rate:.2f}", flush=True)
        score_rates = scoring(bundle, args.batch_size)
        if args.keep:
            import shutil

            shutil.rmtree(args.keep, ignore_errors=True)
            shutil.copytree(bundle, args.keep)
    for k, v in score_rates.items():
        print(f"scoring {k}: {v:.0f} samples/s")
    result = {**stamp({}),
              "epochs": args.epochs, "n_train": n_train, "train_samples_per_s": {"detector train": ours_rate,
              "textbook DataLoader loop": book_rate, "ratio": ours_rate / book_rate},
              "scoring_samples_per_s_batch": args.batch_size, "scoring_samples_per_s": score_rates}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.json").write_text(json.dumps(result, indent=2))
    lines = ["# Training and scoring throughput", "",
             f"Measured by `.venv/bin/python scripts/bench_train.py --epochs {args.epochs}` on {result['machine']}, "
             f"{result['date']}: Fashion-MNIST, {n_train} training images, default model.", "",
             "| training loop | samples/s |", "|---|---|",
             f"| `detector train` | {ours_rate:.0f} |", f"| textbook PyTorch loop (DataLoader, float tensors) | {book_rate:.0f} |",
             f"| **ratio** | **{ours_rate / book_rate:.2f}** |", "",
             f"| in-process scoring at batch {args.batch_size} | samples/s |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in score_rates.items()]
    (args.out / "train.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'train.md'}")


if __name__ == "__main__":
    main()
