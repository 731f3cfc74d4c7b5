"""Tests for sparse_bnn.data: every reader against bytes written here, never the network."""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_bnn.data import formats, locate
from sparse_bnn.data.sources import DATASET_NAMES, load_dataset, make_teacher_regression
from sparse_bnn.data.formats import DataNotFoundError, read_idx
from sparse_bnn.data.preprocess import flip_augment

FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
    """No downloads, no real cache, no user environment, no system folders unless asked."""

    def refuse_download(*args, **kwargs):
        raise AssertionError("a test tried to download")

    monkeypatch.setattr(locate, "download_file", refuse_download)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("SPARSE_BNN_DATA", raising=False)
    monkeypatch.setattr(locate, "SYSTEM_DATA_DIRS",
                        {"fashion-mnist": tmp_path / "no-system-fashion",
                         "mnist": tmp_path / "no-system-mnist"})


# ------------------------------------------------------------------------------- IDX helpers


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """IDX encoding written independently of the reader: big-endian header, then raw bytes."""
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.tobytes()


def write_file(path: Path, payload: bytes) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_idx_set(folder: Path, n_train: int = 6, n_test: int = 4, seed: int = 0,
                  gz: bool = True) -> dict[str, np.ndarray]:
    """Four tiny MNIST-style files (5x3 images, labels 0..9); returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {"train_images": rng.integers(0, 256, (n_train, 5, 3), dtype=np.uint8),
              "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
              "test_images": rng.integers(0, 256, (n_test, 5, 3), dtype=np.uint8),
              "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8)}
    for key, stem in formats.IDX_FILES.items():
        write_file(folder / (stem + (".gz" if gz else "")), idx_bytes(arrays[key]))
    return arrays


# ------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip_exact(tmp_path, suffix):
    images = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3) * 7
    labels = np.array([3, 9], dtype=np.uint8)
    image_path = write_file(tmp_path / f"img{suffix}", idx_bytes(images))
    label_path = write_file(tmp_path / f"lab{suffix}", idx_bytes(labels))
    read_images = read_idx(image_path, formats.IDX_IMAGES_MAGIC)
    assert read_images.dtype == np.uint8 and read_images.shape == (2, 4, 3)
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_idx(label_path, formats.IDX_LABELS_MAGIC), [3, 9])


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("corruption, message", [
    ("bad_magic", "bad IDX magic number"),
    ("bad_dtype", "element type 0x0d unsupported"),
    ("labels_as_images", "expected 2051"),
    ("short_header", "truncated IDX header"),
    ("header_missing_dims", "truncated IDX header"),
    ("truncated_payload", "truncated payload"),
    ("trailing_bytes", "trailing bytes"),
    ("zero_dims", "must be positive"),
])
def test_idx_corruptions_raise_naming_file(tmp_path, suffix, corruption, message):
    images = np.ones((3, 4, 4), dtype=np.uint8)
    good = idx_bytes(images)
    payload = {
        "bad_magic": b"\x12\x34" + good[2:],
        "bad_dtype": struct.pack(">I", 0x0D03) + good[4:],
        "labels_as_images": idx_bytes(np.ones(3, dtype=np.uint8)),
        "short_header": good[:3],
        "header_missing_dims": good[:9],
        "truncated_payload": good[:-5],
        "trailing_bytes": good + b"\x00\x00",
        "zero_dims": idx_bytes(np.ones((3, 0, 4), dtype=np.uint8)),
    }[corruption]
    path = write_file(tmp_path / f"broken-images{suffix}", payload)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path, formats.IDX_IMAGES_MAGIC)
    assert "broken-images" in str(info.value)


def test_idx_bad_gzip_is_value_error(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"this is not gzip data at all")
    with pytest.raises(ValueError, match="not a valid gzip file"):
        read_idx(path)


def test_idx_image_label_count_mismatch(tmp_path):
    write_idx_set(tmp_path / "set")
    write_file(tmp_path / "set" / "train-labels-idx1-ubyte.gz",
               idx_bytes(np.zeros(5, dtype=np.uint8)))  # 6 images, 5 labels
    with pytest.raises(ValueError, match="6 images but .*train-labels.* 5 labels"):
        load_dataset("mnist", data_dir=tmp_path / "set", download=False)


def test_idx_label_out_of_range(tmp_path):
    write_idx_set(tmp_path / "set")
    write_file(tmp_path / "set" / "t10k-labels-idx1-ubyte.gz",
               idx_bytes(np.array([0, 1, 12, 3], dtype=np.uint8)))
    with pytest.raises(ValueError, match="label 12 out of range"):
        load_dataset("mnist", data_dir=tmp_path / "set", download=False)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_loads_exact_pixels(tmp_path, gz):
    arrays = write_idx_set(tmp_path / "set", gz=gz)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path / "set", standardize=False,
                      download=False)
    assert ds.input_shape == (5, 3, 1) and ds.is_image and ds.flip_augment
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    np.testing.assert_allclose(ds.x_train[..., 0], arrays["train_images"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, arrays["test_labels"])
    assert ds.mean is None and ds.std is None


# ---------------------------------------------------------------------------- search order


def test_search_order_data_dir_env_system_cache(tmp_path, monkeypatch):
    # Each place holds a set of a different size, so the size says which one was read.
    places = {"data_dir": 2, "env": 3, "system": 4, "cache": 5}
    for place, n_train in places.items():
        write_idx_set(tmp_path / place / "fashion-mnist", n_train=n_train)
    monkeypatch.setenv("SPARSE_BNN_DATA", str(tmp_path / "env"))  # the subfolder is found
    monkeypatch.setattr(locate, "SYSTEM_DATA_DIRS",
                        {"fashion-mnist": tmp_path / "system" / "fashion-mnist"})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "sparse_bnn").mkdir(parents=True)
    os.symlink(tmp_path / "cache" / "fashion-mnist", tmp_path / "xdg" / "sparse_bnn" / "fashion-mnist")

    def num_train(**kwargs):
        return len(load_dataset("fashion-mnist", download=False, **kwargs).x_train)

    assert num_train(data_dir=tmp_path / "data_dir" / "fashion-mnist") == 2
    assert num_train(data_dir=tmp_path / "data_dir") == 2  # its <name> subfolder
    assert num_train() == 3  # env beats system
    monkeypatch.delenv("SPARSE_BNN_DATA")
    assert num_train() == 4  # system beats cache
    monkeypatch.setattr(locate, "SYSTEM_DATA_DIRS", {"fashion-mnist": tmp_path / "nowhere"})
    assert num_train() == 5
    # A data_dir without the files falls through to the next place.
    assert num_train(data_dir=tmp_path / "empty") == 5


def test_missing_data_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE_BNN_DATA", str(tmp_path / "env"))
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path / "mine", download=False)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for expected in [str(tmp_path / "mine"), str(tmp_path / "env"),
                     str(tmp_path / "env" / "fashion-mnist"),
                     str(locate.SYSTEM_DATA_DIRS["fashion-mnist"]),
                     str(tmp_path / "xdg-cache" / "sparse_bnn" / "fashion-mnist"),
                     "download=False", "apt-get install dataset-fashion-mnist",
                     locate.DOWNLOAD_URLS["fashion-mnist"], "--data-dir", "--data digits"]:
        assert expected in message, expected
    # The places are listed in search order.
    positions = [message.index(s) for s in (str(tmp_path / "mine"), str(tmp_path / "env"),
                                            str(locate.SYSTEM_DATA_DIRS["fashion-mnist"]),
                                            "xdg-cache")]
    assert positions == sorted(positions)


def test_failed_download_is_reported(monkeypatch):
    def offline(url, destination, md5, timeout=60.0):
        raise OSError("network unreachable")

    monkeypatch.setattr(locate, "download_file", offline)
    with pytest.raises(DataNotFoundError, match="failed: network unreachable"):
        load_dataset("mnist", download=True)


def test_download_fills_cache_then_loads(tmp_path, monkeypatch):
    source = tmp_path / "server"
    write_idx_set(source, n_train=7)
    calls = []

    def fake_download(url, destination, md5, timeout=60.0):
        calls.append(url)
        assert url.startswith(locate.DOWNLOAD_URLS["mnist"])
        assert md5 == locate.IDX_MD5["mnist"][destination.name]
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes((source / destination.name).read_bytes())

    monkeypatch.setattr(locate, "download_file", fake_download)
    ds = load_dataset("mnist", download=True)
    assert len(calls) == 4 and len(ds.x_train) == 7 and not ds.flip_augment
    assert ds.source == str(tmp_path / "xdg-cache" / "sparse_bnn" / "mnist")


def test_download_file_atomic_and_md5_checked(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real downloader, on a local file:// URL (no network)
    payload = b"some bytes standing in for a .gz file"
    served = tmp_path / "served.gz"
    served.write_bytes(payload)
    target = tmp_path / "cache" / "train-images-idx3-ubyte.gz"
    locate.download_file(served.as_uri(), target, hashlib.md5(payload).hexdigest())
    assert target.read_bytes() == payload
    bad_target = tmp_path / "cache" / "other.gz"
    with pytest.raises(ValueError, match="does not match"):
        locate.download_file(served.as_uri(), bad_target, "0" * 32)
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no leftovers


# ------------------------------------------------------------------------------- CIFAR-10


def fake_cifar_batches(n_per_batch: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (n_per_batch, 3, 32, 32), dtype=np.uint8),
             rng.integers(0, 10, n_per_batch, dtype=np.uint8)) for _ in range(6)]


def write_cifar_binary(folder: Path, batches) -> None:
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name, (images_chw, labels) in zip(names, batches):
        records = np.concatenate([labels[:, None], images_chw.reshape(len(labels), -1)], axis=1)
        (folder / name).write_bytes(records.astype(np.uint8).tobytes())


def write_cifar_python(folder: Path, batches) -> None:
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, (images_chw, labels) in zip(names, batches):
        batch = {b"batch_label": b"fake", b"labels": [int(v) for v in labels],
                 b"data": images_chw.reshape(len(labels), -1), b"filenames": [b"a.png"]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=3)  # protocol 2 would need _codecs for bytes


def expected_cifar(batches):
    nhwc = [images.transpose(0, 2, 3, 1) / 255.0 for images, _ in batches]
    labels = [labels for _, labels in batches]
    return np.concatenate(nhwc[:5]), np.concatenate(labels[:5]), nhwc[5], labels[5]


@pytest.mark.parametrize("kind", ["bin", "py"])
def test_cifar10_batches_nhwc_exact(tmp_path, kind):
    batches = fake_cifar_batches()
    writer = write_cifar_binary if kind == "bin" else write_cifar_python
    writer(tmp_path / f"cifar-10-batches-{kind}", batches)
    ds = load_dataset("cifar10", data_dir=tmp_path, standardize=False)
    x_train, y_train, x_test, y_test = expected_cifar(batches)
    assert ds.input_shape == (32, 32, 3) and ds.x_train.shape == (10, 32, 32, 3)
    np.testing.assert_allclose(ds.x_train, x_train, rtol=1e-6)
    np.testing.assert_allclose(ds.x_test, x_test, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train, y_train)
    np.testing.assert_array_equal(ds.y_test, y_test)
    # One pixel by hand: image 1 of batch 1, row 5, column 7, blue channel.
    assert ds.x_train[1, 5, 7, 2] == pytest.approx(batches[0][0][1, 2, 5, 7] / 255.0)


def test_cifar10_prefers_binary(tmp_path):
    write_cifar_binary(tmp_path / "cifar-10-batches-bin", fake_cifar_batches(seed=1))
    write_cifar_python(tmp_path / "cifar-10-batches-py", fake_cifar_batches(seed=2))
    ds = load_dataset("cifar10", data_dir=tmp_path, standardize=False)
    np.testing.assert_array_equal(ds.y_test, fake_cifar_batches(seed=1)[5][1])


def test_cifar10_truncated_binary(tmp_path):
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(bytes(3073 * 2 - 1))
    with pytest.raises(ValueError, match="not a positive multiple"):
        formats.read_cifar10_binary_batch(path)


class _Py2StylePickler(pickle._Pickler):
    """Pickles like the Python 2 that wrote the real CIFAR-10 files: bytes as py2 ``str``
    opcodes (BINSTRING) and numpy globals under ``numpy.core``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        opcode = pickle.SHORT_BINSTRING + bytes([len(obj)]) if len(obj) < 256 else \
            pickle.BINSTRING + struct.pack("<i", len(obj))
        self.write(opcode + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes], dispatch[str], dispatch[type] = save_bytes, save_str, save_global


def test_cifar10_python2_style_pickle(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (3, 3072), dtype=np.uint8)
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        _Py2StylePickler(f, protocol=2).dump({b"data": images, b"labels": [4, 0, 9]})
    assert b"cnumpy.core.multiarray\n_reconstruct" in path.read_bytes()
    x, y = formats.read_cifar10_python_batch(path)
    np.testing.assert_array_equal(x, images.reshape(3, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(y, [4, 0, 9])


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({b"data": _Exploit(marker), b"labels": [0]}, f, protocol=3)
    with pytest.raises(ValueError, match="refusing to load global (posix|os|nt).system"):
        formats.read_cifar10_python_batch(path)
    assert not marker.exists()


def test_restricted_unpickler_refuses_other_numpy_globals(tmp_path):
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:  # protocol 5 pickles arrays via numpy's _frombuffer: refused
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, f, protocol=5)
    with pytest.raises(ValueError, match="refusing to load global"):
        formats.read_cifar10_python_batch(path)


def test_cifar10_missing_lists_places(tmp_path):
    with pytest.raises(DataNotFoundError, match="cifar-10-batches-bin") as info:
        load_dataset("cifar10", data_dir=tmp_path)
    assert str(tmp_path) in str(info.value) and "--data digits" in str(info.value)


# --------------------------------------------------------------------------- sklearn sets


@pytest.mark.parametrize("name, n_total, features, classes", [
    ("digits", 1797, 64, 10), ("breast-cancer", 569, 30, 2), ("wine", 178, 13, 3)])
def test_sklearn_classification_shapes_and_stratification(name, n_total, features, classes):
    ds = load_dataset(name, seed=3)
    assert ds.task == "classification" and ds.num_classes == classes
    assert ds.input_shape == (features,) and not ds.flip_augment
    assert len(ds.x_train) + len(ds.x_test) == n_total
    assert len(ds.x_test) == pytest.approx(0.2 * n_total, abs=classes)
    all_counts = np.bincount(np.concatenate([ds.y_train, ds.y_test]), minlength=classes)
    test_counts = np.bincount(ds.y_test, minlength=classes)
    np.testing.assert_array_equal(test_counts, np.round(0.2 * all_counts))
    assert ds.y_train.dtype == np.int32 and ds.x_train.dtype == np.float32
    # Same seed, same split; another seed, another split.
    np.testing.assert_array_equal(load_dataset(name, seed=3).x_test, ds.x_test)
    assert not np.array_equal(load_dataset(name, seed=4).x_test, ds.x_test)


def test_diabetes_regression_targets_standardised():
    from sklearn.datasets import load_diabetes

    raw_y = load_diabetes().target
    ds = load_dataset("diabetes", standardize_targets=True)
    assert ds.task == "regression" and ds.num_classes is None and ds.y_train.shape[1] == 1
    assert len(ds.x_train) == 354 and len(ds.x_test) == 88
    np.testing.assert_allclose(ds.y_train.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.y_train.std(), 1.0, atol=1e-5)
    original = np.concatenate([ds.targets_in_original_units(ds.y_train),
                               ds.targets_in_original_units(ds.y_test)])[:, 0]
    np.testing.assert_allclose(np.sort(original), np.sort(raw_y), rtol=1e-5)
    unscaled = load_dataset("diabetes", standardize_targets=False)
    assert unscaled.y_std is None
    np.testing.assert_allclose(np.sort(np.concatenate([unscaled.y_train, unscaled.y_test])[:, 0]),
                               np.sort(raw_y), rtol=1e-6)


# ---------------------------------------------------------------------------- standardising


def test_standardisation_uses_training_statistics_only(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (200, 4))
    x_test = rng.normal(100.0, 50.0, (50, 4))  # a shifted test set must not move the stats
    np.savez(tmp_path / "tab.npz", x=x, y=rng.integers(0, 3, 200), x_test=x_test,
             y_test=rng.integers(0, 3, 50))
    ds = load_dataset(tmp_path / "tab.npz")
    np.testing.assert_allclose(ds.mean, x.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(ds.std, x.std(axis=0), rtol=1e-6)
    np.testing.assert_allclose(ds.x_test, (x_test - x.mean(0)) / x.std(0), rtol=1e-5)

    with_val = load_dataset(tmp_path / "tab.npz", validation_fraction=0.25, seed=1)
    raw_train = with_val.x_train * with_val.std + with_val.mean
    np.testing.assert_allclose(with_val.mean, raw_train.mean(axis=0), rtol=1e-5)
    assert not np.allclose(with_val.mean, x.mean(axis=0), rtol=1e-4)  # val rows excluded
    np.testing.assert_allclose(with_val.x_train.mean(axis=0), 0.0, atol=1e-5)


def test_image_standardisation_is_one_global_scalar(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (30, 6, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "img.npz", x=images, y=rng.integers(0, 2, 30),
             x_test=np.full((4, 6, 5, 3), 255, np.uint8), y_test=np.zeros(4, np.int64))
    ds = load_dataset(tmp_path / "img.npz")
    assert ds.is_image and ds.input_shape == (6, 5, 3) and np.ndim(ds.mean) == 0
    pixels = images / 255.0
    assert float(ds.mean) == pytest.approx(pixels.mean(), rel=1e-6)
    assert float(ds.std) == pytest.approx(pixels.std(), rel=1e-6)
    np.testing.assert_allclose(ds.x_test, (1.0 - pixels.mean()) / pixels.std(), rtol=1e-5)


def test_zero_variance_feature_kept_finite():
    ds = load_dataset("digits")  # the first pixel of every digit is 0
    assert np.all(np.isfinite(ds.x_train)) and ds.std[0] == 1.0


def test_validation_split_and_subsampling():
    ds = load_dataset("digits", validation_fraction=0.1, n_train=500, n_test=100, seed=2)
    assert len(ds.x_train) + len(ds.x_val) == 500 and len(ds.x_test) == 100
    assert len(ds.x_val) == pytest.approx(50, abs=5)
    train_rows = {row.tobytes() for row in ds.x_train}
    assert not any(row.tobytes() in train_rows for row in ds.x_val)
    assert ds.summary()["num_val"] == len(ds.x_val)
    with pytest.raises(ValueError, match="n_train=5000 but only"):
        load_dataset("digits", n_train=5000)
    with pytest.raises(ValueError, match="validation_fraction"):
        load_dataset("digits", validation_fraction=1.0)


# ------------------------------------------------------------------------------- generators


def test_teacher_reproducible_and_noise_level():
    x, y, weights = make_teacher_regression(20000, in_features=6, hidden=4, noise=0.3, seed=5)
    x2, y2, _ = make_teacher_regression(20000, in_features=6, hidden=4, noise=0.3, seed=5)
    x3, _, _ = make_teacher_regression(20000, in_features=6, hidden=4, noise=0.3, seed=6)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert not np.allclose(x, x3)
    assert x.shape == (20000, 6) and y.shape == (20000, 1) and weights["w1"].shape == (6, 4)
    # The noiseless teacher recomputed independently with JAX's SiLU.
    clean = jax.nn.silu(x @ weights["w1"] + weights["b1"]) @ weights["w2"] + weights["b2"]
    residual = y - np.asarray(clean)
    assert residual.std() == pytest.approx(0.3, rel=0.05)
    assert abs(residual.mean()) < 0.01
    assert np.all(np.abs(weights["w2"]) >= 0.5)  # every hidden unit really contributes
    np.testing.assert_allclose(x.std(axis=0), 1.0, atol=0.03)


def test_teacher_dataset():
    ds = load_dataset("teacher", n_train=300, n_test=200, seed=1, validation_fraction=0.1)
    assert ds.task == "regression" and ds.input_shape == (10,)
    assert len(ds.x_train) == 270 and len(ds.x_val) == 30 and len(ds.x_test) == 200
    assert ds.info["true_active_units"] == [3] and ds.y_std is not None
    with pytest.raises(ValueError, match="activation"):
        make_teacher_regression(10, activation="gelu-ish")


def test_mnist1d_offline_and_leaves_global_rng_alone():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    ds = load_dataset("mnist1d")
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    assert ds.input_shape == (40,) and ds.num_classes == 10
    assert len(ds.x_train) == 4000 and len(ds.x_test) == 1000
    np.testing.assert_array_equal(np.bincount(np.concatenate([ds.y_train, ds.y_test])),
                                  [500] * 10)


# ----------------------------------------------------------------------------- augmentation


def test_flip_augment_flips_exactly_the_chosen_images():
    images = jnp.asarray(np.random.default_rng(0).normal(size=(64, 5, 4, 2)), jnp.float32)
    key = jax.random.key(7)
    out = np.asarray(jax.jit(flip_augment)(key, images))
    mirrored = np.asarray(images)[:, :, ::-1, :]
    flipped = np.array([np.array_equal(o, m) for o, m in zip(out, mirrored)])
    kept = np.array([np.array_equal(o, i) for o, i in zip(out, np.asarray(images))])
    assert np.all(flipped ^ kept)  # each image exactly one of the two
    np.testing.assert_array_equal(flipped, np.asarray(jax.random.bernoulli(key, 0.5, (64,))))
    assert 16 < flipped.sum() < 48
    assert out[0, 0, 0, 0] in (images[0, 0, 0, 0], images[0, 0, -1, 0])  # width axis, not height


def test_flip_augment_inside_scan_and_identity_for_tabular():
    images = jnp.arange(3 * 2 * 3 * 1, dtype=jnp.float32).reshape(3, 2, 3, 1)

    @jax.jit
    def run(key):
        def step(carry, k):
            return carry, flip_augment(k, images)
        return jax.lax.scan(step, 0, jax.random.split(key, 50))[1]

    outputs = np.asarray(run(jax.random.key(0)))
    assert outputs.shape == (50, 3, 2, 3, 1)
    assert np.any(outputs[:, 0] != np.asarray(images)[0])  # some steps flipped image 0
    tabular = jnp.ones((4, 7))
    assert flip_augment(jax.random.key(0), tabular) is tabular


# ------------------------------------------------------------------------------- user files


def test_csv_classification_with_header(tmp_path):
    rows = ["a,b,label"] + [f"{i * 0.5},{i % 3 - 1},{i % 2}" for i in range(20)]
    (tmp_path / "cls.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(tmp_path / "cls.csv", standardize=False)
    assert ds.task == "classification" and ds.num_classes == 2 and ds.input_shape == (2,)
    assert len(ds.x_train) == 16 and len(ds.x_test) == 4
    assert sorted(np.concatenate([ds.x_train[:, 0], ds.x_test[:, 0]])) == \
        [i * 0.5 for i in range(20)]


def test_csv_regression_when_targets_not_integers(tmp_path):
    rows = [f"{i},{2.5 * i + 0.25}" for i in range(10)]
    (tmp_path / "reg.csv").write_text("\n".join(rows))
    ds = load_dataset(tmp_path / "reg.csv", standardize=False, standardize_targets=False)
    assert ds.task == "regression" and ds.y_train.shape == (8, 1) and ds.num_classes is None
    np.testing.assert_allclose(ds.y_train[:, 0], 2.5 * ds.x_train[:, 0] + 0.25)


@pytest.mark.parametrize("bad_row, message", [
    ("1.0,nan,1", "NaN/inf"), ("1.0,inf,1", "NaN/inf"), ("1.0,,1", "not a number"),
    ("1.0,abc,1", "not a number"), ("1.0,2.0", "2 columns, expected 3"),
    ("1.0,2.0,-1", "integers >= 0")])
def test_csv_bad_values(tmp_path, bad_row, message):
    rows = ["1.0,2.0,0", "3.0,4.0,1", bad_row, "5.0,6.0,1"]
    (tmp_path / "bad.csv").write_text("\n".join(rows))
    with pytest.raises(ValueError, match=message):
        load_dataset(tmp_path / "bad.csv")


def test_npz_validation(tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 3))
    cases = {
        "nan.npz": dict(x=np.where(np.eye(10, 3) > 0, np.nan, x), y=np.zeros(10, np.int64)),
        "length.npz": dict(x=x, y=np.zeros(9, np.int64)),
        "negative.npz": dict(x=x, y=-np.ones(10, np.int64)),
        "missing.npz": dict(x=x),
        "half_test.npz": dict(x=x, y=np.zeros(10, np.int64), x_test=x),
        "y_nan.npz": dict(x=x, y=np.full(10, np.nan)),
    }
    messages = {"nan.npz": "x holds 3 NaN/inf", "length.npz": "10 rows but y has 9",
                "negative.npz": "integers >= 0", "missing.npz": "needs arrays 'x' and 'y'",
                "half_test.npz": "both 'x_test' and 'y_test'", "y_nan.npz": "y holds 10 NaN"}
    for file_name, arrays in cases.items():
        np.savez(tmp_path / file_name, **arrays)
        with pytest.raises(ValueError, match=messages[file_name]):
            load_dataset(tmp_path / file_name)


def test_npz_regression_and_pickle_free(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    y = x.sum(axis=1)
    np.savez(tmp_path / "reg.npz", x=x, y=y)
    ds = load_dataset(tmp_path / "reg.npz", validation_fraction=0.25)
    assert ds.task == "regression" and ds.y_train.shape == (24, 1)
    assert len(ds.x_val) == 8 and len(ds.x_test) == 8
    np.savez(tmp_path / "objects.npz", x=np.array([object()] * 3, dtype=object), y=[1, 2, 3])
    with pytest.raises(ValueError):  # object arrays would need pickle: refused by np.load
        load_dataset(tmp_path / "objects.npz")


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        load_dataset("imagenet-42")
    for name in DATASET_NAMES:
        assert name in str(info.value)
    with pytest.raises(DataNotFoundError):
        load_dataset("/no/such/file.npz")


# --------------------------------------------------------------------- the real Fashion-MNIST


@pytest.mark.skipif(not (FASHION_SYSTEM_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian_folder(monkeypatch):
    monkeypatch.setattr(locate, "SYSTEM_DATA_DIRS", {"fashion-mnist": FASHION_SYSTEM_DIR})
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.source == str(FASHION_SYSTEM_DIR)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(np.unique(ds.y_train), np.arange(10))
    np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
    assert float(ds.mean) == pytest.approx(0.2860, abs=1e-3)  # the published pixel mean
    assert float(ds.std) == pytest.approx(0.3530, abs=1e-3)
    assert ds.flip_augment and ds.summary()["num_train"] == 60000
