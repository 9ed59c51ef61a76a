import json
import os
import shutil
import stat

import numpy as np
import pytest
import torch

from detector.errors import BundleError
from detector.model.bundle import Bundle, load_bundle, save_bundle


def small_bundle() -> Bundle:
    return Bundle(config={"name": "vae", "k": 1}, weights={"w": torch.arange(6.0).view(2, 3)},
                  calibration={"t": 0.5}, calibration_arrays={"s": np.arange(4.0)}, density={"m": np.ones(2)})


def test_round_trip(tmp_path):
    save_bundle(small_bundle(), tmp_path / "b")
    b = load_bundle(tmp_path / "b")
    torch.testing.assert_close(b.weights["w"], torch.arange(6.0).view(2, 3))
    assert b.config == {"name": "vae", "k": 1} and b.calibration == {"t": 0.5}
    np.testing.assert_array_equal(b.calibration_arrays["s"], np.arange(4.0))
    assert b.model_version.startswith("vae-") and len(b.model_version) == 16


def test_overwrite_is_atomic_and_leaves_no_temp(tmp_path):
    save_bundle(small_bundle(), tmp_path / "b")
    bundle = small_bundle()
    bundle.config["k"] = 2
    save_bundle(bundle, tmp_path / "b")
    assert load_bundle(tmp_path / "b").config["k"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize("damage,name", [
    (lambda p: p.write_bytes(p.read_bytes()[:-10]), "model.safetensors"),
    (lambda p: p.write_bytes(p.read_bytes().replace(b'"k": 1', b'"k": 7')), "config.json"),
    (lambda p: p.unlink(), "calibration.safetensors"),
])
def test_tampered_or_truncated_files_are_refused_by_name(tmp_path, damage, name):
    save_bundle(small_bundle(), tmp_path / "b")
    damage(tmp_path / "b" / name)
    with pytest.raises(BundleError, match=name):
        load_bundle(tmp_path / "b")


def test_missing_manifest_and_wrong_format(tmp_path):
    save_bundle(small_bundle(), tmp_path / "b")
    manifest = tmp_path / "b" / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(BundleError, match="format 99"):
        load_bundle(tmp_path / "b")
    manifest.unlink()
    with pytest.raises(BundleError, match="manifest.json: missing"):
        load_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle(tmp_path / "nothing")


def test_failed_write_keeps_old_bundle(tmp_path, monkeypatch):
    save_bundle(small_bundle(), tmp_path / "b")
    import detector.model.bundle as mod

    def explode(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(mod, "save_numpy", explode)
    with pytest.raises(OSError):
        save_bundle(small_bundle(), tmp_path / "b")
    assert load_bundle(tmp_path / "b").config["k"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
    shutil.rmtree(tmp_path / "b")


@pytest.mark.parametrize("umask,dir_mode,file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_bundle_modes_follow_the_umask(tmp_path, umask, dir_mode, file_mode):
    """A container's non-root user must be able to read a bundle written under umask 022, and no one else one
    written under 077 (mkdtemp and safetensors would otherwise give 0700/0600 whatever the umask)."""
    old = os.umask(umask)
    try:
        save_bundle(small_bundle(), tmp_path / "b")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == dir_mode
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "b").iterdir()}
    assert modes == dict.fromkeys(modes, file_mode) and "model.safetensors" in modes
