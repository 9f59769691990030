"""End to end through the command line on a Fashion-MNIST subset: train, eval, sample, complete, resume."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelar.cli import build_parser, main

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not FMNIST.exists(), reason="apt-get install dataset-fashion-mnist")

TINY = [
    "--model",
    "pixelcnn_pp",
    "--size",
    "tiny",
    "--batch-size",
    "8",
    "--train-subset",
    "64",
    "--test-subset",
    "50",
    "--sample-n",
    "4",
    "--no-progress",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    if not FMNIST.exists():
        pytest.skip("apt-get install dataset-fashion-mnist")
    d = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--steps", "4", "--checkpoint-every", "2", "--run-dir", str(d)]) == 0
    return d


@needs_fmnist
def test_train_leaves_a_complete_run_directory(run_dir, capsys):
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "model.safetensors", "metrics.jsonl", "samples.png"} <= names
    assert any(n.startswith("training_state") for n in names)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines, "metrics.jsonl is empty"
    assert Image.open(run_dir / "samples.png").size[0] > 2 * 28


@needs_fmnist
def test_eval_sample_complete(run_dir, tmp_path, capsys):
    capsys.readouterr()
    # every test image is the default (checked on the parser: scoring all 10,000 takes most of a minute)
    assert build_parser().parse_args(["eval", str(run_dir)]).subset is None
    assert main(["eval", str(run_dir), "--json", "--subset", "300"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["num_images"] == 300 and 0 < res["bpd"] < 9

    out = tmp_path / "grid.png"
    assert main(["sample", str(run_dir), "--n", "2", "--out", str(out), "--seed", "1", "--temperature", "0.9"]) == 0
    assert out.exists()

    img = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(img)
    mask = tmp_path / "mask.png"
    m = np.zeros((28, 28), np.uint8)
    m[:20] = 255
    Image.fromarray(m).save(mask)
    for keep in ("top-half", str(mask)):
        out = tmp_path / "completed.png"
        argv = ["complete", str(run_dir), "--image", str(img), "--keep", keep, "--n", "1", "--out", str(out), "--force"]
        assert main(argv) == 0
        grid = np.asarray(Image.open(out))
        # third tile is the completion: its kept rows equal the input
        pad = 2
        tile = grid[pad : pad + 28, pad + 2 * (28 + pad) : pad + 2 * (28 + pad) + 28]
        rows = 14 if keep == "top-half" else 20
        assert np.array_equal(tile[:rows], np.asarray(Image.open(img))[:rows])


@needs_fmnist
def test_bad_input_gives_a_clear_error(run_dir, tmp_path, capsys):
    assert main(["train", "--dataset", "imagenet", "--run-dir", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "fashion_mnist" in capsys.readouterr().err
    assert main(["train", *TINY, "--steps", "2", "--run-dir", str(run_dir)]) == 2  # refuses to overwrite a run
    assert "resume" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "nothing"), "--out", str(tmp_path / "g.png")]) == 2
    assert "nothing" in capsys.readouterr().err
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(small)
    assert (
        main(["complete", str(run_dir), "--image", str(small), "--keep", "top-half", "--out", str(tmp_path / "o.png")])
        == 2
    )
    assert "28x28" in capsys.readouterr().err


def test_models_lists_every_model_with_parameter_counts(capsys):
    import pixelar

    assert main(["models", "--image", "1,28,28,256"]) == 0
    out = capsys.readouterr().out
    for name in pixelar.list_models():
        assert name in out


def _torchrun_passes(argv: list[str]) -> str:
    """'' where torchrun's own parser hands `-m pixelar ARGV` on unchanged, else what it did instead."""
    import argparse
    import contextlib
    import io

    from torch.distributed.run import get_args_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = get_args_parser().parse_args(["--standalone", "--nproc_per_node=2", "-m", "pixelar", *argv])
    except SystemExit:
        return err.getvalue().strip().splitlines()[-1]
    except argparse.ArgumentError as e:
        return str(e)
    got = [ns.training_script, *ns.training_script_args]
    return "" if got == ["pixelar", *argv] else f"torchrun passed on {got}"


def test_torchrun_hands_every_option_of_every_command_on_to_pixelar():
    """torchrun reads its options from the whole command line, pixelar's included, and refuses an ambiguous prefix
    of them (--n: --nnodes, --nproc-per-node, ...; --start: --start-method): every option's first spelling (the
    one the help and the docs give) must pass through, written as `--opt V` and as `--opt=V`."""
    import argparse

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    refused = []
    for command, p in sub.choices.items():
        for action in p._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[0]
            for form in ([flag, "1"], [f"{flag}=1"]):
                why = _torchrun_passes([command, "RUN", *form])
                if why:
                    refused.append(f"{command} {' '.join(form)}: {why}")
    assert refused == []
    # the old spellings, kept for one process, are what torchrun refuses
    assert "ambiguous option: --n could match --nnodes" in _torchrun_passes(["sample", "RUN", "--n", "3"])
    assert "ambiguous option: --start could match" in _torchrun_passes(["export", "mnist", "--start", "3"])
    new, old = (
        parser.parse_args(["export", "mnist", *f, "--out-dir", "d"])
        for f in (["--count", "2", "--offset", "3"], ["--n", "2", "--start", "3"])
    )
    assert (new.count, new.start) == (old.count, old.start) == (2, 3)


def test_score_compress_decompress_round_trip_and_errors(tmp_path, capsys):
    import torch

    from pixelar import ImageSpec, create_model
    from pixelar import load_model as pixelar_load

    torch.manual_seed(0)
    create_model("pixelcnn_pp", ImageSpec(3, 6, 5, 256), "tiny").save(tmp_path / "m")
    rng = np.random.default_rng(0)
    paths = []
    for k in range(2):
        paths.append(tmp_path / f"in{k}.png")
        Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(paths[-1])
    capsys.readouterr()
    packed = tmp_path / "two.pxar"
    assert main(["compress", str(tmp_path / "m"), *map(str, paths), "--out", str(packed)]) == 0
    assert "wrote 2 image(s)" in capsys.readouterr().out
    assert main(["decompress", str(tmp_path / "m"), str(packed), "--out-dir", str(tmp_path / "out")]) == 0
    for k, p in enumerate(paths):
        assert np.array_equal(
            np.asarray(Image.open(tmp_path / "out" / f"image_{k:03d}.png")), np.asarray(Image.open(p))
        )
    assert main(["score", str(tmp_path / "m"), *map(str, paths), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = pixelar_load(tmp_path / "m")
    x = torch.stack([torch.tensor(np.asarray(Image.open(p))).permute(2, 0, 1).long() for p in paths])
    with torch.no_grad():
        nats = -model.log_prob(x)
    assert [s["image"] for s in scores] == list(map(str, paths))
    assert np.allclose([s["nats"] for s in scores], nats.tolist(), rtol=1e-6)
    assert 8 * (packed.stat().st_size - 31) >= sum(s["bpd"] for s in scores) * 90 - 1  # the file is near p(x)
    create_model("pixelcnn_pp", ImageSpec(3, 6, 5, 256), "tiny").save(tmp_path / "other")  # other weights
    assert main(["decompress", str(tmp_path / "other"), str(packed), "--out-dir", str(tmp_path / "x")]) == 2
    assert "another model or other weights" in capsys.readouterr().err
    assert main(["decompress", str(tmp_path / "m"), str(paths[0]), "--out-dir", str(tmp_path / "x")]) == 2
    assert "not a pixelar compressed stream" in capsys.readouterr().err


def test_decompress_with_another_class_names_the_file_and_the_flag(tmp_path, capsys):
    """A stream decoded with another --class than compress was given: the error names the file and --class,
    not only damage; --threads on either side changes nothing (the codec codes on one thread)."""
    import torch

    from pixelar import ImageSpec, create_model

    torch.manual_seed(0)
    model = create_model("pixelcnn_pp", ImageSpec(1, 6, 5, 256), "tiny", num_classes=3)
    with torch.no_grad():  # random weights: the class bias starts at zero
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.save(tmp_path / "m")
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 5), dtype=np.uint8)).save(path)
    m, packed = str(tmp_path / "m"), str(tmp_path / "one.pxar")
    assert main(["compress", m, str(path), "--out", packed, "--class", "1", "--threads", "2"]) == 0
    assert main(["decompress", m, packed, "--out-dir", str(tmp_path / "a"), "--class", "1", "--threads", "1"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "image_000.png")), np.asarray(Image.open(path)))
    capsys.readouterr()
    assert main(["decompress", m, packed, "--out-dir", str(tmp_path / "b"), "--class", "2"]) == 2
    err = capsys.readouterr().err
    assert f"error: {packed}: " in err and "pass the same --class K (class labels)" in err, err
    assert not (tmp_path / "b").exists()  # nothing written


def test_complete_with_lmconv_an_arbitrary_mask_and_the_region_score(tmp_path, capsys):
    """No training needed: a saved tiny LMConv on 8x8 images; the mask is an arbitrary region."""
    import torch

    from pixelar import ImageSpec, create_model

    torch.manual_seed(0)
    spec = ImageSpec(1, 8, 8, 256)
    create_model("lmconv", spec).save(tmp_path / "m")
    create_model("pixelcnn", spec).save(tmp_path / "p")
    rng = np.random.default_rng(0)
    img = tmp_path / "in.png"
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(img)
    keep = rng.random((8, 8)) < 0.6
    keep[2:6, 2:6] = False  # a centre hole plus scattered hidden pixels
    mask = tmp_path / "mask.png"
    Image.fromarray((keep * 255).astype(np.uint8)).save(mask)
    out = tmp_path / "done.png"
    capsys.readouterr()
    assert (
        main(
            [
                "complete",
                str(tmp_path / "m"),
                "--image",
                str(img),
                "--keep",
                str(mask),
                "--n",
                "2",
                "--score",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert f"hidden region: {int((~keep).sum())} sub-pixels" in text and "bits/dim" in text
    assert "method cached" in text  # auto: LMConv's column cache, in the completion order
    grid = np.asarray(Image.open(out))
    pad = 2
    for t in (2, 3):  # the two completions keep every kept pixel
        tile = grid[pad : pad + 8, pad + t * (8 + pad) : pad + t * (8 + pad) + 8]
        assert np.array_equal(tile[keep], np.asarray(Image.open(img))[keep])
    assert (
        main(
            ["complete", str(tmp_path / "p"), "--image", str(img), "--keep", str(mask), "--score", "--out", str(out)]
            + ["--force"]
        )
        == 2
    )
    assert "lmconv" in capsys.readouterr().err


def _grey_model_and_images(tmp_path):
    """A saved tiny greyscale model for 6x5 images, an 8-bit image, a colour one and a 16-bit one."""
    import torch

    from pixelar import ImageSpec, create_model

    torch.manual_seed(0)
    create_model("pixelcnn_pp", ImageSpec(1, 6, 5, 256), "tiny").save(tmp_path / "m")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (6, 5), dtype=np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)).save(tmp_path / "colour.png")
    Image.fromarray(rng.integers(0, 65536, (6, 5)).astype(np.uint16)).save(tmp_path / "deep.png")
    return tmp_path / "m"


def test_images_the_model_cannot_code_exactly_are_refused_unless_converted(tmp_path, capsys):
    m = _grey_model_and_images(tmp_path)
    deep, colour, packed = str(tmp_path / "deep.png"), str(tmp_path / "colour.png"), str(tmp_path / "c.pxar")
    for argv in (
        ["score", str(m), deep],
        ["compress", str(m), deep, "--out", packed],
        ["complete", str(m), "--image", deep, "--keep", "top-half", "--out", str(tmp_path / "o.png")],
    ):
        assert main(argv) == 2  # used to be read clipped to 0/255, exit 0
        assert "16-bit samples" in capsys.readouterr().err
    assert main(["compress", str(m), deep, "--out", packed, "--convert"]) == 2  # lossless: never reduced
    assert "lossless round trip" in capsys.readouterr().err
    assert main(["score", str(m), deep, "--convert", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)[0]["image"] == deep and "high 8 bits" in out.err

    assert main(["compress", str(m), colour, "--out", packed]) == 2  # used to turn it grey, alpha dropped, silently
    assert "pass --convert" in capsys.readouterr().err and not (tmp_path / "c.pxar").exists()
    assert main(["compress", str(m), colour, "--out", packed, "--convert"]) == 0
    assert "alpha channel dropped, colour converted to grey" in capsys.readouterr().err
    assert main(["decompress", str(m), packed, "--out-dir", str(tmp_path / "d")]) == 0
    grey = np.asarray(Image.open(colour).convert("RGB").convert("L"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "d" / "image_000.png")), grey)  # what the note said


def test_errors_name_the_flag_where_the_library_names_its_argument(tmp_path, capsys, monkeypatch):
    """The library's messages name its arguments (convert=True, keep, data_dir=DIR); the CLI's name the flags."""
    import pixelar.data.download

    m = _grey_model_and_images(tmp_path)
    grey, colour, out = str(tmp_path / "grey.png"), str(tmp_path / "colour.png"), str(tmp_path / "o.png")
    capsys.readouterr()
    assert main(["score", str(m), colour]) == 2
    err = capsys.readouterr().err
    assert "not fully opaque but the model codes no alpha: pass --convert to drop the alpha channel" in err
    assert "convert=True" not in err
    assert main(["complete", str(m), "--image", grey, "--keep", colour, "--out", out]) == 2  # a colour mask
    err = capsys.readouterr().err
    assert f"image {colour} has" in err and "pass --convert" in err and "convert=True" not in err
    assert main(["complete", str(m), "--image", grey, "--keep", "bottom-half", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "error: --keep must be one of ['top-half', 'left-half'] or a mask image file; 'bottom-half'" in err

    def offline(remote, target, *a, **k):
        raise OSError("no network")

    monkeypatch.setattr(pixelar.data.download, "download_file", offline)
    assert main(["eval", str(m), "--dataset", "cifar10", "--data-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "CIFAR-10 files not found" in err and "or pass --data-dir DIR / set $PIXELAR_DATA=DIR" in err
    assert "data_dir=DIR" not in err


def test_library_messages_name_no_command_line_flag():
    """Only cli.py speaks in flags: no string in the library (docstrings aside) names one."""
    import ast
    import re

    import pixelar

    root = Path(pixelar.__file__).parent
    flag = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
    # training/ is being reorganised elsewhere; its two "--resume" hints are to move to the CLI after that
    skip = {root / "cli.py"}
    found = []
    for path in sorted(root.rglob("*.py")):
        if path in skip:
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found += [f"{path.relative_to(root)}:{node.lineno}: {m}" for m in flag.findall(node.value)]
    assert found == []


def test_destinations_are_checked_before_coding_and_never_overwritten_silently(tmp_path, capsys, monkeypatch):
    import pixelar.codec

    m = _grey_model_and_images(tmp_path)
    grey, packed, out = str(tmp_path / "grey.png"), tmp_path / "g.pxar", tmp_path / "out"
    assert main(["compress", str(m), grey, "--out", str(packed)]) == 0
    assert main(["decompress", str(m), str(packed), "--out-dir", str(out)]) == 0
    first = (out / "image_000.png").read_bytes()
    capsys.readouterr()

    def no_coding(*a, **k):
        raise AssertionError("the destination should have been refused before coding")

    monkeypatch.setattr(pixelar.codec, "compress", no_coding)
    monkeypatch.setattr(pixelar.codec, "decompress_segments", no_coding)
    assert main(["compress", str(m), grey, "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["compress", str(m), grey, "--out", str(packed)]) == 2
    assert "exists: pass --force" in capsys.readouterr().err
    assert main(["compress", str(m), grey, "--out", str(tmp_path / "grey.png" / "x.pxar")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert main(["decompress", str(m), str(packed), "--out-dir", grey]) == 2
    assert "is a file" in capsys.readouterr().err
    (out / "image_000.png").write_bytes(b"keep me")
    assert main(["decompress", str(m), str(packed), "--out-dir", str(out)]) == 2
    assert f"{out / 'image_000.png'} exists" in capsys.readouterr().err
    assert (out / "image_000.png").read_bytes() == b"keep me"
    monkeypatch.undo()
    assert main(["decompress", str(m), str(packed), "--out-dir", str(out), "--force"]) == 0
    assert (out / "image_000.png").read_bytes() == first
    assert main(["compress", str(m), grey, grey, "--out", str(packed), "--force"]) == 0
    assert "wrote 2 image(s)" in capsys.readouterr().out
    concatenated = tmp_path / "cat.pxar"
    concatenated.write_bytes(packed.read_bytes() * 2)
    assert main(["decompress", str(m), str(concatenated), "--out-dir", str(tmp_path / "cat")]) == 2
    assert "bytes follow the end of the stream" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["sample", "complete"])
def test_sample_and_complete_check_out_before_sampling_and_overwrite_only_with_force(
    command, tmp_path, capsys, monkeypatch
):
    import errno
    import os

    import pixelar.models

    m = _grey_model_and_images(tmp_path)
    argv = [command, str(m), "--n", "2"]
    if command == "complete":
        argv += ["--image", str(tmp_path / "grey.png"), "--keep", "top-half"]
    out = tmp_path / "out.png"
    out.write_bytes(b"keep me")
    real_load = pixelar.models.load_model

    def no_work(*a, **k):
        raise AssertionError("--out should have been refused before the model was loaded")

    monkeypatch.setattr(pixelar.models, "load_model", no_work)
    capsys.readouterr()
    assert main([*argv, "--out", str(out)]) == 2  # used to overwrite it silently
    assert f"--out {out} exists: pass --force to overwrite it" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main([*argv, "--out", str(tmp_path)]) == 2  # used to sample, then fail with a traceback
    assert f"--out {tmp_path} is a directory" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "grey.png" / "x.png")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "grid.xyz")]) == 2
    assert "no image format has the extension '.xyz'" in capsys.readouterr().err

    monkeypatch.setattr(pixelar.models, "load_model", real_load)
    assert main([*argv, "--out", str(out), "--force"]) == 0
    assert Image.open(out).format == "PNG"
    assert main([*argv, "--out", str(tmp_path / "new" / "grid.png")]) == 0  # a new directory is made

    def full_disk(self, fp, format=None, **params):
        Path(fp).write_bytes(b"\x89PNG\r\n")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fp))

    monkeypatch.setattr(Image.Image, "save", full_disk)
    before = out.read_bytes()
    assert main([*argv, "--out", str(out), "--force"]) == 1
    assert f"error: disk full (no space left on device) while writing {out}" in capsys.readouterr().err
    assert out.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_resume_refuses_flags_that_contradict_the_run(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(
        data,
        x_train=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8),
        x_test=rng.integers(0, 256, (4, 8, 8), dtype=np.uint8),
    )
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                "pixelcnn_pp",
                "--size",
                "tiny",
                "--dataset",
                f"npz:{data}",
                "--batch-size",
                "8",
                "--steps",
                "2",
                "--sample-n",
                "0",
                "--run-dir",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    config, state = (run / "config.json").read_bytes(), (run / "training_state.json").read_bytes()
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "--resume",
                str(run),
                "--steps",
                "4",
                "--lr",
                "0.01",
                "--model",
                "pixelcnn",
                "--seed",
                "0",
                "--set",
                "dropout=0.5",
                "--compile",
                "--run-dir",
                str(tmp_path / "other"),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        f"--resume {run}: --run-dir {tmp_path / 'other'} is not the run being resumed; --model pixelcnn conflicts "
        "with the run's model pixelcnn_pp; --lr 0.01 conflicts with the run's lr 0.002; --compile conflicts with "
        "the run's compile false; --set dropout=0.5 conflicts with the run's model_overrides {}. A resumed run "
        "keeps its settings (only --steps can change)"
    ) in err
    assert "--seed" not in err  # equal to the run's: accepted
    assert (run / "config.json").read_bytes() == config and (run / "training_state.json").read_bytes() == state
    # flags equal to the run's settings are accepted, and --steps extends the run
    assert (
        main(
            [
                "train",
                "--resume",
                str(run),
                "--steps",
                "4",
                "--lr",
                "0.002",
                "--model",
                "pixelcnn_pp",
                "--dataset",
                f"npz:{data}",
                "--run-dir",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((run / "training_state.json").read_text())["step"] == 4


# ----- outputs: streamed, written whole, quiet on a closed pipe --------------------------------------------------
def test_sample_fills_its_grid_chunk_by_chunk_as_one_batch_would(tmp_path, capsys):
    from pixelar import load_model
    from pixelar.image_files import save_grid
    from pixelar.sampling import sample_seeded

    m = _grey_model_and_images(tmp_path)
    argv = ["sample", str(m), "--n", "7", "--batch-size", "3", "--nrow", "4", "--seed", "2", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "grid.png")]) == 0
    model = load_model(m)
    save_grid(sample_seeded(model, 7, 2, batch_size=3, method="cached"), model.data_image, tmp_path / "ref.png", 4)
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert np.array_equal(grid, np.asarray(Image.open(tmp_path / "ref.png")))
    assert not np.array_equal(grid[2:8, 2:7], grid[10:16, 2:7])  # images 0 and 4 (chunks 0 and 1) differ


def test_sample_memory_does_not_grow_with_the_number_of_samples(tmp_path, monkeypatch):
    """The heap in use when chunk 40 is drawn is within a small margin of when chunk 2 is (the grid's 8-bit
    pixels are allocated once, up front). Keeping every chunk's int64 images until the end (the old way)
    grows by 0.5 MiB a chunk of 16 64x64 images here: 19 MiB by chunk 40."""
    import torch
    from memory_helpers import heap_in_use

    import pixelar.models
    from pixelar import ImageSpec, create_model

    in_use = heap_in_use()
    if in_use is None:
        pytest.skip("needs glibc's mallinfo2 to read the heap in use")
    torch.manual_seed(0)
    model = create_model("pixelcnn_pp", ImageSpec(1, 64, 64, 256), "tiny").eval()
    heap = []

    def draw(n, generator=None, **kw):  # images at once: the memory around the sampler, not the sampler's own
        heap.append(in_use())
        return torch.randint(0, 256, (n, 1, 64, 64), generator=generator)

    model.sample = draw
    monkeypatch.setattr(pixelar.models, "load_model", lambda *a, **k: model)
    argv = ["sample", "m", "--n", str(16 * 40), "--batch-size", "16", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "grid.png")]) == 0
    assert len(heap) == 40
    growth = heap[-1] - heap[1]
    assert growth < 2 * 2**20, f"the heap grew by {growth / 2**20:.1f} MiB from chunk 2 to chunk 40"
    assert Image.open(tmp_path / "grid.png").size == (2 + 8 * 66, 2 + 80 * 66)


def test_decompress_writes_its_images_together_or_not_at_all(tmp_path, capsys, monkeypatch):
    import pixelar.cli
    from pixelar.image_files import save_image

    m = _grey_model_and_images(tmp_path)
    grey, packed, out = str(tmp_path / "grey.png"), tmp_path / "g.pxar", tmp_path / "out"
    assert main(["compress", str(m), *[grey] * 20, "--out", str(packed), "--no-progress"]) == 0  # 2 segments
    calls = []

    def interrupted(img, spec, path):
        calls.append(path)
        if len(calls) == 18:  # in the second segment: 17 files written by then
            raise KeyboardInterrupt
        save_image(img, spec, path)

    monkeypatch.setattr(pixelar.cli, "save_image", interrupted)
    argv = ["decompress", str(m), str(packed), "--out-dir", str(out), "--no-progress"]
    assert main(argv) == 130
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))  # used to leave 17 of the 20 files
    monkeypatch.undo()
    assert main(argv) == 0  # no --force needed: nothing was left
    assert sorted(p.name for p in out.iterdir()) == [f"image_{k:03d}.png" for k in range(20)]
    assert (out / "image_019.png").read_bytes() == (out / "image_000.png").read_bytes()

    # into a folder that exists: the other files are kept, the images replaced with --force once all are whole
    (out / "notes.txt").write_text("mine")
    (out / "image_000.png").write_bytes(b"old")
    calls.clear()
    monkeypatch.setattr(pixelar.cli, "save_image", interrupted)
    assert main([*argv, "--force"]) == 130
    assert (out / "image_000.png").read_bytes() == b"old" and not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    assert main([*argv, "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "image_000.png").read_bytes() == (out / "image_001.png").read_bytes() != b"old"
    assert not list(out.glob(".*.tmp"))

    # a checksum that fails: found after the last segment is decoded, and no image appears
    data = bytearray(packed.read_bytes())
    data[27] ^= 0xFF  # the header's CRC-32 of the images
    damaged = tmp_path / "damaged.pxar"
    damaged.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["decompress", str(m), str(damaged), "--out-dir", str(tmp_path / "d"), "--no-progress"]) == 2
    assert "fail the stream's checksum" in capsys.readouterr().err
    assert not (tmp_path / "d").exists() and not list(tmp_path.glob(".*.tmp"))


def _pixelar(*args: str, **kw):
    """`python -m pixelar ARGS` in a new process, with this pixelar."""
    import os
    import subprocess
    import sys

    import pixelar

    env = {**os.environ, "PYTHONPATH": str(Path(pixelar.__file__).parents[1])}
    return subprocess.Popen([sys.executable, "-m", "pixelar", *args], env=env, **kw)


@pytest.mark.parametrize("command", ["score", "pretrained"])
def test_a_closed_pipe_ends_a_command_quietly(command, tmp_path):
    """`pixelar score ... | head -1`: the reader has gone before the lines are written. The command ends with
    status 141 (as SIGPIPE ends a program) and no traceback; it used to print a BrokenPipeError's."""
    import subprocess

    m = _grey_model_and_images(tmp_path)
    args = ["score", str(m), str(tmp_path / "grey.png")] if command == "score" else ["pretrained"]
    proc = _pixelar(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader goes at once, before the command has printed anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err


def test_ctrl_c_in_train_says_what_there_is_to_resume(npz_data, tmp_path, capsys, monkeypatch):
    """Ctrl-C while a new run reads (or caches) its dataset leaves no checkpoint: nothing to resume, and the same
    command starts the run again; after a checkpoint the message names it and the run to resume."""
    import functools

    from run_helpers import stop_after

    import pixelar.cli
    import pixelar.training.loop

    run = tmp_path / "run"
    argv = ["train", "--size", "tiny", "--dataset", npz_data, "--batch-size", "8", "--steps", "4"]
    argv += ["--checkpoint-every", "2", "--sample-n", "0", "--no-progress", "--run-dir", str(run)]

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(pixelar.training.loop, "load_dataset", ctrl_c)
        assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == (
        f"pixelar train: interrupted before the first checkpoint: none was saved in {run}, so there is nothing "
        "to resume; start the run again"
    )
    train = pixelar.cli.train
    monkeypatch.setattr(pixelar.cli, "train", functools.partial(train, on_step=stop_after(3)))
    assert main(argv) == 130  # started again; Ctrl-C after step 3, the checkpoint of step 2 kept
    err = capsys.readouterr().err.strip()
    assert err == (
        f"pixelar train: interrupted: the last good checkpoint in {run} (step 2) is kept (continue with: "
        f"pixelar train --resume {run})"
    )
    monkeypatch.setattr(pixelar.cli, "train", train)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert json.loads((run / "training_state.json").read_text())["step"] == 4
