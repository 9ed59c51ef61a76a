"""Training checkpoints: tensors only, loaded with weights_only=True (no arbitrary unpickling)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from detector.errors import BundleError


def checkpoint_dir(bundle_path: Path) -> Path:
    return bundle_path.with_name(bundle_path.name + ".ckpt")


def save_checkpoint(folder: Path, state: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write atomically: a kill mid-write keeps the previous checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "last.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, folder / "last.pt")
    meta_tmp = folder / "meta.json.tmp"
    meta_tmp.write_text(json.dumps(meta, sort_keys=True))
    os.replace(meta_tmp, folder / "meta.json")


def load_checkpoint(folder: Path, expected_meta: dict[str, Any]) -> dict[str, Any] | None:
    """The last checkpoint if it was written for the same settings and data, else None."""
    if not (folder / "last.pt").exists() or not (folder / "meta.json").exists():
        return None
    meta = json.loads((folder / "meta.json").read_text())
    if meta != json.loads(json.dumps(expected_meta, sort_keys=True)):  # tuples read back as lists
        raise BundleError(
            f"{folder}: checkpoint was written for other settings or data; remove it or train without --resume"
        )
    return torch.load(folder / "last.pt", map_location="cpu", weights_only=True)
