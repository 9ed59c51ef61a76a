"""SampleSet: samples of one kind and shape, read lazily from an array that may be memory-mapped."""

from __future__ import annotations

import mmap
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np

from detector.errors import DataError


@dataclass(frozen=True)
class SampleSet:
    """Samples as stored (uint8 pixels stay uint8), with an optional selection of rows.

    ``x`` is (N, C, H, W) for images, (N, H, W, C) when ``channels_last``, or (N, D) for
    vectors. ``rows`` selects and orders rows without copying ``x`` (which may be a memmap).
    """

    x: np.ndarray
    y: np.ndarray | None
    kind: str  # "image" or "vector"
    name: str
    rows: np.ndarray | None = None
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("image", "vector"):
            raise ValueError(f"kind must be image or vector, not {self.kind}")

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else int(self.x.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        shape = tuple(int(s) for s in self.x.shape[1:])
        if self.channels_last:
            h, w, c = shape
            return (c, h, w)
        return shape

    @property
    def is_uint8(self) -> bool:
        return self.x.dtype == np.uint8

    @property
    def labels(self) -> np.ndarray | None:
        if self.y is None:
            return None
        return self.y if self.rows is None else self.y[self.rows]

    def take(self, positions: np.ndarray) -> "SampleSet":
        """The samples at ``positions`` (indices into this set), sharing storage."""
        positions = np.asarray(positions, dtype=np.int64)
        rows = positions if self.rows is None else self.rows[positions]
        return replace(self, rows=rows)

    def select_classes(self, classes: list[int]) -> "SampleSet":
        labels = self.labels
        if labels is None:
            raise DataError(f"{self.name}: ':classes=' needs labels, and this data has none")
        keep = np.flatnonzero(np.isin(labels, classes))
        if keep.size == 0:
            present = sorted(int(c) for c in np.unique(labels))
            raise DataError(f"{self.name}: no samples with classes {classes} (labels present: {present})")
        return replace(self.take(keep), name=f"{self.name}:classes={','.join(map(str, classes))}")

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the selection in storage dtype, channels first."""
        if self.rows is None:
            batch = np.asarray(self.x[start:stop])
        else:
            rows = self.rows[start:stop]
            # Sorted fancy indexing keeps memory-mapped reads sequential.
            order = np.argsort(rows, kind="stable")
            batch = np.empty((len(rows), *self.x.shape[1:]), dtype=self.x.dtype)
            batch[order] = self.x[rows[order]]
        if self.channels_last:
            batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        return batch

    def release_pages(self) -> None:
        """Drop the memory-mapped pages read so far from this process's resident set.

        They are page cache the kernel could reclaim anyway, but they count as RSS; a streaming
        pass over a file larger than memory calls this after each chunk to keep RSS flat.
        """
        mm, a = None, self.x
        while a is not None and mm is None:  # views (reshapes) keep the mapping on a base array
            mm = a if isinstance(a, mmap.mmap) else getattr(a, "_mmap", None)
            a = getattr(a, "base", None)
        if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED)

    def chunks(self, size: int, start: int = 0, stop: int | None = None,
               bar=None) -> Iterator[tuple[int, np.ndarray]]:
        """(start, raw batch) over rows ``start``..``stop`` (default: all), ``size`` rows at a time: the one walk
        over a data set that training, scoring, audits and the remote client share. ``bar`` (detector.progress):
        advanced by each batch once the caller is done with it."""
        stop = len(self) if stop is None else stop
        for first in range(start, stop, size):
            raw = self.read(first, min(first + size, stop))
            yield first, raw
            if bar is not None:
                bar.update(len(raw))


def to_model_space(raw: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1], C-contiguous whatever the input's strides (a channels-last view becomes
    channels-first here, in the one pass that converts it); floats pass through as float32."""
    if raw.dtype == np.uint8:
        return np.divide(raw, np.float32(255.0), out=np.empty(raw.shape, np.float32))
    return raw.astype(np.float32, copy=False)
