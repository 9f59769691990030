"""The Very Deep VAE and the bound-likelihood contract of latent-variable models.

Brute force on 4x4 binary images (65,536 of them): the importance-weighted estimate exp(log_prob(x, K)) is
unbiased for p(x), so it sums to 1 over all images within its Monte-Carlo error; the ELBO lies below the
importance-weighted bound, which rises with K; the closed-form KL agrees with its Monte-Carlo estimate. Then
the plumbing: save/load, exact resume, sampling with temperatures, evaluate's bound fields, the CLI, the codec's
refusal and the contract's errors.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from likelihood_checks import all_images
from run_helpers import checkpoint_differences, quiet, stop_after

import pixelar
from pixelar import ImageSpec
from pixelar.cli import main
from pixelar.data import ImageDataset
from pixelar.evaluation import describe, evaluate, image_log_prob
from pixelar.io import read_tensors
from pixelar.models.vdvae import blocks_per_level, resolutions

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

BINARY = ImageSpec(1, 4, 4, 2)


def perturbed_tiny(spec=BINARY, seed=0, scale=0.07, **overrides) -> pixelar.models.LatentImageModel:
    """A tiny vdvae (width 8) whose prior and posterior differ (its fresh prior is N(0, 1) and adds nothing):
    every weight moved by seeded noise, so the bounds are far from tight and their checks can fail (more noise
    would make the importance weights so heavy-tailed that a few draws cannot show their mean)."""
    overrides.setdefault("width", 8)
    if spec.num_values == 2:
        overrides.setdefault("output", "bernoulli")
    model = pixelar.create_model("vdvae", spec, "tiny", **overrides)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def chunked(f, xs, size=8192) -> torch.Tensor:
    return torch.cat([f(xs[i : i + size]).double() for i in range(0, len(xs), size)])


# ----- brute force: the bound's semantics ------------------------------------------------------------------
def test_importance_weighted_estimate_is_unbiased_over_all_images():
    """sum over all 65,536 images of (1/K sum_k w_k) is 1 within 4 standard errors (seeded)."""
    model = perturbed_tiny()
    xs = all_images(BINARY)
    K = 2  # draws per image: enough to estimate the spread of the sum over 65,536 images
    torch.manual_seed(1)
    with torch.no_grad():
        # the K weights of each image separately: their mean estimates p(x), their spread its standard error
        w = torch.stack([chunked(lambda x: model.log_prob(x), xs) for _ in range(K)], 1).exp()  # (N, K)
    total = w.mean(1).sum().item()
    se = math.sqrt((w.var(1, unbiased=True) / K).sum().item())
    assert 0 < se < 0.05  # the weights vary: the check has power
    assert abs(total - 1.0) < 4 * se, (total, se)
    # and the exact mixture p(x) = E_q[w] is normalised while a biased estimate is not: the ELBO's exp sums
    # to clearly less than 1 (Jensen), which this check tells apart
    with torch.no_grad():
        elbo = chunked(lambda x: -(lambda t: t["distortion"] + t["rate"])(model.elbo(x)), xs)
    assert elbo.exp().sum().item() < 1.0 - 8 * se


def test_bound_rises_with_k_and_the_elbo_lies_below():
    model = perturbed_tiny()
    xs = all_images(BINARY)[torch.randperm(2**16, generator=torch.Generator().manual_seed(0))[:256]]
    torch.manual_seed(2)
    with torch.no_grad():
        elbo = (-(lambda t: t["distortion"] + t["rate"])(model.elbo(xs))).mean().item()
        iw = {k: model.log_prob(xs, num_samples=k).mean().item() for k in (1, 8, 64)}
    assert elbo < iw[8] < iw[64], (elbo, iw)
    assert iw[1] < iw[8] - 0.05  # clearly, not by noise
    assert abs(iw[1] - elbo) < 0.1  # K=1 is the single-sample ELBO: the same expectation


def test_closed_form_kl_equals_its_monte_carlo_estimate():
    """E[-(distortion + rate)] with the KL in closed form = E[log p(x, z) - log q(z | x)] (K=1 log_prob): the
    same ELBO; a wrong KL formula (e.g. a variance for a std) moves one but not the other."""
    model = perturbed_tiny()
    x = all_images(BINARY)[[5, 1000, 40000]].repeat(4000, 1, 1, 1)  # 3 images, 4000 draws each
    torch.manual_seed(3)
    with torch.no_grad():
        t = model.elbo(x)
        analytic = -(t["distortion"] + t["rate"]).double().view(4000, 3)
        mc = model.log_prob(x, num_samples=1).double().view(4000, 3)
    se = (analytic.var(0) / 4000 + mc.var(0) / 4000).sqrt()
    assert ((analytic.mean(0) - mc.mean(0)).abs() < 4 * se).all(), (analytic.mean(0), mc.mean(0), se)
    assert (t["rate_per_layer"] >= 0).all() and t["rate_per_layer"].shape == (12000, model.num_latent_layers)
    torch.testing.assert_close(t["rate_per_layer"].sum(1), t["rate"])
    assert (t["rate"] > 0.5).all()  # the perturbed posterior is far from the prior: the KL matters


# ----- the model's shape ----------------------------------------------------------------------------------
def test_resolutions_follow_the_image():
    assert resolutions(32, 32) == [(32, 32), (16, 16), (8, 8), (4, 4), (1, 1)]
    assert resolutions(28, 28) == [(28, 28), (14, 14), (7, 7), (1, 1)]
    assert resolutions(64, 64)[-2:] == [(4, 4), (1, 1)] and len(resolutions(64, 64)) == 6
    assert resolutions(4, 4) == [(4, 4), (1, 1)]
    assert blocks_per_level([12, 7, 7, 4, 3], 5) == [12, 7, 7, 4, 3]
    assert blocks_per_level([12, 7, 7, 4, 3], 4) == [12, 7, 7, 3]
    assert blocks_per_level([12, 7, 7, 4, 3], 6) == [12, 7, 7, 4, 4, 3]
    with pytest.raises(ValueError, match="at least 2 block counts"):
        blocks_per_level([3], 2)


def test_paper_size_has_the_papers_43_layers_and_39m_parameters():
    model = pixelar.create_model("vdvae", ImageSpec(3, 32, 32), "paper")
    assert model.num_latent_layers == 43
    assert 38_500_000 < model.num_parameters() < 40_000_000  # the paper: 39M
    for spec in (ImageSpec(1, 28, 28), ImageSpec(3, 4, 4, 256), ImageSpec(1, 4, 4, 2)):
        m = pixelar.create_model("vdvae", spec, "small", **({"output": "bernoulli"} if spec.num_values == 2 else {}))
        x = torch.randint(0, spec.num_values, (2, *spec.shape))
        assert m.log_prob(x).shape == (2,) and torch.isfinite(m.objective(x)).all()


def test_class_conditioning_changes_the_bound_and_the_samples():
    model = perturbed_tiny(ImageSpec(1, 4, 4, 256), num_classes=3)
    with torch.no_grad():
        for p in model.cond_bias.parameters():
            p.normal_()
    x = torch.randint(0, 256, (2, 1, 4, 4))
    with torch.no_grad():
        a = model.elbo(x, torch.tensor([0, 0]))["rate"]
        b = model.elbo(x, torch.tensor([2, 2]))["rate"]
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="class-conditional"):
        model.log_prob(x)


# ----- the contract's errors --------------------------------------------------------------------------------
def test_abilities_a_vae_lacks_give_clear_errors():
    model = perturbed_tiny()
    x = torch.zeros(2, *BINARY.shape, dtype=torch.long)
    assert model.likelihood == "bound" and not model.factorizes
    with pytest.raises(NotImplementedError, match="latent-variable model.*reduce=False"):
        model.log_prob(x, reduce=False)
    with pytest.raises(NotImplementedError, match="latent-variable model"):
        model.generation_order()
    with pytest.raises(NotImplementedError, match="latent-variable model"):
        model.begin_cache(x)
    with pytest.raises(NotImplementedError, match="latent-variable model"):
        model.conditional_log_prob(x, torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(NotImplementedError, match="completing an image"):
        model.sample(2, x_known=x, known=torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_samples .* must be an integer >= 1"):
        model.log_prob(x, num_samples=0)
    with pytest.raises(ValueError, match="latent-variable model"):
        pixelar.models.create_distaug_model("vdvae", BINARY, "tiny", ["rot90"], output="bernoulli")
    exact = pixelar.create_model("pixelcnn", BINARY, "tiny", output="bernoulli")
    with pytest.raises(ValueError, match="likelihood of model 'pixelcnn' is exact"):
        image_log_prob(exact, x, num_samples=4)


def test_sampling_with_temperatures():
    model = perturbed_tiny(ImageSpec(3, 4, 4, 256))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = model.sample(5, generator=g())
    assert a.shape == (5, 3, 4, 4) and a.dtype == torch.long and 0 <= a.min() and a.max() < 256
    assert torch.equal(a, model.sample(5, generator=g(), method="naive"))  # one decoder pass either way
    assert model.sampling_method() == "ancestral"
    assert not torch.equal(a, model.sample(5, temperature=0.0, generator=g()))
    per_layer = model.sample(5, temperature=[1.0] * model.num_latent_layers, generator=g())
    assert torch.equal(a, per_layer)
    assert not torch.equal(a, model.sample(5, temperature=[1.0, 0.0], generator=g()))
    with pytest.raises(ValueError, match="one per latent layer"):
        model.sample(2, temperature=[1.0])
    with pytest.raises(ValueError, match="temperature must be finite numbers >= 0"):
        model.sample(2, temperature=-1.0)


def test_save_load_round_trip(tmp_path):
    model = perturbed_tiny(ImageSpec(3, 4, 4, 256))
    model.save(tmp_path / "m")
    loaded = pixelar.load_model(tmp_path / "m")
    x = torch.randint(0, 256, (3, 3, 4, 4))
    torch.manual_seed(0)
    a = model.elbo(x)["rate"]
    torch.manual_seed(0)
    assert torch.equal(a, loaded.elbo(x)["rate"])


def test_encoder_input_normalisation_and_configs_saved_before_it(tmp_path):
    spec = ImageSpec(3, 4, 4, 256)
    model = perturbed_tiny(spec, input_mean=-0.05, input_std=0.5)
    plain = perturbed_tiny(spec)  # no normalisation, and the same weights:
    plain.load_state_dict(model.state_dict())
    u = torch.rand(2, 3, 4, 4) * 2 - 1
    for a, b in zip(model.encoder(u), plain.encoder((u + 0.05) / 0.5)):
        torch.testing.assert_close(a, b)
    x = torch.randint(0, 256, (3, 3, 4, 4))
    torch.manual_seed(0)
    normalised = model.elbo(x)["rate"]
    torch.manual_seed(0)
    assert not torch.allclose(normalised, plain.elbo(x)["rate"])  # the posterior sees the normalised input
    # a config written before the option existed loads as the model it described: no normalisation
    plain.save(tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    del cfg["hparams"]["input_mean"], cfg["hparams"]["input_std"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    old = pixelar.load_model(tmp_path / "old")
    assert (old.hparams["input_mean"], old.hparams["input_std"]) == (0.0, 1.0)
    torch.manual_seed(0)
    a = old.elbo(x)["rate"]
    torch.manual_seed(0)
    assert torch.equal(a, plain.elbo(x)["rate"])
    with pytest.raises(ValueError, match="input_std .* must be > 0"):
        pixelar.create_model("vdvae", spec, "tiny", input_std=0.0)


# ----- evaluation, training, CLI ----------------------------------------------------------------------------
def test_evaluate_reports_the_bounds_and_describe_says_upper_bound():
    model = perturbed_tiny()
    images = all_images(BINARY)[::997].to(torch.uint8)  # 66 images
    ds = ImageDataset(images, None, BINARY, "all", "test")
    elbo_only = evaluate(model, ds, batch_size=32)
    assert elbo_only["bound"] and elbo_only["bpd"] == elbo_only["bpd_elbo"] and "bpd_iw" not in elbo_only
    assert elbo_only == evaluate(model, ds, batch_size=32)  # seeded: the same draws every time
    res = evaluate(model, ds, batch_size=32, num_samples=16)
    assert res["bpd"] == res["bpd_iw"] < res["bpd_elbo"] and res["num_samples"] == 16
    assert math.isclose(res["bpd_rate"] + res["bpd_distortion"], res["bpd_elbo"], rel_tol=1e-9)
    line = describe(res)
    assert line.startswith("<= ") and "upper bound: importance-weighted, K=16" in line, line
    assert "upper bound: the ELBO" in describe(elbo_only)
    exact = pixelar.create_model("pixelcnn", BINARY, "tiny", output="bernoulli")
    with pytest.raises(ValueError, match="exact"):
        evaluate(exact, ds, num_samples=4)


def test_evaluation_ties_every_draw_to_the_image_not_to_the_batch():
    """Each image's latents (the ELBO's draw and the K importance samples) come from generators seeded by its
    content: alone, beside other images, twice in one batch, in any batch size and however the K samples are
    split into passes, an image gets the same draws, so its value differs by float rounding of the batch only
    and evaluate's figure is the sum of score's."""
    model = perturbed_tiny()
    x = all_images(BINARY)[::4099]  # 16 different images
    state = torch.get_rng_state()
    for k in (None, 8):
        together = image_log_prob(model, x, num_samples=k)
        alone = torch.cat([image_log_prob(model, x[i : i + 1], num_samples=k) for i in range(len(x))])
        torch.testing.assert_close(alone, together, rtol=1e-6, atol=0)
        twice = image_log_prob(model, torch.cat([x[3:4], x[:3], x[3:4]]), num_samples=k)
        assert twice[0] == twice[-1]
        torch.testing.assert_close(twice[1:4], together[:3], rtol=1e-6, atol=0)
    model.iw_batch = 1  # one importance sample per pass instead of all 8 at once: the same draws
    torch.testing.assert_close(image_log_prob(model, x, num_samples=8), together, rtol=1e-6, atol=0)
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn from the caller's generator
    ds = ImageDataset(x.to(torch.uint8), None, BINARY, "some", "test")
    res = [evaluate(model, ds, batch_size=b, num_samples=4) for b in (16, 5, 1)]
    for key in ("bpd", "bpd_elbo", "bpd_iw", "bpd_rate"):
        assert res[1][key] == pytest.approx(res[0][key], rel=1e-6) == res[2][key], key
    scored = -image_log_prob(model, x, num_samples=4).sum().item() / (len(x) * BINARY.dims * math.log(2))
    assert scored == pytest.approx(res[0]["bpd_iw"], rel=1e-9)


def test_per_image_seeds_fix_the_draws_of_elbo_and_log_prob():
    model = perturbed_tiny()
    x = all_images(BINARY)[::4099][:6]
    seeds = torch.tensor([5, 0, 7, 7, 2**62, 3])
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    a = model.elbo(x, seeds=seeds)
    b = model.elbo(x[perm], seeds=seeds[perm].tolist())  # a list works too
    for key in ("distortion", "rate"):
        torch.testing.assert_close(b[key], a[key][perm], rtol=1e-6, atol=0)
    iw = model.log_prob(x, num_samples=4, seeds=seeds)
    torch.testing.assert_close(model.log_prob(x[perm], num_samples=4, seeds=seeds[perm]), iw[perm], rtol=1e-6, atol=0)
    assert not torch.equal(model.log_prob(x, num_samples=4, seeds=seeds + 1), iw)  # other seeds, other draws
    for bad in (seeds[:5], seeds.float(), [-1, 0, 0, 0, 0, 0], seeds[None], [True] * 6):
        with pytest.raises(ValueError, match="seeds must be one integer >= 0 per image, 6 in all"):
            model.elbo(x, seeds=bad)


def test_training_maximises_the_elbo_and_resumes_bitwise(cfg, tmp_path):
    cfg = dataclasses.replace(cfg, model="vdvae", eval_num_samples=4, sample_n=2, skip_threshold=1e6)
    full, cut = tmp_path / "full", tmp_path / "cut"
    lines = []
    result = pixelar.training.train(cfg, full, progress=False, log=lines.append)
    assert "ELBO, an upper bound" in lines[0]
    assert result["bound"] and result["test_bpd"] == result["test_bpd_iw"] <= result["test_bpd_elbo"] + 0.05
    assert lines[-1].startswith("test after 6 steps: <= ") and "upper bound" in lines[-1]
    assert (full / "samples.png").exists()
    with pytest.raises(KeyboardInterrupt):
        quiet(cfg, cut, on_step=stop_after(4))
    quiet(cfg, cut, resume=True)
    assert not checkpoint_differences(full, cut)


def test_skip_threshold_skips_steps_without_divergence(cfg, tmp_path):
    cfg = dataclasses.replace(cfg, model="vdvae", skip_threshold=1e-9, max_bad_steps=2)  # every step too large
    quiet(cfg, tmp_path / "run")
    lines = [json.loads(v) for v in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    skipped = [m for m in lines if m.get("skipped")]
    assert len(skipped) == 6 and "skip_threshold" in skipped[0]["reason"]
    state = read_tensors(tmp_path / "run" / "training_state.safetensors")
    assert not any(k.startswith("optim.") for k in state)  # Adam never stepped


def test_eval_and_score_cli_with_num_samples(cfg, tmp_path, capsys):
    run = tmp_path / "run"
    quiet(dataclasses.replace(cfg, model="vdvae"), run)
    assert main(["eval", str(run), "--num-samples", "8", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["bound"] and res["num_samples"] == 8 and res["bpd"] == res["bpd_iw"]
    assert main(["eval", str(run), "--num-samples", "8"]) == 0
    out = capsys.readouterr().out
    assert "<= " in out and "upper bound: importance-weighted, K=8" in out
    png = tmp_path / "x.png"
    pixelar.image_files.save_image(torch.zeros(1, 8, 8, dtype=torch.long), ImageSpec(1, 8, 8), png)
    assert main(["score", str(run), str(png), "--num-samples", "4"]) == 0
    assert "upper bound" in capsys.readouterr().out
    assert main(["sample", str(run), "--n", "2", "--out", str(tmp_path / "s.png"), "--temperature", "0.8"]) == 0
    assert "method ancestral" in capsys.readouterr().out
    # lossless coding by bits-back coding (tests/test_codec_bits_back.py), through the CLI
    assert main(["compress", str(run), str(png), "--out", str(tmp_path / "c.pxar")]) == 0
    assert "one-off start-up" in capsys.readouterr().out  # why a short stream costs far more than the bound
    assert main(["decompress", str(run), str(tmp_path / "c.pxar"), "--out-dir", str(tmp_path / "d")]) == 0
    capsys.readouterr()
    decoded, _ = pixelar.image_files.load_image(tmp_path / "d" / "image_000.png", ImageSpec(1, 8, 8))
    assert torch.equal(decoded, torch.zeros(1, 8, 8, dtype=torch.long))
    exact = tmp_path / "exact"
    quiet(cfg, exact)
    assert main(["eval", str(exact), "--num-samples", "8"]) == 2
    err = capsys.readouterr().err
    assert "--num-samples" in err and "exact" in err
