"""A dataset's images written out as PNG files, to try a model's commands (score, complete, compress) on them.

Files are named `<dataset>-<split>-<index>.png` (index: 5 digits, the image's position in the split), so that
exporting other ranges of the same split adds files beside them; labels go to `labels.csv` in the same directory
(one row per file: file,index,label), merged with the rows already there. The set is written as a whole
(pixelar.io.write_folder): an interrupted export leaves no file under its final name, and the files it did not
write (other ranges, anything else in the directory) are kept.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..errors import ArgumentValueError
from ..image_files import save_image
from ..io import write_folder, write_text
from ..types import ImageSpec
from .dataset import ImageDataset

LABELS_NAME = "labels.csv"


def file_prefix(name: str) -> str:
    """The dataset part of the file names: the name of a built-in set, the file or folder name of npz:PATH and
    folder:PATH (or folder+convert:PATH) ("npz:/data/tiny.npz" -> "tiny")."""
    kind, sep, path = name.partition(":")
    if sep and kind in ("npz", "folder", "folder+convert"):
        p = Path(path.rstrip("/"))
        return p.stem if kind == "npz" else p.name
    return name


def export_images(ds: ImageDataset, out_dir, start: int = 0, n: int = 8, overwrite: bool = False) -> list[Path]:
    """Write images start .. start+n-1 of `ds` to out_dir as PNG files (see the module docstring); returns their
    paths. Every file is checked before any is written: one that exists is refused unless overwrite=True.

    The PNGs hold the images as a model of the dataset reads them: 8-bit values, or 0 and 255 for binarized
    sets (load_image with ds.spec gives back ds.images exactly). A dynamically binarized set is written as the
    8-bit grey images its binarization draws from (a binary model reads a file thresholded at 128).
    """
    for arg, v, low in (("start", start, 0), ("n", n, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise ValueError(f"{arg} must be an integer >= {low}, got {v!r}")
    if start + n > len(ds):
        raise ValueError(
            f"images {start} .. {start + n - 1} asked, but the {ds.split} split of {ds.name!r} has {len(ds)} "
            f"(indices 0 .. {len(ds) - 1})"
        )
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"cannot write images into {out_dir}: it is a file, not a directory")
    prefix = f"{file_prefix(ds.name)}-{ds.split}"
    paths = [out_dir / f"{prefix}-{i:05d}.png" for i in range(start, start + n)]
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise ArgumentValueError(
            "overwrite",
            "overwrite=True",
            f"{existing[0]} exists ({len(existing)} of the {n} files do): pass ",
            " to replace them, or choose another directory",
        )
    spec = ImageSpec(*ds.spec.shape, 256) if ds.stochastic_binarize else ds.spec
    with write_folder(out_dir) as tmp:  # the files appear together, once all are written
        for i, path in zip(range(start, start + n), paths):
            save_image(ds.images[i].long(), spec, tmp / path.name)
        if ds.labels is not None:
            rows = {p.name: (i, int(ds.labels[i])) for i, p in zip(range(start, start + n), paths)}
            _merge_labels(out_dir / LABELS_NAME, tmp / LABELS_NAME, rows)
    return paths


def _merge_labels(old: Path, new: Path, rows: dict[str, tuple[int, int]]) -> None:
    """Write `new`: the labels.csv `old` (where it exists) with `rows` ({file: (index, label)}) added or replaced,
    the other rows kept, sorted by file."""
    merged: dict[str, tuple[str, str]] = {}
    if old.is_file():
        with open(old, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("file"):
                    merged[row["file"]] = (row.get("index", ""), row.get("label", ""))
    merged.update({k: (str(i), str(y)) for k, (i, y) in rows.items()})
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["file", "index", "label"])
    for name in sorted(merged):
        w.writerow([name, *merged[name]])
    write_text(new, out.getvalue())
