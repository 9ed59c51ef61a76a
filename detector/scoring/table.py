"""Per-sample score tables written to CSV or Parquet, atomically (a crash leaves no partial file)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from detector.errors import InvalidInput
from detector.scoring.scorer import ScoreResult


TABLE_NAMES = {"score/": "", "p_value/": "p_value_", "novel/": "is_novel_"}  # ScoreResult column -> table column
NOT_IN_TABLES = ("latent_mean", "anomaly_maps")  # per-sample arrays, not scalars


def result_columns(result: ScoreResult, index: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
    """A score table's columns: index, label if any, then every score, p-value, verdict and the resample weight
    and flag, named as the table contract has them ("novelty", "p_value_novelty", "is_novel_novelty", ...)."""
    cols: dict[str, np.ndarray] = {"index": index}
    if labels is not None:
        cols["label"] = labels
    for key, values in result.to_columns().items():
        if key in NOT_IN_TABLES:
            continue
        prefix = key.split("/", 1)[0] + "/" if "/" in key else ""
        cols[TABLE_NAMES.get(prefix, "") + key[len(prefix):]] = values
    return cols


def check_table_path(path: Path) -> str:
    fmt = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(path.suffix.lower())
    if fmt is None:
        raise InvalidInput(f"{path}: output must end in .csv or .parquet")
    if not path.parent.exists():
        raise InvalidInput(f"{path.parent}: output folder does not exist")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InvalidInput("Parquet output needs pyarrow: pip install pyarrow, or write .csv") from None
    return fmt


class TableWriter:
    """Write a table chunk by chunk (bounded memory) to a temporary file, renamed into place on close."""

    def __init__(self, path: Path):
        self.path = path
        self.fmt = check_table_path(path)
        self.tmp = path.with_name(f".{path.name}.tmp")
        self._writer = None
        self._names: list[str] | None = None

    def write(self, cols: dict[str, np.ndarray]) -> None:
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table({k: np.asarray(v) for k, v in cols.items()})
            if self._writer is None:
                self._writer = pq.ParquetWriter(self.tmp, table.schema)
            self._writer.write_table(table)
            return
        if self._writer is None:
            self._writer = open(self.tmp, "w", newline="")
            self._names = list(cols)
            self._csv = csv.writer(self._writer)
            self._csv.writerow(self._names)
        columns = [np.asarray(cols[n]).astype(int) if np.asarray(cols[n]).dtype == bool else cols[n]
                   for n in self._names]
        for row in zip(*columns):
            self._csv.writerow([f"{v:.6g}" if isinstance(v, (float, np.floating)) else v for v in row])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        os.replace(self.tmp, self.path)

    def __enter__(self) -> "TableWriter":
        return self

    def __exit__(self, exc_type, *rest) -> None:
        if exc_type is None:
            self.close()
        else:
            if self._writer is not None:
                self._writer.close()
            self.tmp.unlink(missing_ok=True)


def write_table(cols: dict[str, np.ndarray], path: Path) -> None:
    with TableWriter(path) as writer:
        writer.write(cols)
