"""Paper recipes: the data file validates, every recipe builds its TrainConfig and its paper-sized model (on the
meta device) with the paper's parameter count, `pixelar recipes` lists and shows them, `--recipe` sets the
config fields, explicit flags win, unstated settings must be given, and docs/recipes.md matches the data."""

import copy
import json
from importlib import resources
from pathlib import Path

import pytest

from pixelar import cli, recipes
from pixelar.cli import main
from pixelar.config import TrainConfig

DATA = json.loads(resources.files("pixelar").joinpath("recipes.json").read_text())["recipes"]
DOCS = Path(__file__).resolve().parent.parent / "docs" / "recipes.md"


def _placeholders(name: str) -> dict:
    """Values for the settings a recipe leaves unstated (they do not change the model)."""
    return {f: 1 for f in recipes.get_recipe(name).required()}


@pytest.mark.parametrize("name", list(DATA))
def test_every_recipe_builds_its_config_and_paper_sized_model(name):
    r = recipes.get_recipe(name)
    cfg = recipes.recipe_config(name, _placeholders(name))
    assert cfg.dataset == "cifar10" and cfg.model == DATA[name]["train"]["model"]
    n = recipes.num_parameters(cfg)  # meta device: no memory for the weights
    if r.parameters is not None:
        assert abs(n / r.parameters - 1) <= r.parameters_tolerance, (name, n, r.parameters)


def test_parameter_check_can_fail():
    # a recipe whose model is resized away from the paper's count fails the tolerance the test above uses
    cfg = recipes.recipe_config("pixelcnn_pp-cifar10", {"max_steps": 1, "model_overrides": {"nr_filters": 128}})
    r = recipes.get_recipe("pixelcnn_pp-cifar10")
    assert abs(recipes.num_parameters(cfg) / r.parameters - 1) > r.parameters_tolerance


def test_data_file_refuses_unknown_keys_wrong_types_and_gaps():
    good = DATA["pixelcnn_pp-cifar10"]
    recipes._check("x", good)

    def broken(change):
        entry = copy.deepcopy(good)
        change(entry)
        with pytest.raises(ValueError, match="recipe 'x'"):
            recipes._check("x", entry)

    broken(lambda e: e.update(typo=1))  # unknown key
    broken(lambda e: e.pop("compute"))  # missing key
    broken(lambda e: e.update(bits_per_dim="2.92"))  # wrong type
    broken(lambda e: e.update(gpus=True))  # a bool is no GPU count
    broken(lambda e: e["train"].update(learning_rate=1e-3))  # not a TrainConfig field
    broken(lambda e: e["unstated"].update(lr="?"))  # both set and unstated
    broken(lambda e: e["train"].pop("lr"))  # neither set nor unstated
    broken(lambda e: e["sources"].pop("lr"))  # a setting without a source
    broken(lambda e: e["train"].pop("size"))


def test_pixelcnn_pp_recipe_matches_the_released_code():
    cfg = recipes.recipe_config("pixelcnn_pp-cifar10", {"max_steps": 10})
    got = (cfg.batch_size, cfg.lr, cfg.betas, cfg.lr_decay, cfg.ema_decay)
    assert got == (128, 1e-3, (0.95, 0.9995), 0.999995, 0.9995)
    assert cfg.grad_clip is None and cfg.size == "paper" and cfg.max_steps == 10


def test_unstated_required_settings_must_be_given():
    with pytest.raises(ValueError, match="does not state max_steps"):
        recipes.recipe_config("pixelcnn_pp-cifar10")
    with pytest.raises(ValueError, match="unknown recipe 'nope'; valid recipes: pixelcnn-cifar10"):
        recipes.recipe_config("nope")


# ----- the command line -----------------------------------------------------------------------------------
@pytest.fixture
def captured(monkeypatch):
    """cli.train replaced by a recorder: the TrainConfig `pixelar train` would train with."""
    seen = {}

    def fake_train(cfg, run_dir, resume, progress, **kw):
        seen.update(cfg=cfg, run_dir=run_dir)
        return {"test_bpd": 0.0, "run_dir": str(run_dir)}

    monkeypatch.setattr(cli, "train", fake_train)
    return seen


def test_recipe_sets_the_config_fields_of_the_file(captured, tmp_path):
    assert main(["train", "--recipe", "distaug-cifar10", "--run-dir", str(tmp_path / "r")]) == 0
    cfg, want = captured["cfg"], DATA["distaug-cifar10"]["train"]
    for field in ("model", "size", "dataset", "batch_size", "max_steps", "lr", "lr_decay", "warmup_steps", "distaug"):
        assert getattr(cfg, field) == want[field], field
    assert cfg.model_overrides == want["model_overrides"]
    assert cfg.ema_decay == TrainConfig().ema_decay  # unstated: pixelar's default


def test_explicit_flags_override_the_recipe(captured, tmp_path):
    args = ["train", "--recipe", "distaug-cifar10", "--lr", "5e-4", "--batch-size", "64", "--steps", "7"]
    assert main([*args, "--set", "dropout=0.1", "--distaug", "rot90", "--run-dir", str(tmp_path / "r")]) == 0
    cfg = captured["cfg"]
    assert (cfg.lr, cfg.batch_size, cfg.max_steps, cfg.distaug) == (5e-4, 64, 7, ["rot90"])
    assert cfg.model_overrides["dropout"] == 0.1 and cfg.model_overrides["n_layer"] == 48  # merged per key


def test_recipe_refusals_name_the_flags(captured, tmp_path, capsys):
    assert main(["train", "--recipe", "pixelcnn_pp-cifar10", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "does not state max_steps" in err and "--steps N" in err and not captured
    assert main(["train", "--recipe", "nope"]) == 2
    assert "unknown recipe 'nope'; valid recipes: " + ", ".join(DATA) in capsys.readouterr().err
    assert main(["train", "--recipe", "pixelcnn_pp-cifar10", "--resume", str(tmp_path)]) == 2
    assert "a resumed run keeps its own settings; drop --recipe" in capsys.readouterr().err


def test_recipes_lists_every_recipe(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["recipe", "model", "bits/dim", "batch", "steps"]
    rows = {line.split()[0]: line.split() for line in lines[1 : 1 + len(DATA)]}
    assert list(rows) == list(DATA)
    assert rows["pixelcnn_pp-cifar10"][1:5] == ["pixelcnn_pp", "2.92", "128", "unstated"]
    assert rows["sparse_transformer-cifar10"][2:5] == ["2.80", "16", "360000"]


def test_recipes_shows_one_in_full(capsys):
    assert main(["recipes", "pixelcnn_pp-cifar10"]) == 0
    out = capsys.readouterr().out
    assert "cost: 960 GPU-hours (8 GPUs x 5 days x 24 h" in out
    assert "this recipe's model 53,618,660" in out
    assert "max_steps        unstated:" in out and "give --steps" in out
    cmd = "torchrun --standalone --nproc_per_node=8 -m pixelar train --recipe pixelcnn_pp-cifar10 --steps MAX_STEPS"
    assert cmd in out
    assert main(["recipes", "nope"]) == 2


def test_docs_table_matches_the_data():
    from benchmarks.recipes_table import markdown

    page = DOCS.read_text()
    block = page.split("<!-- recipes:start -->\n", 1)[1].split("<!-- recipes:end -->", 1)[0]
    assert block.rstrip() == markdown().rstrip(), "docs/recipes.md is stale: python -m benchmarks.recipes_table --write"
