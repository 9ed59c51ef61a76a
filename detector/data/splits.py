"""Seeded train / validation / calibration splits of a data set, and a cheap fingerprint that recognises it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from detector.data.sampleset import SampleSet
from detector.errors import DataError

MIN_SAMPLES = 50


@dataclass
class Splits:
    train: SampleSet
    val: SampleSet
    cal: SampleSet


def split(samples: SampleSet, val_fraction: float, cal_fraction: float, seed: int) -> Splits:
    """Seeded disjoint train / validation / calibration splits."""
    n = len(samples)
    if n < MIN_SAMPLES:
        raise DataError(f"{samples.name}: {n} samples; training needs at least {MIN_SAMPLES}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val, n_cal = max(1, int(n * val_fraction)), max(1, int(n * cal_fraction))
    return Splits(samples.take(np.sort(perm[n_val + n_cal :])), samples.take(np.sort(perm[:n_val])),
                  samples.take(np.sort(perm[n_val : n_val + n_cal])))


SPLIT_KEYS = ("seed", "val_fraction", "cal_fraction")  # what makes a bundle's splits again (split_as)


def split_record(train: dict) -> dict | None:
    """The part of a ``train`` config that ``split_as`` needs (a bundle's ``calibration_split``); None when a key
    is missing."""
    return {k: train[k] for k in SPLIT_KEYS} if all(k in train for k in SPLIT_KEYS) else None


def split_as(samples: SampleSet, recorded: dict) -> Splits:
    """The splits a bundle recorded (its ``train`` config or its ``calibration_split``: val_fraction, cal_fraction,
    seed), made again from the same samples."""
    return split(samples, recorded["val_fraction"], recorded["cal_fraction"], recorded["seed"])


def fingerprint(samples: SampleSet) -> str:
    """Cheap identity of a dataset: name, size, shape and a strided content hash."""
    h = hashlib.sha256(f"{samples.name}|{len(samples)}|{samples.sample_shape}".encode())
    step = max(1, len(samples) // 256)
    for i in range(0, len(samples), step):
        h.update(np.ascontiguousarray(samples.read(i, i + 1)).tobytes())
    return h.hexdigest()[:16]
