"""Audit chunks: each chunk's results in one .npz, written atomically, so an interrupted audit
resumes where it stopped and a sharded audit merges into exactly the single-process result."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from detector.errors import InvalidInput
from detector.scoring.scorer import ScoreResult


@dataclass(frozen=True)
class AuditPlan:
    """What an audit directory holds; a rerun must match it to reuse finished chunks."""

    model_version: str
    data_name: str
    data_fingerprint: str
    n_samples: int
    chunk_size: int
    diagnostics: list[str] = field(default_factory=list)  # costlier scores asked for (sorted names)

    @property
    def n_chunks(self) -> int:
        return (self.n_samples + self.chunk_size - 1) // self.chunk_size

    def chunk_range(self, i: int) -> tuple[int, int]:
        return i * self.chunk_size, min((i + 1) * self.chunk_size, self.n_samples)


def plan_path(out: Path) -> Path:
    return out / "chunks" / "plan.json"


def chunk_path(out: Path, i: int) -> Path:
    return out / "chunks" / f"chunk-{i:06d}.npz"


def prepare(out: Path, plan: AuditPlan) -> None:
    """Create the chunk folder, or check that the one there was made for this very audit."""
    (out / "chunks").mkdir(parents=True, exist_ok=True)
    path = plan_path(out)
    if path.exists():
        existing = {"diagnostics": [], **json.loads(path.read_text())}  # plans written before diagnostics had none
        if existing != asdict(plan):
            raise InvalidInput(f"{out}: holds an audit of other data or another model ({existing['data_name']}, "
                               f"{existing['model_version']}, diagnostics {existing['diagnostics'] or 'none'}); use another --out "
                               "or delete it")
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(plan), indent=2))
    os.replace(tmp, path)


def is_done(out: Path, i: int) -> bool:
    return chunk_path(out, i).exists()


def write_chunk(out: Path, i: int, start: int, result: ScoreResult, labels: np.ndarray | None) -> None:
    arrays = {"index": np.arange(start, start + len(result), dtype=np.int64)}
    if labels is not None:
        arrays["label"] = labels
    arrays.update(result.to_columns())
    arrays["latent_mean"] = result.latent_mean.astype(np.float32)
    tmp = chunk_path(out, i).with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, chunk_path(out, i))


def read_chunk(out: Path, i: int) -> dict[str, np.ndarray]:
    with np.load(chunk_path(out, i)) as z:
        return {k: z[k] for k in z.files}
