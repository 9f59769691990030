"""Downsampled ImageNet (npz batches) and CelebA / CelebA-HQ (image folders): read from tiny files written in the
official formats, converted once into a memory-mapped cache (rebuilt when its sources change or it is damaged),
split like the papers; and `pixelar train` on them."""

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from run_helpers import launch

from pixelar.cli import main
from pixelar.data import DatasetNotFoundError, cache, imagenet, iterate_batches, load_dataset, paths
from pixelar.data.splits import val_permutation

N_BATCH, N_VAL = 2, 6  # images per training batch file (10 files) and in val_data.npz


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real data directories: the user cache and the system data root are inside tmp_path."""
    monkeypatch.delenv(paths.DATA_ENV, raising=False)
    monkeypatch.setenv(paths.SYSTEM_DATA_ENV, str(tmp_path / "system"))
    monkeypatch.setattr(paths, "cache_root", lambda: tmp_path / "cache")


def known_images(first: int, n: int, r: int) -> np.ndarray:
    """uint8 (n, 3, r, r) whose value depends on the image, channel, row and column differently, so a wrong
    reshape (channels last, transposed planes, another image) cannot give it back."""
    g = np.arange(first, first + n)[:, None, None, None]
    c, y, x = np.arange(3)[:, None, None], np.arange(r)[:, None], np.arange(r)
    return ((g * 31 + c * 80 + y * 7 + x * 3) % 256).astype(np.uint8)


def write_imagenet(root: Path, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 11 files of Downsampled ImageNet r x r in root/imagenet<r>/; returns the images (N, 3, r, r) and
    0-based labels of the training files (in file order) and of val_data.npz."""
    d = root / f"imagenet{r}"
    d.mkdir(parents=True)
    n = 10 * N_BATCH
    train = known_images(0, n, r)
    train_labels = (np.arange(n) * 37) % 1000 + 1  # 1-based, as in the release
    train_labels[:2] = [1, 1000]  # both ends of the range
    for i in range(10):
        part = slice(i * N_BATCH, (i + 1) * N_BATCH)
        # a row is all red values, then all green, then all blue, each row-major: (3, r, r) flattened in C order
        np.savez(
            d / f"train_data_batch_{i + 1}.npz",
            data=train[part].reshape(N_BATCH, -1),
            labels=train_labels[part],
            mean=np.zeros(3 * r * r),
        )
    val = known_images(1000, N_VAL, r)
    val_labels = np.arange(N_VAL) + 5
    np.savez(d / "val_data.npz", data=val.reshape(N_VAL, -1), labels=val_labels)
    return train, train_labels - 1, val, val_labels - 1


@pytest.mark.parametrize("r", [32, 64])
def test_imagenet_images_labels_and_splits(tmp_path, r):
    train, train_labels, val, val_labels = write_imagenet(tmp_path, r)
    n = len(train)
    load = lambda split, **kw: load_dataset(f"imagenet{r}", split, data_dir=tmp_path, **kw)  # noqa: E731

    test = load("test")  # the validation files, in file order
    assert test.spec.shape == (3, r, r) and test.num_classes == 1000
    assert torch.equal(test.images, torch.from_numpy(val)) and test.labels.tolist() == val_labels.tolist()
    # the first r*r values of a row are the red plane, row-major
    assert torch.equal(test.images[0, 0].flatten(), torch.from_numpy(val[0].reshape(-1)[: r * r]))

    # training images are stored in the order of the validation permutation: "val" is its tail
    perm = val_permutation(n).numpy()
    full = load("full_train")
    assert torch.equal(full.images, torch.from_numpy(train[perm]))
    assert full.labels.tolist() == train_labels[perm].tolist() and full.labels.min() == 0 and full.labels.max() == 999
    for val_size in (None, 3):
        v = 2 if val_size is None else val_size  # default: min(5000, N // 10)
        tr, va = load("train", val_size=val_size), load("val", val_size=val_size)
        assert torch.equal(va.images, torch.from_numpy(train[perm[n - v :]]))
        assert torch.equal(tr.images, torch.from_numpy(train[perm[: n - v]]))
        assert va.labels.tolist() == train_labels[perm[n - v :]].tolist()
    with pytest.raises(ValueError, match="val_size must be between 1 and N-1"):
        load("val", val_size=n)


def _mapped_file(t: torch.Tensor) -> str | None:
    """The file whose mapping holds the tensor's first byte, from /proc/self/maps (None: anonymous memory)."""
    addr = t.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(a, 16) for a in fields[0].split("-"))
        if lo <= addr < hi:
            return fields[5] if len(fields) == 6 else None
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_imagenet_cache_is_built_once_and_memory_mapped(tmp_path, monkeypatch):
    write_imagenet(tmp_path, 32)
    reads = []
    read_batch = imagenet._read_batch
    monkeypatch.setattr(imagenet, "_read_batch", lambda *a: reads.append(a[0].name) or read_batch(*a))

    first = load_dataset("imagenet32", "train", data_dir=tmp_path)
    assert len(reads) == 10
    (cached,) = (tmp_path / "imagenet32").glob("pixelar-imagenet32-train-*.images.npy")
    mtime = cached.stat().st_mtime_ns
    again = load_dataset("imagenet32", "val", data_dir=tmp_path)  # another split of the same part
    assert len(reads) == 10 and cached.stat().st_mtime_ns == mtime  # not rebuilt
    assert not list((tmp_path / "imagenet32").glob(".*.tmp"))

    # the images are the cache file's pages (no copy in this process's own memory), split views included
    for ds in (first, again):
        assert _mapped_file(ds.images) == str(cached)
    assert _mapped_file(load_dataset("imagenet32", "test", data_dir=tmp_path).images).endswith(".images.npy")
    # batches are copies of their images only; writing into one leaves the data alone
    x, y = next(iterate_batches(first, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert x.dtype == torch.int64 and _mapped_file(x) != str(cached)
    before = first.images[0].clone()
    x.zero_()
    assert torch.equal(first.images[0], before)

    # changed source files make a new cache, which replaces the old one
    batch = tmp_path / "imagenet32" / "train_data_batch_3.npz"
    batch.touch()
    reads.clear()
    load_dataset("imagenet32", "train", data_dir=tmp_path)
    assert len(reads) == 10
    assert [p.name != cached.name for p in (tmp_path / "imagenet32").glob("pixelar-imagenet32-train-*.images.npy")] == [
        True
    ]


def _load_at_once(data_dir, monkeypatch, processes: int = 4):
    """imagenet32's training split opened by `processes` threads at once (each with its own lock descriptor,
    as processes have): -> (the datasets they got, how many times the cache was built). Any error fails."""
    builds = []
    build = cache._build
    monkeypatch.setattr(cache, "_build", lambda *a: builds.append(1) or build(*a))
    out, errors = [], []

    def load():
        try:
            out.append(load_dataset("imagenet32", "full_train", data_dir=data_dir))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(processes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return out, len(builds)


def test_cache_is_built_by_one_of_several_processes(tmp_path, monkeypatch):
    """Processes (here threads, each with its own lock file descriptor) that open a missing cache at once:
    one converts, the others wait for it and map its file."""
    write_imagenet(tmp_path, 32)
    out, builds = _load_at_once(tmp_path, monkeypatch)
    assert len(out) == 4 and builds == 1
    assert all(torch.equal(ds.images, out[0].images) for ds in out)


def _cache_file(d: Path, kind: str = "images.npy") -> Path:
    (path,) = d.glob(f"pixelar-imagenet32-train-*.{kind}")
    return path


def _damage(path: Path, offset: int) -> None:
    """Overwrite one byte `offset` bytes before the end of a file, in place (the file's size and name kept)."""
    with open(path, "r+b") as f:
        f.seek(-offset, os.SEEK_END)
        byte = f.read(1)
        f.seek(-offset, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_source_rewritten_with_its_size_and_mtime_restored_makes_a_new_cache(tmp_path):
    """The key holds the status-change time and inode besides the size and mtime: a rewrite is seen even when
    the file's size and modification time are put back (here by writing the same file with other pixels)."""
    write_imagenet(tmp_path, 32)
    batch = tmp_path / "imagenet32" / "train_data_batch_3.npz"
    before = load_dataset("imagenet32", "full_train", data_dir=tmp_path).images.clone()
    st = batch.stat()
    with np.load(batch) as z:
        data, labels, mean = z["data"], z["labels"], z["mean"]
    with open(batch, "r+b") as f:  # rewritten in place: the same inode
        np.savez(f, data=255 - data, labels=labels, mean=mean)
    os.utime(batch, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (batch.stat().st_size, batch.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    after = load_dataset("imagenet32", "full_train", data_dir=tmp_path).images
    changed = (before != after).flatten(1).any(1)
    assert changed.sum() == N_BATCH  # the two images of batch 3, and only they
    assert torch.equal(255 - after[changed], before[changed])  # the new pixels
    assert torch.equal(after[~changed], before[~changed])


@pytest.mark.parametrize(
    "kind, damage",
    [
        ("images.npy", "a byte"),
        ("images.npy", "truncated"),
        ("labels.npy", "a byte"),
        ("sums.json", "garbage"),
        ("sums.json", "deleted"),
    ],
)
def test_a_damaged_cache_is_rebuilt_with_a_note(tmp_path, capsys, kind, damage):
    write_imagenet(tmp_path, 32)
    good = load_dataset("imagenet32", "full_train", data_dir=tmp_path)
    images, labels = good.images.clone(), good.labels.clone()
    del good
    path = _cache_file(tmp_path / "imagenet32", kind)
    if damage == "a byte":
        _damage(path, 100)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "garbage":
        path.write_text("{not json")
    else:
        path.unlink()
    capsys.readouterr()
    again = load_dataset("imagenet32", "full_train", data_dir=tmp_path)
    assert torch.equal(again.images, images) and torch.equal(again.labels, labels)
    (note,) = [line for line in capsys.readouterr().err.splitlines() if " is damaged " in line]
    assert note.startswith(
        f"pixelar: the Downsampled ImageNet 32x32 train cache {_cache_file(tmp_path / 'imagenet32')}"
    )
    assert note.endswith("; rebuilding it")
    capsys.readouterr()
    load_dataset("imagenet32", "full_train", data_dir=tmp_path)  # whole again: used as it is
    assert capsys.readouterr().err == ""


def test_a_cache_is_checked_on_a_sample_of_its_blocks_or_in_full(tmp_path, monkeypatch, capsys):
    """Each open checks the first and last blocks and SAMPLE_BLOCKS others, drawn alike in all processes of a
    torchrun job (its run id); PIXELAR_CACHE_CHECK=full checks all of them."""
    monkeypatch.setattr(cache, "BLOCK_BYTES", 1024)  # 20 images of 3,072 bytes: 60 blocks
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    write_imagenet(tmp_path, 32)
    images = load_dataset("imagenet32", "full_train", data_dir=tmp_path).images.clone()
    sample = cache._sample(60, full=False)
    assert sample == cache._sample(60, full=False) and len(sample) == cache.SAMPLE_BLOCKS + 2
    assert {0, 59} <= set(sample) and cache._sample(60, full=True) == list(range(60))
    unchecked = next(i for i in range(60) if i not in sample)
    path = _cache_file(tmp_path / "imagenet32")
    header = path.stat().st_size - images.numel()
    with open(path, "r+b") as f:  # one byte of a block the sample leaves out
        f.seek(header + unchecked * 1024 + 5)
        f.write(bytes([images.flatten()[unchecked * 1024 + 5].item() ^ 0xFF]))
    capsys.readouterr()
    assert not torch.equal(load_dataset("imagenet32", "full_train", data_dir=tmp_path).images, images)
    assert " is damaged " not in capsys.readouterr().err  # a sample can miss it
    monkeypatch.setenv(cache.CHECK_ENV, "full")
    assert torch.equal(load_dataset("imagenet32", "full_train", data_dir=tmp_path).images, images)
    assert f"(block {unchecked} of 60 does not match its checksum); rebuilding it" in capsys.readouterr().err
    monkeypatch.setenv(cache.CHECK_ENV, "every")
    with pytest.raises(ValueError, match="PIXELAR_CACHE_CHECK='every': expected one of sample, full"):
        load_dataset("imagenet32", "full_train", data_dir=tmp_path)


def test_a_damaged_cache_is_rebuilt_by_one_of_several_processes(tmp_path, monkeypatch):
    """Processes (threads with their own lock descriptors) that find the cache damaged at once: one rebuilds it
    under the lock, the others wait, check it again and map the rebuilt file; none maps a half-written one."""
    write_imagenet(tmp_path, 32)
    images = load_dataset("imagenet32", "full_train", data_dir=tmp_path).images.clone()
    _damage(_cache_file(tmp_path / "imagenet32"), 100)
    out, builds = _load_at_once(tmp_path, monkeypatch)
    assert len(out) == 4 and builds == 1
    assert all(torch.equal(ds.images, images) for ds in out)


def test_imagenet_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("imagenet64", "test", data_dir=tmp_path / "nothing")
    message = str(info.value)
    assert "val_data.npz" in message and "image-net.org" in message and "data_dir=DIR" in message

    write_imagenet(tmp_path, 32)
    d = tmp_path / "imagenet32"
    (d / "train_data_batch_7.npz").unlink()
    with pytest.raises(DatasetNotFoundError, match="lacks train_data_batch_7.npz"):
        load_dataset("imagenet32", "train", data_dir=tmp_path)

    good = (d / "train_data_batch_1.npz").read_bytes()
    (d / "train_data_batch_7.npz").write_bytes(good[: len(good) // 2])  # a truncated download
    with pytest.raises(ValueError, match="train_data_batch_7.npz: cannot read"):
        load_dataset("imagenet32", "train", data_dir=tmp_path)
    assert not list(d.glob("pixelar-*train*")) and not list(d.glob(".*.tmp"))  # no cache left behind

    np.savez(d / "train_data_batch_7.npz", data=np.zeros((2, 3072), np.uint8), labels=np.array([0, 3]))
    with pytest.raises(ValueError, match=r"labels must be 1..1000 \(the release counts from 1\), got 0..3"):
        load_dataset("imagenet32", "train", data_dir=tmp_path)
    np.savez(d / "train_data_batch_7.npz", data=np.zeros((2, 12288), np.uint8), labels=np.array([1, 3]))
    with pytest.raises(ValueError, match=r"is this the 32x32 release"):
        load_dataset("imagenet32", "train", data_dir=tmp_path)


def write_faces(d: Path, names: list[str], size=(178, 218), suffix=".jpg") -> list[tuple[int, int, int]]:
    """Images whose centred square is one colour and whose rest is pure red; returns each image's colour."""
    d.mkdir(parents=True, exist_ok=True)
    w, h = size
    colours = []
    for i, name in enumerate(names):
        colour = (20 + 20 * i, 200 - 15 * i, 90)
        a = np.empty((h, w, 3), np.uint8)
        a[:] = (255, 0, 0)
        side = min(w, h)
        top, left = (h - side) // 2, (w - side) // 2
        a[top : top + side, left : left + side] = colour
        Image.fromarray(a).save(d / f"{name}{suffix}", quality=95, subsampling=0)
        colours.append(colour)
    return colours


def colour_of(image: torch.Tensor) -> tuple[int, int, int]:
    return tuple(round(v) for v in image.double().mean(dim=(1, 2)).tolist())


def assert_flat(image: torch.Tensor, colour, tol: int = 12):
    """Every pixel within tol of colour (JPEG ringing); a crop that kept the red border fails."""
    diff = (image.int() - torch.tensor(colour).view(3, 1, 1)).abs()
    assert int(diff.max()) <= tol, f"max deviation {int(diff.max())} from {colour}"


def test_celeba_official_partition(tmp_path):
    names = [f"{i:06d}" for i in range(1, 11)]
    colours = write_faces(tmp_path / "celeba" / "img_align_celeba", names)
    partition = [0, 0, 0, 1, 0, 0, 2, 1, 0, 2]  # 6 train, 2 val, 2 test
    lines = "".join(f"{n}.jpg {p}\n" for n, p in zip(names, partition))
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text(lines)

    sizes = {s: load_dataset("celeba", s, data_dir=tmp_path) for s in ("train", "val", "test", "full_train")}
    assert {s: len(ds) for s, ds in sizes.items()} == {"train": 6, "val": 2, "test": 2, "full_train": 8}
    train = sizes["train"]
    assert train.spec.shape == (3, 64, 64) and train.labels is None and train.images.dtype == torch.uint8
    expect = {
        "train": [i for i, p in enumerate(partition) if p == 0],
        "val": [i for i, p in enumerate(partition) if p == 1],
        "test": [i for i, p in enumerate(partition) if p == 2],
    }
    for split, idx in expect.items():
        for image, i in zip(sizes[split].images, idx):
            assert_flat(image, colours[i])
    with pytest.raises(ValueError, match="its own 2 validation images"):
        load_dataset("celeba", "val", data_dir=tmp_path, val_size=3)

    small = load_dataset("celeba32", "test", data_dir=tmp_path)
    assert small.spec.shape == (3, 32, 32)
    assert_flat(small.images[1], colours[9])
    with pytest.raises(ValueError, match=r"resolution must be 4..178 for celeba"):
        load_dataset("celeba256", "test", data_dir=tmp_path)

    (tmp_path / "celeba" / "img_align_celeba" / "000004.jpg").unlink()
    with pytest.raises(ValueError, match=r"lists 1 image\(s\) that .* lacks \(e.g. 000004.jpg\)"):
        load_dataset("celeba", "test", data_dir=tmp_path)


def test_celeba_without_partition_and_celeba_hq(tmp_path):
    names = [f"{i:06d}" for i in range(1, 13)]
    colours = write_faces(tmp_path / "celeba" / "img_align_celeba", names)
    # sorted names: the last tenth (1 of 12) is test, 11 training images of which 1 is "val"
    test = load_dataset("celeba", "test", data_dir=tmp_path)
    assert len(test) == 1
    assert_flat(test.images[0], colours[11])
    train, val = (load_dataset("celeba", s, data_dir=tmp_path) for s in ("train", "val"))
    assert (len(train), len(val)) == (10, 1)
    perm = val_permutation(11).tolist()
    for image, i in zip(torch.cat([train.images, val.images]), perm):
        assert_flat(image, colours[i])

    # CelebA-HQ: square images named 0 .. 11 (numeric order: 10 and 11 come last), PNG
    hq = [str(i) for i in range(12)]
    hq_colours = write_faces(tmp_path / "celeba_hq" / "CelebA-HQ-img", hq, size=(64, 64), suffix=".png")
    test = load_dataset("celeba_hq16", "test", data_dir=tmp_path)
    assert test.spec.shape == (3, 16, 16) and len(test) == 1
    assert torch.equal(test.images[0], torch.tensor(hq_colours[11], dtype=torch.uint8).view(3, 1, 1).expand(3, 16, 16))
    with pytest.raises(ValueError, match="smaller than the 256x256"):
        load_dataset("celeba_hq", "test", data_dir=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="CelebA-HQ files not found"):
        load_dataset("celeba_hq", "test", data_dir=tmp_path / "nothing")


def test_celeba_refuses_a_file_of_another_size_or_kind(tmp_path):
    """An aligned CelebA image is 178x218 (a CelebA-HQ image the size of the first): another size is refused with
    the file's name and the size expected, not resized; files are read as strictly as any image file."""
    d = tmp_path / "celeba" / "img_align_celeba"
    names = [f"{i:06d}" for i in range(1, 11)]
    write_faces(d, names)
    write_faces(d, ["000004"], size=(100, 100))
    with pytest.raises(ValueError, match=r"000004.jpg is 100x100 \(WxH\) but CelebA expects 178x218"):
        load_dataset("celeba", "train", data_dir=tmp_path)
    write_faces(d, ["000004"])
    grey = Image.fromarray(np.full((218, 178), 90, np.uint8))
    grey.save(d / "000005.jpg")
    with pytest.raises(ValueError, match=r"000005.jpg is greyscale but CelebA codes colour; replace or remove it"):
        load_dataset("celeba", "train", data_dir=tmp_path)
    assert not list((tmp_path / "celeba").glob("pixelar-*"))  # no cache of a refused set

    hq = tmp_path / "celeba_hq" / "CelebA-HQ-img"
    write_faces(hq, [str(i) for i in range(10)], size=(64, 64), suffix=".png")
    write_faces(hq, ["7"], size=(32, 32), suffix=".png")
    with pytest.raises(ValueError, match=r"7.png is 32x32 \(WxH\) but CelebA-HQ expects 64x64; .*that of .*0.png"):
        load_dataset("celeba_hq16", "train", data_dir=tmp_path)


def test_train_on_imagenet32_from_the_command_line(tmp_path, capsys):
    write_imagenet(tmp_path / "data", 32)
    run = tmp_path / "run"
    args = ["train", "--dataset", "imagenet32", "--data-dir", str(tmp_path / "data"), "--model", "pixelcnn"]
    args += ["--size", "tiny", "--batch-size", "4", "--steps", "2", "--sample-n", "0", "--no-progress"]
    assert main([*args, "--class-conditional", "--run-dir", str(run)]) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = metrics[-1]
    assert final["num_test_images"] == N_VAL and 0 < final["test_bpd"] < 10


def test_torchrun_processes_build_and_rebuild_one_cache(tmp_path):
    """Two torchrun processes that need a missing cache, then a damaged one: one converts (or rebuilds, with
    the note) while the other waits, and both train on the same images."""
    write_imagenet(tmp_path / "data", 32)
    args = ["train", "--dataset", "imagenet32", "--data-dir", str(tmp_path / "data"), "--model", "pixelcnn"]
    args += ["--size", "tiny", "--batch-size", "4", "--steps", "2", "--sample-n", "0", "--no-progress"]
    out = launch(2, *args, "--run-dir", "a", cwd=tmp_path)
    assert out.count("converting the Downsampled ImageNet 32x32 train images") == 1
    images = load_dataset("imagenet32", "full_train", data_dir=tmp_path / "data").images.clone()
    _damage(_cache_file(tmp_path / "data" / "imagenet32"), 100)
    out = launch(2, *args, "--run-dir", "b", cwd=tmp_path)
    assert out.count("is damaged (block 0 of 1 does not match its checksum); rebuilding it") == 1
    assert out.count("converting the Downsampled ImageNet 32x32 train images") == 1
    assert torch.equal(load_dataset("imagenet32", "full_train", data_dir=tmp_path / "data").images, images)
    a, b = (json.loads((tmp_path / r / "metrics.jsonl").read_text().splitlines()[-1]) for r in "ab")
    assert a["test_bpd"] == b["test_bpd"]  # the same run on the same (rebuilt) images
