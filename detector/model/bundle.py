"""Model bundle: a directory of safetensors + JSON with a sha256 manifest, checked on load.

Nothing here unpickles. The bundle is written to a temporary sibling directory and renamed
into place, so a crash never leaves a half-written bundle under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy, save_file as save_numpy
from safetensors.torch import load_file as load_torch, save_file as save_torch

from detector.errors import BundleError

FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CALIBRATION = "calibration.json"
CALIBRATION_ARRAYS = "calibration.safetensors"
DENSITY = "density.safetensors"
MANIFEST = "manifest.json"
REQUIRED = (CONFIG, WEIGHTS, CALIBRATION, CALIBRATION_ARRAYS, DENSITY)


@dataclass
class Bundle:
    """Everything a Scorer needs. ``config`` holds model/score settings and data metadata."""

    config: dict[str, Any]
    weights: dict[str, torch.Tensor]
    calibration: dict[str, Any] = field(default_factory=dict)
    calibration_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    density: dict[str, np.ndarray] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)

    @property
    def model_version(self) -> str:
        digest = self.sha256.get(WEIGHTS, "unsaved")[:12]
        return f"{self.config.get('name', 'vae')}-{digest}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_files(bundle: Bundle, folder: Path) -> None:
    (folder / CONFIG).write_text(json.dumps(bundle.config, indent=2, sort_keys=True))
    save_torch({k: v.detach().cpu().contiguous() for k, v in bundle.weights.items()}, str(folder / WEIGHTS))
    (folder / CALIBRATION).write_text(json.dumps(bundle.calibration, indent=2, sort_keys=True))
    save_numpy({k: np.ascontiguousarray(v) for k, v in bundle.calibration_arrays.items()} or {"_empty": np.zeros(0)},
               str(folder / CALIBRATION_ARRAYS))
    save_numpy({k: np.ascontiguousarray(v) for k, v in bundle.density.items()} or {"_empty": np.zeros(0)},
               str(folder / DENSITY))
    files = {name: _sha256(folder / name) for name in REQUIRED}
    (folder / MANIFEST).write_text(json.dumps({"format_version": FORMAT_VERSION, "files": files}, indent=2))
    bundle.sha256 = files


def _current_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it; restored at once
    os.umask(mask)
    return mask


def _honour_umask(folder: Path) -> None:
    """Give the bundle the modes any other tool's output gets: ``mkdtemp`` makes 0700 and safetensors
    writes 0600 whatever the umask, which a server running as another user (a container's uid) cannot read."""
    mask = _current_umask()
    folder.chmod(0o777 & ~mask)
    for file in folder.iterdir():
        file.chmod(0o666 & ~mask)


def save_bundle(bundle: Bundle, path: str | Path) -> None:
    """Write ``bundle`` to ``path`` atomically, replacing an existing bundle only once complete."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BundleError(f"{path}: exists and is not a bundle directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        _write_files(bundle, tmp)
        _honour_umask(tmp)
        for name in (*REQUIRED, MANIFEST):
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise BundleError(f"{path}: expected a JSON object")
    return value


def load_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle; any missing, altered or unreadable file raises BundleError naming it."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: no model bundle here (expected a directory written by 'detector train')")
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise BundleError(f"{manifest_path}: missing; not a bundle, or an incomplete one")
    manifest = _read_json(manifest_path)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{manifest_path}: bundle format {manifest.get('format_version')!r}, this detector reads {FORMAT_VERSION}")
    files = manifest.get("files", {})
    for name in REQUIRED:
        file = path / name
        if name not in files:
            raise BundleError(f"{manifest_path}: does not list {name}")
        if not file.exists():
            raise BundleError(f"{file}: missing from the bundle")
        if _sha256(file) != files[name]:
            raise BundleError(f"{file}: sha256 does not match the manifest (file altered or truncated)")
    try:
        weights = load_torch(str(path / WEIGHTS))
        calibration_arrays = load_numpy(str(path / CALIBRATION_ARRAYS))
        density = load_numpy(str(path / DENSITY))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable safetensors file ({exc})") from None
    calibration_arrays.pop("_empty", None)
    density.pop("_empty", None)
    return Bundle(
        config=_read_json(path / CONFIG),
        weights=weights,
        calibration=_read_json(path / CALIBRATION),
        calibration_arrays=calibration_arrays,
        density=density,
        sha256=dict(files),
    )
