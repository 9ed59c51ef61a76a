"""Per-sample score tables written to CSV or Parquet, atomically (a crash leaves no partial file)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from detector.errors import InvalidInput
from detector.scoring.scorer import ScoreResult


def result_columns(result: ScoreResult, index: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {"index": index}
    if labels is not None:
        cols["label"] = labels
    for name, values in result.scores.items():
        cols[name] = values
    for name, values in result.p_values.items():
        cols[f"p_value_{name}"] = values
    for name, values in result.novel.items():
        cols[f"is_novel_{name}"] = values
    if result.resample_weight is not None:
        cols["resample_weight"] = result.resample_weight
        cols["resample"] = result.resample
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


def write_table(cols: dict[str, np.ndarray], path: Path) -> None:
    fmt = check_table_path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({k: np.asarray(v) for k, v in cols.items()}), tmp)
    else:
        names = list(cols)
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(names)
            columns = [np.asarray(cols[n]).astype(int) if cols[n].dtype == bool else cols[n] for n in names]
            for row in zip(*columns):
                writer.writerow([f"{v:.6g}" if isinstance(v, (float, np.floating)) else v for v in row])
    os.replace(tmp, path)
