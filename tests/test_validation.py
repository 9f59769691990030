"""Hostile input: bad hyperparameters, counts, config files and weights give one clear error, never a traceback
or a silently wrong number."""

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import pixelar
from pixelar import ImageSpec, create_model, load_model
from pixelar.cli import build_parser, main
from pixelar.data import ImageDataset, first_images
from pixelar.evaluation import evaluate
from pixelar.image_files import save_grid
from pixelar.models import SIZES, create_distaug_model, preset
from pixelar.models.registry import check_hparams

SPEC = ImageSpec(1, 4, 4, 256)
FMNIST = ImageSpec(1, 28, 28, 256)  # what the CLI's default dataset has


# ----- hyperparameters: one check in the registry ---------------------------------------------------------------
@pytest.mark.parametrize("name", pixelar.list_models())
def test_every_preset_passes_the_check(name):
    for size in SIZES:
        assert check_hparams(name, preset(name, size)) == preset(name, size)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(dropout="abc"), r"option dropout must be a probability in \[0, 1\), got 'abc'"),
        (dict(dropout=1.0), r"option dropout must be a probability in \[0, 1\)"),
        (dict(dropout=float("nan")), "option dropout"),
        (dict(nr_filters=True), "option nr_filters must be an integer >= 1, got True"),  # bool is no int
        (dict(nr_filters=0), "option nr_filters must be an integer >= 1, got 0"),
        (dict(nr_filters=2.5), "option nr_filters must be an integer >= 1, got 2.5"),
        (dict(nr_filters="8"), "option nr_filters must be an integer"),
        (dict(nr_resnet=-1), "option nr_resnet must be an integer >= 1, got -1"),
        (dict(num_classes=-1), "option num_classes must be an integer >= 0, got -1"),
        (dict(cond_dim=-2), "option cond_dim must be an integer >= 0, got -2"),
        (dict(output=3), "option output must be an object with a 'kind'"),
        (dict(output={"nr_mix": 0}), "nr_mix .* must be an integer >= 1, got 0"),
        (dict(output={"nr_mix": 2.5}), "nr_mix .* must be an integer >= 1, got 2.5"),
        (dict(output={"nr_mix": True}), "nr_mix .* must be an integer >= 1, got True"),
    ],
)
def test_bad_hyperparameters_name_the_model_and_the_option(overrides, message):
    with pytest.raises(ValueError, match=r"model 'pixelcnn_pp'.*" + message):
        create_model("pixelcnn_pp", SPEC, **overrides)


def test_good_hyperparameters_are_normalised_to_the_presets_types():
    m = create_model("pixelcnn_pp", SPEC, dropout=0, nr_filters=np.int64(4))
    assert m.hparams["dropout"] == 0.0 and type(m.hparams["dropout"]) is float
    assert type(m.hparams["nr_filters"]) is int  # the config stays plain JSON
    json.dumps(m.config())
    # 0 where a preset uses it (lmconv tiny: no up-pass resnets) or the model names it (pixelsnail value_size)
    create_model("lmconv", SPEC, nr_resnet=0)
    create_model("pixelsnail", SPEC, value_size=0)
    it = create_model("image_transformer", SPEC, query_shape=(2, 2))
    assert it.hparams["query_shape"] == [2, 2]
    with pytest.raises(ValueError, match="option checkpoint must be true or false"):
        create_model("image_gpt", SPEC, checkpoint=1)
    with pytest.raises(ValueError, match="option query_shape must be a list of integers"):
        create_model("image_transformer", SPEC, query_shape=[2, -1])


def test_what_a_model_itself_refuses_is_a_valueerror_naming_it():
    with pytest.raises(ValueError, match="model 'image_transformer' cannot be built with these options"):
        create_model("image_transformer", SPEC, query_shape=[2])  # the model unpacks two numbers


def test_a_conditioning_map_is_checked_and_old_configs_build_without_one():
    model = create_model("gated_pixelcnn", SPEC, cond_channels=2)
    x = torch.zeros(2, *SPEC.shape, dtype=torch.long)
    with pytest.raises(ValueError, match=r"conditioned on a map: cond must be a float tensor of shape \(2, 2, "):
        model.log_prob(x, torch.zeros(2, 2, 1, 1))  # the map must cover the image
    with pytest.raises(ValueError, match="conditioned on a map"):
        model.log_prob(x)
    with pytest.raises(ValueError, match="one kind of cond"):
        create_model("pixelcnn", SPEC, cond_channels=2, num_classes=3)
    with pytest.raises(ValueError, match="unknown option.*cond_channels"):
        create_model("lmconv", SPEC, cond_channels=2)  # a model that reads no map has no such option
    # configs saved before the option existed lack it: they build the model they describe
    hparams = dict(create_model("pixelcnn_pp", SPEC).hparams)
    del hparams["cond_channels"]
    assert pixelar.models.registry.build_model("pixelcnn_pp", SPEC, hparams).cond_channels == 0
    with pytest.raises(ValueError, match="lacks option"):
        del hparams["dropout"]  # an option that every config has
        pixelar.models.registry.build_model("pixelcnn_pp", SPEC, hparams)


def test_distaug_checks_the_conditioning_it_moves_into_the_vector():
    with pytest.raises(ValueError, match="option num_classes must be an integer >= 0, got -1"):
        create_distaug_model("pixelcnn_pp", SPEC, "tiny", ["rot90"], num_classes=-1)
    with pytest.raises(ValueError, match="option cond_dim must be an integer >= 0"):
        create_distaug_model("pixelcnn_pp", SPEC, "tiny", ["rot90"], cond_dim="abc")


# ----- config.json ---------------------------------------------------------------------------------------------
def _edit(cfg, how):
    if how == "no image":
        del cfg["image"]
    elif how == "image string":
        cfg["image"] = "28x28"
    elif how == "height not numeric":
        cfg["image"]["height"] = "abc"
    elif how == "height not whole":
        cfg["image"]["height"] = 4.5
    elif how == "hparams string":
        cfg["hparams"] = "tiny"
    elif how == "unknown hparam":
        cfg["hparams"]["filters"] = 3
    elif how == "missing hparam":
        del cfg["hparams"]["dropout"]
    elif how == "zero width":
        cfg["hparams"]["nr_filters"] = 0
    elif how == "model a list":
        cfg["model"] = ["pixelcnn_pp"]
    elif how == "distaug classes":
        cfg["distaug"] = {"transforms": ["rot90"], "num_classes": "ten"}


@pytest.mark.parametrize(
    "how",
    [
        "no image",
        "image string",
        "height not numeric",
        "height not whole",
        "hparams string",
        "unknown hparam",
        "missing hparam",
        "zero width",
        "model a list",
        "distaug classes",
    ],
)
def test_a_malformed_config_is_a_valueerror_naming_the_file(tmp_path, how):
    create_model("pixelcnn_pp", SPEC).save(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    _edit(cfg, how)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="config.json"):
        load_model(tmp_path)


def test_an_oversized_or_too_deeply_nested_config_is_a_valueerror_naming_the_file(tmp_path, capsys):
    """Valid JSON padded past the size any pixelar JSON file has is refused by its size, before it is read; JSON
    nested deeper than Python's parser goes is called malformed (not "maximum recursion depth exceeded")."""
    create_model("pixelcnn_pp", FMNIST).save(tmp_path)
    path = tmp_path / "config.json"
    text, limit = path.read_text(), pixelar.io.MAX_JSON_BYTES
    path.write_text(" " * (limit - len(text)) + text)  # at the limit: read
    load_model(tmp_path)
    path.write_text(" " * (limit - len(text) + 1) + text)
    with pytest.raises(ValueError, match=rf"config.json is corrupt: {limit + 1:,} bytes, more than"):
        load_model(tmp_path)
    path.write_text(text.replace('"hparams": {', '"hparams": {"deep": ' + "[" * 100_000 + "]" * 100_000 + ", ", 1))
    with pytest.raises(ValueError, match=r"config.json is corrupt \(malformed: its JSON is nested too deeply"):
        load_model(tmp_path)
    assert main(["sample", str(tmp_path), "--n", "1", "--out", str(tmp_path / "g.png")]) == 2
    assert "config.json" in _one_line_error(capsys, "sample")


def test_image_spec_from_dict_converts_nothing_silently():
    assert ImageSpec.from_dict(SPEC.to_dict()) == SPEC
    for bad in (
        {"channels": 1, "height": 4, "width": 4},
        {**SPEC.to_dict(), "height": "4"},
        {**SPEC.to_dict(), "width": 4.5},
        [1, 4, 4, 256],
    ):
        with pytest.raises(ValueError, match="ImageSpec|an image must be"):
            ImageSpec.from_dict(bad)


# ----- non-finite weights and results ---------------------------------------------------------------------------
def _poison(path, value=float("nan")) -> str:
    """Write `value` into one weight of a saved model, as damaged bytes would; -> the tensor's name."""
    state = load_file(str(path / "model.safetensors"))
    name = sorted(k for k, v in state.items() if v.is_floating_point())[2]
    state[name].view(-1)[0] = value
    save_file(state, str(path / "model.safetensors"))
    return name


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_load_model_refuses_non_finite_weights(tmp_path, value):
    create_model("pixelcnn_pp", SPEC).save(tmp_path)
    name = _poison(tmp_path, value)
    with pytest.raises(ValueError, match=f"model.safetensors contain non-finite values.*'{name}'"):
        load_model(tmp_path)


def test_evaluate_refuses_to_report_a_non_finite_likelihood():
    torch.manual_seed(0)
    model = create_model("pixelcnn_pp", SPEC)
    ds = ImageDataset(
        torch.randint(0, 256, (5, *SPEC.shape), dtype=torch.uint8), None, SPEC, None, "random", split="test"
    )
    assert np.isfinite(evaluate(model, ds)["bpd"])
    with torch.no_grad():
        model.out.bias.fill_(float("nan"))  # every image's likelihood becomes NaN
    with pytest.raises(ValueError, match="non-finite log-likelihood .* for 5 of 5 images"):
        evaluate(model, ds, batch_size=2)


# ----- counts, and the command line ----------------------------------------------------------------------------
def test_library_counts_refuse_negatives():
    ds = ImageDataset(torch.zeros(10, *SPEC.shape, dtype=torch.uint8), None, SPEC, None, "zeros")
    assert len(first_images(ds, 3)) == 3 and len(first_images(ds, None)) == 10
    for bad in (-5, 2.5, True):
        with pytest.raises(ValueError, match="subset"):
            first_images(ds, bad)
    with pytest.raises(ValueError, match="subset"):
        evaluate(create_model("pixelcnn", SPEC), ds, subset=-5)  # [:-5] would score 5 images
    with pytest.raises(ValueError, match="nrow"):
        save_grid(torch.zeros(2, *SPEC.shape, dtype=torch.long), SPEC, "unused.png", nrow=0)


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["eval", "R", "--subset", "-5"], "--subset"),
        (["eval", "R", "--subset", "0"], "--subset"),
        (["eval", "R", "--batch-size", "0"], "--batch-size"),
        (["sample", "R", "--out", "o.png", "--n", "0"], "--count/--n"),
        (["sample", "R", "--out", "o.png", "--count", "0"], "--count/--n"),
        (["sample", "R", "--out", "o.png", "--nrow", "0"], "--nrow"),
        (["sample", "R", "--out", "o.png", "--seed", "-1"], "--seed"),
        (["sample", "R", "--out", "o.png", "--class", "-1"], "--class"),
        (["sample", "R", "--out", "o.png", "--temperature", "-0.5"], "--temperature"),
        (["sample", "R", "--out", "o.png", "--temperature", "nan"], "--temperature"),
        (["sample", "R", "--out", "o.png", "--temperature", "inf"], "--temperature"),
        (["complete", "R", "--image", "i.png", "--keep", "top-half", "--out", "o.png", "--count", "-2"], "--count/--n"),
        (["train", "--steps", "0"], "--steps"),
        (["train", "--batch-size", "-1"], "--batch-size"),
        (["train", "--lr", "0"], "--lr"),
        (["train", "--lr", "nan"], "--lr"),
        (["train", "--lr-decay", "1.5"], "--lr-decay"),
        (["train", "--warmup-steps", "-1"], "--warmup-steps"),
        (["train", "--seed", "-1"], "--seed"),
        (["train", "--checkpoint-every", "0"], "--checkpoint-every"),
        (["train", "--sample-n", "-1"], "--sample-n"),
        (["train", "--train-subset", "-9990"], "--train-subset"),
        (["train", "--test-subset", "0"], "--test-subset"),
        (["train", "--set", "dropout"], "--set"),
        (["probe", "R", "--layer", "-1"], "--layer"),
        (["probe", "R", "--layer", "2,x"], "--layer"),
        (["probe", "R", "--layer", "1", "--train-subset", "-1"], "--train-subset"),
        (["probe", "R", "--layer", "1", "--weight-decay", "-1"], "--weight-decay"),
        (["score", "R", "i.png", "--class", "-3"], "--class"),
        (["compress", "R", "i.png", "--out", "o", "--class", "-3"], "--class"),
        (["models", "--image", "2,28,28"], "--image"),
        (["models", "--image", "1,28"], "--image"),
    ],
)
def test_bad_counts_fail_while_parsing_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err.splitlines()[-1]


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pixelar {command}: error: "), err
    return err[0]


@pytest.mark.parametrize(
    "pair, option",
    [
        ("dropout=abc", "dropout"),
        ("nr_filters=true", "nr_filters"),
        ("output=3", "output"),
        ("nr_resnet=-1", "nr_resnet"),
        ("nr_filters=0", "nr_filters"),
        ("nr_filters=2.5", "nr_filters"),
        ("num_classes=-1", "num_classes"),
        ("cond_dim=-1", "cond_dim"),
        ("output.nr_mix=0", "nr_mix"),
    ],
)
def test_train_with_bad_model_options_is_one_line_and_exit_2(pair, option, tmp_path, capsys):
    # refused while the settings are checked, before any data are read or files written
    argv = [
        "train",
        "--model",
        "pixelcnn_pp",
        "--size",
        "tiny",
        "--steps",
        "1",
        "--no-progress",
        "--run-dir",
        str(tmp_path / "run"),
        "--set",
        pair,
    ]
    assert main(argv) == 2
    assert option in _one_line_error(capsys, "train")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("how", ["no image", "height not numeric", "hparams string", "unknown hparam", "zero width"])
def test_eval_and_sample_of_a_hand_edited_config_is_one_line_and_exit_2(how, tmp_path, capsys):
    create_model("pixelcnn_pp", FMNIST).save(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    _edit(cfg, how)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert main(["eval", str(tmp_path), "--dataset", "fashion_mnist"]) == 2
    assert "config.json" in _one_line_error(capsys, "eval")
    assert main(["sample", str(tmp_path), "--n", "1", "--out", str(tmp_path / "g.png")]) == 2
    assert "config.json" in _one_line_error(capsys, "sample")


def test_eval_of_corrupted_weights_is_an_error_naming_the_file(tmp_path, capsys):
    create_model("pixelcnn_pp", FMNIST).save(tmp_path)
    name = _poison(tmp_path)
    assert main(["eval", str(tmp_path), "--dataset", "fashion_mnist", "--subset", "5"]) == 2
    line = _one_line_error(capsys, "eval")
    assert "model.safetensors" in line and name in line and "non-finite" in line
    assert capsys.readouterr().out == ""  # no "nan bits/dim"


def test_a_malformed_train_section_is_one_line_and_exit_2(tmp_path, capsys):
    create_model("pixelcnn_pp", FMNIST).save(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for section in ("fashion_mnist", {"dataset": 5}):
        (tmp_path / "config.json").write_text(json.dumps({**cfg, "train": section}))
        assert main(["eval", str(tmp_path)]) == 2
        assert "'train' section" in _one_line_error(capsys, "eval")


def test_probe_layer_beyond_the_model_names_its_layers(tmp_path, capsys):
    create_model("image_gpt", FMNIST).save(tmp_path)  # tiny: 2 layers, features 0 .. 2
    assert main(["probe", str(tmp_path), "--layer", "1,5", "--dataset", "fashion_mnist"]) == 2
    assert "layers 0 .. 2" in _one_line_error(capsys, "probe")


def test_dotted_set_options_nest_and_conflicts_are_refused():
    from pixelar.cli import _overrides

    assert _overrides([("output.nr_mix", "5"), ("dropout", "0.1")]) == {"output": {"nr_mix": 5}, "dropout": 0.1}
    for pairs in ([("output", "3"), ("output.nr_mix", "5")], [("output.nr_mix", "5"), ("output", "3")]):
        with pytest.raises(ValueError, match="output"):
            _overrides(pairs)
    model = create_model("pixelcnn_pp", ImageSpec(1, 4, 4, 4), "tiny", **_overrides([("output.nr_mix", "3")]))
    assert model.hparams["output"] == {"kind": "logistic_mixture", "nr_mix": 3}
    model = create_model("pixelcnn_pp", ImageSpec(1, 4, 4, 4), "tiny", output="categorical")
    assert model.hparams["output"] == {"kind": "categorical"}


# ----- a huge user-given string is echoed cut, never whole ------------------------------------------------------
HUGE = "x" * 10**6


def _cut(message: str) -> None:
    """A message that echoes HUGE (or a name made from it) as its first 60 characters and its length."""
    assert len(message) < 1000, message[:300]
    assert "x" * 60 + "..." in message and re.search(r"\(1,000,00\d characters\)", message), message


def test_library_errors_echo_a_huge_name_cut(npz_data):
    from pixelar.config import TrainConfig
    from pixelar.data import load_dataset
    from pixelar.recipes import get_recipe

    for call, error in (
        (lambda: create_model(HUGE, SPEC), ValueError),
        (lambda: create_model("pixelcnn", SPEC, HUGE), ValueError),
        (lambda: create_model("pixelcnn", SPEC, **{HUGE: 1}), ValueError),
        (lambda: TrainConfig(model=HUGE).validate(), ValueError),
        (lambda: TrainConfig(dataset=npz_data, precision=HUGE).validate(), ValueError),
        (lambda: get_recipe(HUGE), ValueError),
        (lambda: load_dataset(HUGE, "test"), ValueError),
        (lambda: load_model(HUGE), FileNotFoundError),  # a name too long for a file: no directory, no OSError
        (lambda: pixelar.pretrained.card(HUGE), ValueError),
    ):
        with pytest.raises(error) as e:
            call()
        _cut(str(e.value))


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", HUGE],  # used to be an OSError traceback (file name too long)
        ["train", "--model", HUGE, "--steps", "1"],
        ["train", "--recipe", HUGE],
        ["pretrained", HUGE],
        ["eval", "fashion_mnist-pixelcnn_pp", "--dataset", HUGE],
        ["sample", "fashion_mnist-pixelcnn_pp", "--out", HUGE + ".png"],  # an OSError traceback too
        ["score", "fashion_mnist-pixelcnn_pp", HUGE + ".png"],
        ["train", "--set", HUGE + "=1", "--steps", "1"],
    ],
)
def test_the_cli_echoes_a_huge_argument_cut_in_one_line_and_exit_2(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    _cut(_one_line_error(capsys, argv[0]))
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    "argv", [["train", "--size", HUGE], ["sample", "R", "--out", "o.png", "--count", HUGE], ["eval", "R", "--x", HUGE]]
)
def test_argparse_errors_echo_a_huge_argument_cut(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    _cut(capsys.readouterr().err.splitlines()[-1])
