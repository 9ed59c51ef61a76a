"""Parse a data SPEC (the contract in ARCHITECTURE.md) into a SampleSet."""

from __future__ import annotations

from pathlib import Path

from detector.data.builtin import BUILTINS
from detector.data.readers import read_path
from detector.data.sampleset import SampleSet
from detector.errors import DataError


def _parse_classes(text: str, spec: str) -> list[int]:
    try:
        classes = [int(c) for c in text.split(",") if c.strip() != ""]
    except ValueError:
        raise DataError(f"bad SPEC '{spec}': classes must be integers, as in ':classes=0,3'") from None
    if not classes:
        raise DataError(f"bad SPEC '{spec}': ':classes=' lists no class")
    return classes


def load_spec(spec: str) -> SampleSet:
    """``fashion-mnist:train[:classes=0,3]`` or a path (npz, npy, IDX, image folder, CSV)."""
    if not spec or not spec.strip():
        raise DataError("empty data SPEC")
    body, classes = spec, None
    if ":classes=" in spec:
        body, _, rest = spec.rpartition(":classes=")
        classes = _parse_classes(rest, spec)
    name, sep, arg = body.partition(":")
    if sep and name in BUILTINS:
        samples = BUILTINS[name](arg)
    elif name in BUILTINS and not Path(body).exists():
        raise DataError(f"bad SPEC '{spec}': say which split, as in '{name}:train'")
    else:
        samples = read_path(Path(body))
    return samples.select_classes(classes) if classes is not None else samples
