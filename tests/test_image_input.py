"""Reading image files (pixelar.image_files.load_image): exact or refused by default, converted only when asked,
deep files never reduced silently, the size checked from the header before any pixel is decoded."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from png_helpers import write_png, write_png16

from pixelar import ImageSpec
from pixelar.errors import ArgumentValueError
from pixelar.image_files import load_image, open_image, read_pixels
from pixelar.sampling.complete import keep_mask

GREY, COLOUR = ImageSpec(1, 3, 4, 256), ImageSpec(3, 3, 4, 256)  # 4 wide, 3 high
rng = np.random.default_rng(0)


def chw(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr.reshape(*arr.shape[:2], -1).astype(np.int64)).permute(2, 0, 1)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16_bit_files_are_refused_unless_reduced_on_request(tmp_path, channels):
    """Pillow opens 16-bit grey as I;16 (converting it to L clips to 0/255) and 16-bit colour as 8-bit RGB(A):
    either way a deeper file must not be read as if it were 8-bit."""
    arr = rng.integers(0, 65536, (3, 4, channels)).astype(np.uint16)
    if channels in (2, 4):
        arr[..., -1] = 65535  # opaque
    path = tmp_path / "deep.png"
    if channels == 1:
        Image.fromarray(arr[..., 0]).save(path)  # Pillow writes 16-bit grey itself
        assert Image.open(path).mode == "I;16"
    else:
        write_png16(path, arr)
        assert Image.open(path).mode in ("RGB", "RGBA")  # 8-bit modes: the depth is only in the header
    spec = COLOUR if channels in (3, 4) else GREY  # grey with alpha: opened as RGBA with R = G = B
    with pytest.raises(ValueError, match="16-bit samples but the model reads 8-bit ones: pass convert=True"):
        load_image(path, spec)
    with pytest.raises(ValueError, match="16-bit samples; a lossless round trip"):  # compress: never reduced
        load_image(path, spec, convert=True, deep_ok=False)
    x, notes = load_image(path, spec, convert=True)
    expected = arr[..., : spec.channels] if channels != 2 else arr[..., :1]
    assert torch.equal(x, chw(expected >> 8)) and notes == ["16-bit samples reduced to their high 8 bits"]


def test_exact_files_are_read_as_they_are(tmp_path):
    """Palette, 1-bit, 2-bit grey, opaque alpha and grey pixels stored as RGB lose nothing: read without a note."""
    rgb = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    cases = []
    p = Image.fromarray(rgb).quantize(colors=5)  # a palette image
    cases.append((p, COLOUR, np.asarray(p.convert("RGB"))))
    bits = rng.random((3, 4)) < 0.5
    cases.append((Image.fromarray(bits), GREY, bits * np.uint8(255)))  # mode "1"
    rgba = np.concatenate([rgb, np.full((3, 4, 1), 255, np.uint8)], axis=2)
    cases.append((Image.fromarray(rgba), COLOUR, rgb))  # fully opaque alpha
    grey = rng.integers(0, 256, (3, 4), dtype=np.uint8)
    cases.append((Image.fromarray(np.stack([grey] * 3, axis=2)), GREY, grey))  # grey pixels in an RGB file
    cases.append((Image.fromarray(grey).convert("P"), GREY, grey))  # grey palette
    for k, (img, spec, expected) in enumerate(cases):
        path = tmp_path / f"{k}.png"
        img.save(path)
        x, notes = load_image(path, spec)
        assert torch.equal(x, chw(expected)) and notes == [], img.mode
    path = tmp_path / "two_bit.png"  # 2-bit grey: Pillow scales it to 0, 85, 170, 255
    write_png(path, 4, 3, 2, 0, b"\0\x1b" * 3)  # 00 01 10 11 in every row
    assert load_image(path, GREY)[0][0].tolist() == [[0, 85, 170, 255]] * 3
    x, _ = load_image(tmp_path / "3.png", ImageSpec(1, 3, 4, 16))  # fewer values: the 8-bit values, reduced
    assert torch.equal(x, torch.div(chw(grey) * 15 + 127, 255, rounding_mode="floor"))


def test_transparency_colour_and_grey_need_convert(tmp_path):
    rgb = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((3, 4, 1), 255, np.uint8)], axis=2)
    rgba[1, 2, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png", transparency=tuple(int(v) for v in rgb[0, 0]))  # colour key
    Image.fromarray(rgb).quantize(colors=4).save(tmp_path / "p.png", transparency=0)
    for name in ("rgba.png", "rgb.png", "p.png"):
        with pytest.raises(ValueError, match="not fully opaque .* pass convert=True to drop the alpha"):
            load_image(tmp_path / name, COLOUR)
    x, notes = load_image(tmp_path / "rgba.png", COLOUR, convert=True)
    assert torch.equal(x, chw(rgb)) and notes == ["alpha channel dropped"]

    Image.fromarray(rgb).save(tmp_path / "plain.png")
    with pytest.raises(ValueError, match="colour pixels but the model codes greyscale: pass convert=True"):
        load_image(tmp_path / "plain.png", GREY)
    x, notes = load_image(tmp_path / "plain.png", GREY, convert=True)
    assert torch.equal(x, chw(np.asarray(Image.fromarray(rgb).convert("L")))) and notes == ["colour converted to grey"]

    grey = rng.integers(0, 256, (3, 4), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    with pytest.raises(ValueError, match="greyscale but the model codes colour: pass convert=True"):
        load_image(tmp_path / "grey.png", COLOUR)
    x, notes = load_image(tmp_path / "grey.png", COLOUR, convert=True)
    assert torch.equal(x, chw(grey).expand(3, -1, -1)) and notes == ["grey repeated in R, G and B"]

    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    with pytest.raises(ValueError, match="mode CMYK.*pass convert=True"):
        load_image(tmp_path / "cmyk.jpg", COLOUR)
    assert load_image(tmp_path / "cmyk.jpg", COLOUR, convert=True)[1] == ["mode CMYK converted to RGB"]


def test_refusals_name_the_argument_that_allows_the_conversion(tmp_path):
    """The message names convert=True; the error carries the argument's name, so that the CLI can say --convert."""
    Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ArgumentValueError) as e:
        load_image(tmp_path / "rgb.png", GREY)
    assert e.value.argument == "convert" and "--" not in str(e.value)
    assert e.value.naming("--convert") == str(e.value).replace("convert=True", "--convert")
    again = pickle.loads(pickle.dumps(e.value))  # as torchrun's processes pass errors on
    assert str(again) == str(e.value) and again.naming("--convert") == e.value.naming("--convert")
    with pytest.raises(ArgumentValueError, match="^keep must be one of") as e:
        keep_mask(str(tmp_path / "no such mask.png"), 3, 4)
    assert e.value.argument == "keep"


def test_float_32_bit_and_animated_files_are_refused(tmp_path):
    Image.fromarray(rng.random((3, 4)).astype(np.float32)).save(tmp_path / "f.tiff")
    Image.fromarray(rng.integers(0, 2**20, (3, 4)).astype(np.int32)).save(tmp_path / "i.tiff")
    frames = [Image.fromarray(rng.integers(0, 256, (3, 4), dtype=np.uint8)) for _ in range(2)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(ValueError, match="floating-point samples"):
        load_image(tmp_path / "f.tiff", GREY, convert=True)
    with pytest.raises(ValueError, match="32-bit samples"):
        load_image(tmp_path / "i.tiff", GREY, convert=True)
    with pytest.raises(ValueError, match="2 frames"):
        load_image(tmp_path / "anim.gif", GREY, convert=True)


def test_the_size_is_checked_before_decoding(tmp_path):
    """Headers of huge images over a few bytes of pixel data: decoding them would fail (or take gigabytes), so
    the size error proves nothing was decoded."""
    path = tmp_path / "big.png"
    write_png(path, 9000, 9000, 8, 0, b"\0" * 10)  # under Pillow's decompression-bomb limit
    for read in (lambda: load_image(path, GREY), lambda: keep_mask(str(path), 3, 4)):
        with pytest.raises(ValueError, match="is 9000x9000 \\(WxH\\) but the model expects 4x3"):
            read()
    write_png(path, 16000, 16000, 8, 0, b"\0" * 10)  # over it: Pillow refuses to open it at all
    with pytest.raises(ValueError, match="too large to open .* the model expects 4x3"):
        load_image(path, GREY)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(path, GREY)


def test_an_image_is_read_from_bytes_already_read_named_by_its_path(tmp_path):
    """open_image(data=...): the bytes of a file that is no file on disk (an archive's member); the path only names
    it, in the same strict reading and the same messages."""
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    blob = (tmp_path / "a.png").read_bytes()
    name = "archive.tar:folder/a.png"
    with open_image(name, (5, 4), data=blob) as img:
        got, notes = read_pixels(img, name, 3)
    assert np.array_equal(got, rgb) and notes == []
    with pytest.raises(ValueError, match=r"image archive.tar:folder/a.png is 5x4 \(WxH\) but the model expects 4x4"):
        open_image(name, (4, 4), data=blob)
    with pytest.raises(ValueError, match=r"cannot read image archive.tar:folder/a.png"):
        open_image(name, data=blob[:30])
