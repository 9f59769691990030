"""Pretrained models: a name goes wherever a run directory goes (an existing path wins, with a note; a new
directory may not take the bare name), `pixelar pretrained` lists and shows them, damaged or missing files are
refused, the card script, and every shipped model's card checked against its files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from run_helpers import quiet
from safetensors.torch import load_file, save_file

import pixelar
from benchmarks import pretrained_card
from pixelar import pretrained
from pixelar.cli import main
from pixelar.config import TrainConfig
from pixelar.io import file_sha256, write_json

NAME = "npz-pixelcnn_pp"


def _card(name: str, model, dataset: str, sha256: str) -> dict:
    return {
        "name": name,
        "model": model.name,
        "size": "tiny",
        "dataset": dataset,
        "command": f"pixelar train --size tiny --dataset {dataset}",
        "steps": 6,
        "train_time_s": 1.5,
        "machine": {"cpu": "Test CPU", "threads": 1},
        "test_bpd": 7.5,
        "num_test_images": 12,
        "test_bpd_first_500": 7.5,
        "num_parameters": model.num_parameters(),
        "sha256": sha256,
        "good_for": "the tests",
    }


@pytest.fixture
def shipped(tmp_path, monkeypatch, npz_data):
    """A package directory with one tiny pretrained model on npz_data (8x8 grey), its config's train section
    naming the dataset as a run's does; the cwd is an empty directory."""
    root = tmp_path / "package"
    torch.manual_seed(0)
    model = pixelar.create_model("pixelcnn_pp", pixelar.ImageSpec(1, 8, 8), size="tiny")
    model.save(root / NAME)
    cfg = json.loads((root / NAME / "config.json").read_text())
    write_json(root / NAME / "config.json", {**cfg, "train": TrainConfig(size="tiny", dataset=npz_data).to_dict()})
    write_json(root / NAME / "card.json", _card(NAME, model, npz_data, file_sha256(root / NAME / "model.safetensors")))
    (root / "not_a_model").mkdir()  # a directory without the files is not listed
    monkeypatch.setattr(pretrained, "ROOT", root)
    monkeypatch.setattr(pretrained, "_noted", set())  # the names noted as shadowed: none yet
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return model


def test_a_name_resolves_and_an_existing_path_wins(shipped, tmp_path, capsys):
    assert pretrained.names() == [NAME]
    assert pretrained.resolve(NAME) == pretrained.ROOT / NAME
    x = torch.randint(0, 256, (2, 1, 8, 8))
    assert torch.equal(pixelar.load_model(NAME).log_prob(x), shipped.eval().log_prob(x))
    assert capsys.readouterr().err == ""
    # a directory of the user's called like the pretrained model (written as a path): the path wins, and a
    # note on stderr says so, once
    other = pixelar.create_model("pixelcnn", pixelar.ImageSpec(1, 8, 8), size="tiny")
    other.save(f"./{NAME}")
    assert pretrained.resolve(NAME) == Path(NAME)
    assert pixelar.load_model(NAME).name == "pixelcnn"
    assert not pretrained.is_pretrained(NAME)
    err = capsys.readouterr().err
    assert err == (
        f"pixelar: note: {NAME} is both a directory here and a pretrained model: using the directory "
        f"{Path(NAME).resolve()} (the pretrained model is used where no such path exists)\n"
    )
    assert pixelar.load_model(f"./{NAME}").name == "pixelcnn"  # a path with a slash: no note
    assert capsys.readouterr().err == ""


def test_a_new_directory_may_not_take_a_pretrained_name(shipped, cfg, capsys):
    model = pixelar.create_model("pixelcnn", pixelar.ImageSpec(1, 8, 8), size="tiny")
    for save in (lambda: model.save(NAME), lambda: model.save(Path(NAME)), lambda: quiet(cfg, NAME)):
        with pytest.raises(ValueError, match=f"'{NAME}' is the name of a pretrained model.*another name.*./{NAME}"):
            save()
    assert main(["train", "--run-dir", NAME, "--size", "tiny", "--dataset", cfg.dataset, "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert f"pixelar train: error: run directory '{NAME}' is the name of a pretrained model" in err
    assert not Path(NAME).exists()  # refused before anything was written
    # written as a path, it is a run directory like any other; the bare name then means it, with the note
    quiet(cfg, f"./{NAME}")
    assert (Path(NAME) / "training_state.json").is_file()
    assert main(["eval", NAME, "--json", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["run_dir"] == NAME
    assert err.count(f"pixelar: note: {NAME} is both a directory here and a pretrained model") == 1


def test_damaged_pretrained_weights_are_refused(shipped, capsys):
    """Weights that are not the card's file (here every weight's sign flipped, in a valid safetensors file)."""
    weights = pretrained.ROOT / NAME / "model.safetensors"
    save_file({k: -v for k, v in load_file(weights).items()}, weights)
    with pytest.raises(ValueError, match=f"pretrained model '{NAME}': .*model.safetensors does not match the sha256"):
        pixelar.load_model(NAME)
    assert main(["eval", NAME, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "does not match the sha256 in its card.json" in err and "reinstall pixelar" in err


@pytest.mark.parametrize("missing", ["model.safetensors", "config.json", "card.json"])
def test_an_incomplete_pretrained_model_says_which_file_is_missing(shipped, missing, capsys):
    (pretrained.ROOT / NAME / missing).unlink()
    assert pretrained.names() == [NAME]  # still listed, and refused as incomplete
    with pytest.raises(FileNotFoundError, match=f"pretrained model '{NAME}' is installed incompletely: {missing} "):
        pixelar.load_model(NAME)
    for command in (["sample", NAME, "--n", "1", "--out", "s.png"], ["pretrained", NAME]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"'{NAME}' is installed incompletely: {missing} missing" in err and "reinstall pixelar" in err
        assert "not a pretrained model" not in err


def test_an_unknown_reference_is_refused_with_the_names(shipped):
    with pytest.raises(FileNotFoundError, match=f"no model directory at runs/nope.*pretrained models: {NAME}"):
        pixelar.load_model("runs/nope")
    with pytest.raises(ValueError, match=f"'nope' is not a pretrained model .*{NAME}"):
        pretrained.card("nope")


def test_no_pretrained_models_is_said(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "ROOT", tmp_path)
    with pytest.raises(FileNotFoundError, match="none are installed"):
        pretrained.resolve("fashion_mnist-pixelcnn_pp")


def test_pretrained_lists_and_shows_cards(shipped, npz_data, capsys):
    assert main(["pretrained"]) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()[:2]
    assert header.split() == ["name", "model", "dataset", "test", "bits/dim", "parameters", "good", "for"]
    assert row.split()[:3] == [NAME, "pixelcnn_pp", "(tiny)"] and "7.5000" in row and "the tests" in row
    assert f"{shipped.num_parameters():,}" in row
    assert main(["pretrained", NAME]) == 0
    out = capsys.readouterr().out
    assert f"pixelar train --size tiny --dataset {npz_data}" in out and "Test CPU, 1 threads" in out
    assert file_sha256(pretrained.ROOT / NAME / "model.safetensors") in out and f"pixelar sample {NAME}" in out
    assert main(["pretrained", NAME, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_parameters"] == shipped.num_parameters()
    assert main(["pretrained", "nope"]) == 2
    assert f"'nope' is not a pretrained model (pretrained models: {NAME})" in capsys.readouterr().err


def test_commands_take_a_pretrained_name(shipped, npz_data, capsys):
    # eval finds the dataset in the pretrained model's config, as for a run directory
    assert main(["eval", NAME, "--json", "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["dataset"] == npz_data and res["num_images"] == 12
    assert main(["sample", NAME, "--n", "2", "--out", "s.png", "--no-progress"]) == 0
    assert Path("s.png").is_file()
    assert main(["export", npz_data, "--n", "2", "--out-dir", "imgs"]) == 0
    imgs = sorted(str(p) for p in Path("imgs").glob("*.png"))
    assert main(["score", NAME, *imgs, "--json"]) == 0
    capsys.readouterr()
    assert main(["compress", NAME, *imgs, "--out", "a.pxar", "--no-progress"]) == 0
    assert main(["decompress", NAME, "a.pxar", "--out-dir", "back", "--no-progress"]) == 0
    assert main(["complete", NAME, "--image", imgs[0], "--keep", "top-half", "--n", "1", "--out", "c.png"]) == 0
    assert main(["sample", "runs/nope", "--n", "2", "--out", "t.png"]) == 2
    assert "no model directory at runs/nope (a run directory or a saved model), and 'runs/nope' is not a " in (
        capsys.readouterr().err
    )


def test_resume_refuses_a_pretrained_model(shipped, capsys):
    assert main(["train", "--resume", NAME]) == 2
    err = capsys.readouterr().err
    assert "is a pretrained model shipped with pixelar, not a run directory" in err
    assert f"pixelar pretrained {NAME}" in err


def test_card_script_derives_the_card_from_a_run(cfg, tmp_path, monkeypatch):
    """make_card copies the run's model into the package and takes every figure from the files."""
    run = tmp_path / "run"
    quiet(cfg, run)
    monkeypatch.setattr(pretrained_card, "PACKAGE", tmp_path / "package")
    card = pretrained_card.make_card(run, NAME, "pixelar train ...", "the tests", "Test CPU", 1)
    final = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert (card["steps"], card["test_bpd"], card["num_test_images"]) == (6, final["test_bpd"], 12)
    shipped_dir = tmp_path / "package" / NAME
    assert (shipped_dir / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    assert card["sha256"] == file_sha256(run / "model.safetensors")
    assert card["num_parameters"] == pixelar.load_model(run).num_parameters()
    # all 12 test images are in the first 500: the measured figure is the run's own
    assert card["test_bpd_first_500"] == pytest.approx(final["test_bpd"], abs=1e-9)
    assert json.loads((shipped_dir / "config.json").read_text())["train"]["data_dir"] is None
    # an unfinished run has no card
    (run / "metrics.jsonl").write_text("\n".join((run / "metrics.jsonl").read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(SystemExit, match="not finished"):
        pretrained_card.make_card(run, NAME, "pixelar train ...", "the tests", "Test CPU", 1)


def test_docs_table_matches_the_shipped_cards():
    page = (Path(__file__).parents[1] / "docs" / "pretrained.md").read_text()
    block = page.split("<!-- pretrained:start -->\n", 1)[1].split("<!-- pretrained:end -->", 1)[0]
    assert block.rstrip() == pretrained_card.table(pretrained_card.shipped_cards()).rstrip(), (
        "docs/pretrained.md is stale: python -m benchmarks.pretrained_card --table"
    )


SHIPPED = pretrained.names()


@pytest.mark.parametrize(
    "name",
    SHIPPED or [pytest.param(None, marks=pytest.mark.skip(reason="no pretrained models are shipped yet"))],
)
def test_shipped_card_is_true(name):
    """The card's parameter count, sha256 and bits/dim of the first 500 test images, measured again."""
    card = pretrained.card(name)
    assert card["name"] == name
    got = pretrained_card.measured(pretrained.directory(name), card["dataset"])
    assert got["sha256"] == card["sha256"], "model.safetensors is not the file the card describes"
    assert got["num_parameters"] == card["num_parameters"]
    assert got["test_bpd_first_500"] == pytest.approx(card["test_bpd_first_500"], abs=1e-4)
    assert pixelar.load_model(name).name == card["model"]
