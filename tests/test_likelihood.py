"""Normalization, per-sub-pixel conditionals and causality of every registered model (float64, brute force)."""

import pytest
import torch
from likelihood_checks import causality_violations, conditional_sums, total_probability

import pixelar
from pixelar import ImageSpec, create_model

# the exact-likelihood models: the latent-variable models' log_prob is a stochastic bound, which sums to one only
# in expectation (tests/test_vdvae.py checks that by brute force, with its Monte-Carlo error)
MODELS = [n for n in pixelar.list_models() if pixelar.models.registry.model_class(n).likelihood == "exact"]
CHECK_SPECS = [ImageSpec(1, 4, 4, 2), ImageSpec(3, 4, 4, 4)]
OUTPUTS = ["categorical", "logistic_mixture", "bernoulli"]


pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def make(name, spec, **kw):
    torch.manual_seed(1)
    model = create_model(name, spec, "tiny", **kw).eval()
    # random, not-too-small weights so that every connection matters numerically
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def colour_bernoulli_refused(name, spec):
    """Backbones without R/G/B groups (PixelCNN++, LMConv) refuse a per-channel Bernoulli on colour images."""
    return spec.channels == 3 and not create_model(name, ImageSpec(1, 2, 2, 2)).grouped


def factorizes(name):
    """False for models that are no product of per-sub-pixel conditionals (grayscale_pixelcnn: p(y) p(x | y));
    their log_prob(reduce=False) and generation_order() raise NotImplementedError (tests/test_aux_pixelcnn.py)."""
    return pixelar.models.registry._lookup(name)[0].factorizes


def variants(spec, name):
    """(overrides, cond) pairs: default, class / vector / map conditioning (where the model reads a map), and
    each applicable output distribution."""
    out = [({}, None), ({"num_classes": 3}, torch.tensor([2])), ({"cond_dim": 4}, torch.randn(1, 4))]
    if "cond_channels" in pixelar.models.registry.preset(name, "tiny"):
        out.append(({"cond_channels": 2}, torch.randn(1, 2, spec.height, spec.width)))
    for kind in OUTPUTS:
        if kind == "bernoulli" and spec.num_values != 2:
            continue
        out.append(({"output": kind}, None))
    return out


@pytest.mark.parametrize("name", MODELS)
def test_all_65536_binary_4x4_images_sum_to_one(name):
    spec = ImageSpec(1, 4, 4, 2)
    torch.set_default_dtype(torch.float32)  # 65,536 images: fp32 is accurate enough here and much faster
    model = make(name, spec)
    total = total_probability(model, spec)
    assert abs(total - 1.0) < 1e-4, total


@pytest.mark.parametrize("spec", [ImageSpec(3, 2, 2, 2), ImageSpec(3, 1, 2, 4), ImageSpec(1, 2, 3, 4)], ids=str)
@pytest.mark.parametrize("name", MODELS)
def test_all_small_colour_images_sum_to_one(name, spec):
    for overrides, cond in variants(spec, name):
        if overrides.get("output") == "bernoulli" and colour_bernoulli_refused(name, spec):
            continue
        model = make(name, spec, **overrides)
        total = total_probability(model, spec, cond)
        assert abs(total - 1.0) < 1e-9, (overrides, total)


@pytest.mark.parametrize("spec", CHECK_SPECS, ids=str)
@pytest.mark.parametrize("name", MODELS)
def test_conditionals_normalized_and_causal(name, spec):
    if not factorizes(name):
        pytest.skip(f"{name} has no per-sub-pixel conditionals")
    g = torch.Generator().manual_seed(3)
    for overrides, cond in variants(spec, name):
        if overrides.get("output") == "bernoulli" and colour_bernoulli_refused(name, spec):
            continue
        model = make(name, spec, **overrides)
        x = torch.randint(0, spec.num_values, (1, *spec.shape), generator=g)
        sums = conditional_sums(model, x, cond)
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-9), (overrides, sums)
        violations, later = causality_violations(model, x, cond)
        assert violations == [], (overrides, violations[:10])
        assert later > 0, "no conditional depends on earlier sub-pixels: the check would pass vacuously"


@pytest.mark.parametrize("name", MODELS)
def test_generation_order_is_a_permutation(name):
    if not factorizes(name):
        pytest.skip(f"{name} has no generation order of the sub-pixels of x")
    spec = ImageSpec(3, 4, 5, 4)
    order = create_model(name, spec).generation_order()
    assert order.dtype == torch.long and sorted(order.tolist()) == list(range(spec.dims))


def test_checks_catch_leaks():
    """The checks must fail on broken masks: a later colour seen by an earlier one (causality), or the
    current sub-pixel seen by its own prediction (conditionals no longer sum to one)."""
    from pixelar.nn import causal_mask

    spec = ImageSpec(3, 4, 4, 4)
    x = torch.randint(0, 4, (1, *spec.shape))
    out_groups = torch.arange(12) * 3 // 12
    model = make("pixelcnn", spec)
    # reversed output groups: the R features now see G and B of the current pixel
    model.input_conv.mask = causal_mask((7, 7), (3, 3), torch.arange(3), 2 - out_groups, "A").double()
    violations, _ = causality_violations(model, x)
    assert violations, "R seeing the current G and B must be caught"
    model = make("pixelcnn", spec)
    model.input_conv.mask = causal_mask((7, 7), (3, 3), torch.arange(3), out_groups, "B").double()
    sums = conditional_sums(model, x)
    assert not torch.allclose(sums, torch.ones_like(sums), atol=1e-6), "a mask-B first layer must break normalization"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("spec", CHECK_SPECS, ids=str)
def test_every_parameter_gets_a_gradient(name, spec):
    for overrides, cond in [({}, None), ({"num_classes": 3}, torch.tensor([0, 2]))]:
        model = make(name, spec, **overrides).train()
        x = torch.randint(0, spec.num_values, (2, *spec.shape))
        loss = -model.log_prob(x, cond).mean()
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, missing


def test_joint_categorical_coupling_gets_gradient():
    spec = ImageSpec(3, 4, 4, 4)
    model = make("pixelcnn_pp", spec, output="categorical").train()
    x = torch.randint(0, 4, (2, *spec.shape))
    (-model.log_prob(x).mean()).backward()
    assert model.distribution.coupling.grad.abs().sum() > 0


def test_bernoulli_on_colour_pixel_causal_backbone_is_refused():
    with pytest.raises(ValueError, match="bernoulli"):
        create_model("pixelcnn_pp", ImageSpec(3, 4, 4, 2), output="bernoulli")
