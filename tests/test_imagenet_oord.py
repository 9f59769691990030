"""van den Oord et al.'s Downsampled ImageNet (imagenet32_oord, imagenet64_oord): tar archives of PNG files written
here in the release's layout (and openai/vdvae's .npy files) read back exactly, in sorted-name order, converted
once into the memory-mapped cache; every wrong member refused with a one-line error naming the archive and it."""

import gzip
import io
import json
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from png_helpers import write_png16

from pixelar.cli import main
from pixelar.data import DatasetNotFoundError, imagenet_oord, list_datasets, load_dataset, paths
from pixelar.data.splits import val_permutation

N_TRAIN, N_VALID = 20, 6


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real data directories: the user cache and the system data root are inside tmp_path."""
    monkeypatch.delenv(paths.DATA_ENV, raising=False)
    monkeypatch.setenv(paths.SYSTEM_DATA_ENV, str(tmp_path / "system"))
    monkeypatch.setattr(paths, "cache_root", lambda: tmp_path / "cache")


def known_images(first: int, n: int, r: int) -> np.ndarray:
    """uint8 (n, r, r, 3) whose value depends on the image, row, column and channel differently, so that a
    transposed, channels-swapped or other image cannot give it back."""
    g = np.arange(first, first + n)[:, None, None, None]
    y, x, c = np.arange(r)[:, None, None], np.arange(r)[:, None], np.arange(3)
    return ((g * 31 + c * 80 + y * 7 + x * 3) % 256).astype(np.uint8)


def png(hwc: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(hwc).save(buf, format="PNG")
    return buf.getvalue()


def add(tar: tarfile.TarFile, name: str, blob: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))


def write_archive(path: Path, top: str, members: list[tuple[str, bytes]], folder_entry: bool = True, **kw) -> Path:
    """A tar archive of the release's layout: the folder `top` (a directory entry), then the members
    (name in the folder, bytes) in the order given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", **kw) as tar:
        if folder_entry:
            d = tarfile.TarInfo(top)
            d.type = tarfile.DIRTYPE
            tar.addfile(d)
        for name, blob in members:
            add(tar, f"{top}/{name}", blob)
    return path


def write_oord(root: Path, r: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """train_RxR.tar and valid_RxR.tar in root/imagenetR_oord/, their PNG files added in a shuffled order; returns
    the images uint8 (N, 3, r, r) of each in the order of their sorted names."""
    d = root / f"imagenet{r}_oord"
    out = []
    for part, n, first in (("train", N_TRAIN, 0), ("valid", N_VALID, 1000)):
        images = known_images(first, n, r)
        names = [f"{first + i:07d}.png" for i in range(n)]  # sorted names: image order
        shuffled = np.random.default_rng(seed).permutation(n)
        write_archive(d / f"{part}_{r}x{r}.tar", f"{part}_{r}x{r}", [(names[i], png(images[i])) for i in shuffled])
        out.append(images.transpose(0, 3, 1, 2))
    return out[0], out[1]


def test_the_names_are_listed_and_distinct_from_the_npz_ones():
    names = list_datasets()
    assert {"imagenet32_oord", "imagenet64_oord", "imagenet32", "imagenet64"} <= set(names)


@pytest.mark.parametrize("r", [32, 64])
def test_archives_are_read_back_exactly_in_sorted_name_order(tmp_path, r):
    train, valid = write_oord(tmp_path, r)
    load = lambda split, **kw: load_dataset(f"imagenet{r}_oord", split, data_dir=tmp_path, **kw)  # noqa: E731

    test = load("test")  # the validation archive, in sorted-name order
    assert test.spec.shape == (3, r, r) and test.spec.num_values == 256
    assert test.labels is None and test.num_classes is None
    assert torch.equal(test.images, torch.from_numpy(valid))

    # the training images are stored in the order of the validation permutation: "val" is its tail
    n, perm = N_TRAIN, val_permutation(N_TRAIN).numpy()
    assert torch.equal(load("full_train").images, torch.from_numpy(train[perm]))
    for val_size in (None, 3):
        v = 2 if val_size is None else val_size  # default: min(5000, N // 10)
        tr, va = load("train", val_size=val_size), load("val", val_size=val_size)
        assert torch.equal(va.images, torch.from_numpy(train[perm[n - v :]]))
        assert torch.equal(tr.images, torch.from_numpy(train[perm[: n - v]]))


def test_the_order_is_that_of_the_names_not_of_the_archive(tmp_path):
    """The same PNG files added in another order give the same images in the same order."""
    _, valid = write_oord(tmp_path / "a", 32, seed=1)
    write_oord(tmp_path / "b", 32, seed=2)
    a = load_dataset("imagenet32_oord", "test", data_dir=tmp_path / "a").images
    b = load_dataset("imagenet32_oord", "test", data_dir=tmp_path / "b").images
    assert torch.equal(a, b) and torch.equal(a, torch.from_numpy(valid))
    # ./-prefixed names (tar -C dir .) and an archive without the folder's own entry read the same
    d = tmp_path / "c" / "imagenet32_oord"
    members = [(f"{1000 + i:07d}.png", png(valid[i].transpose(1, 2, 0))) for i in reversed(range(N_VALID))]
    write_archive(d / "valid_32x32.tar", "./valid_32x32", members, folder_entry=False)
    assert torch.equal(load_dataset("imagenet32_oord", "test", data_dir=tmp_path / "c").images, a)


def test_the_cache_is_built_once_and_rebuilt_when_the_archive_changes(tmp_path, monkeypatch):
    write_oord(tmp_path, 32)
    decoded = []
    decode = imagenet_oord._decode
    monkeypatch.setattr(imagenet_oord, "_decode", lambda *a: decoded.append(1) or decode(*a))
    first = load_dataset("imagenet32_oord", "train", data_dir=tmp_path)
    assert len(decoded) == N_TRAIN
    d = tmp_path / "imagenet32_oord"
    (cached,) = d.glob("pixelar-imagenet32_oord-train-*.images.npy")
    mtime = cached.stat().st_mtime_ns
    again = load_dataset("imagenet32_oord", "val", data_dir=tmp_path)
    assert len(decoded) == N_TRAIN and cached.stat().st_mtime_ns == mtime  # the cache, not the archive
    full = load_dataset("imagenet32_oord", "full_train", data_dir=tmp_path).images
    assert torch.equal(torch.cat([first.images, again.images]), full)
    (d / "train_32x32.tar").touch()  # a changed source: converted again, the old cache replaced
    load_dataset("imagenet32_oord", "train", data_dir=tmp_path)
    assert len(decoded) == 2 * N_TRAIN
    assert [p.name != cached.name for p in d.glob("pixelar-imagenet32_oord-train-*.images.npy")] == [True]


def one_line_error(data_dir: Path, match: str, name: str = "imagenet32_oord", split: str = "test") -> str:
    with pytest.raises(ValueError, match=match) as info:
        load_dataset(name, split, data_dir=data_dir)
    message = str(info.value)
    assert "\n" not in message
    assert not list(data_dir.rglob("pixelar-*")) and not list(data_dir.rglob(".*.tmp"))  # no cache left behind
    return message


def _valid_with(tmp_path: Path, extra: list[tuple[str, bytes]], **kw) -> Path:
    """valid_32x32.tar of two good images and the extra members, under tmp_path/<a new folder>."""
    root = tmp_path / f"case{len(list(tmp_path.glob('case*')))}"
    good = [(f"{i}.png", png(known_images(i, 1, 32)[0])) for i in range(2)]
    write_archive(root / "imagenet32_oord" / "valid_32x32.tar", "valid_32x32", good + extra, **kw)
    return root


def test_a_wrong_member_is_refused_naming_the_archive_and_the_member(tmp_path):
    archive = "valid_32x32.tar:valid_32x32"
    one_line_error(_valid_with(tmp_path, [("x.png", b"GIF89a not a png")]), f"{archive}/x.png is not a PNG file")
    one_line_error(_valid_with(tmp_path, [("x.txt", b"notes")]), f"{archive}/x.txt is not a PNG file")
    small = png(known_images(0, 1, 16)[0])
    one_line_error(
        _valid_with(tmp_path, [("x.png", small)]),
        rf"{archive}/x.png is 16x16 \(WxH\) but Downsampled ImageNet 32x32 \(van den Oord et al. 2016\) expects "
        r"32x32; the release's images are all 32x32: is this valid_32x32.tar\?",
    )
    grey = png(np.full((32, 32), 7, np.uint8))
    one_line_error(
        _valid_with(tmp_path, [("x.png", grey)]),
        rf"{archive}/x.png is greyscale but .* codes colour; the release's images are 8-bit RGB",
    )
    write_png16(tmp_path / "deep.png", np.zeros((32, 32, 3), np.uint16))
    deep = (tmp_path / "deep.png").read_bytes()
    one_line_error(_valid_with(tmp_path, [("x.png", deep)]), rf"{archive}/x.png has 16-bit samples")
    rgba = np.dstack([known_images(0, 1, 32)[0], np.full((32, 32), 255, np.uint8)])
    rgba[3, 4, 3] = 0
    one_line_error(_valid_with(tmp_path, [("x.png", png(rgba))]), rf"{archive}/x.png has 1 pixel\(s\) that are not")
    good = png(known_images(0, 1, 32)[0])
    one_line_error(_valid_with(tmp_path, [("x.png", good[:60])]), rf"cannot read image .*{archive}/x.png")
    one_line_error(
        _valid_with(tmp_path, [("../x.png", good)]),
        r"valid_32x32/../x.png lies outside valid_32x32/, the one folder of valid_32x32.tar",
    )
    one_line_error(_valid_with(tmp_path, [("0.png", good)]), r"member 'valid_32x32/0.png' is there twice")
    one_line_error(_valid_with(tmp_path, [("a\nb.png", b"x")]), r"valid_32x32.tar:'valid_32x32/a\\nb.png' is not")

    root = tmp_path / "link"
    with tarfile.open(_valid_with(root, []) / "imagenet32_oord" / "valid_32x32.tar", "a") as tar:
        link = tarfile.TarInfo("valid_32x32/2.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    one_line_error(root / "case0", rf"{archive}/2.png is a symbolic link, not an image file")
    # a train archive holding the valid folder (renamed)
    d = tmp_path / "renamed" / "imagenet32_oord"
    d.mkdir(parents=True)
    (_valid_with(tmp_path, []) / "imagenet32_oord" / "valid_32x32.tar").rename(d / "train_32x32.tar")
    one_line_error(tmp_path / "renamed", "lies outside train_32x32/.*is this train_32x32.tar", split="train")


def test_a_member_larger_than_a_png_can_be_is_refused_from_its_header(tmp_path, monkeypatch):
    """The size in a member's header is checked before anything is read: a small archive can claim gigabytes. So
    is the data of an extended (pax) header, which tarfile would read whole."""
    root = _valid_with(tmp_path, [("big.png", b"\x89PNG\r\n\x1a\n" + bytes(3 << 20))])
    decoded = []
    monkeypatch.setattr(imagenet_oord, "_decode", lambda *a: decoded.append(1))
    one_line_error(root, r"valid_32x32/big.png is 3,145,736 bytes, more than a 32x32 PNG can need \(1,048,576")
    assert decoded == []  # refused in the first pass, over the headers

    huge = {"comment": "x" * (imagenet_oord.MAX_HEADER_BYTES + 1)}
    root = tmp_path / "pax"
    members = [("0.png", png(known_images(0, 1, 32)[0]))]
    write_archive(root / "imagenet32_oord" / "valid_32x32.tar", "valid_32x32", members, format=tarfile.PAX_FORMAT)
    path = root / "imagenet32_oord" / "valid_32x32.tar"
    with tarfile.open(path, "a", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("valid_32x32/1.png")
        info.pax_headers = huge
        tar.addfile(info, io.BytesIO(b""))
    one_line_error(
        root, r"valid_32x32.tar: the tar header at byte [\d,]+ claims [\d,]+ bytes of extended data, more than"
    )

    # global pax headers, which tarfile merges and keeps, count together; sparse maps are not read at all
    root = tmp_path / "globals"
    path = write_archive(
        root / "imagenet32_oord" / "valid_32x32.tar", "valid_32x32", members, format=tarfile.PAX_FORMAT
    )
    for k in range(2):  # each append writes a global header of 40 KB
        with tarfile.open(path, "a", format=tarfile.PAX_FORMAT, pax_headers={"comment": "y" * 40_000}) as tar:
            add(tar, f"valid_32x32/{k + 1}.png", members[0][1])
    one_line_error(root, r"valid_32x32.tar: its global pax headers hold more than 65,536 bytes")
    for kind in ("gnu", "pax"):
        root = tmp_path / f"sparse-{kind}"
        path = write_archive(root / "imagenet32_oord" / "valid_32x32.tar", "valid_32x32", members)
        with tarfile.open(path, "a", format=tarfile.GNU_FORMAT if kind == "gnu" else tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("valid_32x32/1.png")
            if kind == "gnu":
                info.type = tarfile.GNUTYPE_SPARSE
            else:
                info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "1.png"}
            tar.addfile(info, io.BytesIO(b""))
        one_line_error(
            root, r"valid_32x32.tar: .*(at byte 1,536|'valid_32x32/1.png') is a sparse file, not an image file"
        )


def test_an_archive_that_is_not_one_or_is_cut_short_is_refused(tmp_path):
    root = tmp_path / "garbage"
    (root / "imagenet32_oord").mkdir(parents=True)
    (root / "imagenet32_oord" / "valid_32x32.tar").write_bytes(b"not a tar archive at all" * 100)
    one_line_error(root, r"valid_32x32.tar: not a readable tar archive .*uncompressed tar archives: fetch it again")
    # compressed: the release's archives are not
    plain = _valid_with(tmp_path, []) / "imagenet32_oord" / "valid_32x32.tar"
    root = tmp_path / "gz"
    (root / "imagenet32_oord").mkdir(parents=True)
    (root / "imagenet32_oord" / "valid_32x32.tar").write_bytes(gzip.compress(plain.read_bytes()))
    one_line_error(root, r"not a readable tar archive")
    # cut inside the last PNG file
    blob = plain.read_bytes()
    end = blob.rindex(b"IEND")
    root = tmp_path / "cut"
    (root / "imagenet32_oord").mkdir(parents=True)
    (root / "imagenet32_oord" / "valid_32x32.tar").write_bytes(blob[: end - 100])
    one_line_error(root, r"valid_32x32.tar: not a readable tar archive \(unexpected end of data\)")


def test_missing_files_say_which_where_and_where_from(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("imagenet64_oord", "test", data_dir=tmp_path / "nothing")
    message = str(info.value)
    assert "valid_64x64.tar or imagenet64-valid.npy" in message and "data_dir=DIR" in message
    assert "http://image-net.org/small/" in message and "dataset imagenet64" in message
    assert str(tmp_path / "nothing" / "imagenet64_oord") in message
    write_oord(tmp_path, 32)
    with pytest.raises(DatasetNotFoundError, match="train_64x64.tar or imagenet64-train.npy"):
        load_dataset("imagenet64_oord", "train", data_dir=tmp_path)  # the 32x32 files do not stand in


def test_openai_vdvae_npy_files(tmp_path):
    """imagenetR-train.npy and imagenetR-valid.npy, uint8 (N, R, R, 3) as openai/vdvae's files_to_npy.py writes
    them: read in their order, through the same cache."""
    d = tmp_path / "imagenet32_oord"
    d.mkdir()
    train, valid = known_images(0, N_TRAIN, 32), known_images(1000, N_VALID, 32)
    np.save(d / "imagenet32-train.npy", train)
    np.save(d / "imagenet32-valid.npy", valid)
    test = load_dataset("imagenet32_oord", "test", data_dir=tmp_path)
    assert torch.equal(test.images, torch.from_numpy(valid.transpose(0, 3, 1, 2)))
    perm = val_permutation(N_TRAIN).numpy()
    full = load_dataset("imagenet32_oord", "full_train", data_dir=tmp_path)
    assert torch.equal(full.images, torch.from_numpy(train.transpose(0, 3, 1, 2)[perm]))
    assert list(d.glob("pixelar-imagenet32_oord-test-*.images.npy"))

    # an archive beside it is used instead
    other = known_images(500, 3, 32)
    write_archive(d / "valid_32x32.tar", "valid_32x32", [(f"{i}.png", png(other[i])) for i in range(3)])
    assert torch.equal(
        load_dataset("imagenet32_oord", "test", data_dir=tmp_path).images, torch.from_numpy(other.transpose(0, 3, 1, 2))
    )

    e = tmp_path / "bad" / "imagenet32_oord"
    e.mkdir(parents=True)
    np.save(e / "imagenet32-valid.npy", valid.transpose(0, 3, 1, 2))  # channels first
    one_line_error(
        tmp_path / "bad", r"imagenet32-valid.npy holds uint8 \(6, 3, 32, 32\), not uint8 \(N, 32, 32, 3\) images"
    )
    np.save(e / "imagenet32-valid.npy", known_images(0, 2, 64))
    one_line_error(tmp_path / "bad", r"holds uint8 \(2, 64, 64, 3\).*is this the 32x32 file\?")
    (e / "imagenet32-valid.npy").write_bytes((d / "imagenet32-valid.npy").read_bytes()[:-100])
    one_line_error(tmp_path / "bad", r"imagenet32-valid.npy: cannot read as a .npy array")


def test_the_conversion_keeps_little_per_image(tmp_path, monkeypatch):
    """Memory grows by a name, an offset, a size and an index per image: tarfile keeps every header it has read
    (hundreds of bytes each), which the first pass drops, and the second keeps nothing of the images it reads."""
    monkeypatch.setattr(imagenet_oord, "NAME_CHUNK", 256)
    blob = png(known_images(0, 1, 32)[0])
    load_dataset("imagenet32_oord", "test", data_dir=_valid_with(tmp_path, []))  # imports, once
    peaks = {}
    for n in (300, 3000):
        root = tmp_path / str(n)
        write_archive(
            root / "imagenet32_oord" / "valid_32x32.tar", "valid_32x32", [(f"{i:07d}.png", blob) for i in range(n)]
        )
        tracemalloc.start()
        assert len(load_dataset("imagenet32_oord", "test", data_dir=root)) == n
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    per_image = (peaks[3000] - peaks[300]) / 2700
    assert per_image < 110, f"{per_image:.0f} bytes an image"


def test_export_and_train_take_the_names(tmp_path, capsys):
    _, valid = write_oord(tmp_path / "data", 32)
    out = tmp_path / "png"
    data = ["--data-dir", str(tmp_path / "data")]
    assert main(["export", "imagenet32_oord", "--split", "test", "--count", "3", "--out-dir", str(out), *data]) == 0
    files = sorted(out.glob("*.png"))
    assert len(files) == 3
    for i, f in enumerate(files):
        assert np.array_equal(np.asarray(Image.open(f)), valid[i].transpose(1, 2, 0))

    run = tmp_path / "run"
    args = ["train", "--dataset", "imagenet32_oord", *data, "--model", "pixelcnn", "--size", "tiny"]
    args += ["--batch-size", "4", "--steps", "2", "--sample-n", "0", "--no-progress", "--run-dir", str(run)]
    assert main(args) == 0
    final = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["num_test_images"] == N_VALID and 0 < final["test_bpd"] < 10
