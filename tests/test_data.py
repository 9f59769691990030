"""Tests of pixelar.data on small synthetic files in each real format.

Every test runs with an isolated file lookup (empty cache and system roots, no
$PIXELAR_DATA); only the last test reads the real Fashion-MNIST from
/usr/share/datasets/fashion-mnist, and is skipped where that is absent.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import tarfile
import threading
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from png_helpers import write_png

from pixelar.data import (
    ChecksumError,
    DatasetNotFoundError,
    ImageDataset,
    UnsafePickleError,
    cifar,
    download,
    iterate_batches,
    list_datasets,
    load_dataset,
    npz,
    paths,
)
from pixelar.data.export import file_prefix
from pixelar.data.idx import read_idx
from pixelar.data.safe_pickle import safe_loads
from pixelar.image_files import load_image
from pixelar.types import ImageSpec

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def isolated_lookup(tmp_path, monkeypatch):
    """No real data locations, no proxies, short network timeouts."""
    monkeypatch.delenv(paths.DATA_ENV, raising=False)
    monkeypatch.setenv(paths.SYSTEM_DATA_ENV, str(tmp_path / "system"))
    monkeypatch.setattr(paths, "cache_root", lambda: tmp_path / "cache")
    monkeypatch.setattr(download, "DOWNLOAD_TIMEOUT_S", 2.0)
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def make_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random uint8 images; pixel [i, ..., 0, 0] = i identifies image i (n <= 256)."""
    x = np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    x.reshape(n, -1)[:, 0] = np.arange(n)
    return x


def write_mnist(directory: Path, n_train: int = 40, n_test: int = 15, gz: bool = True, seed: int = 0) -> dict:
    """Write MNIST-like IDX files; return the arrays written."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    arrays = {
        "train": (make_images(n_train, (28, 28), seed), rng.integers(0, 10, n_train, dtype=np.uint8)),
        "t10k": (make_images(n_test, (28, 28), seed + 2), rng.integers(0, 10, n_test, dtype=np.uint8)),
    }
    for prefix, (x, y) in arrays.items():
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            name = f"{prefix}-{kind}-ubyte"
            data = idx_bytes(arr)
            if gz:
                (directory / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (directory / name).write_bytes(data)
    return arrays


def cifar_batches(n: int = 3, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Six small CIFAR batches: name -> (data uint8 (n, 3072), labels)."""
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {name: (rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()) for name in names}


def cifar_pickle(data: np.ndarray, labels: list[int], protocol: int = 2) -> bytes:
    # Python-2 style: bytes keys, as the real files give with encoding="bytes".
    batch = {b"batch_label": b"synthetic", b"labels": labels, b"data": data, b"filenames": [b"a.png"] * len(labels)}
    blob = pickle.dumps(batch, protocol=protocol)
    if protocol == 2:
        # The real files were written with numpy 1, which spells the module numpy.core
        # (protocol 2 names globals in text lines, so the length may change).
        blob = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        assert b"numpy.core.multiarray" in blob
    return blob


def write_cifar_tar(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/"served"; yields (dir, base_url)."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------- names and splits


def test_list_datasets():
    names = list_datasets()
    for name in (
        "fashion_mnist",
        "fashion_mnist_binary",
        "fashion_mnist_dynamic",
        "mnist",
        "mnist_binary",
        "mnist_dynamic",
        "cifar10",
    ):
        assert name in names


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        load_dataset("imagenet")
    for name in list_datasets():
        assert name in str(e.value)
    assert "npz:" in str(e.value) and "folder:" in str(e.value)


def test_unknown_split(tmp_path):
    write_mnist(tmp_path / "d")
    with pytest.raises(ValueError, match="full_train"):
        load_dataset("mnist", split="validation", data_dir=tmp_path / "d", download=False)


# ---------------------------------------------------------------- IDX (MNIST-like)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_load(tmp_path, gz, name):
    arrays = write_mnist(tmp_path / "d", gz=gz)
    full = load_dataset(name, "full_train", data_dir=str(tmp_path / "d"), download=False)
    test = load_dataset(name, "test", data_dir=str(tmp_path / "d"), download=False)
    assert full.spec == ImageSpec(1, 28, 28, 256) and test.spec == full.spec
    assert full.images.dtype == torch.uint8 and full.images.shape == (40, 1, 28, 28)
    assert full.labels.dtype == torch.int64 and full.num_classes == 10
    assert not full.stochastic_binarize and full.name == name and len(test) == 15
    assert torch.equal(full.images[:, 0], torch.from_numpy(arrays["train"][0]))
    assert torch.equal(full.labels, torch.from_numpy(arrays["train"][1]).long())
    assert torch.equal(test.images[:, 0], torch.from_numpy(arrays["t10k"][0]))
    assert torch.equal(test.labels, torch.from_numpy(arrays["t10k"][1]).long())


def test_train_val_split(tmp_path):
    write_mnist(tmp_path / "d", n_train=40)
    load = functools.partial(load_dataset, "mnist", data_dir=tmp_path / "d", download=False)
    full, train, val = load(split="full_train"), load(split="train"), load(split="val")

    def ids(ds):  # pixel (0, 0) is the image id
        return set(ds.images[:, 0, 0, 0].tolist())

    assert len(val) == 4 and len(train) == 36  # built-in default: min(5000, N // 10)
    assert ids(train).isdisjoint(ids(val)) and ids(train) | ids(val) == ids(full)
    # Labels travel with their images.
    for ds in (train, val):
        assert torch.equal(ds.labels, full.labels[ds.images[:, 0, 0, 0].long()])
    # Deterministic: the permutation of torch.Generator seeded with 0.
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    assert ids(val) == set(perm[-4:].tolist())
    assert torch.equal(load(split="val").images, val.images)
    # An explicit val_size.
    assert len(load(split="val", val_size=10)) == 10 and len(load(split="train", val_size=10)) == 30
    with pytest.raises(ValueError, match="val_size"):
        load(split="val", val_size=40)


def test_fixed_binarization(tmp_path):
    arrays = write_mnist(tmp_path / "d")
    ds = load_dataset("mnist_binary", "full_train", data_dir=tmp_path / "d", download=False)
    assert ds.spec == ImageSpec(1, 28, 28, 2) and not ds.stochastic_binarize
    assert set(ds.images.unique().tolist()) == {0, 1}
    assert torch.equal(ds.images[:, 0], torch.from_numpy(arrays["train"][0] >= 128).to(torch.uint8))
    x, _ = next(iterate_batches(ds, 8, shuffle=False))
    assert x.dtype == torch.int64 and x.max() <= 1


def test_dynamic_binarization_dataset(tmp_path):
    write_mnist(tmp_path / "d")
    ds = load_dataset("mnist_dynamic", "full_train", data_dir=tmp_path / "d", download=False)
    assert ds.spec == ImageSpec(1, 28, 28, 2) and ds.stochastic_binarize
    assert ds.images.max() > 1  # stored as 8-bit grayscale
    g = torch.Generator().manual_seed(0)
    (x1, _), (x2, _) = (next(iterate_batches(ds, 40, shuffle=False, generator=g)) for _ in range(2))
    assert set(x1.unique().tolist()) == {0, 1} and not torch.equal(x1, x2)


def test_dynamic_binarization_mean():
    gray = torch.randint(0, 256, (64, 1, 4, 4), dtype=torch.uint8)
    gray[0] = 0
    gray[1] = 255
    ds = ImageDataset(gray, None, ImageSpec(1, 4, 4, 2), None, "synthetic", stochastic_binarize=True)
    g = torch.Generator().manual_seed(1)
    total = torch.zeros(gray.shape)
    epochs = 300
    for _ in range(epochs):
        for x, y in iterate_batches(ds, 64, shuffle=False, generator=g):
            assert y is None
            total += x
    mean = total / epochs
    # Per-pixel std of the mean <= 0.5 / sqrt(300) ~ 0.03; 1024 pixels stay within ~4 std.
    assert (mean - gray / 255.0).abs().max() < 0.12
    assert mean[0].max() == 0 and mean[1].min() == 1


# ---------------------------------------------------------------- iterate_batches


def test_iterate_batches_sizes_order_and_determinism():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    labels = torch.arange(10) % 3
    ds = ImageDataset(images, labels, ImageSpec(1, 2, 2), 3, "synthetic")
    batches = list(iterate_batches(ds, 4, shuffle=False))
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([x for x, _ in batches]), images.long())
    assert torch.equal(torch.cat([y for _, y in batches]), labels)
    assert all(x.dtype == torch.int64 and y.dtype == torch.int64 for x, y in batches)
    assert [len(x) for x, _ in iterate_batches(ds, 4, shuffle=False, drop_last=True)] == [4, 4]

    def order(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.cat([x[:, 0, 0, 0] for x, _ in iterate_batches(ds, 3, shuffle=True, generator=g)])

    assert sorted(order(0).tolist()) == list(range(10))
    assert torch.equal(order(0), order(0))
    assert torch.equal(order(0), torch.randperm(10, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(order(0), order(1))
    # Labels follow their images when shuffled.
    g = torch.Generator().manual_seed(5)
    for x, y in iterate_batches(ds, 3, shuffle=True, generator=g):
        assert torch.equal(y, x[:, 0, 0, 0] % 3)


def test_iterate_batches_without_generator_uses_epoch():
    ds = ImageDataset(torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1), None, ImageSpec(1, 1, 1), None, "s")

    def order(epoch):
        return torch.cat([x.flatten() for x, _ in iterate_batches(ds, 7, shuffle=True, epoch=epoch)])

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        assert torch.equal(order(1), order(1))
        assert not torch.equal(order(1), order(2))


def test_image_dataset_validates():
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(torch.zeros(2, 1, 2, 2), None, ImageSpec(1, 2, 2), None, "s")
    with pytest.raises(ValueError, match="shape"):
        ImageDataset(torch.zeros(2, 3, 2, 2, dtype=torch.uint8), None, ImageSpec(1, 2, 2), None, "s")
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(
            torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), ImageSpec(1, 2, 2), 2, "s"
        )


# ---------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("extracted", [False, True])
def test_cifar10(tmp_path, protocol, extracted):
    batches = cifar_batches()
    blobs = {name: cifar_pickle(d, l, protocol) for name, (d, l) in batches.items()}
    if extracted:
        folder = tmp_path / "d" / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for name, blob in blobs.items():
            (folder / name).write_bytes(blob)
    else:
        write_cifar_tar(tmp_path / "d" / "cifar10" / "cifar-10-python.tar.gz", blobs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. numpy 2's DeprecationWarning for numpy.core
        full = load_dataset("cifar10", "full_train", data_dir=tmp_path / "d", download=False)
    test = load_dataset("cifar10", "test", data_dir=tmp_path / "d", download=False)
    assert full.spec == ImageSpec(3, 32, 32, 256) and full.num_classes == 10
    assert full.images.shape == (15, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    train_data = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert torch.equal(full.images, torch.from_numpy(train_data.reshape(-1, 3, 32, 32)))
    assert full.labels.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert torch.equal(test.images.reshape(3, -1), torch.from_numpy(batches["test_batch"][0]))
    assert len(load_dataset("cifar10", "val", data_dir=tmp_path / "d", download=False)) == 1


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_rejects_code(tmp_path):
    marker = tmp_path / "pwned"
    # Protocol-0 GLOBAL opcode naming os.system directly, and a real reduce (posix.system).
    handmade = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    with pytest.raises(UnsafePickleError, match="os.system"):
        safe_loads(handmade)
    with pytest.raises(UnsafePickleError, match="system"):
        safe_loads(pickle.dumps(_Evil(marker)))
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        safe_loads(b"cbuiltins\neval\n(S'1'\ntR.")
    # The same through the CIFAR loader: a ValueError naming the member, nothing run.
    blobs = {name: cifar_pickle(d, l) for name, (d, l) in cifar_batches().items()}
    blobs["data_batch_3"] = pickle.dumps(_Evil(marker), protocol=2)
    write_cifar_tar(tmp_path / "d" / "cifar-10-python.tar.gz", blobs)
    with pytest.raises(ValueError, match="data_batch_3"):
        load_dataset("cifar10", "full_train", data_dir=tmp_path / "d", download=False)
    assert not marker.exists()


def test_cifar_corrupt(tmp_path):
    blobs = {name: cifar_pickle(d, l) for name, (d, l) in cifar_batches().items()}
    del blobs["test_batch"]
    write_cifar_tar(tmp_path / "a" / "cifar-10-python.tar.gz", blobs)
    with pytest.raises(ValueError, match="missing member cifar-10-batches-py/test_batch"):
        load_dataset("cifar10", "test", data_dir=tmp_path / "a", download=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b\x08\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupt tar"):
        load_dataset("cifar10", "test", data_dir=tmp_path / "b", download=False)
    blobs["test_batch"] = b"not a pickle"
    write_cifar_tar(tmp_path / "c" / "cifar-10-python.tar.gz", blobs)
    with pytest.raises(ValueError, match="test_batch"):
        load_dataset("cifar10", "test", data_dir=tmp_path / "c", download=False)


def test_cifar_batch_larger_than_a_batch_can_be_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """A small tarball can unpack to gigabytes: the member's size in its header is compared with what a batch can
    be before a byte of it is read (here a 4 MiB member of zeros against a limit lowered to 1 MiB, so that the
    file stays small: the peak of Python's allocations shows it was never read). An extracted batch file is
    checked by its size on disk (a sparse file over the real limit)."""
    monkeypatch.setattr(cifar, "MAX_BATCH_BYTES", 2**20)
    blobs = {name: cifar_pickle(d, l) for name, (d, l) in cifar_batches().items()}
    blobs["test_batch"] = bytes(4 * 2**20)
    write_cifar_tar(tmp_path / "a" / "cifar-10-python.tar.gz", blobs)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"test_batch is 4,194,304 bytes, more than a CIFAR-10 batch can be "):
            load_dataset("cifar10", "test", data_dir=tmp_path / "a", download=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    monkeypatch.undo()
    folder = tmp_path / "b" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    with open(folder / "test_batch", "wb") as f:
        f.truncate(cifar.MAX_BATCH_BYTES + 1)
    with pytest.raises(ValueError, match=rf"test_batch is {cifar.MAX_BATCH_BYTES + 1:,} bytes.*replace it"):
        load_dataset("cifar10", "test", data_dir=tmp_path / "b", download=False)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_full_cifar_batch_is_within_the_limit(protocol):
    """10,000 images, as in every batch of the release, at any protocol (2 from Python 3 stores the bytes as
    latin-1 text: the largest)."""
    n = 10_000
    data = np.random.default_rng(0).integers(0, 256, (n, 3072), dtype=np.uint8)
    assert len(cifar_pickle(data, [0] * n, protocol)) <= cifar.MAX_BATCH_BYTES


# ---------------------------------------------------------------- npz


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npz_layouts(tmp_path, layout):
    rgb = layout != "NHW"
    x = make_images(20, (3, 8, 6) if rgb else (8, 6), seed=3)  # canonical (N, C, H, W) or (N, H, W)
    stored = x.transpose(0, 2, 3, 1) if layout == "NHWC" else x
    y = np.arange(20) % 4
    np.savez(tmp_path / "f.npz", x=stored, y=y)
    ds = load_dataset(f"npz:{tmp_path / 'f.npz'}", "full_train")
    expected = x if rgb else x[:, None]
    assert ds.spec == ImageSpec(3 if rgb else 1, 8, 6, 256) and torch.equal(ds.images, torch.from_numpy(expected))
    assert ds.num_classes == 4 and torch.equal(ds.labels, torch.from_numpy(y))
    assert len(load_dataset(f"npz:{tmp_path / 'f.npz'}", "val")) == 2  # max(1, N // 10)
    with pytest.raises(ValueError, match="no test split"):
        load_dataset(f"npz:{tmp_path / 'f.npz'}", "test")


def test_npz_splits_and_errors(tmp_path):
    x_train, x_test = make_images(12, (5, 5, 1), 0), make_images(4, (5, 5, 1), 1)
    np.savez(tmp_path / "s.npz", x_train=x_train, y_train=np.zeros(12, int), x_test=x_test, y_test=np.full(4, 6))
    train = load_dataset(f"npz:{tmp_path / 's.npz'}", "full_train")
    test = load_dataset(f"npz:{tmp_path / 's.npz'}", "test")
    assert train.images.shape == (12, 1, 5, 5) and test.images.shape == (4, 1, 5, 5)
    assert train.num_classes == test.num_classes == 7
    np.savez(tmp_path / "unlabelled.npz", images=x_train[..., 0])
    ds = load_dataset(f"npz:{tmp_path / 'unlabelled.npz'}", "full_train")
    assert ds.labels is None and ds.num_classes is None
    np.savez(tmp_path / "obj.npz", x=np.array([None, 1], dtype=object))
    with pytest.raises(ValueError, match="obj.npz"):
        load_dataset(f"npz:{tmp_path / 'obj.npz'}")
    np.savez(tmp_path / "nox.npz", z=x_train)
    with pytest.raises(ValueError, match="no x or images"):
        load_dataset(f"npz:{tmp_path / 'nox.npz'}")


def test_npz_labels_beyond_any_class_count_are_refused_naming_the_file(tmp_path):
    """num_classes is the largest label + 1, and a class-conditional model holds weights for each: a label of 2**40
    is refused before anything is sized by it, naming the file, the array and the largest label."""
    x = make_images(4, (5, 5), 0)
    y_test = np.array([0, 2**40, 1, 1])
    np.savez(tmp_path / "far.npz", x_train=x, y_train=np.array([0, 1, 2, 3]), x_test=x, y_test=y_test)
    message = rf"far.npz: labels must be class ids 0 .. {npz.MAX_CLASSES - 1}, but 'y_test' holds {2**40}"
    for split in ("full_train", "test"):  # the classes are counted over both splits
        with pytest.raises(ValueError, match=message):
            load_dataset(f"npz:{tmp_path / 'far.npz'}", split)
    np.savez(tmp_path / "near.npz", x=x, y=np.array([0, 1, 2, npz.MAX_CLASSES - 1]))
    assert load_dataset(f"npz:{tmp_path / 'near.npz'}", "full_train").num_classes == npz.MAX_CLASSES


# ---------------------------------------------------------------- image folders


def _save(path: Path, arr: np.ndarray, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode if mode == "RGB" else None).save(path)


def test_folder_classes_and_splits(tmp_path):
    root = tmp_path / "imgs"
    imgs = make_images(6, (7, 5), 0)
    for i, (split, cls) in enumerate(
        [("train", "cat"), ("train", "dog"), ("train", "ant"), ("train", "dog"), ("test", "dog"), ("test", "cat")]
    ):
        _save(root / split / cls / f"{i:03d}.png", imgs[i], "L")
    train = load_dataset(f"folder:{root}", "full_train")
    test = load_dataset(f"folder:{root}", "test")
    assert train.spec == ImageSpec(1, 7, 5, 256) and train.num_classes == 3 and test.num_classes == 3
    # Sorted class names: ant=0, cat=1, dog=2; files sorted within a class.
    assert train.labels.tolist() == [0, 1, 2, 2]
    assert torch.equal(train.images[:, 0], torch.from_numpy(imgs[[2, 0, 1, 3]]))
    assert test.labels.tolist() == [1, 2]


def test_folder_plain_rgb_and_errors(tmp_path):
    root = tmp_path / "plain"
    rgb = make_images(3, (4, 6, 3), 0)
    for i in range(3):
        _save(root / f"{i}.png", rgb[i], "RGB")
    ds = load_dataset(f"folder:{root}", "full_train")
    assert ds.spec == ImageSpec(3, 4, 6, 256) and ds.labels is None and len(ds) == 3
    assert torch.equal(ds.images, torch.from_numpy(rgb.transpose(0, 3, 1, 2)))
    with pytest.raises(ValueError, match="no test split"):
        load_dataset(f"folder:{root}", "test")
    _save(root / "z_big.png", make_images(1, (5, 6, 3), 2)[0], "RGB")
    with pytest.raises(ValueError, match=r"z_big.png is 6x5 \(WxH\) but the dataset expects 6x4; .*that of .*0.png"):
        load_dataset(f"folder:{root}", "full_train")


def test_folder_of_grey_and_colour_files_is_refused_unless_converted(tmp_path, capsys):
    """A set is grey only where every file is: one grey file among colour ones is refused, not silently made
    colour; folder+convert: repeats its grey level in R, G and B and says so."""
    root = tmp_path / "mixed"
    rgb, grey = make_images(3, (4, 6, 3), 0), make_images(1, (4, 6), 1)[0]
    for i in range(3):
        _save(root / f"{i}.png", rgb[i], "RGB")
    _save(root / "gray.png", grey, "L")
    with pytest.raises(
        ValueError, match=r"mixes greyscale and colour files \(gray.png is greyscale, 0.png colour\).*'folder\+convert:"
    ):
        load_dataset(f"folder:{root}", "full_train")
    capsys.readouterr()
    ds = load_dataset(f"folder+convert:{root}", "full_train")
    assert ds.spec == ImageSpec(3, 4, 6, 256) and file_prefix(ds.name) == "mixed"  # exported as mixed-*.png
    assert torch.equal(ds.images[:3], torch.from_numpy(rgb.transpose(0, 3, 1, 2)))
    assert all(torch.equal(ds.images[3, c], torch.from_numpy(grey)) for c in range(3))
    assert f"grey repeated in R, G and B in 1 image(s) ({root / 'gray.png'})" in capsys.readouterr().err

    # the splits agree: grey training files become colour where a test file is colour
    split = tmp_path / "split"
    for i in range(2):
        _save(split / "train" / f"{i}.png", make_images(1, (4, 6), i)[0], "L")
    _save(split / "test" / "c.png", rgb[0], "RGB")
    assert load_dataset(f"folder:{split}", "full_train").spec.channels == 1  # each split is of one kind
    capsys.readouterr()
    assert load_dataset(f"folder+convert:{split}", "full_train").spec.channels == 3
    assert load_dataset(f"folder+convert:{split}", "test").spec.channels == 3
    err = capsys.readouterr().err
    assert "(train): grey repeated in R, G and B in 2 image(s)" in err and "(test)" not in err  # nothing to convert
    (split / "test" / "c.png").unlink()
    _save(split / "test" / "g.png", grey, "L")
    assert load_dataset(f"folder+convert:{split}", "full_train").spec.channels == 1  # all grey: grey
    assert capsys.readouterr().err == ""


def test_folder_16_bit_images_are_refused_unless_converted(tmp_path, capsys):
    """16-bit grey PNGs (Pillow's I;16) were read as all 255: now refused, or their high byte kept on request."""
    root = tmp_path / "deep"
    root.mkdir()
    deep = np.random.default_rng(0).integers(0, 65536, (3, 4, 6)).astype(np.uint16)
    for i in range(3):
        Image.fromarray(deep[i]).save(root / f"{i}.png")
    with pytest.raises(
        ValueError,
        match=r"0.png has 16-bit samples but the dataset reads 8-bit ones: pass the dataset name "
        r"'folder\+convert:.*' to keep each sample's high 8 bits",
    ):
        load_dataset(f"folder:{root}", "full_train")
    capsys.readouterr()
    ds = load_dataset(f"folder+convert:{root}", "full_train")
    assert ds.spec == ImageSpec(1, 4, 6, 256) and torch.equal(ds.images[:, 0], torch.from_numpy(deep >> 8).byte())
    assert "16-bit samples reduced to their high 8 bits in 3 image(s)" in capsys.readouterr().err


def _hostile(path: Path, kind: str, rgb: np.ndarray) -> None:
    if kind == "alpha":
        rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2)
        rgba[0, 0, 3] = 0
        Image.fromarray(rgba).save(path)
    elif kind == "palette transparency":
        Image.fromarray(rgb).quantize(colors=4).save(path, transparency=0)
    elif kind == "cmyk":
        Image.fromarray(rgb).convert("CMYK").save(path, quality=95)
    else:  # two frames (APNG)
        frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
        frames[0].save(path, save_all=True, append_images=frames[1:])


@pytest.mark.parametrize("kind", ["alpha", "palette transparency", "cmyk", "frames"])
def test_folder_files_are_read_as_strictly_as_a_single_image(tmp_path, kind):
    """What load_image refuses, a folder refuses (naming the file); what folder+convert: reads is what
    load_image(convert=True) reads: one reader for both."""
    root = tmp_path / kind.replace(" ", "_")
    rgb = make_images(2, (4, 6, 3), 0)
    _save(root / "a.png", rgb[0], "RGB")
    path = root / ("b.jpg" if kind == "cmyk" else "b.png")
    _hostile(path, kind, rgb[1])
    spec = ImageSpec(3, 4, 6, 256)
    if kind == "frames":
        for name in (f"folder:{root}", f"folder+convert:{root}"):
            with pytest.raises(ValueError, match=r"b.png has 2 frames"):
                load_dataset(name, "full_train")
        with pytest.raises(ValueError, match=r"b.png has 2 frames"):
            load_image(path, spec, convert=True)
        return
    with pytest.raises(ValueError, match=rf"{path.name}.*: pass the dataset name 'folder\+convert:{root}' to"):
        load_dataset(f"folder:{root}", "full_train")
    with pytest.raises(ValueError, match="pass convert=True"):
        load_image(path, spec)
    ds = load_dataset(f"folder+convert:{root}", "full_train")
    assert torch.equal(ds.images[1].long(), load_image(path, spec, convert=True)[0])
    assert torch.equal(ds.images[0], torch.from_numpy(rgb[0].transpose(2, 0, 1)))


def test_folder_image_sizes_are_checked_from_the_headers(tmp_path):
    """Headers claiming huge images over a few bytes of pixels (decoding them would fail): the size error proves
    nothing was decoded; beyond Pillow's decompression-bomb limit, a message naming the file."""
    root = tmp_path / "huge"
    _save(root / "a.png", make_images(1, (8, 8), 0)[0], "L")
    write_png(root / "b.png", 10000, 10000, 8, 0, b"\0" * 10)
    with pytest.raises(ValueError, match=r"b.png is 10000x10000 \(WxH\) but the dataset expects 8x8; .*a.png"):
        load_dataset(f"folder:{root}", "full_train")
    write_png(root / "b.png", 20000, 20000, 8, 0, b"\0" * 10)
    with pytest.raises(ValueError, match=r"b.png is too large to open \(.*\); the dataset expects 8x8"):
        load_dataset(f"folder:{root}", "full_train")
    (root / "a.png").unlink()  # the first file: no size to compare with yet
    for name in (f"folder:{root}", f"folder+convert:{root}"):
        with pytest.raises(ValueError, match=r"b.png is too large to open \(.*\); resize it first"):
            load_dataset(name, "full_train")


def test_empty_and_one_image_datasets_say_so(tmp_path):
    """Too few images are named as such, not as a bad val_size."""
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 5, 5), np.uint8))
    with pytest.raises(ValueError, match=r"empty.npz'?: its train images are empty \(0 images\)"):
        load_dataset(f"npz:{tmp_path / 'empty.npz'}")
    np.savez(tmp_path / "notest.npz", x_train=make_images(4, (5, 5), 0), x_test=np.zeros((0, 5, 5), np.uint8))
    with pytest.raises(ValueError, match="its test images are empty"):
        load_dataset(f"npz:{tmp_path / 'notest.npz'}", "test")
    root = tmp_path / "one"
    _save(root / "train" / "a.png", make_images(1, (4, 4), 0)[0], "L")
    _save(root / "test" / "b.png", make_images(1, (4, 4), 1)[0], "L")
    for split in ("train", "val"):
        with pytest.raises(ValueError, match=rf"only 1 training image: the '{split}' split needs at least 2"):
            load_dataset(f"folder:{root}", split)
    assert len(load_dataset(f"folder:{root}", "full_train")) == len(load_dataset(f"folder:{root}", "test")) == 1


# ---------------------------------------------------------------- lookup order


def test_lookup_order(tmp_path, monkeypatch):
    # Distinct training-set sizes tell the copies apart.
    arg, env = tmp_path / "arg", tmp_path / "env"
    write_mnist(arg / "mnist", n_train=11)
    write_mnist(env, n_train=12)  # $PIXELAR_DATA itself holds the files
    write_mnist(tmp_path / "cache" / "mnist", n_train=13)
    write_mnist(tmp_path / "system" / "mnist", n_train=14)
    monkeypatch.setenv(paths.DATA_ENV, str(env))

    def n_found(data_dir=None):
        return len(load_dataset("mnist", "full_train", data_dir=data_dir, download=False))

    assert n_found(arg) == 11
    assert n_found() == 12
    monkeypatch.delenv(paths.DATA_ENV)
    assert n_found() == 13
    for f in (tmp_path / "cache" / "mnist").iterdir():
        f.unlink()
    assert n_found() == 14
    # data_dir/<folder> beats data_dir itself.
    write_mnist(arg, n_train=15)
    assert n_found(arg) == 11


def test_lookup_does_not_mix_directories(tmp_path):
    write_mnist(tmp_path / "a")
    (tmp_path / "a" / "train-labels-idx1-ubyte.gz").unlink()
    write_mnist(tmp_path / "cache" / "mnist", n_train=13)
    assert len(load_dataset("mnist", "full_train", data_dir=tmp_path / "a", download=False)) == 13


# ---------------------------------------------------------------- missing and corrupt files


def test_missing_files_message(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("fashion_mnist", data_dir=tmp_path / "nothing", download=False)
    message = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "train-images-idx3-ubyte.gz" in message and "pass data_dir=DIR" in message and "PIXELAR_DATA" in message
    assert str(tmp_path / "nothing" / "fashion-mnist") in message
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("mnist", download=False)
    assert "apt-get" not in str(e.value)
    with pytest.raises(DatasetNotFoundError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", download=False)


@pytest.mark.parametrize(
    "content, problem",
    [
        (gzip.compress(b"\x01\x02\x08\x03" + bytes(20)), "bad magic"),
        (gzip.compress(idx_bytes(np.zeros((40, 28, 28), np.uint8))[:-100]), "truncated"),
        (idx_bytes(np.zeros((40, 28, 28), np.uint8)) + b"xx", "trailing"),
        (b"\x1f\x8b" + b"garbage" * 10, "gzip"),
    ],
)
def test_corrupt_idx(tmp_path, content, problem):
    write_mnist(tmp_path / "d")
    (tmp_path / "d" / "train-images-idx3-ubyte.gz").write_bytes(content)
    with pytest.raises(ValueError, match=problem) as e:
        load_dataset("mnist", data_dir=tmp_path / "d", download=False)
    assert "train-images-idx3-ubyte.gz" in str(e.value)


def test_idx_label_count_mismatch(tmp_path):
    write_mnist(tmp_path / "d")
    (tmp_path / "d" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(39, np.uint8))))
    with pytest.raises(ValueError, match="39 labels for 40 images"):
        load_dataset("mnist", data_dir=tmp_path / "d", download=False)


# ---------------------------------------------------------------- downloads


def _serve_mnist(served: Path, base_url: str, monkeypatch, corrupt: str | None = None) -> dict:
    arrays = write_mnist(served)
    remotes = []
    for f in sorted(served.iterdir()):
        checksum = "0" * 32 if f.name == corrupt else md5(f.read_bytes())
        remotes.append(download.RemoteFile(f.name, base_url + f.name, checksum))
    monkeypatch.setitem(download.REMOTE_FILES, "mnist", tuple(remotes))
    return arrays


def test_download_success(tmp_path, http_dir, monkeypatch):
    served, base_url = http_dir
    arrays = _serve_mnist(served, base_url, monkeypatch)
    ds = load_dataset("mnist", "full_train", data_dir=tmp_path / "dl")
    assert torch.equal(ds.images[:, 0], torch.from_numpy(arrays["train"][0]))
    assert sorted(p.name for p in (tmp_path / "dl" / "mnist").iterdir()) == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]
    # Without data_dir the download goes to the user cache; test files are added on demand.
    assert len(load_dataset("mnist", "test")) == 15
    assert len(list((tmp_path / "cache" / "mnist").iterdir())) == 2


def test_download_checksum_mismatch(tmp_path, http_dir, monkeypatch):
    served, base_url = http_dir
    _serve_mnist(served, base_url, monkeypatch, corrupt="train-labels-idx1-ubyte.gz")
    got = md5((served / "train-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(ChecksumError) as e:
        load_dataset("mnist", data_dir=tmp_path / "dl")
    message = str(e.value)
    assert "train-labels-idx1-ubyte.gz" in message and "0" * 32 in message and got in message
    # The good first file stays; nothing of the bad one (no temporary file either).
    assert [p.name for p in (tmp_path / "dl" / "mnist").iterdir()] == ["train-images-idx3-ubyte.gz"]


def test_download_offline(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}/"
    monkeypatch.setitem(
        download.REMOTE_FILES,
        "fashion-mnist",
        tuple(download.RemoteFile(r.name, url + r.name, r.md5) for r in download.REMOTE_FILES["fashion-mnist"]),
    )
    start = time.monotonic()
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("fashion_mnist", data_dir=tmp_path / "dl")
    assert time.monotonic() - start < 10
    message = str(e.value)
    assert "download from" in message and "apt-get install dataset-fashion-mnist" in message
    assert list((tmp_path / "dl" / "fashion-mnist").iterdir()) == []


def test_canonical_sources():
    # The checksums published with torchvision; a typo here would break every download.
    fm = {r.name: r.md5 for r in download.REMOTE_FILES["fashion-mnist"]}
    assert fm["train-images-idx3-ubyte.gz"] == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert download.REMOTE_FILES["cifar10"][0].url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert all(len(r.md5) == 32 for rs in download.REMOTE_FILES.values() for r in rs)


# ---------------------------------------------------------------- the real Fashion-MNIST


@pytest.mark.skipif(not REAL_FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv(paths.SYSTEM_DATA_ENV)  # back to /usr/share/datasets
    full = load_dataset("fashion_mnist", "full_train", download=False)
    test = load_dataset("fashion_mnist", "test", download=False)
    assert len(full) == 60000 and len(test) == 10000
    assert full.spec == test.spec == ImageSpec(1, 28, 28, 256)
    assert full.labels.bincount().tolist() == [6000] * 10 and test.labels.bincount().tolist() == [1000] * 10
    val = load_dataset("fashion_mnist", "val", download=False)
    assert len(val) == 5000
    # The Debian files hold the original data: decompressed MD5s match the published ones.
    raw = gzip.decompress((REAL_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert md5(raw) == download.FASHION_MNIST_RAW_MD5["t10k-labels-idx1-ubyte"]
    assert read_idx(REAL_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").shape == (10000,)
