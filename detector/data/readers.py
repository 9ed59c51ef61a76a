"""Readers for each data format of the SPEC contract. Each returns a SampleSet.

Large uncompressed inputs (IDX, .npy) are memory-mapped and stay uint8: nothing is copied
into float32 until a batch is scored.
"""

from __future__ import annotations

import csv
import gzip
import zipfile
from pathlib import Path

import numpy as np

from detector.data.sampleset import SampleSet
from detector.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: corrupt gzip stream ({exc})") from None
    return raw


def _idx_header(head: bytes, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = head[3]
    if ndim == 0 or len(head) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.dtype(_IDX_DTYPES[head[2]]), shape, 4 + 4 * ndim


def read_idx_array(path: Path) -> np.ndarray:
    """An IDX array; memory-mapped when the file is not gzip-compressed."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head[:2] == b"\x1f\x8b":
        raw = _open_maybe_gzip(path)
        dtype, shape, offset = _idx_header(raw[:64], path)
        expected = int(np.prod(shape)) * dtype.itemsize
        if len(raw) - offset < expected:
            raise DataError(f"{path}: truncated IDX data ({len(raw) - offset} of {expected} bytes)")
        return np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape)), offset=offset).reshape(shape)
    dtype, shape, offset = _idx_header(head, path)
    expected = int(np.prod(shape)) * dtype.itemsize
    if path.stat().st_size - offset < expected:
        raise DataError(f"{path}: truncated IDX data ({path.stat().st_size - offset} of {expected} bytes)")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _labels_beside(images: Path) -> Path | None:
    if "images" not in images.name:
        return None
    for candidate in (images.name.replace("images-idx3", "labels-idx1"), images.name.replace("images", "labels")):
        path = images.with_name(candidate)
        if path != images and path.exists():
            return path
    return None


def _as_images(x: np.ndarray, y: np.ndarray | None, name: str) -> SampleSet:
    """Validate an image array and wrap it: (N,H,W) -> (N,1,H,W); (N,H,W,C) read channels-last."""
    channels_last = False
    if x.ndim == 3:
        x = x.reshape(x.shape[0], 1, x.shape[1], x.shape[2])
    elif x.ndim == 4:
        if x.shape[1] not in (1, 3, 4) and x.shape[3] in (1, 3, 4):
            channels_last = True
    else:
        raise DataError(f"{name}: images must be [N,H,W] or [N,C,H,W], got shape {list(x.shape)}")
    if x.shape[0] == 0:
        raise DataError(f"{name}: holds no samples")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating):
            raise DataError(f"{name}: images must be uint8 0..255 or float 0..1, got dtype {x.dtype}")
        probe = np.asarray(x[: min(len(x), 4096)], dtype=np.float64)
        if not np.isfinite(probe).all() or probe.min() < 0 or probe.max() > 1:
            raise DataError(f"{name}: float images must be finite and within 0..1")
    return SampleSet(x=x, y=_check_labels(y, x.shape[0], name), kind="image", name=name, channels_last=channels_last)


def _as_vectors(x: np.ndarray, y: np.ndarray | None, name: str) -> SampleSet:
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{name}: feature vectors must be a non-empty [N,D] array, got shape {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{name}: feature vectors must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise DataError(f"{name}: feature vectors contain NaN or Inf")
    return SampleSet(x=x, y=_check_labels(y, x.shape[0], name), kind="vector", name=name)


def _check_labels(y: np.ndarray | None, n: int, name: str) -> np.ndarray | None:
    if y is None:
        return None
    y = np.asarray(y).reshape(-1)
    if len(y) != n:
        raise DataError(f"{name}: {len(y)} labels for {n} samples")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name}: labels must be integers, got dtype {y.dtype}")
    return y.astype(np.int64)


def _as_samples(x: np.ndarray, y: np.ndarray | None, name: str) -> SampleSet:
    return _as_vectors(x, y, name) if x.ndim == 2 else _as_images(x, y, name)


def read_idx(path: Path) -> SampleSet:
    x = read_idx_array(path)
    labels = _labels_beside(path)
    y = read_idx_array(labels) if labels else None
    return _as_samples(x, y, str(path))


def read_npy(path: Path) -> SampleSet:
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None
    return _as_samples(x, None, str(path))


def read_npz(path: Path) -> SampleSet:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise DataError(f"{path}: .npz needs an array named 'x' (found: {', '.join(archive.files) or 'none'})")
            x = archive["x"]
            y = archive["y"] if "y" in archive.files else None
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from None
    return _as_samples(x, y, str(path))


def read_image_folder(path: Path) -> SampleSet:
    """PNG/JPEG files under ``path``; labels from first-level subfolders when there are any."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{path}: folder holds no PNG or JPEG images")
    subdirs = sorted({p.relative_to(path).parts[0] for p in files if len(p.relative_to(path).parts) > 1})
    label_of = {name: i for i, name in enumerate(subdirs)}
    arrays, labels = [], []
    mode = size = None
    for file in files:
        try:
            with Image.open(file) as img:
                if mode is None:
                    mode = "L" if img.mode in ("L", "1", "I", "I;16", "P") else "RGB"
                    size = img.size
                if img.size != size:
                    raise DataError(f"{file}: size {img.size[0]}x{img.size[1]} differs from {size[0]}x{size[1]} of the first image")
                arr = np.asarray(img.convert(mode), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{file}: not a readable image ({exc})") from None
        arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
        parts = file.relative_to(path).parts
        labels.append(label_of[parts[0]] if len(parts) > 1 else -1)
    y = np.asarray(labels) if subdirs and min(labels) >= 0 else None
    return _as_images(np.stack(arrays), y, str(path))


def read_csv(path: Path) -> SampleSet:
    """Numeric feature vectors; a header is optional, a column named label/y/class becomes labels."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text CSV file") from None
    rows = [r for r in rows if r and any(cell.strip() for cell in r)]
    if not rows:
        raise DataError(f"{path}: CSV holds no rows")
    header = None
    try:
        [float(c) for c in rows[0]]
    except ValueError:
        header, rows = [c.strip().lower() for c in rows[0]], rows[1:]
    if not rows:
        raise DataError(f"{path}: CSV holds a header but no rows")
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise DataError(f"{path}: row {i + 1 + (header is not None)} has {len(row)} columns, expected {width}")
    try:
        table = np.asarray(rows, dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"{path}: non-numeric value ({exc})") from None
    label_col = next((header.index(n) for n in ("label", "y", "class") if header and n in header), None)
    y = None
    if label_col is not None:
        y = table[:, label_col]
        if not np.all(y == np.round(y)):
            raise DataError(f"{path}: label column holds non-integer values")
        y = y.astype(np.int64)
        table = np.delete(table, label_col, axis=1)
    return _as_vectors(table.astype(np.float32), y, str(path))


def read_path(path: Path) -> SampleSet:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return read_image_folder(path)
    suffixes = "".join(path.suffixes).lower()
    if path.suffix.lower() == ".npz":
        return read_npz(path)
    if path.suffix.lower() == ".npy":
        return read_npy(path)
    if path.suffix.lower() == ".csv":
        return read_csv(path)
    if "idx" in path.name.lower() or "ubyte" in suffixes:
        return read_idx(path)
    raise DataError(f"{path}: unknown format (expected .npz, .npy, .csv, an IDX file or a folder of images)")
