"""Tests of pixelar.training and pixelar.evaluation: config, schedule, EMA, run directories, exact resume,
divergence handling, corrupt checkpoints, exact bits/dim.

Runs use tiny PixelCNN++ models on an 8x8 npz dataset (20 training, 12 test images, 4 classes), so each
training run takes well under a second; one exact-resume case uses the real Fashion-MNIST (dynamically
binarized) and is skipped where it is absent.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from run_helpers import flip_bit, quiet, stop_after, tensors_equal

import pixelar
from pixelar.cli import main
from pixelar.config import TrainConfig
from pixelar.data import ImageDataset
from pixelar.evaluation import evaluate
from pixelar.io import read_json, read_tensors, write_json
from pixelar.models.base import ARImageModel
from pixelar.training import TrainingDiverged, train
from pixelar.training.ema import EMA
from pixelar.training.optim import learning_rate

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
STATE_FILES = ("config.json", "model.safetensors", "training_state.safetensors", "training_state.json")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def ema_model(run_dir):
    """A model with the EMA weights stored in the training state (not via model.safetensors)."""
    model = pixelar.load_model(run_dir)
    state = read_tensors(Path(run_dir) / "training_state.safetensors")
    model.load_state_dict({k[len("ema.") :]: v for k, v in state.items() if k.startswith("ema.")})
    return model


# ----- config, schedule, EMA ---------------------------------------------------------------------------------
def test_config_round_trips_through_json_and_validates():
    cfg = TrainConfig(model_overrides={"dropout": 0.5, "output": {"nr_mix": 3}}, betas=(0.9, 0.99), grad_clip=None)
    back = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.betas == (0.9, 0.99)
    assert TrainConfig.from_dict({"seed": 3}) == TrainConfig(seed=3)
    with pytest.raises(ValueError, match="unknown training option.*'learning_rate'.*valid options: .*lr"):
        TrainConfig.from_dict({"learning_rate": 1.0})
    for bad, match in (
        ({"precision": "fp16"}, "precision must be one of fp32, bf16"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"lr": -1.0}, "lr must be"),
        ({"ema_decay": 1.0}, r"ema_decay must be a number in \[0, 1\)"),
        ({"model": "nope"}, "model must be one of"),
        ({"betas": (0.9,)}, "betas"),
        ({"device": "gpu7"}, "device must be"),
        ({"train_subset": 0}, "train_subset"),
    ):
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(TrainConfig(), **bad).validate()
    assert TrainConfig().validate() == TrainConfig()


def test_learning_rate_schedule():
    assert learning_rate(0, 1e-3) == 1e-3
    assert learning_rate(10, 2e-3, lr_decay=0.5) == pytest.approx(2e-3 * 0.5**10)
    # warm-up: (step + 1) / warmup_steps up to 1, times the decay from step 0 on
    assert [learning_rate(s, 1.0, warmup_steps=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert learning_rate(1, 1.0, warmup_steps=4, lr_decay=0.9) == pytest.approx(0.5 * 0.9)


def test_ema_math_by_hand():
    net = torch.nn.BatchNorm1d(2)  # weight, bias (parameters) and running stats (buffers)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        net.weight.fill_(3.0)
        net.running_mean.fill_(7.0)
    ema.update(net)
    assert torch.equal(ema.state_dict()["weight"], torch.full((2,), 2.0))  # 0.5 * 1 + 0.5 * 3
    assert torch.equal(ema.state_dict()["running_mean"], torch.full((2,), 7.0))  # buffers copied
    with torch.no_grad():
        net.weight.fill_(5.0)
    ema.update(net)
    assert torch.equal(ema.state_dict()["weight"], torch.full((2,), 3.5))  # 0.5 * 2 + 0.5 * 5
    ema.copy_to(net)
    assert torch.equal(net.weight.detach(), torch.full((2,), 3.5))
    off = EMA(net, decay=0.0)
    with torch.no_grad():
        net.weight.fill_(-1.25)
    off.update(net)
    assert torch.equal(off.state_dict()["weight"], net.weight.detach())


# ----- runs ------------------------------------------------------------------------------------------------------
def test_train_writes_a_loadable_run_directory(cfg, tmp_path):
    cfg = dataclasses.replace(cfg, max_steps=4, sample_n=4, class_conditional=True)
    messages = []
    result = train(cfg, tmp_path / "run", progress=False, log=messages.append)
    run = tmp_path / "run"
    for name in (*STATE_FILES, "metrics.jsonl", "samples.png"):
        assert (run / name).is_file(), name
    assert result["steps"] == 4 and result["run_dir"] == str(run)
    assert any("test bits/dim" in m for m in messages)
    config = read_json(run / "config.json")
    assert TrainConfig.from_dict(config["train"]) == cfg
    model = pixelar.load_model(run)
    assert model.num_classes == 4  # class_conditional: num_classes from the dataset
    x, y = torch.randint(0, 256, (3, 1, 8, 8)), torch.tensor([0, 1, 3])
    torch.testing.assert_close(model.log_prob(x, y), ema_model(run).eval().log_prob(x, y), rtol=0, atol=0)
    lines = metrics(run)
    assert [m["step"] for m in lines if "train_bpd" in m] == [1, 2, 3, 4]
    assert {"lr", "grad_norm", "images_per_s", "elapsed_s"} <= lines[0].keys()
    assert lines[-1]["final"] and lines[-1]["test_bpd"] == pytest.approx(result["test_bpd"])
    assert read_json(run / "training_state.json")["step"] == 4
    with pytest.raises(ValueError, match="already holds a training checkpoint.*resume"):
        quiet(cfg, run)


@pytest.mark.parametrize("case", ["npz", "dynamic_dropout", "augment", "distaug"])
def test_interrupted_run_resumes_bitwise(cfg, tmp_path, case):
    if case == "augment":  # the augmentation indices come from their own generator, saved as rng.augment
        cfg = dataclasses.replace(cfg, augment=["rot90", "jigsaw", "randperm"])
    if case == "distaug":
        cfg = dataclasses.replace(cfg, distaug=["rot90", "transpose"], class_conditional=True)
    if case == "dynamic_dropout":
        if not REAL_FASHION_MNIST.is_dir():
            pytest.skip("Fashion-MNIST not installed")
        # dropout draws from the torch RNG, binarization from the data generator; 3 batches per epoch
        cfg = dataclasses.replace(
            cfg, dataset="fashion_mnist_dynamic", train_subset=24, test_subset=8, model_overrides={"dropout": 0.5}
        )
    full, cut = tmp_path / "full", tmp_path / "cut"
    quiet(cfg, full)
    with pytest.raises(KeyboardInterrupt):
        quiet(cfg, cut, on_step=stop_after(4))  # killed after step 4; last checkpoint at step 3
    assert read_json(cut / "training_state.json")["step"] == 3
    ignored = dataclasses.replace(cfg, seed=99, lr=1.0)  # resume uses the run's own config
    result = quiet(ignored, cut, resume=True)
    assert result["steps"] == 6
    for name in ("model.safetensors", "training_state.safetensors"):
        assert tensors_equal(read_tensors(full / name), read_tensors(cut / name)), name
    a, b = read_json(full / "training_state.json"), read_json(cut / "training_state.json")
    for key in ("fingerprint", "elapsed_s"):
        a.pop(key), b.pop(key)
    assert a == b
    assert [m["step"] for m in metrics(cut)] == [m["step"] for m in metrics(full)]  # no duplicated steps
    assert ("rng.augment" in read_tensors(cut / "training_state.safetensors")) == (case in ("augment", "distaug"))


def test_resume_with_more_steps_equals_a_longer_run(cfg, tmp_path):
    quiet(dataclasses.replace(cfg, max_steps=4), tmp_path / "short")
    with pytest.raises(ValueError, match="below the checkpoint's step 4"):
        quiet(cfg, tmp_path / "short", resume=True, max_steps=3)
    quiet(cfg, tmp_path / "short", resume=True, max_steps=6)
    quiet(cfg, tmp_path / "long")
    assert read_json(tmp_path / "short" / "config.json")["train"]["max_steps"] == 6
    assert tensors_equal(
        read_tensors(tmp_path / "short" / "training_state.safetensors"),
        read_tensors(tmp_path / "long" / "training_state.safetensors"),
    )


def test_augmentation_runs(cfg, tmp_path):
    """Plain augmentation trains the plain model on transformed images; DistAug trains the wrapped model
    (saved and reloaded as one); both change the training from the unaugmented run, and a bad setting is named."""
    cfg = dataclasses.replace(cfg, max_steps=2)
    for name, kw in (("none", {}), ("plain", {"augment": ["rot90"]}), ("dist", {"distaug": ["rot90"]})):
        quiet(dataclasses.replace(cfg, **kw), tmp_path / name)
    weights = {n: read_tensors(tmp_path / n / "model.safetensors") for n in ("none", "plain")}
    assert weights["none"].keys() == weights["plain"].keys() and not tensors_equal(weights["none"], weights["plain"])
    model = pixelar.load_model(tmp_path / "dist")
    assert type(model).__name__ == "DistAugModel" and model.augmenter.names == ["rot90"]
    assert read_json(tmp_path / "dist" / "config.json")["distaug"]["transforms"] == [{"name": "rot90"}]
    with pytest.raises(ValueError, match="choose augment .* or distaug"):
        dataclasses.replace(cfg, augment=["rot90"], distaug=["transpose"]).validate()
    with pytest.raises(ValueError, match="distaug: unknown transformation"):
        dataclasses.replace(cfg, distaug=["rotate"]).validate()
    with pytest.raises(ValueError, match="colour .* 3-channel"):
        quiet(dataclasses.replace(cfg, augment=["colour"]), tmp_path / "bad")


def test_seed_determines_the_weights(cfg, tmp_path):
    cfg = dataclasses.replace(cfg, max_steps=2)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        quiet(dataclasses.replace(cfg, seed=seed), tmp_path / name)
    weights = {n: read_tensors(tmp_path / n / "model.safetensors") for n in "abc"}
    assert tensors_equal(weights["a"], weights["b"])
    assert not tensors_equal(weights["a"], weights["c"])


def test_bf16_first_step_matches_fp32(cfg, tmp_path):
    cfg = dataclasses.replace(cfg, max_steps=1, seed=3)
    quiet(cfg, tmp_path / "fp32")
    quiet(dataclasses.replace(cfg, precision="bf16"), tmp_path / "bf16")
    fp32, bf16 = metrics(tmp_path / "fp32")[0]["train_bpd"], metrics(tmp_path / "bf16")[0]["train_bpd"]
    # same weights and batch; bf16 keeps 8 mantissa bits (0.4% per value) in the convolutions, errors average
    # out over the 64 sub-pixels x 8 images, and the likelihood itself is fp32: measured 1e-7..5e-5 relative
    assert abs(bf16 - fp32) < 5e-3 * fp32, (fp32, bf16)
    weights = read_tensors(tmp_path / "bf16" / "training_state.safetensors")
    assert all(v.dtype == torch.float32 for k, v in weights.items() if k.startswith("model."))  # fp32 master weights


def test_test_split_problems_are_found_before_the_first_step(tmp_path):
    """Test images of another size, or without labels for a class-conditional model, stop the run at the start
    (not in the final evaluation, after all the training)."""
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (20, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "sizes.npz", x_train=x_train, x_test=rng.integers(0, 256, (4, 10, 10), dtype=np.uint8))
    np.savez(tmp_path / "nolabels.npz", x_train=x_train, y_train=np.arange(20) % 4, x_test=x_train[:4])
    for name, kw, match in (
        ("sizes", {}, r"its test images are 1x10x10 with 256 values but its training images 1x8x8 with 256 values"),
        ("nolabels", {"class_conditional": True}, "class-conditional but the test images of dataset .* have no labels"),
    ):
        steps = []
        cfg = TrainConfig(
            size="tiny", dataset=f"npz:{tmp_path / name}.npz", batch_size=8, max_steps=2, sample_n=0, **kw
        )
        with pytest.raises(ValueError, match=match):
            quiet(cfg, tmp_path / name, on_step=steps.append)
        assert steps == [] and not (tmp_path / name).exists()  # nothing written, not even the directory


# ----- non-finite steps --------------------------------------------------------------------------------------
def poison_training_calls(monkeypatch, bad_calls):
    """Make ARImageModel.log_prob return NaN on the given (1-based) calls in training mode."""
    real, calls = ARImageModel.log_prob, [0]

    def log_prob(self, x, cond=None, reduce=True):
        out = real(self, x, cond, reduce)
        if self.training:
            calls[0] += 1
            if calls[0] in bad_calls:
                return out * float("nan")
        return out

    monkeypatch.setattr(ARImageModel, "log_prob", log_prob)


def test_a_nan_step_is_skipped_and_logged(cfg, tmp_path, monkeypatch):
    poison_training_calls(monkeypatch, {2})
    messages = []
    train(dataclasses.replace(cfg, max_steps=4, max_bad_steps=2), tmp_path / "run", progress=False, log=messages.append)
    lines = metrics(tmp_path / "run")
    skipped = [m for m in lines if m.get("skipped")]
    assert [m["step"] for m in skipped] == [2] and skipped[0]["reason"] == "non-finite loss"
    assert [m["step"] for m in lines if "train_bpd" in m] == [1, 3, 4]
    assert any("step 2: non-finite loss" in m and "skipped" in m for m in messages)
    state = read_json(tmp_path / "run" / "training_state.json")
    assert state["step"] == 4 and state["bad_steps"] == 0
    assert state["optimizer_scalars"]["0"]["step"]["value"] == 3  # Adam made 3 updates in 4 steps
    assert all(torch.isfinite(v).all() for v in read_tensors(tmp_path / "run" / "model.safetensors").values())


def test_consecutive_nan_steps_raise_and_keep_the_last_good_checkpoint(cfg, tmp_path, monkeypatch):
    run = tmp_path / "run"
    poison_training_calls(monkeypatch, set(range(4, 100)))
    with pytest.raises(TrainingDiverged, match=r"3 consecutive steps.*last good checkpoint .* \(step 3\) is kept"):
        quiet(dataclasses.replace(cfg, max_bad_steps=3, max_steps=20), run)
    assert read_json(run / "training_state.json")["step"] == 3
    model = pixelar.load_model(run)
    assert all(torch.isfinite(p).all() for p in model.state_dict().values())
    assert [m["step"] for m in metrics(run) if m.get("skipped")] == [4, 5, 6]


# ----- checkpoint files --------------------------------------------------------------------------------------
@pytest.fixture
def finished_run(cfg, tmp_path):
    """A 3-step run (checkpoint at 3) and the directory of a 6-step run of the same config."""
    quiet(dataclasses.replace(cfg, max_steps=3), tmp_path / "run")
    quiet(cfg, tmp_path / "ref")
    return tmp_path / "run", tmp_path / "ref"


@pytest.mark.parametrize(
    "name, damage, match",
    [
        ("training_state.json", "garbage", "training state record .*training_state.json is corrupt"),
        ("training_state.json", "delete", "training_state.json not found"),
        ("training_state.safetensors", "truncate", "training_state.safetensors is corrupt"),
        ("training_state.safetensors", "delete", "training state not found: .*training_state.safetensors"),
        ("config.json", "garbage", "run config .*config.json is corrupt"),
        ("config.json", "delete", "run config not found: .*config.json"),
        ("training_state.json", "other_checkpoint", "training_state.json .* come from different checkpoints"),
    ],
)
def test_damaged_checkpoint_files_are_named(finished_run, name, damage, match):
    run, ref = finished_run
    path = run / name
    if damage == "garbage":
        path.write_text("{not json")
    elif damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    else:
        shutil.copy(ref / name, path)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        quiet(TrainConfig(), run, resume=True, max_steps=6)


@pytest.mark.parametrize("damage", ["model.", "ema.", "optim.", "rng.torch", "record"])
def test_a_damaged_checkpoint_is_not_resumed(finished_run, damage, capsys):
    """A bit flipped in the training state's tensors (a raw or EMA weight's sign, an Adam moment, a generator
    state), or a value edited in its record: refused at resume, naming the file, and nothing is written."""
    run, _ = finished_run
    if damage == "record":
        record = read_json(run / "training_state.json")
        write_json(run / "training_state.json", {**record, "bad_steps": 1})
    else:
        names = sorted(read_tensors(run / "training_state.safetensors"))
        flip_bit(run / "training_state.safetensors", next(n for n in names if n.startswith(damage)))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    match = "training_state.safetensors does not match its checkpoint fingerprint .* cannot be resumed from it"
    with pytest.raises(ValueError, match=match):
        quiet(TrainConfig(), run, resume=True, max_steps=6)
    assert main(["train", "--resume", str(run), "--steps", "6", "--no-progress"]) == 2
    assert "does not match its checkpoint fingerprint" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    pixelar.load_model(run)  # model.safetensors is whole, and checked on its own


def test_interrupted_save_resumes_from_the_previous_checkpoint(finished_run, tmp_path):
    run, ref = finished_run
    # a save of a newer checkpoint crashed after writing its record, before its tensors
    shutil.copy(run / "training_state.json", run / "training_state.prev.json")
    record = read_json(run / "training_state.json")
    write_json(run / "training_state.json", {**record, "step": 6, "fingerprint": "6-crashed"})
    quiet(TrainConfig(), run, resume=True, max_steps=6)
    assert not (run / "training_state.prev.json").exists()
    assert tensors_equal(
        read_tensors(run / "training_state.safetensors"), read_tensors(ref / "training_state.safetensors")
    )
    assert tensors_equal(read_tensors(run / "model.safetensors"), read_tensors(ref / "model.safetensors"))


def test_resume_without_a_checkpoint_says_so(cfg, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        quiet(dataclasses.replace(cfg, checkpoint_every=10), run, on_step=stop_after(1))
    with pytest.raises(FileNotFoundError, match="no checkpoint .*training_state.json not found"):
        quiet(cfg, run, resume=True)
    quiet(dataclasses.replace(cfg, max_steps=1), run)  # nothing to lose: a new run may start there


# ----- evaluation ------------------------------------------------------------------------------------------------
def test_evaluate_sums_every_image_exactly():
    spec = pixelar.ImageSpec(1, 6, 5)
    g = torch.Generator().manual_seed(0)
    ds = ImageDataset(
        images=torch.randint(0, 256, (20, *spec.shape), generator=g, dtype=torch.uint8),
        labels=torch.arange(20) % 3,
        spec=spec,
        num_classes=3,
        name="mem",
    )
    torch.manual_seed(0)
    # float64: fp32 convolutions may round differently for different batch sizes (~1e-7), which would hide
    # what is tested here (every image counted once, the sum kept in float64)
    model = pixelar.create_model("pixelcnn_pp", spec, "tiny", num_classes=3).double()
    a = evaluate(model, ds, batch_size=7)  # batches of 7, 7, 6
    b = evaluate(model, ds, batch_size=1000)
    assert a["num_images"] == b["num_images"] == 20
    assert a["nats_per_image"] == pytest.approx(b["nats_per_image"], rel=1e-9, abs=0)
    assert a["bpd"] == pytest.approx(a["nats_per_image"] / (spec.dims * math.log(2)), rel=1e-12)
    with torch.no_grad():
        ref = (
            -sum(
                model.eval().log_prob(ds.images[i : i + 1].long(), ds.labels[i : i + 1]).double().item()
                for i in range(20)
            )
            / 20
        )
    assert a["nats_per_image"] == pytest.approx(ref, rel=1e-9)  # labels were passed as cond
    assert evaluate(model, ds, batch_size=4, subset=9)["num_images"] == 9
    model.train()
    evaluate(model, ds)
    assert model.training  # the mode is restored
    with pytest.raises(ValueError, match="has images .* but the model expects"):
        evaluate(pixelar.create_model("pixelcnn_pp", pixelar.ImageSpec(1, 4, 4), "tiny"), ds)


def test_lmconv_run_resumes_bitwise_with_its_order_draws(cfg, tmp_path):
    """LMConv draws one of its 8 orders per batch from the torch RNG, which checkpoints restore; the final
    evaluation scores the 8-order mixture and the samples use the naive sampler."""
    cfg = dataclasses.replace(cfg, model="lmconv", sample_n=2)
    full, cut = tmp_path / "full", tmp_path / "cut"
    result = quiet(cfg, full)
    assert 0 < result["test_bpd"] < 9 and (full / "samples.png").exists()
    with pytest.raises(KeyboardInterrupt):
        quiet(cfg, cut, on_step=stop_after(4))
    quiet(cfg, cut, resume=True)
    for name in ("model.safetensors", "training_state.safetensors"):
        assert tensors_equal(read_tensors(full / name), read_tensors(cut / name)), name
