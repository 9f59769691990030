"""pixelar.nn.dropout: the CPU mask from 16-bit uniforms drops the right fraction, scales like torch, sends
gradients only through kept elements, is reproducible from the torch RNG, and is the identity in eval."""

import pytest
import torch
import torch.nn.functional as F

from pixelar.nn import Dropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drop_fraction_and_scale(p):
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = dropout(x, p)
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < 5 * (p * (1 - p) / x.numel()) ** 0.5  # within 5 standard errors
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)))
    assert abs(y.mean().item() - 1.0) < 0.01  # unbiased, as torch's dropout


def test_positions_are_independent_of_each_other():
    torch.manual_seed(1)
    keep = dropout(torch.ones(200_000), 0.5) != 0
    # the four 16-bit uniforms of one 64-bit draw, and neighbours, must not be correlated
    for lag in (1, 2, 3, 4):
        a, b = keep[:-lag].double(), keep[lag:].double()
        corr = ((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std())
        assert abs(corr.item()) < 0.02, lag


def test_gradient_flows_only_through_kept_elements():
    torch.manual_seed(2)
    x = torch.randn(3, 5, 7, requires_grad=True)
    y = dropout(x, 0.3)
    g = torch.randn_like(y)
    y.backward(g)
    kept = y != 0
    assert torch.allclose(x.grad[kept], g[kept] / 0.7)
    assert (x.grad[~kept] == 0).all()
    assert torch.allclose(y[kept], x.detach()[kept] / 0.7)


def test_reproducible_from_the_global_rng_and_identity_when_off():
    x = torch.randn(4, 8, 8)
    torch.manual_seed(3)
    a = dropout(x, 0.5)
    torch.manual_seed(3)
    b = dropout(x, 0.5)
    assert torch.equal(a, b)
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0) is x
    layer = Dropout(0.5).eval()
    assert layer(x) is x
    assert not torch.equal(Dropout(0.5).train()(x), x)


def test_odd_sizes_and_bf16():
    torch.manual_seed(4)
    for shape in [(1,), (3,), (5, 3), (2, 3, 5, 7)]:
        x = torch.randn(shape)
        y = dropout(x, 0.5)
        assert y.shape == x.shape and torch.equal(y[y != 0], 2 * x[y != 0])
    xb = torch.randn(64, 64, dtype=torch.bfloat16)
    assert dropout(xb, 0.5).dtype == torch.bfloat16


def test_matches_torch_dropout_in_distribution():
    torch.manual_seed(5)
    x = torch.randn(100_000)
    ours, theirs = dropout(x, 0.25), F.dropout(x, 0.25, True)
    assert abs((ours == 0).float().mean() - (theirs == 0).float().mean()) < 0.01
    assert abs(ours.var() - theirs.var()) / theirs.var() < 0.03


def test_bad_probability():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout(torch.ones(3), -0.1)


def test_concat_elu_equals_the_plain_form_with_its_gradient():
    """nn.concat_elu (one autograd node, elu in place, gradient from the output) against elu(cat([x, -x])):
    the same values bitwise, gradients to float rounding, and torch's gradcheck in float64."""
    from pixelar.nn import concat_elu

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, 6, generator=g)
    x[0, 0, 0, :3] = torch.tensor([0.0, -0.0, 1e-30])  # around elu's kink
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = concat_elu(a), torch.nn.functional.elu(torch.cat([b, -b], dim=1))
    assert ya.shape == (3, 10, 4, 6) and torch.equal(ya, yb)
    w = torch.randn(ya.shape, generator=g)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7)
    x64 = torch.randn(2, 3, 3, 3, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(concat_elu, (x64,))
    with torch.no_grad():  # the cached sampler's use: no graph
        assert torch.equal(concat_elu(x), yb.detach())
