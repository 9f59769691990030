"""Sharded training (FSDP2, `pixelar train --shard`) on the CPU with gloo: 2 processes, a tiny model.

A sharded run takes the steps of an unsharded one (DDP's, which equal one process's: tests/test_distributed.py);
its checkpoints are an unsharded run's (full model.safetensors, optimizer state by index), so runs move between
sharded and unsharded, and model.safetensors loads with pixelar.load_model. Every registered model's default
shard units give its likelihood and gradients (a one-process group).
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
import warnings

import pytest
import torch
import torch.distributed as dist
from run_helpers import launch, quiet
from safetensors.torch import load_file

import pixelar
from pixelar.cli import main
from pixelar.models.distaug import create_distaug_model
from pixelar.training import sharding
from pixelar.training.loop import _Objective

FLAGS = [
    *("--size", "tiny", "--batch-size", "8", "--lr", "0.001", "--checkpoint-every", "2", "--log-every=1"),
    *("--sample-n", "0", "--no-progress", "--set", "dropout=0.0"),
]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    from pixelar import distributed
    from pixelar.cli import main

    distributed.finish = lambda wait=True: dist.barrier()  # stay in the group between the commands
    for argv in json.loads(sys.argv[1]):
        assert main(argv) == 0, argv
    dist.destroy_process_group()
    """
)


def train_here(cfg, run, **kw):
    """A run in this process, on one thread like each launched process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        quiet(cfg, run, **kw)
    finally:
        torch.set_num_threads(threads)


def close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].dtype.is_floating_point)
    assert worst <= atol, f"differ by {worst}"


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_sharded_runs_take_the_unsharded_steps_and_move_between_sharded_and_not(cfg, tmp_path):
    base = dataclasses.replace(cfg, lr=1e-3, checkpoint_every=2, model_overrides={"dropout": 0.0})
    train_here(dataclasses.replace(base, max_steps=4), tmp_path / "one4")
    train_here(dataclasses.replace(base, max_steps=2), tmp_path / "resumed")
    # one launch: a new sharded run of 4 steps, and the unsharded 2-step run resumed sharded to step 4
    script = tmp_path / "commands.py"
    script.write_text(SCRIPT)
    commands = [
        ["train", *FLAGS, "--dataset", cfg.dataset, "--steps", "4", "--shard", "--run-dir", "fresh"],
        ["train", "--resume", "resumed", "--steps", "4", "--shard", "--no-progress"],
    ]
    out = launch(2, json.dumps(commands), script=script, cwd=tmp_path)
    assert "returned a view tensor" not in out  # FSDP2's warning (PixelCNN++'s crops, before they were copies)
    want = load_file(str(tmp_path / "one4" / "training_state.safetensors"))
    for run in ("fresh", "resumed"):
        # measured: 3e-7 after 4 steps (raw weights, EMA, Adam state); a shard missing from the average, or
        # Adam state loaded into the wrong parameters, moves weights by about the learning rate (1e-3)
        got = load_file(str(tmp_path / run / "training_state.safetensors"))
        close(
            {k: v for k, v in got.items() if not k.startswith("rng.")},
            {k: v for k, v in want.items() if not k.startswith("rng.")},
            1e-5,
        )
        a, b = metrics(tmp_path / run), metrics(tmp_path / "one4")
        assert [r["step"] for r in a] == [r["step"] for r in b]
        for ra, rb in zip(a, b):  # the gradient norm is over every shard
            for key in ("train_bpd", "grad_norm", "test_bpd"):
                if key in rb:
                    assert ra[key] == pytest.approx(rb[key], rel=1e-5), (run, ra["step"], key)
        model = pixelar.load_model(tmp_path / run)  # the full EMA weights, as an unsharded run writes them
        close(model.state_dict(), pixelar.load_model(tmp_path / "one4").state_dict(), 1e-5)
    # a sharded run resumed in one process, unsharded: continues as the uninterrupted run
    train_here(dataclasses.replace(base, max_steps=6), tmp_path / "one6")
    train_here(base, tmp_path / "fresh", resume=True, max_steps=6)
    close(
        load_file(str(tmp_path / "fresh" / "model.safetensors")),
        load_file(str(tmp_path / "one6" / "model.safetensors")),
        1e-5,
    )


def test_sharding_in_one_process_is_refused_naming_the_flag(cfg, tmp_path, capsys):
    argv = ["train", *FLAGS, "--dataset", cfg.dataset, "--steps", "1", "--shard", "--run-dir", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "--shard splits the model over the processes of a torchrun job" in capsys.readouterr().err


@pytest.fixture
def one_process_group(tmp_path):
    """A process group of this process alone: fully_shard works in it (each shard is the whole tensor), and
    a unit that uses its parameters outside its forward meets a DTensor there and fails."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


MAKERS = {  # variants built otherwise than create_model(name, spec, "tiny")
    "distaug": lambda spec: create_distaug_model("pixelcnn", spec, "tiny", ["rot90"]),
    # VQ-VAE-2: the bottom prior reads a map of the top codes (its conditioning stack is a unit of its own)
    "vqvae-2": lambda spec: pixelar.create_model("vqvae", spec, "tiny", levels=2, num_downsamples=1),
}


@pytest.mark.parametrize("name", [*pixelar.list_models(), *MAKERS])
def test_every_model_s_shard_units_give_its_likelihood_and_gradients(name, one_process_group, one_thread):
    spec = pixelar.ImageSpec(3, 4, 4, 16)
    torch.manual_seed(0)
    make = (lambda: MAKERS[name](spec)) if name in MAKERS else None
    model = make() if make else pixelar.create_model(name, spec, "tiny")
    if model.tokenizer is not None:
        model.tokenizer.fit(torch.randint(0, 16, (20, 3, 4, 4)), seed=0)
    ref = make() if make else pixelar.create_model(name, spec, "tiny")
    ref.load_state_dict(model.state_dict())
    model.eval(), ref.eval()  # no dropout or order draws: the same function
    x = model.encode(torch.randint(0, 16, (3, 3, 4, 4)))
    root = _Objective(model, model.objective)  # what training shards: the objective (log_prob or the ELBO)
    sharding.shard(root, model, torch.device("cpu"), "fp32")
    assert len(model.shard_units()) > 1  # the model is split, not one block
    torch.manual_seed(1)  # the same draws where a likelihood draws (a latent-variable model's estimate)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lp = root(x)
        lp.sum().backward()
    # FSDP2 warns where a unit returns a view (PixelCNN++'s cropping transposed convolutions, a Linear of 3-d
    # input, DistAug's bias did): sharding copies them
    assert [str(w.message) for w in caught if "view tensor" in str(w.message)] == []
    torch.manual_seed(1)
    want = ref.objective(x)
    torch.testing.assert_close(lp, want, rtol=1e-5, atol=1e-5)
    want.sum().backward()
    grads = {n: sharding.full(p.grad) for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == {n for n, p in ref.named_parameters() if p.grad is not None}
    for n, p in ref.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
