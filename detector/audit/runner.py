"""`detector audit`: score a whole dataset in chunks (memory bounded, resumable, shardable by
torchrun rank), then merge into a per-sample table, weights, a summary and an HTML report."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from detector.audit import chunks
from detector.audit.report import write_report
from detector.audit.stats import AuditStats
from detector.data import load_spec
from detector.data.splits import fingerprint
from detector.distributed import DistContext
from detector.errors import InvalidInput
from detector.progress import progress as progress_bar
from detector.scoring.scorer import Scorer, ScoreResult, check_diagnostics
from detector.scoring.table import TableWriter, result_columns


def run_audit(bundle: Path, spec: str, out: Path, chunk_size: int = 8192, batch_size: int = 1024,
              device: str = "auto", table_format: str = "parquet", progress: bool = True, diagnostics=()) -> dict:
    if table_format not in ("parquet", "csv"):
        raise InvalidInput(f"table format must be parquet or csv, got '{table_format}'")
    # Under torchrun each rank scores every world-th chunk; the process group only carries barriers (gloo, whatever
    # the device), and each rank scores on its own GPU.
    dist = DistContext.from_env(torch.device("cpu"))
    if dist.enabled and torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank)
    rank, world = dist.rank, dist.world
    scorer = Scorer.from_path(bundle, device=device)
    samples = load_spec(spec)
    scorer.check_compatible(samples)
    diagnostics = sorted(check_diagnostics(diagnostics))
    plan = chunks.AuditPlan(scorer.model_version, samples.name, fingerprint(samples), len(samples), chunk_size,
                            diagnostics)
    if rank == 0:
        chunks.prepare(out, plan)
    dist.barrier()
    mine = [i for i in range(rank, plan.n_chunks, world) if not chunks.is_done(out, i)]
    todo = sum(plan.chunk_range(i)[1] - plan.chunk_range(i)[0] for i in mine)
    labels = samples.labels
    with progress_bar(todo, f"auditing{f' (rank {rank})' if world > 1 else ''}", enabled=progress and rank == 0,
                      leave=True) as bar:
        for i in mine:
            start, stop = plan.chunk_range(i)
            parts = [scorer.score(raw, diagnostics) for _, raw in samples.chunks(batch_size, start, stop, bar)]
            chunks.write_chunk(out, i, start, ScoreResult.concat(parts), None if labels is None else labels[start:stop])
            samples.release_pages()
    dist.barrier()
    summary = merge(out, plan, scorer, samples, table_format) if rank == 0 else {}
    dist.close()  # waits for every rank, then leaves the group
    return summary


def merge(out: Path, plan: chunks.AuditPlan, scorer: Scorer, samples, table_format: str) -> dict:
    """Stream the chunk files into scores table + weights.npy + summary.json + report.html."""
    stats = AuditStats(scorer)
    stats.set_total(plan.n_samples)
    weights_tmp = out / ".weights.npy.tmp"
    weights = np.lib.format.open_memmap(weights_tmp, mode="w+", dtype=np.float32, shape=(plan.n_samples,))
    table_path = out / f"scores.{table_format}"
    with TableWriter(table_path) as table:
        for i in range(plan.n_chunks):
            c = chunks.read_chunk(out, i)
            result = ScoreResult.from_columns(c)
            table.write(result_columns(result, c["index"], c.get("label")))
            if result.resample_weight is not None:
                weights[c["index"]] = result.resample_weight
            stats.add(c)
    weights.flush()
    del weights
    os.replace(weights_tmp, out / "weights.npy")
    for i in range(plan.n_chunks):  # second pass: histograms on ranges known from the first
        stats.add_histograms(chunks.read_chunk(out, i))
    summary = stats.summary(asdict(plan), scorer)
    summary["files"] = {"scores": table_path.name, "weights": "weights.npy", "report": "report.html"}
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "summary.json")
    write_report(out / "report.html", summary, stats, scorer, samples)
    return summary
