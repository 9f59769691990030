"""Writing image files (pixelar.image_files): atomic (a failed write leaves no partial file and keeps the file
that was there), with the umask's mode, a full disk reported by name."""

import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelar import ImageSpec
from pixelar.image_files import image_format, save_grid, save_image
from pixelar.io import DiskFullError

SPEC = ImageSpec(3, 4, 5, 256)


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, *SPEC.shape), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("write", ["grid", "image"])
def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch, write):
    def save(x, path):
        save_grid(x, SPEC, path, nrow=2) if write == "grid" else save_image(x[0], SPEC, path)

    real_save = Image.Image.save

    def full_disk(self, fp, format=None, **params):  # half a file written, then the disk is full
        real_save(self, fp, format=format, **params)
        Path(fp).write_bytes(Path(fp).read_bytes()[:40])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fp))

    path = tmp_path / "sub" / "out.png"
    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(DiskFullError, match=f"disk full \\(no space left on device\\) while writing {path}"):
        save(images(3, 0), path)
    assert list((tmp_path / "sub").iterdir()) == []  # neither the file nor a temp file

    monkeypatch.undo()
    save(images(3, 1), path)
    before = path.read_bytes()
    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(DiskFullError):
        save(images(3, 2), path)
    assert path.read_bytes() == before and list((tmp_path / "sub").iterdir()) == [path]  # the old file, whole

    def interrupted(self, fp, format=None, **params):
        Path(fp).write_bytes(b"\x89PNG\r\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save(images(3, 3), tmp_path / "other.png")
    assert not (tmp_path / "other.png").exists() and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_images_follow_the_umask_and_read_back_exactly(tmp_path, umask):
    x = images(3, 0)
    old = os.umask(umask)
    try:
        save_grid(x, SPEC, tmp_path / "grid.png", nrow=3, pad=0)
        save_image(x[1], SPEC, tmp_path / "one.png")
    finally:
        os.umask(old)
    for name in ("grid.png", "one.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert np.array_equal(grid, torch.cat(list(x), dim=2).permute(1, 2, 0).numpy())
    assert np.array_equal(np.asarray(Image.open(tmp_path / "one.png")), x[1].permute(1, 2, 0).numpy())


def test_the_format_follows_the_file_name(tmp_path):
    assert image_format("a/b.png") == "PNG" and image_format("B.PNG") == "PNG"
    for name in ("grid", "grid.xyz"):
        with pytest.raises(ValueError, match="no image format has the extension"):
            save_grid(images(1, 0), SPEC, tmp_path / name)
        assert not (tmp_path / name).exists()
    assert not list(tmp_path.iterdir())
