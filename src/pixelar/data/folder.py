"""Images from a directory tree (``folder:/path/to/dir``), read by pixelar.image_files, the strict reader of
every image file.

Layout:
    dir/train/..., dir/test/...   two splits (both subfolders must exist), or
    dir/...                       training images only.
Within a split, either class subfolders (``cat/001.png``; sorted folder names give
label ids 0, 1, ...) or images directly (no labels). PNG and JPEG files are read;
all must have the same size, that of the first file (checked from each file's
header, before it is decoded).

Pixels are taken exactly or the file is refused, as for a single image file (load_image): grey or colour
exactly as stored, palette and 1-bit files as their 8-bit values, alpha only where every pixel is opaque.
Channels: a set whose files are all grey (modes 1, L, LA, 16-bit grey) has 1 channel, a set of colour files
(RGB, RGBA, palette, ...) 3. A split that mixes grey and colour files is refused rather than promoted to colour:
promoting silently would turn every grey file into a colour image without saying so (and one stray file would
change the whole set). ``folder+convert:/path/to/dir`` asks for the conversions of load_image(convert=True),
reported on stderr: a set with a colour file in either split is read as 3 channels (grey files repeated in R, G
and B), 16-bit samples keep their high byte, alpha that is not opaque is dropped, CMYK and other colour spaces
become Pillow's RGB. Files of several frames and float or 32-bit samples are refused either way.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from pixelar.data.dataset import RawSplit
from pixelar.image_files import ConversionNeeded, image_channels, open_image, read_pixels

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
# dataset names: KIND:PATH, the second asking for conversions
KIND, CONVERT_KIND = "folder", "folder+convert"


def load_folder(root: str | Path, part: str, convert: bool = False) -> RawSplit:
    """Load the "train" or "test" part of an image folder; convert=True converts what the strict reader
    refuses (see the module docstring), reporting what it converted on stderr.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        ValueError: no test split, no images, mixed layouts, unreadable images, different image sizes, a file
            that is read only converted (without convert), grey and colour files mixed (without convert), or
            test classes unknown to the training set.
    """
    convert_name = f"{CONVERT_KIND}:{root}"
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    if not has_splits and part != "train":
        raise ValueError(f"{root}: has no {part} split (make train/ and test/ subfolders to provide one)")
    split_dir = root / part if has_splits else root

    files, class_names = _scan(split_dir)
    labels = None
    num_classes = None
    if class_names is not None:
        # Label ids always come from the training classes, so test ids agree with train ids.
        train_classes = class_names if part == "train" else _scan(root / "train")[1]
        if train_classes is None:
            raise ValueError(f"{split_dir}: has class subfolders but {root / 'train'} does not")
        unknown = sorted(set(class_names) - set(train_classes))
        if unknown:
            raise ValueError(f"{split_dir}: classes {unknown} do not exist in {root / 'train'}")
        ids = {name: i for i, name in enumerate(train_classes)}
        labels = torch.tensor([ids[f.parent.name] for f in files], dtype=torch.int64)
        num_classes = len(train_classes)
    if convert:  # colour anywhere in the set (either split) makes every image colour, so the splits agree
        other = root / ("test" if part == "train" else "train")
        colour = _any_colour(files) or (has_splits and _any_colour(_scan(other)[0]))
        channels = 3 if colour else 1
    else:
        channels = None  # the first file's kind; a file of the other kind is refused
    images, notes = _read_images(files, split_dir, channels, convert, convert_name)
    if notes:  # stderr: stdout stays the commands' results
        made = "; ".join(
            f"{note} in {len(fs)} image(s) ({fs[0]}{', ...' if len(fs) > 1 else ''})" for note, fs in notes.items()
        )
        print(f"pixelar: note: {convert_name} ({part}): {made}", file=sys.stderr)
    return RawSplit(images, labels, num_classes)


def _scan(split_dir: Path) -> tuple[list[Path], list[str] | None]:
    """Image files of a split in a fixed order, and the sorted class names (None: unlabelled)."""
    entries = sorted(p for p in split_dir.iterdir() if not p.name.startswith("."))
    subdirs = [p for p in entries if p.is_dir()]
    loose = [p for p in entries if _is_image(p)]
    if subdirs and loose:
        raise ValueError(
            f"{split_dir}: mixes image files ({loose[0].name}, ...) with class subfolders "
            f"({subdirs[0].name}/, ...); use one layout"
        )
    if subdirs:
        files = [f for d in subdirs for f in sorted(d.iterdir()) if _is_image(f)]
        class_names: list[str] | None = [d.name for d in subdirs]
    else:
        files, class_names = loose, None
    if not files:
        raise ValueError(f"{split_dir}: no PNG or JPEG images found")
    return files, class_names


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES


def _any_colour(files: list[Path]) -> bool:
    """Whether any of the files is a colour file (from the headers: nothing is decoded)."""
    for f in files:
        with open_image(f, reader="the dataset") as img:
            if image_channels(img) == 3:
                return True
    return False


def _read_images(
    files: list[Path], split_dir: Path, channels: int | None, convert: bool, convert_name: str
) -> tuple[torch.Tensor, dict[str, list[Path]]]:
    """Read all files into one uint8 tensor (N, C, H, W) with `channels` channels (None: those of the first
    file, the other kind refused), and {conversion made: the files it was made in}."""
    arrays: list[np.ndarray] = []  # each (H, W, C)
    notes: dict[str, list[Path]] = {}
    size = first = None
    for f in files:
        same_size = None if first is None else f"all images of a dataset must have one size, that of {first}"
        try:
            with open_image(f, size, "the dataset", same_size) as img:  # size and frames: from the header
                if first is None:
                    size, first = img.size, f
                kind = image_channels(img)
                if channels is None:
                    channels = kind
                elif kind != channels and not convert:
                    grey, colour = (first, f) if channels == 1 else (f, first)
                    raise ValueError(
                        f"image folder {split_dir} mixes greyscale and colour files ({grey.relative_to(split_dir)} "
                        f"is greyscale, {colour.relative_to(split_dir)} colour); make them one kind, or pass the "
                        f"dataset name {convert_name!r} to repeat the grey level of the greyscale ones in R, G and B"
                    )
                arr, made = read_pixels(img, f, channels, convert, reader="the dataset")
        except ConversionNeeded as e:  # the dataset's way of asking for it: its name
            raise ValueError(e.naming(f"the dataset name {convert_name!r}")) from None
        arrays.append(arr)
        for note in made:
            notes.setdefault(note, []).append(f)
    return torch.from_numpy(np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))), notes
