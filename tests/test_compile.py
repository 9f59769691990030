"""The compiled path (torch.compile of log_prob): same numbers as eager, same likelihood guarantees, and a
clear fallback to eager mode where compilation is unavailable."""

import dataclasses

import pytest
import torch
from likelihood_checks import causality_violations, total_probability

import pixelar
from pixelar import ImageSpec, create_model
from pixelar.config import TrainConfig
from pixelar.models import compiled as compiled_mod
from pixelar.models import compiled_log_prob, compiled_objective

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def needs_compile():
    ok, why = pixelar.models.compile_available()
    if not ok:
        pytest.skip(f"torch.compile is not available here: {why}")


def tiny(name, spec, **kw):
    torch.manual_seed(1)
    model = create_model(name, spec, "tiny", **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


# ----- fallback (no compiler needed) --------------------------------------------------------------------------
def test_unavailable_compile_falls_back_to_eager_with_one_log_line(monkeypatch):
    monkeypatch.setattr(compiled_mod, "_AVAILABLE", (False, "InvalidCxxCompiler: no C++ compiler"))
    model = tiny("pixelcnn_pp", ImageSpec(1, 4, 4, 2)).eval()
    lines = []
    f = compiled_log_prob(model, log=lines.append)
    assert not f.compiled
    assert len(lines) == 1 and "not available" in lines[0] and "eager" in lines[0] and "InvalidCxxCompiler" in lines[0]
    x = torch.randint(0, 2, (5, 1, 4, 4))
    assert torch.equal(f(x), model.log_prob(x))
    with pytest.raises(ValueError, match="values must be in"):
        f(x + 2)  # input checks still apply


def test_a_failing_first_compiled_call_falls_back_to_eager(monkeypatch):
    monkeypatch.setattr(compiled_mod, "_AVAILABLE", (True, ""))

    def broken_compile(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("backend exploded\nlong traceback")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = tiny("pixelcnn", ImageSpec(1, 4, 4, 2)).eval()
    lines = []
    f = compiled_log_prob(model, log=lines.append)
    x = torch.randint(0, 2, (3, 1, 4, 4))
    assert torch.equal(f(x), model.log_prob(x))
    assert not f.compiled and len(lines) == 1 and "backend exploded" in lines[0] and "eager" in lines[0]


def test_train_with_compile_unavailable_logs_and_matches_eager_training(monkeypatch, tmp_path):
    monkeypatch.setattr(compiled_mod, "_AVAILABLE", (False, "no compiler"))
    import numpy as np

    from pixelar.training import train

    x = np.random.default_rng(0).integers(0, 4, size=(40, 1, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, x_test=x[:8])
    cfg = TrainConfig(
        model="pixelcnn_pp",
        size="tiny",
        dataset=f"npz:{tmp_path / 'd.npz'}",
        batch_size=8,
        max_steps=3,
        sample_n=0,
        checkpoint_every=100,
    )
    runs = {}
    for flag in (False, True):
        lines = []
        train(dataclasses.replace(cfg, compile=flag), tmp_path / f"run{flag}", progress=False, log=lines.append)
        runs[flag] = (pixelar.load_model(tmp_path / f"run{flag}").state_dict(), lines)
    assert any("not available" in l for l in runs[True][1])
    assert not any("not available" in l for l in runs[False][1])
    for k, v in runs[False][0].items():
        assert torch.equal(v, runs[True][0][k]), k


# ----- the compiled computation (needs a working torch.compile, e.g. a C++ compiler on CPU) -----------------
# compiling is slow on a CPU (about a minute per tiny model and pass on 2 cores, several for PixelCNN++), so
# the default run compiles PixelCNN only; `pytest -m slow` covers the other families
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "name", ["pixelcnn", pytest.param("gated_pixelcnn", marks=SLOW), pytest.param("pixelcnn_pp", marks=SLOW)]
)
def test_compiled_log_prob_equals_eager_and_keeps_the_likelihood_guarantees(name):
    needs_compile()
    spec = ImageSpec(1, 4, 4, 2)
    model = tiny(name, spec).eval()
    f = compiled_log_prob(model)
    assert f.compiled
    # normalization over all 65,536 binary 4x4 images, every chunk through the compiled graph
    xs_total = total_probability(model, spec)  # eager reference
    f_total = total_probability(_AsModel(model, f), spec)
    assert abs(f_total - 1.0) < 1e-4 and abs(xs_total - f_total) < 1e-5
    x = torch.randint(0, 2, (17, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(f(x, reduce=False), model.log_prob(x, reduce=False), rtol=1e-5, atol=1e-5)
    violations, later = causality_violations(_AsModel(model, f), x[:1])
    assert violations == [] and later > 0


@pytest.mark.parametrize("name", ["pixelcnn", pytest.param("pixelcnn_pp", marks=SLOW)])
def test_compiled_training_step_matches_eager(name):
    """Loss and every gradient of a class-conditional training step, compiled vs eager (fp32, 1e-4)."""
    needs_compile()
    spec = ImageSpec(3, 6, 6, 16)
    x = torch.randint(0, 16, (4, 3, 6, 6), generator=torch.Generator().manual_seed(0))
    grads = {}
    for mode in ("eager", "compiled"):
        model = tiny(name, spec, num_classes=3).train()
        y = torch.tensor([0, 1, 2, 1])
        f = compiled_log_prob(model) if mode == "compiled" else model.log_prob
        loss = -f(x, y).mean()
        loss.backward()
        grads[mode] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(grads["compiled"][0], grads["eager"][0], rtol=1e-5, atol=1e-4)
    for n, g in grads["eager"][1].items():
        torch.testing.assert_close(grads["compiled"][1][n], g, rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize("levels", [1, pytest.param(2, marks=SLOW)])
def test_compiled_vqvae_training_steps_match_eager(levels):
    """The VQ-VAE's objective updates its codebooks in training mode (moving averages, restarts: data-dependent
    steps that Dynamo runs eagerly between compiled graphs): two compiled steps give the eager loss, gradients
    and codebook buffers (fp32, 1e-4); two levels: the bottom prior reads the map of the top codes."""
    needs_compile()
    spec = ImageSpec(1, 8, 8, 16)
    x = torch.randint(0, 16, (2, 4, *spec.shape), generator=torch.Generator().manual_seed(0))
    out = {}
    for mode in ("eager", "compiled"):
        model = tiny("vqvae", spec, levels=levels, num_downsamples=1 if levels == 2 else 2).train()
        f = compiled_objective(model) if mode == "compiled" else model.objective
        torch.manual_seed(5)  # the restarts draw from the global generator
        losses = []
        for step in range(2):
            model.zero_grad()
            loss = -f(x[step]).mean()
            loss.backward()
            losses.append(loss.detach())
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        out[mode] = (torch.stack(losses), grads, {n: b.clone() for n, b in model.named_buffers()})
    torch.testing.assert_close(out["compiled"][0], out["eager"][0], rtol=1e-5, atol=1e-4)
    assert out["compiled"][1].keys() == out["eager"][1].keys()
    for n, g in out["eager"][1].items():  # gradients reach thousands here: fp32 rounding relative to the largest
        torch.testing.assert_close(out["compiled"][1][n], g, rtol=1e-4, atol=1e-5 * max(1.0, g.abs().max().item()))
    for n, b in out["eager"][2].items():
        torch.testing.assert_close(out["compiled"][2][n], b, rtol=1e-4, atol=1e-5, msg=n)


class _AsModel:
    """A model whose log_prob is the compiled one, for the black-box likelihood checks."""

    def __init__(self, model, f):
        self.model, self.f, self.image = model, f, model.image

    def log_prob(self, x, cond=None, reduce=True):
        return self.f(x, cond, reduce)

    def generation_order(self):
        return self.model.generation_order()
