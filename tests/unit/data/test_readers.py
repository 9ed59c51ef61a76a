import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from detector.data import load_spec, to_model_space
from detector.data.synthetic import bars, manifold_vectors
from detector.errors import DataError


def write_idx(path, arr, compress=False):
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def test_npz_images_nhw_become_nchw_uint8(tmp_path):
    x = bars(10, size=12)[:, 0]
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(10))
    s = load_spec(str(tmp_path / "a.npz"))
    assert s.kind == "image" and s.sample_shape == (1, 12, 12) and s.is_uint8
    np.testing.assert_array_equal(s.read(0, 10)[:, 0], x)
    np.testing.assert_array_equal(s.labels, np.arange(10))


def test_npz_channels_last_read_channels_first(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (5, 8, 9, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x=x)
    s = load_spec(str(tmp_path / "rgb.npz"))
    assert s.sample_shape == (3, 8, 9)
    np.testing.assert_array_equal(s.read(0, 5), x.transpose(0, 3, 1, 2))


def test_npy_is_memory_mapped_uint8(tmp_path):
    x = bars(50, size=8)
    np.save(tmp_path / "a.npy", x)
    s = load_spec(str(tmp_path / "a.npy"))
    assert isinstance(s.x, np.memmap) and s.x.dtype == np.uint8
    np.testing.assert_array_equal(s.read(3, 7), x[3:7])


@pytest.mark.parametrize("compress", [False, True])
def test_idx_with_labels_beside(tmp_path, compress):
    x = bars(20, size=10)[:, 0]
    y = np.arange(20) % 3
    write_idx(tmp_path / "train-images-idx3-ubyte", x, compress)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y, compress)
    s = load_spec(str(tmp_path / "train-images-idx3-ubyte") + ":classes=1")
    assert len(s) == (y == 1).sum()
    np.testing.assert_array_equal(s.read(0, len(s))[:, 0], x[y == 1])
    if not compress:
        assert isinstance(s.x, np.memmap)


def test_image_folder_with_class_subfolders(tmp_path):
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(bars(1, size=8, seed=i)[0, 0]).save(tmp_path / label / f"{i}.png")
    s = load_spec(str(tmp_path))
    assert len(s) == 6 and s.sample_shape == (1, 8, 8)
    assert sorted(s.labels.tolist()) == [0, 0, 0, 1, 1, 1]


def test_csv_vectors_with_header_and_label(tmp_path):
    x = manifold_vectors(5, dim=3)
    lines = ["a,b,label,c"] + [f"{r[0]},{r[1]},{i % 2},{r[2]}" for i, r in enumerate(x)]
    (tmp_path / "v.csv").write_text("\n".join(lines))
    s = load_spec(str(tmp_path / "v.csv"))
    assert s.kind == "vector" and s.sample_shape == (3,)
    np.testing.assert_allclose(s.read(0, 5), x, rtol=1e-5)
    assert s.labels.tolist() == [0, 1, 0, 1, 0]


def test_fashion_mnist_builtin_and_classes():
    s = load_spec("fashion-mnist:test:classes=0,3")
    assert s.sample_shape == (1, 28, 28) and len(s) == 2000
    assert set(np.unique(s.labels)) == {0, 3}


def test_to_model_space_scales_uint8():
    out = to_model_space(np.array([0, 255], np.uint8))
    assert out.dtype == np.float32 and out.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("make,message", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b"garbage"), "unknown format"),
])
def test_bad_paths(tmp_path, make, message):
    path = tmp_path / "thing.bin"
    make(path)
    with pytest.raises(DataError, match=message):
        load_spec(str(path))


@pytest.mark.parametrize("name,content,message", [
    ("x.npz", lambda p: np.savez(p, images=np.zeros((2, 4, 4))), "array named 'x'"),
    ("x.npz", lambda p: p.write_bytes(b"PK\x03\x04broken"), "not a readable .npz"),
    ("x.npz", lambda p: np.savez(p, x=np.full((2, 4, 4), 2.0)), "within 0..1"),
    ("x.npz", lambda p: np.savez(p, x=np.zeros((2, 4, 4)), y=np.zeros(3, int)), "3 labels for 2 samples"),
    ("x.npz", lambda p: np.savez(p, x=np.zeros((2, 2, 2, 2, 2))), "must be"),
    ("x.npy", lambda p: p.write_bytes(b"\x93NUMPY nonsense"), "not a readable .npy"),
    ("x.csv", lambda p: p.write_text("1,2\n3\n"), "row 2 has 1 columns"),
    ("x.csv", lambda p: p.write_text("1,2\n3,abc\n"), "non-numeric"),
    ("x.csv", lambda p: p.write_text(""), "no rows"),
    ("train-images-idx3-ubyte", lambda p: p.write_bytes(b"\x00\x00\x08\x03" + b"\x00\x00\x00\x05" * 3 + b"\x01"),
     "truncated IDX data"),
    ("train-images-idx3-ubyte", lambda p: p.write_bytes(b"\x01\x02\x03\x04"), "bad magic"),
])
def test_malformed_files_name_the_problem(tmp_path, name, content, message):
    path = tmp_path / name
    content(path)
    with pytest.raises(DataError, match=message):
        load_spec(str(path))


@pytest.mark.parametrize("spec,message", [
    ("", "empty"),
    ("fashion-mnist", "say which split"),
    ("fashion-mnist:valid", "'train' or 'test'"),
    ("fashion-mnist:test:classes=a", "must be integers"),
    ("fashion-mnist:test:classes=42", "no samples with classes"),
])
def test_bad_specs(spec, message):
    with pytest.raises(DataError, match=message):
        load_spec(spec)


def test_classes_need_labels(tmp_path):
    np.save(tmp_path / "a.npy", bars(4, size=8))
    with pytest.raises(DataError, match="needs labels"):
        load_spec(str(tmp_path / "a.npy") + ":classes=0")


def test_missing_fashion_mnist_says_how_to_install(monkeypatch, tmp_path):
    import detector.data.builtin as builtin

    monkeypatch.setattr(builtin, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_spec("fashion-mnist:train")


def test_release_pages_keeps_memmapped_data_readable(tmp_path):
    x = bars(64, size=8)
    np.save(tmp_path / "a.npy", x)
    s = load_spec(str(tmp_path / "a.npy"))
    first = s.read(0, 64)
    s.release_pages()
    np.testing.assert_array_equal(s.read(0, 64), first)
