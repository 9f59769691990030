"""Image files: images and grids of them written as PNG files (atomically), and an image or a mask image file
read into a model's value range (strictly: exactly, or converted only when asked). Every image file a user gives
or gets back goes through here (dataset files are read by pixelar.data)."""

from __future__ import annotations

import re
import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import ArgumentValueError
from .io import write_atomic
from .types import ImageSpec


def to_uint8(images: torch.Tensor, image: ImageSpec) -> np.ndarray:
    """int64 (N, C, H, W) in [0, K) -> uint8 (N, H, W, C) in [0, 255]."""
    x = images.detach().cpu().long() * 255 // (image.num_values - 1)
    return x.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class Grid:
    """A PNG grid of n images, nrow per row with `pad` grey pixels between them, filled as the images come
    (`paste`) and written once whole (`save`). It holds the grid's 8-bit pixels only, so a grid of many images
    costs what the file shows, not the images' int64 values."""

    def __init__(self, n: int, image: ImageSpec, nrow: int = 8, pad: int = 2):
        if not isinstance(nrow, int) or isinstance(nrow, bool) or nrow < 1:
            raise ValueError(f"nrow (images per row of the grid) must be an integer >= 1, got {nrow!r}")
        if not isinstance(pad, int) or isinstance(pad, bool) or pad < 0:
            raise ValueError(f"pad (pixels between the images) must be an integer >= 0, got {pad!r}")
        self.n, self.image, self.nrow, self.pad = int(n), image, nrow, pad
        rows, cols = (self.n + nrow - 1) // nrow, min(self.n, nrow)
        H, W, C = image.height, image.width, image.channels
        self.canvas = np.full((pad + rows * (H + pad), pad + cols * (W + pad), C), 128, dtype=np.uint8)

    def paste(self, start: int, images: torch.Tensor) -> None:
        """Place images (m, C, H, W) of the model's values as grid images start .. start + m - 1."""
        arr = to_uint8(images, self.image)
        if start < 0 or start + len(arr) > self.n:
            raise ValueError(f"images {start} .. {start + len(arr) - 1} do not fit a grid of {self.n}")
        H, W, pad = self.image.height, self.image.width, self.pad
        for k in range(len(arr)):
            r, c = divmod(start + k, self.nrow)
            y, x = pad + r * (H + pad), pad + c * (W + pad)
            self.canvas[y : y + H, x : x + W] = arr[k]

    def save(self, path) -> None:
        _write(self.canvas, path)


def save_grid(images: torch.Tensor, image: ImageSpec, path, nrow: int = 8, pad: int = 2) -> None:
    """Write images (N, C, H, W) as one PNG grid, nrow images per row, `pad` grey pixels between them."""
    grid = Grid(len(images), image, nrow, pad)
    grid.paste(0, images)
    grid.save(path)


def save_image(x: torch.Tensor, image: ImageSpec, path) -> None:
    """Write one image int64 (C, H, W) as a PNG (8-bit; exact for 256 values)."""
    _write(to_uint8(x[None], image)[0], path)


def image_format(path) -> str:
    """The format Pillow writes for the file name `path` ("PNG" for a .png name); a ValueError for a name whose
    extension Pillow writes no format for."""
    ext = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(f"cannot write image {path}: no image format has the extension {ext!r} (name it .png)")
    return fmt


def _write(arr: np.ndarray, path) -> None:
    """Write uint8 (H, W, C) as an image file in the format of its name, atomically: into a temp file beside
    it, renamed once whole (pixelar.io.write_atomic), so that a failed or interrupted write leaves no partial
    file and a full disk is reported as DiskFullError."""
    fmt = image_format(path)
    img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    write_atomic(path, lambda tmp: img.save(tmp, format=fmt))


def _stored_bits(img: Image.Image) -> int:
    """Bits per sample the file stores (read from the header, before decoding). Pillow decodes 16-bit colour PNGs
    and TIFFs straight into its 8-bit modes ("RGB", "RGBA"), so the mode alone does not tell: the decoder's raw
    mode does ("RGB;16B"; the 5-6-5 "BGR;16" of BMP has no byte order and is not a deep format)."""
    raws = [t.args if isinstance(t.args, str) else t.args[0] for t in img.tile if t.args]
    raws = [r for r in raws if isinstance(r, str)]
    if img.mode == "F":
        return 32
    if img.mode.startswith("I"):
        return 16 if img.mode.startswith("I;16") or any(r.startswith("I;16") for r in raws) else 32
    return 16 if any(re.search(r";16[BLN]$", r) for r in raws) else 8


def load_image(path, image: ImageSpec, convert: bool = False, deep_ok: bool = True) -> tuple[torch.Tensor, list[str]]:
    """Read an image file as int64 (C, H, W) in the model's value range [0, K), and the conversions made.

    Strict by default: a file whose pixels the model cannot take exactly is refused with a ValueError that names
    `convert=True` (a ConversionNeeded), never converted silently. Exact, so always done: palette and 1-bit
    images (their colours are 8-bit values), alpha that is fully opaque (dropped), colour files whose every pixel is
    grey, into a greyscale model. With convert=True, and each listed in the returned notes: colour -> grey (ITU-R
    601 luma, Pillow's "L"), grey -> colour (the grey level in R, G and B), alpha that is not opaque (dropped:
    transparent pixels keep their stored colour), other colour spaces (CMYK, YCbCr, ...: Pillow's RGB), and, where
    deep_ok, 16-bit samples (their high byte, as Pillow reads 16-bit colour PNGs). Never read: float or 32-bit
    samples, files of several frames. The size is checked from the header before any pixel is decoded
    (open_image, then read_pixels: the reader that dataset folders use too).
    """
    if image.channels not in (1, 3):
        raise ValueError(f"the model codes {image.channels} channels; image files give 1 (grey) or 3 (colour)")
    with open_image(path, (image.width, image.height)) as img:
        arr, notes = read_pixels(img, Path(path), image.channels, convert, deep_ok)
    x = torch.from_numpy(arr).long().permute(2, 0, 1)
    # 8-bit -> K values (identity for K = 256)
    return torch.div(x * (image.num_values - 1) + 127, 255, rounding_mode="floor"), notes


def load_mask(path, height: int, width: int, convert: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Read a mask image file as bool (H, W), True where white (grey level >= 128), and the conversions made. Read
    as strictly as the images (load_image: a colour mask needs convert=True)."""
    m, notes = load_image(path, ImageSpec(1, height, width, 256), convert=convert)
    return m[0] >= 128, notes


class ConversionNeeded(ArgumentValueError):
    """A file that is read only converted: 'PROBLEM: pass convert=True REMEDY', naming the argument `convert`.
    `problem` and `remedy` are the two halves, for a reader that offers the conversion under another name (a
    dataset name) or not at all."""

    def __init__(self, problem: str, remedy: str):
        self.problem, self.remedy = problem, remedy
        super().__init__("convert", "convert=True", f"{problem}: pass ", f" {remedy}")

    def __reduce__(self):
        return type(self), (self.problem, self.remedy)


# what Pillow raises for a file it cannot parse (a broken PNG chunk is a SyntaxError, a zTXt chunk too large to
# decompress a ValueError); DecompressionBombError is none of these
_UNREADABLE = (OSError, SyntaxError, ValueError, EOFError)
# modes of files that hold grey levels (1-bit, 8-bit with alpha, 16- and 32-bit integers); every other mode is
# colour (palette images included: their palette holds colours)
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})


def open_image(
    path, size: tuple[int, int] | None = None, reader: str = "the model", remedy: str = "", data: bytes | None = None
) -> Image.Image:
    """Open an image file, reading only its header: Pillow's image, no pixel decoded yet (use it in a `with` block
    and read it with read_pixels). Checked here, from the header: the file exists and Pillow reads its format, it
    is not too large for Pillow to open (its decompression-bomb limit), it is one frame, and where `size` (W, H) is
    given it has that size. `data`: the file's bytes, already read (a member of an archive); `path` then only
    names it in messages. Errors: FileNotFoundError, or a ValueError naming the file (and the size `reader`
    expects; `remedy` replaces "resize or crop it first")."""
    if data is None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
    expects = f"{reader} expects {size[0]}x{size[1]}" if size is not None else ""
    try:
        with warnings.catch_warnings():  # the size is checked below, before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path if data is None else BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ValueError(f"image {path} is too large to open ({e}); {expects or 'resize it first'}") from None
    except _UNREADABLE as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    try:
        if size is not None and img.size != tuple(size):
            raise ValueError(
                f"image {path} is {img.size[0]}x{img.size[1]} (WxH) but {expects}; "
                f"{remedy or 'resize or crop it first'}"
            )
        if getattr(img, "n_frames", 1) > 1:
            raise ValueError(f"image {path} has {img.n_frames} frames; give one image per file")
    except BaseException:
        img.close()
        raise
    return img


def image_channels(img: Image.Image) -> int:
    """1 for a file of grey levels, 3 for a colour file, from its mode (the header: nothing is decoded)."""
    return 1 if img.mode in _GREY_MODES or img.mode.startswith("I;16") else 3


def read_pixels(
    img: Image.Image,
    path: Path | str,
    channels: int,
    convert: bool = False,
    deep_ok: bool = True,
    reader: str = "the model",
) -> tuple[np.ndarray, list[str]]:
    """The pixels of an image opened by open_image as uint8 (H, W, channels), channels 1 or 3, and the conversions
    made: exact, or converted only with convert=True, else a ConversionNeeded (the rules: load_image). `reader`
    is who takes the pixels, in messages ("the model", "the dataset")."""
    bits, notes = _stored_bits(img), []
    if img.mode == "F" or bits > 16:
        raise ValueError(
            f"image {path} has {'floating-point' if img.mode == 'F' else f'{bits}-bit'} samples "
            f"(mode {img.mode}); pixelar reads 8-bit images: convert it to 8 bits first"
        )
    if bits > 8:
        if not deep_ok:
            raise ValueError(
                f"image {path} has {bits}-bit samples; a lossless round trip of it needs a model of "
                "8-bit files: reduce it to 8 bits yourself first if losing the low bits is acceptable"
            )
        if not convert:
            raise ConversionNeeded(
                f"image {path} has {bits}-bit samples but {reader} reads 8-bit ones",
                "to keep each sample's high 8 bits",
            )
        notes.append(f"{bits}-bit samples reduced to their high 8 bits")
    try:
        img.load()
    except _UNREADABLE as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    if img.mode.startswith("I"):  # 16-bit grey (32-bit was refused above)
        arr = (np.asarray(img).astype(np.int64) >> 8).astype(np.uint8)[..., None]
    else:
        if img.mode in ("1", "L", "LA", "RGB", "RGBA", "RGBX", "P", "PA") or "transparency" in img.info:
            # exact: 1-bit -> 0/255, palette -> its colours, a transparent colour key -> alpha
            grey = img.mode in ("1", "L", "LA")
            alpha = "A" in img.mode or "transparency" in img.info
            mode = ("LA" if alpha else "L") if grey else ("RGBA" if alpha else "RGB")
        else:  # CMYK, YCbCr, LAB, HSV, premultiplied alpha: Pillow's RGB is not the same numbers
            if not convert:
                raise ConversionNeeded(
                    f"image {path} is in mode {img.mode}; {reader} codes {'grey' if channels == 1 else 'RGB'} values",
                    "to convert it with Pillow",
                )
            notes.append(f"mode {img.mode} converted to RGB")
            mode = "RGB"
        arr = np.asarray(img.convert(mode) if img.mode != mode else img, dtype=np.uint8)
        arr = arr.reshape(*arr.shape[:2], -1)
    if arr.shape[2] in (2, 4):  # alpha
        opaque = arr[..., -1] == 255
        if not opaque.all():
            if not convert:
                raise ConversionNeeded(
                    f"image {path} has {int((~opaque).sum())} pixel(s) that are not fully opaque but "
                    f"{reader} codes no alpha",
                    "to drop the alpha channel (transparent pixels keep their stored colour)",
                )
            notes.append("alpha channel dropped")
        arr = arr[..., :-1]
    if channels == 1 and arr.shape[2] == 3:
        if not (arr == arr[..., :1]).all():
            if not convert:
                raise ConversionNeeded(
                    f"image {path} has colour pixels but {reader} codes greyscale", "to turn it grey (ITU-R 601 luma)"
                )
            notes.append("colour converted to grey")
            arr = np.asarray(Image.fromarray(arr).convert("L"))[..., None]
        else:  # every pixel grey: the grey levels are the image, exactly
            arr = arr[..., :1]
    elif channels == 3 and arr.shape[2] == 1:
        if not convert:
            raise ConversionNeeded(
                f"image {path} is greyscale but {reader} codes colour", "to repeat the grey level in R, G and B"
            )
        notes.append("grey repeated in R, G and B")
        arr = np.repeat(arr, 3, axis=2)
    return arr.copy(), notes  # C-contiguous and writable (np.asarray of an image is read-only)
