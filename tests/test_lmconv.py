"""LMConv (models/lmconv.py): likelihood checks in many orders, order ensembles, training orders, completion,
conditional likelihood of a hidden region, and the sampler following model.generation_order()."""

import json
import math

import numpy as np
import pytest
import torch
from likelihood_checks import all_images, causality_violations, conditional_sums, total_probability

import pixelar
from pixelar import ImageSpec, create_model
from pixelar.nn import LocallyMaskedConv2d
from pixelar.nn.norm import positional_norm
from pixelar.nn.orders import dihedral_orders, generation_order, hidden_last_score
from pixelar.sampling.naive import generate, generation_steps

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def make(spec, scale=0.3, **kw):
    torch.manual_seed(1)
    model = create_model("lmconv", spec, "tiny", **kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


class InOrder:
    """The model seen through another generation order (to show that a wrong order is caught)."""

    def __init__(self, model, order):
        self.model, self.image, self.order = model, model.image, order

    def generation_order(self):
        C, HW = self.image.channels, self.image.height * self.image.width
        return (self.order.view(-1, 1) + torch.arange(C).view(1, C) * HW).reshape(-1)

    def log_prob(self, *a, **kw):
        return self.model.log_prob(*a, **kw)


ORDER_CASES = [("s_curve", k) for k in range(8)] + [("raster", 5), ("hilbert", 2), ("gilbert", 7)]


@pytest.mark.parametrize("spec", [ImageSpec(1, 4, 4, 2), ImageSpec(3, 4, 4, 4)], ids=str)
def test_conditionals_normalized_and_causal_in_every_order(spec):
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, spec.num_values, (1, *spec.shape), generator=g)
    for base, k in ORDER_CASES:
        model = make(spec, order=base, nr_resnet=1)  # with up-pass resnets too (tiny has none)
        model.set_order(k)
        assert torch.equal(model.current_order(), generation_order(base, 4, 4, k))
        sums = conditional_sums(model, x)
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-9), (base, k)
        violations, later = causality_violations(model, x)  # along model.generation_order()
        assert violations == [] and later > 0, (base, k, violations[:5])
    # a custom permutation, and the check fails along an order that is not the one in use
    perm = torch.randperm(16, generator=g)
    model.set_order(perm)
    assert causality_violations(model, x)[0] == []
    assert causality_violations(InOrder(model, generation_order("s_curve", 4, 4)), x)[0], (
        "generation_order() must be the order in use: another order has to show violations"
    )


def test_every_order_and_the_ensemble_sum_to_one():
    spec = ImageSpec(1, 3, 2, 3)  # 729 images
    model = make(spec, nr_resnet=1)
    for k in (0, 3, 6):
        model.set_order(k)
        assert abs(total_probability(model, spec) - 1.0) < 1e-9, k
    xs = all_images(spec)
    with torch.no_grad():
        total = torch.logsumexp(model.log_prob(xs, orders="all"), 0).exp().item()
    assert abs(total - 1.0) < 1e-9


def test_ensemble_log_prob_is_a_mixture():
    spec = ImageSpec(3, 5, 4, 16)
    model = make(spec, scale=0.5)
    x = torch.randint(0, 16, (4, *spec.shape))
    with torch.no_grad():
        per = model.log_prob_per_order(x)  # (B, K)
        ens = model.log_prob(x, orders="all")
        two = model.log_prob(x, orders=[1, 4])
        single = model.log_prob(x)
    K = model.num_orders
    assert per.shape == (4, K) and K == 8
    torch.testing.assert_close(ens, torch.logsumexp(per, 1) - math.log(K))
    assert torch.all(ens >= per.max(1).values - math.log(K) - 1e-9)  # never below the best order minus log K
    assert torch.all(ens <= per.max(1).values + 1e-9)
    assert torch.all(ens >= per.mean(1) - 1e-9)  # Jensen: at least the average log-likelihood
    assert not torch.allclose(per[:, 0], per[:, 1])  # the orders really differ
    torch.testing.assert_close(two, torch.logsumexp(per[:, [1, 4]], 1) - math.log(2))
    torch.testing.assert_close(single, per[:, 0])  # eval mode: the selected order (variant 0)
    with pytest.raises(ValueError, match="one order"):
        model.log_prob(x, reduce=False, orders="all")
    with pytest.raises(ValueError, match="1..8"):
        model.log_prob(x, orders=9)


def test_training_draws_an_order_per_batch_and_eval_uses_the_selected_one():
    spec = ImageSpec(1, 4, 4, 4)
    model = make(spec).train()
    x = torch.randint(0, 4, (2, *spec.shape))
    orders = dihedral_orders("s_curve", 4, 4)
    drawn = set()
    torch.manual_seed(5)
    for _ in range(12):
        lp = model.log_prob(x)
        o = model.current_order()
        k = [torch.equal(o, orders[i]) for i in range(8)].index(True)
        drawn.add(k)
        with model.using_order(k):  # the batch's log-prob is that order's (dropout is 0)
            torch.testing.assert_close(lp, model.log_prob(x))
    assert len(drawn) >= 4
    torch.manual_seed(5)  # the draws come from the global RNG: a resumed run draws the same orders
    again = []
    for _ in range(12):
        model.log_prob(x)
        again.append(model.current_order())
    model.eval()
    assert torch.equal(model.current_order(), orders[0])
    one = create_model("lmconv", spec, num_orders=1).train()  # K = 1: always the base order
    one.log_prob(x)
    assert torch.equal(one.current_order(), orders[0])


def test_sampler_follows_the_generation_order():
    spec = ImageSpec(3, 4, 3, 8)
    model = make(spec).set_order(6)
    x = torch.zeros(2, *spec.shape, dtype=torch.long)
    seen = []

    def params_at(i, j):
        seen.append(i * spec.width + j)
        return model(x)[:, :, i, j]

    generate(model, x, params_at, 1.0, torch.Generator().manual_seed(0), None)
    assert seen == model.current_order().tolist()
    # the raster models keep the raster loop: pixel by pixel, channels R, G, B within a pixel
    pixelcnn = create_model("pixelcnn", spec)
    assert generation_steps(pixelcnn) == [(i, j, [0, 1, 2]) for i in range(4) for j in range(3)]


@pytest.mark.parametrize("spec", [ImageSpec(1, 5, 4, 4), ImageSpec(3, 4, 5, 8)], ids=str)
def test_cached_params_equal_the_forward_pass_at_every_pixel_in_every_order(spec):
    """The incremental forward (one column per pixel) against a full forward pass on the current x, pixel by
    pixel along the order in use; pixels not generated yet hold garbage that a correct cache never reads."""
    g = torch.Generator().manual_seed(4)
    model = make(spec, nr_resnet=1, num_classes=3)  # up-pass resnets, short-cuts, dilated layers, conditioning
    cond = torch.tensor([2, 0])
    H, W = spec.height, spec.width
    for k in [0, 3, 6, "perm"]:
        model.set_order(torch.randperm(H * W, generator=g) if k == "perm" else k)
        final = torch.randint(0, spec.num_values, (2, *spec.shape), generator=g)
        x = torch.randint(0, spec.num_values, (2, *spec.shape), generator=g)  # garbage until generated
        state = model.begin_cache(x, cond)
        for p in model.current_order().tolist():
            i, j = divmod(p, W)
            torch.testing.assert_close(state.params_at(i, j), model(x, cond)[:, :, i, j], atol=1e-10, rtol=1e-10)
            x[:, :, i, j] = final[:, :, i, j]
        with pytest.raises(ValueError, match="order in use"):
            state.params_at(*divmod(int(model.current_order()[0]), W))


def test_cached_sampling_equals_naive_in_an_order_and_in_completion():
    spec = ImageSpec(3, 5, 4, 8)
    model = make(spec, nr_resnet=1).set_order(5)
    for temperature in (1.0, 0.0):
        a = model.sample(2, temperature=temperature, generator=torch.Generator().manual_seed(0), method="naive")
        b = model.sample(2, temperature=temperature, generator=torch.Generator().manual_seed(0))  # cached default
        assert torch.equal(a, b) and a.shape == (2, *spec.shape)
    g = torch.Generator().manual_seed(1)
    known = torch.rand(2, 5, 4, generator=g) < 0.5
    known[:, 0] = True  # known in both images: the sampler skips them, the cache still computes their columns
    x = torch.randint(0, 8, (2, *spec.shape), generator=g)
    kw = dict(x_known=x, known=known)
    a = model.sample(2, generator=torch.Generator().manual_seed(3), method="naive", **kw)
    b = model.sample(2, generator=torch.Generator().manual_seed(3), method="cached", **kw)
    assert torch.equal(a, b) and torch.equal(b[known[:, None].expand_as(x)], x[known[:, None].expand_as(x)])


def test_completion_order_puts_hidden_pixels_last_and_completion_keeps_the_rest():
    spec = ImageSpec(3, 6, 5, 8)
    model = make(spec)
    keep_bottom = torch.zeros(6, 5, dtype=torch.bool)
    keep_bottom[3:] = True  # the top is hidden: the row-reflected S-curve already generates it last
    assert torch.equal(model.completion_order(keep_bottom), generation_order("s_curve", 6, 5, 1))
    assert torch.equal(model.completion_order(~keep_bottom), generation_order("s_curve", 6, 5, 0))
    g = torch.Generator().manual_seed(2)
    known = torch.rand(6, 5, generator=g) < 0.5  # an arbitrary region
    order = model.completion_order(known)
    assert hidden_last_score(order, ~known) == 0
    x = torch.randint(0, 8, spec.shape, generator=g)
    out = model.sample(3, x_known=x.expand(3, -1, -1, -1), known=known.expand(3, -1, -1), generator=g, method="naive")
    assert torch.equal(out[:, :, known], x[:, known].expand(3, -1, -1))
    assert torch.equal(model.current_order(), model.orders[0])  # the completion order was temporary


def test_conditional_likelihood_of_a_region_by_brute_force():
    """log p(x_hidden | x_visible) + log p(x_visible) = log p(x) under the completion order, where p(x_visible)
    sums p over every value of the hidden pixels; and the conditional sums to one over those values."""
    spec = ImageSpec(1, 4, 4, 2)
    model = make(spec, scale=0.5)
    known = torch.ones(4, 4, dtype=torch.bool)
    known[1, 1] = known[2, 2] = known[0, 3] = known[3, 0] = known[2, 1] = False  # 5 hidden pixels
    x = torch.randint(0, 2, (1, *spec.shape), generator=torch.Generator().manual_seed(4))
    hidden_vals = all_images(ImageSpec(1, 1, 5, 2)).view(32, 5)
    xs = x.repeat(32, 1, 1, 1)
    xs[:, 0][:, ~known] = hidden_vals
    with torch.no_grad():
        cond = model.conditional_log_prob(xs, known)  # (32,)
        with model.using_order(model.completion_order(known)):
            joint = model.log_prob(xs)  # (32,)
    log_p_visible = torch.logsumexp(joint, 0)
    torch.testing.assert_close(cond + log_p_visible, joint)
    assert abs(torch.logsumexp(cond, 0).exp().item() - 1.0) < 1e-9
    # the conditional is not the joint restricted to hidden pixels under the default order
    with torch.no_grad():
        default = model.log_prob(xs, reduce=False)[:, 0][:, ~known].sum(1)
    assert not torch.allclose(default, cond)


def test_bad_order_arguments():
    spec = ImageSpec(1, 4, 6, 4)
    model = create_model("lmconv", spec)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        model.set_order(8)
    with pytest.raises(ValueError, match="exactly once"):
        model.set_order(torch.zeros(24, dtype=torch.long))
    with pytest.raises(ValueError, match="gilbert"):
        create_model("lmconv", spec, order="hilbert")
    with pytest.raises(ValueError, match="bool mask"):
        model.completion_order(torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="'all'"):
        model.log_prob(torch.zeros(1, 1, 4, 6, dtype=torch.long), orders="best")


def test_paper_size_parameter_count():
    with torch.device("meta"):
        n = create_model("lmconv", ImageSpec(3, 32, 32, 256), "paper").num_parameters()
    assert abs(n - 46.1e6) / 46.1e6 < 0.01, n  # about 46.1M for the released CIFAR-10 model (papers.md)


def test_evaluate_reports_the_order_ensemble_and_the_single_order_beside_it():
    from pixelar.data import ImageDataset
    from pixelar.evaluation import evaluate

    torch.set_default_dtype(torch.float32)
    spec = ImageSpec(1, 4, 4, 16)
    model = make(spec)
    images = torch.randint(0, 16, (5, *spec.shape), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    ds = ImageDataset(images, None, spec, None, "random", split="test")
    res = evaluate(model, ds, batch_size=2)
    x = images.long()
    with torch.no_grad():
        ens = model.log_prob(x, orders="all")
        single = model.log_prob(x)
    scale = 5 * spec.dims * math.log(2)
    assert res["num_orders"] == 8 and len(res["bpd_per_order"]) == 8
    assert res["bpd"] == pytest.approx(-ens.double().sum().item() / scale, rel=1e-5)
    assert res["bpd_single_order"] == pytest.approx(-single.double().sum().item() / scale, rel=1e-5)
    assert res["bpd"] <= min(res["bpd_per_order"]) + math.log(8) / (spec.dims * math.log(2)) + 1e-6
    one = evaluate(create_model("lmconv", spec, num_orders=1), ds)
    assert "num_orders" not in one


# ----- the released code's options: positional normalisation (pono) and mask weights ----------------------------
def test_positional_norm_normalises_each_pixel_over_the_channels():
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(2, 5, 3, 4, generator=g) + 1
    y = positional_norm(x)
    flat = x.permute(0, 2, 3, 1).reshape(-1, 5).numpy()  # one row per pixel
    want = (flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, ddof=1, keepdims=True) + 1e-5)  # unbiased
    torch.testing.assert_close(y.permute(0, 2, 3, 1).reshape(-1, 5), torch.from_numpy(want))
    moved = x.clone()
    moved[:, :, 1, 2] += 5 * torch.rand(2, 5, generator=g)
    changed = (positional_norm(moved) != y).any(1)  # (B, H, W): only the pixel that moved
    assert changed[:, 1, 2].all() and int(changed.sum()) == 2
    torch.testing.assert_close(positional_norm(x[:, :, 2, 3]), y[:, :, 2, 3])  # a (B, C) column as the maps' pixel
    assert positional_norm(x.float()).dtype == torch.float32


@pytest.mark.parametrize("spec", [ImageSpec(1, 4, 4, 2), ImageSpec(3, 4, 4, 4)], ids=str)
def test_pono_and_mask_weight_keep_every_order_normalised_causal_and_cached(spec):
    g = torch.Generator().manual_seed(6)
    x = torch.randint(0, spec.num_values, (1, *spec.shape), generator=g)
    model = make(spec, nr_resnet=1, normalization="pono", mask_weight=True)
    convs = [m for m in model.modules() if isinstance(m, LocallyMaskedConv2d)]
    assert convs and all(m.mask_weight is not None and torch.count_nonzero(m.mask_weight) for m in convs)
    for k in (5, "perm"):  # a transposed S-curve and a random order (the base order: every other test)
        model.set_order(torch.randperm(16, generator=g) if k == "perm" else k)
        sums = conditional_sums(model, x)
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-9), k
        violations, later = causality_violations(model, x)
        assert violations == [] and later > 0, (k, violations[:5])
        # the column cache against the full forward pass at every pixel, other pixels holding garbage
        final = torch.randint(0, spec.num_values, (2, *spec.shape), generator=g)
        xg = torch.randint(0, spec.num_values, (2, *spec.shape), generator=g)
        state = model.begin_cache(xg)
        for p in model.current_order().tolist():
            i, j = divmod(p, spec.width)
            torch.testing.assert_close(state.params_at(i, j), model(xg)[:, :, i, j], atol=1e-10, rtol=1e-10)
            xg[:, :, i, j] = final[:, :, i, j]
        a = model.sample(2, generator=torch.Generator().manual_seed(1), method="naive")
        assert torch.equal(a, model.sample(2, generator=torch.Generator().manual_seed(1)))  # cached, the default
    known = torch.rand(2, 4, 4, generator=g) < 0.5
    kw = dict(x_known=torch.randint(0, spec.num_values, (2, *spec.shape), generator=g), known=known)
    a = model.sample(2, generator=torch.Generator().manual_seed(2), method="naive", **kw)
    assert torch.equal(a, model.sample(2, generator=torch.Generator().manual_seed(2), method="cached", **kw))


def test_each_option_changes_the_network_and_configs_saved_before_them_load_as_before(tmp_path):
    spec = ImageSpec(3, 4, 5, 8)
    model = make(spec, nr_resnet=1, normalization="pono", mask_weight=True)
    x = torch.randint(0, 8, (2, *spec.shape), generator=torch.Generator().manual_seed(0))
    plain = create_model("lmconv", spec, "tiny", nr_resnet=1, mask_weight=True).eval()
    plain.load_state_dict(model.state_dict())  # the same weights without pono
    with torch.no_grad():
        out = model(x)
        assert not torch.allclose(out, plain(x))
        for m in model.modules():
            if isinstance(m, LocallyMaskedConv2d):
                m.mask_weight.zero_()
        assert not torch.allclose(out, model(x))  # the mask weights feed the output
    # a config written before the options existed loads as the model it described: neither option
    old = make(spec)
    old.save(tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    del cfg["hparams"]["normalization"], cfg["hparams"]["mask_weight"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    loaded = pixelar.load_model(tmp_path / "old")
    assert (loaded.hparams["normalization"], loaded.hparams["mask_weight"]) == ("none", False)
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x), old.log_prob(x))
    with pytest.raises(ValueError, match="normalization must be one of none, pono"):
        create_model("lmconv", spec, normalization="batch")
    with pytest.raises(ValueError, match="nr_filters >= 2"):
        create_model("lmconv", spec, normalization="pono", nr_filters=1)
    with pytest.raises(ValueError, match="mask_weight must be true or false"):
        create_model("lmconv", spec, mask_weight=1)
