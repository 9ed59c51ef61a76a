#!/usr/bin/env python
"""One process against `torchrun --nproc_per_node=2` (DDP, gloo on CPU) with the same settings.
Writes docs/benchmarks/distributed.{md,json}.

    .venv/bin/python scripts/bench_distributed.py [--data fashion-mnist:train] [--epochs 3]

Each run is `detector train` with OMP_NUM_THREADS = cores / processes, so both use every core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from detector.bench.results import stamp, write_results

ROOT = Path(__file__).resolve().parent.parent

def run(cmd: list[str], threads: int, out: Path) -> dict:
    t0 = time.perf_counter()
    subprocess.run(cmd + ["--out", str(out)], check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    cfg = json.loads((out / "config.json").read_text())["train"]
    return {"wall_s": time.perf_counter() - t0, "samples_per_s": cfg["samples_per_second"],
            "best_val_loss": min(cfg["val_loss"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion-mnist:train")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    train = ["--quiet", "train", "--data", args.data, "--epochs", str(args.epochs), "--device", "cpu"]
    with tempfile.TemporaryDirectory() as tmp:
        one = run([sys.executable, "-m", "detector", *train], cores, Path(tmp) / "one")
        print(f"1 process: {one}", flush=True)
        torchrun = str(Path(sys.executable).parent / "torchrun")
        many = run([torchrun, "--standalone", f"--nproc_per_node={args.nproc}", "-m", "detector", *train],
                   max(1, cores // args.nproc), Path(tmp) / "many")
        print(f"torchrun {args.nproc} processes: {many}", flush=True)
    gap = (many["best_val_loss"] - one["best_val_loss"]) / one["best_val_loss"]
    res = {"one": one, "torchrun": many, "nproc": args.nproc, "val_loss_gap": gap, "data": args.data,
           "epochs": args.epochs}
    stamp(res)
    lines = ["# Distributed training (torchrun, DDP)", "",
             f"Measured by `.venv/bin/python scripts/bench_distributed.py --data {args.data} --epochs {args.epochs}` on "
             f"{res['machine']}, {res['date']}. `--batch-size` is the global batch: each rank takes its share.", "",
             "| run | training samples/s | wall time | best validation neg-ELBO |", "|---|---|---|---|",
             f"| 1 process | {one['samples_per_s']:.0f} | {one['wall_s']:.0f} s | {one['best_val_loss']:.2f} |",
             f"| torchrun, {args.nproc} processes (gloo) | {many['samples_per_s']:.0f} | {many['wall_s']:.0f} s | "
             f"{many['best_val_loss']:.2f} |", "", f"Validation loss gap: {gap:+.2%}."]
    write_results(args.out, "distributed", res, lines)


if __name__ == "__main__":
    main()
