"""VQ-VAE (models/vqvae.py): the codebook's EMA update, restarts, straight-through gradient and commitment
loss against their formulas; the likelihood bound sums to at most one over all 4x4 binary images (and the
exact marginal over the codes to one); the prior sums to one over all code maps; the contract (elbo, log_prob,
objective's value and gradient); save/load, sampling, reconstruction after a little training, the codes
dataset, sharded training's codebook updates, training and the CLI end to end, errors."""

import dataclasses
import itertools
import json

import pytest
import torch
import torch.distributed as dist
from likelihood_checks import all_images
from run_helpers import checkpoint_differences, quiet, stop_after

import pixelar
from pixelar import ImageSpec
from pixelar.cli import main
from pixelar.config import TrainConfig
from pixelar.data import ImageDataset, codes_dataset
from pixelar.evaluation import evaluate, image_log_prob
from pixelar.io import read_tensors
from pixelar.models import vqvae
from pixelar.models.vqvae import VectorQuantizer, codebook_perplexity
from pixelar.training import sharding
from pixelar.training.loop import _Objective

BINARY = ImageSpec(1, 4, 4, 2)


def create_vqvae(image, size="tiny", **overrides):
    return pixelar.create_model("vqvae", image, size, **overrides)


def quantizer_with(embedding, count, decay=0.9, epsilon=0.01, restart_after=0):
    q = VectorQuantizer(len(embedding), len(embedding[0]), decay=decay, epsilon=epsilon, restart_after=restart_after)
    q.embedding.copy_(torch.tensor(embedding))
    q.ema_count.copy_(torch.tensor(count))
    q.ema_sum.copy_(torch.tensor(embedding) * torch.tensor(count)[:, None])
    q.unused.zero_()  # as if every code had just been used (a new codebook counts them as long unused)
    return q


def as_map(vectors):
    """A list of N D-vectors -> z_e (1, D, 1, N)."""
    return torch.tensor(vectors).t()[None, :, None, :]


# ----- the codebook -----------------------------------------------------------------------------------------------
def test_ema_update_matches_the_formula_by_hand():
    emb = [[0.0, 0.0], [1.0, 1.0], [5.0, -5.0]]
    count = [2.0, 0.5, 1.0]
    gamma, eps = 0.9, 0.01
    q = quantizer_with(emb, count, gamma, eps)
    z = [[0.1, -0.2], [0.9, 1.3], [1.2, 0.8], [-0.3, 0.1], [0.6, 0.7]]
    z_e = as_map(z)
    codes = q.quantize(z_e)
    # nearest codes by hand
    nearest = [min(range(3), key=lambda k: sum((a - b) ** 2 for a, b in zip(v, emb[k]))) for v in z]
    assert codes.flatten().tolist() == nearest == [0, 1, 1, 0, 1]
    q.update(z_e, codes)
    n = [sum(1 for c in nearest if c == k) for k in range(3)]  # [2, 3, 0]
    sums = [[sum(v[d] for v, c in zip(z, nearest) if c == k) for d in range(2)] for k in range(3)]
    N = [gamma * count[k] + (1 - gamma) * n[k] for k in range(3)]
    m = [[gamma * emb[k][d] * count[k] + (1 - gamma) * sums[k][d] for d in range(2)] for k in range(3)]
    total = sum(N)
    smoothed = [(N[k] + eps) / (total + 3 * eps) * total for k in range(3)]
    expected = [[m[k][d] / smoothed[k] for d in range(2)] for k in range(3)]
    assert torch.allclose(q.ema_count, torch.tensor(N))
    assert torch.allclose(q.ema_sum, torch.tensor(m))
    assert torch.allclose(q.embedding, torch.tensor(expected))
    assert q.unused.tolist() == [0, 0, 1]  # code 2 was not chosen


def test_statistics_are_summed_over_processes(monkeypatch):
    """Under torchrun, update() sums the batch statistics with distributed.all_sum: with a stand-in for two
    processes holding the same batch, the result equals one process with that batch twice."""
    emb, count = [[0.0, 0.0], [1.0, 1.0], [5.0, -5.0]], [2.0, 0.5, 1.0]
    z = [[0.1, -0.2], [0.9, 1.3], [1.2, 0.8]]
    twice = quantizer_with(emb, count)
    twice.update(as_map(z + z), twice.quantize(as_map(z + z)))
    monkeypatch.setattr(vqvae.distributed, "all_sum", lambda t: 2 * t.double())
    two = quantizer_with(emb, count)
    two.update(as_map(z), two.quantize(as_map(z)))
    assert torch.allclose(two.embedding, twice.embedding) and torch.allclose(two.ema_count, twice.ema_count)


def _two_process_codebook(rank: int, tmp: str) -> None:
    """One of two gloo processes: the same new codebook, a different batch on each rank, 4 updates (with
    restarts); saves its codebook state."""
    import datetime

    import torch.distributed as dist

    # a timeout: processes that disagree (e.g. on how many codes to restart) fail instead of waiting forever
    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=2, timeout=timeout)
    torch.manual_seed(0)
    q = VectorQuantizer(6, 2, restart_after=2)
    torch.manual_seed(10 + rank)
    for step in range(4):
        z = torch.randn(1, 2, 3, 4) + step
        q.update(z, q.quantize(z), generator=torch.Generator().manual_seed(step))
    torch.save(dict(q.state_dict()), f"{tmp}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_keep_the_same_codebook(tmp_path):
    """Under torchrun every process must hold the same codebook although each sees its own batch: the sums
    are all-reduced and the restart points are rank 0's."""
    import torch.multiprocessing as mp

    mp.spawn(_two_process_codebook, args=(str(tmp_path),), nprocs=2)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a), {k: torch.equal(a[k], b[k]) for k in a}


def restart_run(seed, updates):
    torch.manual_seed(0)
    batch = torch.randn(1, 2, 5, 10)  # 50 vectors near the origin; code 3 is far from all of them
    q = quantizer_with([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]], [1.0] * 4, restart_after=3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(updates):
        q.update(batch, q.quantize(batch), generator=g)
    return q, batch


def test_dead_codes_restart_after_the_configured_updates_deterministically():
    q, batch = restart_run(seed=1, updates=2)
    assert q.unused[3] == 2 and q.embedding[3].min() > 50  # not yet (smoothing moves it a little)
    q, batch = restart_run(seed=1, updates=3)
    points = batch[0].permute(1, 2, 0).reshape(-1, 2)
    assert q.unused[3] == 0 and q.ema_count[3] == 1.0
    assert any(torch.equal(q.embedding[3], p) for p in points)  # moved to an encoder output of the batch
    assert torch.equal(q.ema_sum[3], q.embedding[3])
    again, _ = restart_run(seed=1, updates=3)
    other, _ = restart_run(seed=2, updates=3)
    assert torch.equal(again.embedding, q.embedding)  # the same generator seed, the same restart
    assert not torch.equal(other.embedding[3], q.embedding[3])
    never, _ = restart_run(seed=1, updates=0)
    never.restart_after = 0
    for _ in range(5):
        never.update(batch, never.quantize(batch))
    assert never.embedding[3].min() > 50 and never.unused[3] == 5


def test_the_first_update_moves_unassigned_codes_to_encoder_outputs():
    q = VectorQuantizer(6, 2, restart_after=10)
    batch = 50 + torch.randn(1, 2, 4, 4)  # far from the random codebook: few codes assigned
    codes = q.quantize(batch)
    q.update(batch, codes, generator=torch.Generator().manual_seed(0))
    points = batch[0].permute(1, 2, 0).reshape(-1, 2)
    unassigned = [k for k in range(6) if k not in codes.flatten().tolist()]
    assert unassigned and all(any(torch.equal(q.embedding[k], p) for p in points) for k in unassigned)
    assert q.unused.tolist() == [0] * 6


def test_straight_through_gradient_reaches_the_encoder():
    q = VectorQuantizer(4, 3)
    z_e = torch.randn(2, 3, 2, 2, requires_grad=True)
    z_q, codes, _ = q(z_e)
    assert torch.equal(z_q, q.lookup(codes))  # the forward value is the code vectors
    w = torch.randn_like(z_q)
    (z_q * w).sum().backward()
    assert torch.equal(z_e.grad, w)  # the gradient passes unchanged
    torch.manual_seed(0)
    model = create_vqvae(BINARY, num_downsamples=1).train()
    model.stage1_loss(torch.randint(0, 2, (4, *BINARY.shape)))["distortion"].sum().backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0 and model.pre_quant.weight.grad.abs().sum() > 0


def test_commitment_and_codebook_losses_follow_their_definitions():
    q = VectorQuantizer(4, 3, beta=0.25, ema=False)
    z_e = torch.randn(2, 3, 2, 2, requires_grad=True)
    _, codes, losses = q(z_e)
    z_q = q.lookup(codes).detach()
    by_hand = [0.25 * float(((z_e[b] - z_q[b]) ** 2).sum().detach()) for b in range(2)]
    assert torch.allclose(losses["commitment"], torch.tensor(by_hand))
    assert torch.allclose(losses["codebook"], torch.tensor(by_hand) / 0.25)
    losses["commitment"].sum().backward(retain_graph=True)  # sg(z_q): nothing reaches the codebook
    assert q.embedding.grad is None or q.embedding.grad.abs().sum() == 0
    assert z_e.grad.abs().sum() > 0
    z_e.grad = None
    losses["codebook"].sum().backward()  # sg(z_e): only the codebook moves
    assert q.embedding.grad.abs().sum() > 0 and (z_e.grad is None or z_e.grad.abs().sum() == 0)
    assert "codebook" not in VectorQuantizer(4, 3)(z_e)[2]  # with EMA updates there is no codebook loss


# ----- the likelihood bound ---------------------------------------------------------------------------------------
def perturbed(model, scale=0.3, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
        for q in model.quantizers:  # spread the codebook so that the images use several codes
            q.embedding.mul_(3)
    return model.eval()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("levels", [1, 2])
def test_bound_sums_to_at_most_one_and_the_marginal_to_one(levels):
    """sum_x exp(log p(x|z(x)) + log p(z(x))) <= 1; where the codes are few enough to enumerate, the exact
    marginal sum_z p(z) p(x|z) sums to one and bounds log_prob from above, image by image."""
    torch.manual_seed(0)
    model = perturbed(create_vqvae(BINARY, levels=levels, num_downsamples=1 if levels == 2 else 2, num_codes=4))
    xs = all_images(BINARY)  # 65,536 images
    with torch.no_grad():
        bound = model.log_prob(xs)
        codes = model.quantize(xs)
    assert model.likelihood == "bound"
    total = bound.logsumexp(0).exp().item()
    assert total <= 1 + 1e-6, total
    used = len(torch.unique(codes if levels == 1 else codes[0].flatten(1), dim=0))
    assert used >= 2, "a single code map would make the bound check weak"
    if levels == 1:  # 1x1 code map: the 4 codes enumerate every z
        z = torch.arange(4)[:, None, None]
        with torch.no_grad():
            log_pz = model.priors[0].log_prob(z[:, None])  # (4,)
            log_px_z = torch.stack(
                [
                    model.distribution.log_prob(model.decode_codes(c[None]).expand(len(xs), -1, -1, -1), xs)
                    .flatten(1)
                    .sum(1)
                    for c in z
                ],
                1,
            )
        marginal = (log_pz[None] + log_px_z).logsumexp(1)  # (65536,) exact log p(x)
        assert abs(marginal.logsumexp(0).exp().item() - 1) < 1e-5
        assert bool((bound <= marginal + 1e-5).all())


def all_code_maps(h, w, k=4):
    return torch.tensor(list(itertools.product(range(k), repeat=h * w))).view(-1, h, w)  # k^(h*w) maps


@pytest.mark.parametrize("levels", [1, 2])
def test_prior_sums_to_one_over_all_code_maps(levels):
    torch.manual_seed(0)
    model = perturbed(create_vqvae(BINARY, levels=levels, num_downsamples=1, num_codes=4))
    for prior, (h, w) in zip(model.priors, model.code_shapes):
        if prior.cond_channels:
            continue  # the conditioned bottom prior: below
        with torch.no_grad():
            assert abs(prior.log_prob(all_code_maps(h, w)[:, None]).logsumexp(0).exp().item() - 1) < 1e-5


def test_conditioned_bottom_prior_sums_to_one_for_every_top_and_reads_it():
    """VQ-VAE-2: p(top) p(bottom | top) sums to one over all 4 x 256 pairs of code maps; the top codes move the
    bottom's probabilities."""
    torch.manual_seed(0)
    model = perturbed(create_vqvae(BINARY, levels=2, num_downsamples=1, num_codes=4))
    assert model.conditioned and model.priors[0].cond_channels and not model.priors[1].cond_channels
    bottoms, tops = all_code_maps(2, 2), all_code_maps(1, 1)
    with torch.no_grad():
        log_top = model.priors[1].log_prob(tops[:, None])  # (4,)
        log_bottom = torch.stack(
            [
                model.priors[0].log_prob(
                    bottoms[:, None], model.prior_cond(0, [None, t.expand(len(bottoms), 1, 1)], None)
                )
                for t in tops
            ]
        )  # (4 tops, 256 bottoms)
    torch.testing.assert_close(log_bottom.logsumexp(1).exp(), torch.ones(4, dtype=log_bottom.dtype), atol=1e-5, rtol=0)
    assert abs((log_top[:, None] + log_bottom).logsumexp((0, 1)).exp().item() - 1) < 1e-5
    assert (log_bottom - log_bottom[:1]).abs().max() > 1e-3, "the bottom prior ignores the top codes"


def test_independent_priors_when_asked_and_for_saved_configs_without_the_option():
    torch.manual_seed(0)
    model = create_vqvae(BINARY, levels=2, num_downsamples=1, condition_bottom=False)
    assert not model.conditioned and not any(p.cond_channels for p in model.priors)
    hparams = dict(model.hparams)
    del hparams["condition_bottom"]  # a config written before the option existed
    old = pixelar.models.registry.build_model("vqvae", BINARY, hparams)
    assert not old.conditioned and old.state_dict().keys() == model.state_dict().keys()
    with pytest.raises(ValueError, match="cannot read"):
        create_vqvae(BINARY, levels=2, num_downsamples=1, prior={"kind": "pixelsnail", "size": "tiny"})


def test_elbo_is_distortion_and_prior_code_length_and_log_prob_is_the_bound():
    torch.manual_seed(0)
    model = perturbed(create_vqvae(BINARY, levels=2, num_downsamples=1))
    x = torch.randint(0, 2, (6, *BINARY.shape))
    assert model.likelihood == "bound" and not model.factorizes and not model.stochastic_posterior
    with torch.no_grad():
        t = model.elbo(x)
        bottom, top = model.quantize(x)
        params = model.decode_codes((bottom, top))
        by_hand = -model.distribution.log_prob(params, x).flatten(1).sum(1)
        torch.testing.assert_close(t["distortion"], by_hand)
        bottom_cond = model.prior_cond(0, [bottom, top], None)  # (6, hidden, 2, 2): the map of the top codes
        rate = torch.stack(
            [-model.priors[0].log_prob(bottom[:, None], bottom_cond), -model.priors[1].log_prob(top[:, None])], 1
        )
        torch.testing.assert_close(t["rate_per_layer"], rate)  # (B, 2), bottom first
        torch.testing.assert_close(t["rate"], rate.sum(1))
        assert (t["rate"] > 0).all()
        bound = -(t["distortion"] + t["rate"])
        torch.testing.assert_close(model.log_prob(x), bound)
        # a deterministic posterior: every number of importance samples gives the same value
        assert torch.equal(model.log_prob(x, num_samples=5), model.log_prob(x))
    with pytest.raises(ValueError, match="num_samples"):
        model.log_prob(x, num_samples=0)
    with pytest.raises(NotImplementedError, match="reduce=False"):
        model.log_prob(x, reduce=False)
    with pytest.raises(NotImplementedError, match="latent-variable model"):
        model.generation_order()


def test_objective_is_the_bound_in_value_and_the_training_loss_in_gradient():
    torch.manual_seed(0)
    model = perturbed(create_vqvae(BINARY, num_downsamples=1, num_classes=3))
    x, c = torch.randint(0, 2, (6, *BINARY.shape)), torch.tensor([0, 1, 2, 0, 1, 2])
    terms = model.objective_terms(x, c)  # eval mode: the codebook stays as it is
    assert sorted(terms) == ["commitment", "distortion", "rate"]
    with torch.no_grad():
        torch.testing.assert_close(terms["rate"], model.elbo(x, c)["rate"])
    terms["rate"].sum().backward()
    assert model.encoder[0].weight.grad is None  # the codes are constants for the prior
    assert all(p.grad is not None for p in model.priors.parameters())
    # objective: the value is log_prob; the gradient is that of -(distortion + commitment + rate)
    model.zero_grad()
    obj = model.objective(x, c)
    with torch.no_grad():
        torch.testing.assert_close(obj, model.log_prob(x, c))
    obj.sum().backward()
    got = model.pre_quant.weight.grad.clone()
    model.zero_grad()
    terms = model.objective_terms(x, c)
    (-(terms["distortion"] + terms["commitment"] + terms["rate"])).sum().backward()
    torch.testing.assert_close(got, model.pre_quant.weight.grad)
    model.zero_grad()
    terms = model.objective_terms(x, c)
    (-(terms["distortion"] + terms["rate"])).sum().backward()  # without the commitment the encoder's differ
    assert not torch.allclose(got, model.pre_quant.weight.grad)
    # ema=False: the codebook loss moves the codebook, a parameter
    torch.manual_seed(0)
    plain = perturbed(create_vqvae(BINARY, num_downsamples=1, ema=False))
    plain.objective(x).sum().backward()
    assert plain.quantizers[0].embedding.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no further arguments"):
        model.objective(x, c, aug=torch.zeros(6, dtype=torch.long))


def test_training_mode_objective_updates_the_codebook_and_eval_mode_does_not():
    torch.manual_seed(0)
    model = create_vqvae(BINARY, num_downsamples=1)
    x = torch.randint(0, 2, (8, *BINARY.shape))
    before = model.quantizers[0].embedding.clone()
    model.eval()
    model.objective(x), model.elbo(x), model.log_prob(x)
    assert torch.equal(model.quantizers[0].embedding, before)
    model.train()
    model.elbo(x)  # the bound never updates
    assert torch.equal(model.quantizers[0].embedding, before)
    model.objective(x)
    assert not torch.equal(model.quantizers[0].embedding, before)


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.usefixtures("one_thread")
def test_sharded_training_mode_objective_updates_the_codebook_as_unsharded(one_process_group):
    """FSDP (training's shard=True) leaves the codebook buffers with the root group: the in-forward EMA update
    in training mode gives the unsharded value, gradient and codebook."""
    spec = ImageSpec(3, 4, 4, 16)
    torch.manual_seed(0)
    model = create_vqvae(spec, levels=2, num_downsamples=1)
    ref = create_vqvae(spec, levels=2, num_downsamples=1)
    ref.load_state_dict(model.state_dict())
    root = _Objective(model, model.objective)
    sharding.shard(root, model, torch.device("cpu"), "fp32")
    model.train(), ref.train()
    x = torch.randint(0, 16, (4, *spec.shape))
    for step in range(2):
        torch.manual_seed(step)  # restarts draw from the global generator
        lp = root(x)
        torch.manual_seed(step)
        want = ref.objective(x)
        torch.testing.assert_close(lp, want, rtol=1e-5, atol=1e-5)
    lp.sum().backward()
    want.sum().backward()
    for name in ("embedding", "ema_count", "ema_sum", "unused"):
        for q, r in zip(model.quantizers, ref.quantizers):
            torch.testing.assert_close(getattr(q, name), getattr(r, name), msg=name)
    torch.testing.assert_close(sharding.full(model.pre_quant.weight.grad), ref.pre_quant.weight.grad)


# ----- save/load, sampling, training ------------------------------------------------------------------------------
def patterns(n, seed=0):
    """8x8 binary images: one of 4 quadrant patterns per image (what a 2x2 code map with 8 codes can hold)."""
    g = torch.Generator().manual_seed(seed)
    quads = torch.randint(0, 2, (n, 1, 2, 2), generator=g)
    return quads.repeat_interleave(4, 2).repeat_interleave(4, 3)


def train_steps(model, steps, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        losses = model.stage1_loss(patterns(32, seed=step))
        loss = sum(v.mean() for v in losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    spec = ImageSpec(1, 8, 8, 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny layers: more threads only add overhead
    torch.manual_seed(0)
    fresh = create_vqvae(spec, output="categorical", hidden=16, res_hidden=8, restart_after=5).eval()
    torch.manual_seed(0)
    model = train_steps(create_vqvae(spec, output="categorical", hidden=16, res_hidden=8, restart_after=5), 40)
    torch.set_num_threads(threads)
    return fresh, model


def test_reconstruction_after_a_little_training_beats_an_untrained_model(trained):
    fresh, model = trained
    x = patterns(200, seed=999)
    error = (model.reconstruct(x) != x).float().mean().item()
    untrained = (fresh.reconstruct(x) != x).float().mean().item()
    assert error < 0.1 and error < 0.5 * untrained, (error, untrained)
    assert codebook_perplexity(model.quantize(x), model.num_codes) > 2


def test_save_load_round_trip_keeps_the_codebook(trained, tmp_path):
    _, model = trained
    model.save(tmp_path / "m")
    state = read_tensors(tmp_path / "m" / "model.safetensors", "weights")
    assert {"quantizers.0.embedding", "quantizers.0.ema_count", "quantizers.0.ema_sum", "quantizers.0.unused"} <= set(
        state
    )
    loaded = pixelar.load_model(tmp_path / "m")
    x = patterns(16, seed=5)
    assert torch.equal(loaded.quantizers[0].unused, model.quantizers[0].unused)
    assert torch.equal(loaded.log_prob(x), model.log_prob(x))
    assert model.config()["model"] == "vqvae" and model.config()["hparams"]["output"] == {"kind": "categorical"}


def test_sample_shape_range_and_reproducibility(trained):
    _, model = trained
    a = model.sample(5, generator=torch.Generator().manual_seed(3))
    b = model.sample(5, generator=torch.Generator().manual_seed(3), method="naive")
    assert a.shape == (5, 1, 8, 8) and a.dtype == torch.long and int(a.min()) >= 0 and int(a.max()) <= 1
    assert torch.equal(a, b)  # the prior's cached and naive samplers draw the same codes
    assert not torch.equal(a, model.sample(5, temperature=0.0, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="temperature"):
        model.sample(1, temperature=-1.0)
    with pytest.raises(ValueError, match="known must be a bool mask"):
        model.sample(1, x_known=torch.zeros(1, 1, 8, 8, dtype=torch.long), known=torch.ones(1, 8, 8))


def recorded_prior_calls(model):
    """Wrap each prior's sample to record the kept codes and mask it is given (the calls still run)."""
    calls = []
    for level, prior in enumerate(model.priors):

        def spy(*args, _level=level, _sample=prior.sample, **kw):
            calls.append((_level, kw.get("x_known"), kw.get("known")))
            return _sample(*args, **kw)

        prior.sample = spy
    return calls


@pytest.mark.parametrize("levels", [1, 2])
def test_completion_through_the_codes_keeps_kept_pixels_and_the_codes_they_cover(levels):
    """A code is kept where every pixel it covers is kept, the others are drawn by its prior (top first);
    kept pixels come back unchanged and the hidden pixels' values do not matter."""
    torch.manual_seed(0)
    spec = ImageSpec(1, 8, 8, 4)
    model = perturbed(create_vqvae(spec, levels=levels, num_downsamples=1, num_codes=4)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 4, (3, *spec.shape), generator=g)
    known = torch.ones(3, 8, 8, dtype=torch.bool)
    known[:, 5, 2] = False  # one hidden pixel: bottom code (2, 1) of 2x2 cells, top code (1, 0) of 4x4 cells
    calls = recorded_prior_calls(model)
    out = model.sample(3, x_known=x, known=known, generator=torch.Generator().manual_seed(2))
    assert out.shape == x.shape and out.dtype == torch.long
    assert torch.equal(out[known[:, None]], x[known[:, None]])
    assert [level for level, _, _ in calls] == list(reversed(range(levels)))  # top first
    for level, codes, mask in calls:
        expected = torch.ones_like(mask)
        expected[:, (5 >> (1 + level)), (2 >> (1 + level))] = False
        assert torch.equal(mask, expected), level
        filled = x.masked_fill(~known[:, None], 2)  # the hidden pixel as the encoder saw it: mid-grey
        want = model.quantize(filled)
        assert torch.equal(codes[:, 0][mask], (want if levels == 1 else want[level])[mask])
    # the hidden pixel's value is never read: another value there, the same completions
    y = x.clone()
    y[:, 0, 5, 2] = (x[:, 0, 5, 2] + 1) % 4
    again = model.sample(3, x_known=y, known=known, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(again[~known[:, None].expand_as(x)], out[~known[:, None].expand_as(x)])
    # everything hidden: completion is sampling
    none = torch.zeros(3, 8, 8, dtype=torch.bool)
    free = model.sample(3, x_known=x, known=none, generator=torch.Generator().manual_seed(4))
    assert torch.equal(free, model.sample(3, generator=torch.Generator().manual_seed(4)))


def test_codes_dataset_holds_the_code_maps(trained):
    _, model = trained
    images = patterns(10, seed=7).to(torch.uint8)
    ds = ImageDataset(images, torch.arange(10) % 3, model.image, 3, "toy")
    codes = codes_dataset(model, ds, batch_size=4)
    assert codes.spec == ImageSpec(1, 2, 2, model.num_codes) == model.code_image()
    assert torch.equal(codes.images[:, 0].long(), model.quantize(images.long()))
    assert torch.equal(codes.labels, ds.labels)
    with pytest.raises(ValueError, match="at most 256 codes"):
        codes_dataset(create_vqvae(model.image, num_codes=300), ds)


@pytest.mark.usefixtures("one_thread")
def test_sides_that_are_no_multiple_of_the_downsampling_are_padded_and_cropped():
    spec = ImageSpec(1, 3, 5, 2)  # padded to 4x6 for the encoder: a 2x3 code map
    torch.manual_seed(0)
    model = perturbed(create_vqvae(spec, num_downsamples=1, num_codes=4))
    assert model.code_shapes == [(2, 3)] and model.code_image() == ImageSpec(1, 2, 3, 4)
    xs = all_images(spec)  # 32,768 images
    with torch.no_grad():
        bound = model.log_prob(xs)
        assert model.decode_codes(model.quantize(xs[:2])).shape[2:] == (3, 5)
    assert bound.logsumexp(0).exp().item() <= 1 + 1e-6
    assert model.sample(2).shape == (2, 1, 3, 5) and model.reconstruct(xs[:2]).shape == (2, 1, 3, 5)
    two = create_vqvae(ImageSpec(1, 28, 28, 256), levels=2, num_downsamples=2)  # 28 -> 32: 8x8 and 4x4 codes
    assert two.code_shapes == [(8, 8), (4, 4)]


def test_bad_options_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match="levels must be 1"):
        create_vqvae(BINARY, levels=3)
    with pytest.raises(ValueError, match="categorical"):
        create_vqvae(BINARY, prior={"output": "logistic_mixture"})
    with pytest.raises(ValueError, match="decay"):
        create_vqvae(BINARY, decay=1.0)
    with pytest.raises(ValueError, match="valid sizes"):
        create_vqvae(BINARY, "huge")
    with pytest.raises(ValueError, match="unknown option"):
        create_vqvae(BINARY, codes=4)


def test_importance_samples_are_refused_where_the_posterior_is_deterministic():
    model = create_vqvae(BINARY).eval()
    x = all_images(BINARY)[:3]
    ds = ImageDataset(x.to(torch.uint8), None, BINARY, "some", "test")
    for call in (lambda: evaluate(model, ds, num_samples=8), lambda: image_log_prob(model, x, num_samples=8)):
        with pytest.raises(ValueError, match="changes nothing for model 'vqvae': its posterior is deterministic"):
            call()
    with pytest.raises(ValueError, match="eval_num_samples changes nothing for 'vqvae'"):
        TrainConfig(model="vqvae", eval_num_samples=4).validate()
    assert evaluate(model, ds)["bpd"] == pytest.approx(evaluate(model, ds, batch_size=1)["bpd"], rel=1e-6)


# ----- training and the command line ------------------------------------------------------------------------------
@pytest.mark.usefixtures("one_thread")
def test_training_resumes_bitwise_and_the_cli_reports_the_bound(cfg, tmp_path, capsys):
    """pixelar train trains autoencoder, codebook and prior in one run directory (the codebook's buffers and
    restarts included in exact resume); eval reports the bound and its parts, sample writes a PNG, compress and
    decompress round-trip images."""
    cfg = dataclasses.replace(cfg, model="vqvae", model_overrides={"restart_after": 2}, sample_n=2)
    full, cut = tmp_path / "full", tmp_path / "cut"
    lines = []
    result = pixelar.training.train(cfg, full, progress=False, log=lines.append)
    assert result["bound"] and lines[-1].startswith("test after 6 steps: <= ") and "upper bound" in lines[-1]
    with pytest.raises(KeyboardInterrupt):
        quiet(cfg, cut, on_step=stop_after(4))
    quiet(cfg, cut, resume=True)
    assert not checkpoint_differences(full, cut)
    assert "quantizers.0.ema_sum" in read_tensors(full / "model.safetensors")
    # train bits/dim are the bound on the training batch: the objective's value is log_prob
    records = [json.loads(v) for v in (full / "metrics.jsonl").read_text().splitlines()]
    train_bpd = [r["train_bpd"] for r in records if "train_bpd" in r]
    assert len(train_bpd) == 6 and all(0 < b < 20 for b in train_bpd)
    capsys.readouterr()
    assert main(["eval", str(full), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["bound"] and res["bpd"] == res["bpd_elbo"] == pytest.approx(result["test_bpd"])
    assert res["bpd_distortion"] > 0 and res["bpd_rate"] > 0
    assert res["bpd_distortion"] + res["bpd_rate"] == pytest.approx(res["bpd"])
    model = pixelar.load_model(full)
    ds = pixelar.data.load_dataset(cfg.dataset, "test")
    assert evaluate(model, ds).items() <= res.items()
    assert main(["eval", str(full)]) == 0
    out = capsys.readouterr().out
    assert "<= " in out and "upper bound" in out and "distortion" in out
    assert main(["eval", str(full), "--num-samples", "8"]) == 2  # importance sampling would change nothing
    assert "--num-samples" in (err := capsys.readouterr().err) and "posterior is deterministic" in err, err
    png = tmp_path / "s.png"
    assert main(["sample", str(full), "--n", "2", "--out", str(png)]) == 0
    assert png.exists() and "method ancestral" in capsys.readouterr().out
    # compress codes z(x) with the prior, then x given z: decompress returns the files' images exactly
    x = ds.images[:3].long()
    files = [tmp_path / f"in{i}.png" for i in range(3)]
    for img, f in zip(x, files):
        pixelar.image_files.save_image(img, model.image, f)
    pxar, out = tmp_path / "c.pxar", tmp_path / "decoded"
    assert main(["compress", str(full), *map(str, files), "--out", str(pxar)]) == 0
    assert main(["decompress", str(full), str(pxar), "--out-dir", str(out)]) == 0
    back = torch.stack([pixelar.image_files.load_image(out / f"image_{i:03d}.png", model.image)[0] for i in range(3)])
    assert torch.equal(back, x)
