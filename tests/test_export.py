"""`pixelar export`: a dataset's images as PNG files (read back exactly by load_image) with their labels."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelar.cli import main
from pixelar.data import export_images, load_dataset
from pixelar.image_files import load_image
from pixelar.types import ImageSpec

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not FMNIST.exists(), reason="apt-get install dataset-fashion-mnist")


def labels(out: Path) -> list[dict]:
    with open(out / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def read_back(paths, spec) -> torch.Tensor:
    return torch.stack([load_image(p, spec)[0] for p in paths])


@needs_fmnist
def test_fashion_mnist_test_images_read_back_exactly(tmp_path, capsys):
    out = tmp_path / "imgs"
    assert main(["export", "fashion_mnist", "--split", "test", "--n", "3", "--start", "5", "--out-dir", str(out)]) == 0
    assert "wrote 3 test image(s) of fashion_mnist" in capsys.readouterr().out
    names = [f"fashion_mnist-test-{i:05d}.png" for i in (5, 6, 7)]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "labels.csv"])
    ds = load_dataset("fashion_mnist", "test", download=False)
    assert torch.equal(read_back([out / n for n in names], ds.spec), ds.images[5:8].long())
    rows = [{"file": n, "index": str(i), "label": str(int(ds.labels[i]))} for n, i in zip(names, (5, 6, 7))]
    assert labels(out) == rows
    # another range of the split joins them; labels.csv keeps the earlier rows
    assert main(["export", "fashion_mnist", "--n", "1", "--out-dir", str(out)]) == 0
    assert [r["index"] for r in labels(out)] == ["0", "5", "6", "7"]
    # existing files are never overwritten without --force, and nothing is written then
    assert main(["export", "fashion_mnist", "--n", "7", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'fashion_mnist-test-00000.png'} exists (3 of the 7 files do): pass --force" in err
    assert not (out / "fashion_mnist-test-00001.png").exists()
    assert main(["export", "fashion_mnist", "--n", "7", "--out-dir", str(out), "--force"]) == 0
    assert len(labels(out)) == 8
    # binarized: 0/255 files that a binary model reads back as the 0/1 images
    binary = load_dataset("fashion_mnist_binary", "test", download=False)
    paths = export_images(binary, tmp_path / "bin", n=2)
    assert torch.equal(read_back(paths, binary.spec), binary.images[:2].long())
    # dynamically binarized: the grey images the draws come from
    dynamic = load_dataset("fashion_mnist_dynamic", "test", download=False)
    paths = export_images(dynamic, tmp_path / "dyn", n=2)
    assert torch.equal(read_back(paths, ImageSpec(1, 28, 28, 256)), dynamic.images[:2].long())


def test_npz_images_read_back_exactly_and_bad_ranges_are_refused(npz_data, tmp_path, capsys):
    train = load_dataset(npz_data, "train")
    paths = export_images(train, tmp_path / "a", start=16, n=2)
    assert [p.name for p in paths] == ["tiny-train-00016.png", "tiny-train-00017.png"]
    assert torch.equal(read_back(paths, train.spec), train.images[16:18].long())
    assert main(["export", npz_data, "--split", "train", "--start", "17", "--n", "2", "--out-dir", str(tmp_path)]) == 2
    assert "images 17 .. 18 asked, but the train split of" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the parser: n >= 1
        main(["export", npz_data, "--n", "0", "--out-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="start must be an integer >= 0"):
        export_images(train, tmp_path, start=-1)
    (tmp_path / "file").write_text("")
    assert main(["export", npz_data, "--out-dir", str(tmp_path / "file")]) == 2
    assert "is a file: give a directory" in capsys.readouterr().err


def test_unlabelled_colour_images_round_trip_without_labels(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(
        tmp_path / "colour.npz",
        x_train=rng.integers(0, 256, (4, 5, 6, 3), dtype=np.uint8),
        x_test=rng.integers(0, 256, (3, 5, 6, 3), dtype=np.uint8),
    )
    test = load_dataset(f"npz:{tmp_path / 'colour.npz'}", "test")
    paths = export_images(test, tmp_path / "out", n=3)
    assert torch.equal(read_back(paths, test.spec), test.images.long())
    assert not (tmp_path / "out" / "labels.csv").exists()


def test_an_interrupted_export_leaves_nothing_and_an_existing_folder_keeps_its_files(npz_data, tmp_path, monkeypatch):
    """The set is written as a whole: an export interrupted at its 5th image used to leave 4 PNGs (and no
    labels.csv) under their final names, so that the rerun needed --force."""
    import pixelar.data.export as export
    from pixelar.image_files import save_image

    calls = []

    def interrupted(x, spec, path):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        save_image(x, spec, path)

    out = tmp_path / "imgs"
    argv = ["export", npz_data, "--split", "train", "--n", "8", "--out-dir", str(out)]
    monkeypatch.setattr(export, "save_image", interrupted)
    assert main(argv) == 130
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    monkeypatch.undo()
    assert main(argv) == 0  # without --force: nothing was left behind
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([*(f"tiny-train-{i:05d}.png" for i in range(8)), "labels.csv"])

    # an existing folder: another range joins the files there, which are kept, labels merged; an interrupted
    # --force leaves the folder as it was
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "notes.txt").write_text("mine")
    calls.clear()
    monkeypatch.setattr(export, "save_image", interrupted)
    assert main([*argv[:-4], "--start", "4", "--n", "8", "--out-dir", str(out), "--force"]) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "notes.txt"} == before
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    assert main([*argv[:-4], "--start", "4", "--n", "8", "--out-dir", str(out), "--force"]) == 0
    assert [r["index"] for r in labels(out)] == [str(i) for i in range(12)]
    assert (out / "notes.txt").read_text() == "mine"
    train = load_dataset(npz_data, "train")
    paths = [out / f"tiny-train-{i:05d}.png" for i in range(12)]
    assert torch.equal(read_back(paths, train.spec), train.images[:12].long())
