"""PixelCNN with auxiliary variables (grayscale_pixelcnn, pyramid_pixelcnn) beyond the shared likelihood tests.

- interval_log_prob of every output distribution against brute force over the allowed values, and exactly one
  for a forced value even in the logistic tails;
- the grey view's allowed intervals equal the brute-force set of values that can still reach grey level y;
- grayscale: the parts add up to log p(x); brute-force normalization with several grey levels; dropping the
  interval restriction is caught (the total falls below one); reduce=False / generation_order refuse;
- pyramid: level sizes, coarse-to-fine generation order, parts per level, a 3-level pyramid passes the
  conditional / causality checks and a finer level that reads its own level is caught;
- both: samples follow the model (empirical frequencies against exp(log_prob) on every image of a tiny spec,
  class-conditional), temperature 0 is deterministic, evaluate() and `pixelar eval` report the parts.
"""

import itertools

import numpy as np
import pytest
import torch
from likelihood_checks import all_images, causality_violations, conditional_sums, total_probability

from pixelar import ImageSpec, create_model
from pixelar.distributions import make_distribution
from pixelar.models.aux_pixelcnn import gray_intervals, pyramid_sizes, to_gray

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def make(name, spec, scale=0.3, **kw):
    torch.manual_seed(1)
    model = create_model(name, spec, "tiny", **kw).eval()
    with torch.no_grad():  # random, not-too-small weights: every connection matters
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


# ----- truncated conditionals of the output distributions -----------------------------------------------------
@pytest.mark.parametrize(
    "kind,joint,spec",
    [
        ("categorical", True, ImageSpec(3, 2, 3, 5)),
        ("categorical", False, ImageSpec(3, 2, 3, 5)),
        ("logistic_mixture", True, ImageSpec(3, 2, 3, 6)),
        ("logistic_mixture", True, ImageSpec(1, 2, 3, 6)),
        ("bernoulli", False, ImageSpec(3, 2, 3, 2)),
    ],
)
def test_interval_log_prob_is_the_renormalized_conditional(kind, joint, spec):
    g = torch.Generator().manual_seed(0)
    kw = {"nr_mix": 3} if kind == "logistic_mixture" else {}
    dist = make_distribution(spec, kind, joint=joint, **kw)
    if getattr(dist, "coupling", None) is not None:
        with torch.no_grad():
            dist.coupling.normal_(generator=g)
    B, (C, H, W), K = 4, spec.shape, spec.num_values
    params = torch.randn(B, dist.num_params, H, W, generator=g)
    x = torch.randint(0, K, (B, C, H, W), generator=g)
    lo = torch.minimum(x, torch.randint(0, K, x.shape, generator=g))
    hi = torch.maximum(x, torch.randint(0, K, x.shape, generator=g))
    got = dist.interval_log_prob(params, x, lo, hi)
    # brute force: log p(x_c | x_<c) - log sum_{v in [lo_c, hi_c]} p(v | x_<c), each v through the plain log_prob
    per_v = []
    for v in range(K):
        for c in range(C):
            xv = x.clone()
            xv[:, c] = v
            per_v.append(dist.log_prob(params, xv)[:, c])
    per_v = torch.stack(per_v).view(K, C, B, H, W).permute(2, 1, 3, 4, 0)  # (B, C, H, W, K)
    v = torch.arange(K)
    inside = (v >= lo.unsqueeze(-1)) & (v <= hi.unsqueeze(-1))
    want = dist.log_prob(params, x) - torch.logsumexp(per_v.masked_fill(~inside, float("-inf")), dim=-1)
    assert torch.allclose(got, want, atol=1e-9), (got - want).abs().max()
    assert torch.all(got[lo == hi] == 0)  # a forced value has probability exactly one
    # a value outside its interval has probability zero
    x_out = torch.where(lo > 0, lo - 1, torch.where(hi < K - 1, hi + 1, x))
    out = dist.interval_log_prob(params, x_out, lo, hi)
    assert torch.all(out[x_out != x] == float("-inf")) and bool((x_out != x).any())


def test_logistic_interval_masses_stay_exact_in_the_tails():
    """Tiny scales and far means (bin masses far below the released code's 1e-5 fallback): the truncated
    conditionals still sum to one over the allowed values, a forced value still gets exactly 1, gradients stay
    finite."""
    spec = ImageSpec(3, 1, 1, 256)
    dist = make_distribution(spec, "logistic_mixture", joint=True, nr_mix=2)
    g = torch.Generator().manual_seed(1)
    params = torch.randn(1, dist.num_params, 1, 1, generator=g) * 4
    params[:, 2 : 2 + 6] = torch.tensor([3.0, -3.0, 2.5, -2.5, 3.5, 3.0]).view(1, 6, 1, 1)  # means far outside [-1, 1]
    params[:, 8:14] = -6.0  # log-scales: very narrow logistics
    params.requires_grad_(True)
    lo, hi = torch.tensor([100, 0, 250]).view(1, 3, 1, 1), torch.tensor([140, 0, 255]).view(1, 3, 1, 1)
    xs = torch.tensor([[r, 0, b] for r in range(100, 141) for b in range(250, 256)]).view(-1, 3, 1, 1)
    lp = dist.interval_log_prob(params.expand(len(xs), -1, -1, -1), xs, lo.expand_as(xs), hi.expand_as(xs))
    assert torch.all(lp[:, 1] == 0)
    assert abs(torch.logsumexp(lp[::6, 0].flatten(), 0).item()) < 1e-9  # R over its interval
    assert abs(torch.logsumexp(lp[:6, 2].flatten(), 0).item()) < 1e-9  # B over its interval, given R = 100
    lp.sum().backward()
    assert torch.isfinite(params.grad).all()


# ----- the grey view ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels,K,levels", [(3, 4, 2), (3, 4, 4), (3, 8, 3), (3, 8, 8), (1, 8, 3), (1, 5, 5)])
def test_gray_intervals_are_exactly_the_values_that_can_reach_y(channels, K, levels):
    xs = torch.tensor(list(itertools.product(range(K), repeat=channels))).view(-1, channels, 1, 1)
    ys = to_gray(xs, levels, K)
    assert int(ys.min()) == 0 and int(ys.max()) == levels - 1 and len(ys.unique()) == levels
    lo, hi = gray_intervals(xs, ys, levels, K)
    table = {tuple(v.flatten().tolist()): int(y) for v, y in zip(xs, ys)}
    for n, x in enumerate(xs.flatten(1).tolist()):
        y = int(ys[n])
        for c in range(channels):
            # brute force: values v of channel c such that some later channels give grey level y
            ok = [
                v
                for v in range(K)
                if any(
                    table[tuple(x[:c]) + (v,) + rest] == y
                    for rest in itertools.product(range(K), repeat=channels - c - 1)
                )
            ]
            assert ok == list(range(int(lo[n, c]), int(hi[n, c]) + 1)), (x, c, ok, lo[n, c], hi[n, c])


def test_gray_levels_must_fit_the_values():
    with pytest.raises(ValueError, match="gray_levels"):
        create_model("grayscale_pixelcnn", ImageSpec(1, 4, 4, 2), "small")  # 16 levels on binary images
    with pytest.raises(ValueError, match="gray_levels"):
        create_model("grayscale_pixelcnn", ImageSpec(3, 4, 4, 4), gray_levels=1)


# ----- grayscale PixelCNN ---------------------------------------------------------------------------------------
def test_grayscale_parts_add_up_and_the_grey_part_is_the_grey_model():
    spec = ImageSpec(3, 5, 4, 16)
    model = make("grayscale_pixelcnn", spec, gray_levels=6, num_classes=3)
    x = torch.randint(0, 16, (3, *spec.shape), generator=torch.Generator().manual_seed(0))
    c = torch.tensor([0, 2, 1])
    parts = model.log_prob_parts(x, c)
    assert list(parts) == ["gray", "image_given_gray"]
    assert torch.allclose(parts["gray"] + parts["image_given_gray"], model.log_prob(x, c), atol=0, rtol=0)
    assert torch.equal(parts["gray"], model.gray_net.log_prob(model.to_gray(x), c))
    assert torch.all(parts["image_given_gray"] < 0)
    with pytest.raises(NotImplementedError, match="log_prob_parts"):
        model.log_prob(x, c, reduce=False)
    with pytest.raises(NotImplementedError):
        model.generation_order()


@pytest.mark.parametrize(
    "spec,levels,output",
    [
        (ImageSpec(3, 1, 2, 4), 3, "logistic_mixture"),
        (ImageSpec(3, 1, 2, 4), 4, "categorical"),
        (ImageSpec(1, 2, 3, 4), 3, "logistic_mixture"),
        (ImageSpec(1, 2, 3, 3), 2, "categorical"),
    ],
)
def test_grayscale_sums_to_one_over_all_images(spec, levels, output):
    model = make("grayscale_pixelcnn", spec, gray_levels=levels, output=output, num_classes=2)
    assert abs(total_probability(model, spec, torch.tensor([1])) - 1.0) < 1e-6


def test_grayscale_without_the_interval_restriction_is_caught():
    """p(x | y) renormalized over all values (not only those of grey level y) leaks mass: the total drops."""
    spec = ImageSpec(3, 1, 2, 4)
    model = make("grayscale_pixelcnn", spec, gray_levels=3)
    dist = model.distribution
    dist.interval_log_prob = lambda params, x, lo, hi: type(dist).log_prob(dist, params, x)
    assert total_probability(model, spec) < 0.99


# ----- pyramid PixelCNN -----------------------------------------------------------------------------------------
def test_pyramid_levels_and_generation_order():
    assert pyramid_sizes(32, 32, 8) == [(32, 32), (16, 16), (8, 8)]
    assert pyramid_sizes(28, 28, 8) == [(28, 28), (14, 14), (7, 7)]
    assert pyramid_sizes(5, 3, 1) == [(5, 3), (3, 2), (2, 1), (1, 1)]
    spec = ImageSpec(3, 5, 6, 4)
    model = create_model("pyramid_pixelcnn", spec, coarsest_size=2)
    assert model.sizes == [(5, 6), (3, 3), (2, 2)]
    order = model.generation_order()
    assert sorted(order.tolist()) == list(range(spec.dims))
    pixels = order.view(-1, 3)  # R, G, B of one pixel side by side
    assert torch.equal(pixels - pixels[:, :1], torch.tensor([0, 30, 60]).expand_as(pixels))
    pix = pixels[:, 0].tolist()
    levels = [int(model.pixel_levels().flatten()[p]) for p in pix]
    assert levels == sorted(levels, reverse=True)  # coarse to fine
    assert pix[:4] == [0, 4, 24, 28]  # the 2x2 level: (0,0), (0,4), (4,0), (4,4) in raster order
    assert [levels.count(v) for v in (2, 1, 0)] == [4, 9 - 4, 30 - 9]


def test_pyramid_parts_per_level_add_up():
    spec = ImageSpec(1, 8, 8, 16)
    model = make("pyramid_pixelcnn", spec, coarsest_size=2)
    x = torch.randint(0, 16, (2, *spec.shape), generator=torch.Generator().manual_seed(0))
    parts = model.log_prob_parts(x)
    assert list(parts) == ["2x2", "4x4", "8x8"]
    assert torch.allclose(sum(parts.values()), model.log_prob(x), atol=1e-10)


def test_three_level_pyramid_is_normalized_and_causal_and_a_leak_is_caught():
    spec = ImageSpec(3, 4, 4, 4)
    model = make("pyramid_pixelcnn", spec, coarsest_size=1, output="categorical")
    assert model.num_levels == 3
    x = torch.randint(0, 4, (1, *spec.shape), generator=torch.Generator().manual_seed(2))
    sums = conditional_sums(model, x)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-9)
    violations, later = causality_violations(model, x)
    assert violations == [] and later > 0
    # a finer level whose embedding reads its own level's pixels, new ones included: sees the future
    model.coarser_level = lambda xl: torch.cat([xl, torch.ones_like(xl[:, :1])], dim=1)
    violations, _ = causality_violations(model, x)
    assert violations, "a level reading its own new pixels must be caught"
    small = ImageSpec(1, 2, 4, 2)
    assert abs(total_probability(make("pyramid_pixelcnn", small, coarsest_size=1), small) - 1.0) < 1e-6


# ----- sampling --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,spec,kw",
    [
        ("grayscale_pixelcnn", ImageSpec(3, 1, 1, 4), dict(gray_levels=3, output="logistic_mixture")),
        ("grayscale_pixelcnn", ImageSpec(1, 1, 2, 4), dict(gray_levels=2, output="categorical")),
        ("pyramid_pixelcnn", ImageSpec(1, 2, 2, 3), dict(coarsest_size=1, output="logistic_mixture")),
    ],
)
def test_samples_follow_the_model(name, spec, kw):
    """Empirical frequencies of 10,000 class-conditional samples against exp(log_prob) of every image."""
    model = make(name, spec, scale=0.5, num_classes=2, **kw)
    n = 10000
    cond = torch.ones(n, dtype=torch.long)
    x = model.sample(n, cond, generator=torch.Generator().manual_seed(0), method="naive")
    images = all_images(spec)
    with torch.no_grad():
        p = model.log_prob(images, torch.ones(len(images), dtype=torch.long)).exp()
    codes = (x.flatten(1) * spec.num_values ** torch.arange(spec.dims - 1, -1, -1)).sum(1)
    freq = torch.bincount(codes, minlength=len(images)).double() / n
    tv = 0.5 * (freq - p).abs().sum().item()
    assert tv < 0.04, tv  # sampling noise ~0.01; the broken sampler this caught was at 0.46


@pytest.mark.parametrize("name", ["grayscale_pixelcnn", "pyramid_pixelcnn"])
def test_temperature_zero_is_deterministic_and_temperature_changes_samples(name):
    spec = ImageSpec(3, 4, 4, 8)
    model = make(name, spec, num_classes=2)
    cond = torch.tensor([0, 1])
    a = model.sample(2, cond, temperature=0.0, generator=torch.Generator().manual_seed(1), method="naive")
    b = model.sample(2, cond, temperature=0.0, generator=torch.Generator().manual_seed(2), method="naive")
    assert torch.equal(a, b)
    c = model.sample(2, cond, temperature=1.0, generator=torch.Generator().manual_seed(1), method="naive")
    d = model.sample(2, cond, temperature=0.5, generator=torch.Generator().manual_seed(1), method="naive")
    assert not torch.equal(c, a) and not torch.equal(c, d)


@pytest.mark.parametrize("spec,levels", [(ImageSpec(3, 4, 5, 8), 4), (ImageSpec(1, 5, 4, 16), 4)], ids=str)
def test_grayscale_cached_sampling_equals_naive_and_completion_keeps_pixels(spec, levels):
    """Both stages cached (grey PixelCNN++ and the colour stage reading y's embedding as a constant map):
    the same images as the naive sampler, for class conditioning, temperatures and completion."""
    model = make("grayscale_pixelcnn", spec, gray_levels=levels, num_classes=3)
    C, H, W = spec.shape
    x = torch.randint(0, spec.num_values, (3, C, H, W), generator=torch.Generator().manual_seed(0))
    known = torch.zeros(3, H, W, dtype=torch.bool)
    known[:, :2] = True
    known[1, 3, 1:] = True  # known pixels in one image only: the step runs, the pixel is kept
    cond = torch.tensor([0, 1, 2])
    for seed, temperature, completion in [(4, 1.0, False), (5, 0.6, False), (6, 0.0, False), (3, 1.0, True)]:
        kw = dict(x_known=x, known=known) if completion else {}
        out = {
            method: model.sample(
                3, cond, temperature=temperature, generator=torch.Generator().manual_seed(seed), method=method, **kw
            )
            for method in ("cached", "naive")
        }
        assert torch.equal(out["cached"], out["naive"]), (seed, temperature, completion)
        if completion:
            keep = known[:, None].expand_as(x)
            assert torch.equal(out["cached"][keep], x[keep])


def test_colour_stage_cache_matches_the_full_forward_at_every_pixel():
    """params_at of the colour stage's incremental forward equals params_given_gray at every pixel while x is
    filled in raster order (float64; unfilled pixels hold garbage that a correct cache never reads)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        spec = ImageSpec(3, 5, 4, 8)
        model = make("grayscale_pixelcnn", spec, gray_levels=4, num_classes=2, scale=0.5)
        g = torch.Generator().manual_seed(1)
        final = torch.randint(0, 8, (2, *spec.shape), generator=g)
        x = torch.randint(0, 8, (2, *spec.shape), generator=g)
        y, cond = model.to_gray(final), torch.tensor([1, 0])
        state = model.image_net.begin_cache(x, model.scale_input, model.gray_net.scale_input(y), cond)
        for i in range(spec.height):
            for j in range(spec.width):
                ref = model.params_given_gray(x, y, cond)[:, :, i, j]
                torch.testing.assert_close(state.params_at(i, j), ref, atol=1e-10, rtol=1e-10)
                x[:, :, i, j] = final[:, :, i, j]
    finally:
        torch.set_default_dtype(old)


def test_pyramid_cache_refuses_out_of_order_levels():
    spec = ImageSpec(1, 4, 4, 4)
    model = make("pyramid_pixelcnn", spec)
    state = model.begin_cache(torch.zeros(1, *spec.shape, dtype=torch.long))
    state.params_at(0, 1)  # a pixel of the finest level
    with pytest.raises(ValueError, match="coarse to fine"):
        state.params_at(0, 0)  # back to the coarsest level


# ----- evaluation ------------------------------------------------------------------------------------------------
def test_evaluate_and_cli_report_the_parts(tmp_path, capsys):
    from pixelar.cli import main
    from pixelar.data import load_dataset
    from pixelar.evaluation import evaluate

    torch.set_default_dtype(torch.float32)
    spec = ImageSpec(3, 4, 4, 256)
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        x_train=rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8),
        x_test=rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8),
    )
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}", "test")
    assert ds.spec == spec
    for name, keys in (("grayscale_pixelcnn", ["gray", "image_given_gray"]), ("pyramid_pixelcnn", ["2x2", "4x4"])):
        model = create_model(name, spec, "tiny")
        res = evaluate(model, ds, batch_size=2)
        assert list(res["bpd_parts"]) == keys
        assert abs(sum(res["bpd_parts"].values()) - res["bpd"]) < 1e-6  # float32 log-probs
        model.save(tmp_path / name)
        assert main(["eval", str(tmp_path / name), "--dataset", f"npz:{tmp_path / 'd.npz'}"]) == 0
        out = capsys.readouterr().out
        assert "parts: " + " + ".join(keys[:1]) in out and f"= {res['bpd']:.4f} bits/dim" in out
