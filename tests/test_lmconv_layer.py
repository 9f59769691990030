"""Locally masked convolution (pixelar.nn.lmconv) against an explicit per-location reference.

- forward and all gradients equal a loop that applies weight * mask[:, p] at every location p (float64);
- with the raster order it is exactly the PixelCNN mask-B convolution;
- a stack (mask A, then B, then dilated B) is causal in the order: gradients reach only earlier pixels,
  and a wrong first-layer mask is caught;
- the unfolded input is not kept for the backward pass (memory), and no gradient reaches the mask.
"""

import pytest
import torch
import torch.nn.functional as F

from pixelar.nn import MaskedConv2d
from pixelar.nn.lmconv import LocallyMaskedConv2d, kernel_masks, locally_masked_conv2d
from pixelar.nn.orders import generation_order, ranks

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def reference(x, weight, bias, mask, dilation):
    """Per location p: a dot product of the dilated k x k window with weight * mask[:, p] reshaped (k, k)."""
    B, C, H, W = x.shape
    O, _, k, _ = weight.shape
    pad = dilation * (k // 2)
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = []
    for i in range(H):
        cols = []
        for j in range(W):
            m = mask[:, i * W + j].view(k, k)
            window = xp[:, :, i : i + dilation * (k - 1) + 1 : dilation, j : j + dilation * (k - 1) + 1 : dilation]
            y = torch.einsum("bcuv,ocuv->bo", window, weight * m)
            cols.append(y if bias is None else y + bias)
        rows.append(torch.stack(cols, dim=-1))
    return torch.stack(rows, dim=-2)  # (B, O, H, W)


CASES = [  # (C, O, H, W, k, dilation, mask_type, order name, variant)
    (3, 4, 5, 5, 3, 1, "A", "s_curve", 0),
    (2, 3, 4, 6, 3, 2, "B", "gilbert", 5),
    (1, 2, 4, 4, 5, 1, "B", "hilbert", 3),
    (4, 2, 3, 7, 3, 3, "A", "raster", 6),
    (2, 5, 6, 4, 1, 1, "B", "s_curve", 2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"C{c[0]}O{c[1]}_{c[2]}x{c[3]}_k{c[4]}d{c[5]}{c[6]}_{c[7]}{c[8]}")
def test_forward_and_gradients_equal_the_per_location_reference(case):
    C, O, H, W, k, d, mt, name, v = case
    mask = kernel_masks(generation_order(name, H, W, v), H, W, k, d, mt)
    x = torch.randn(2, C, H, W, requires_grad=True)
    weight = torch.randn(O, C, k, k, requires_grad=True)
    bias = torch.randn(O, requires_grad=True)
    out = locally_masked_conv2d(x, weight, bias, mask, d)
    ref = reference(x, weight, bias, mask, d)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, weight, bias), g)
    ref_grads = torch.autograd.grad(ref, (x, weight, bias), g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_gradcheck_without_bias():
    H, W = 3, 4
    mask = kernel_masks(generation_order("s_curve", H, W, 1), H, W, 3, 1, "A")
    x = torch.randn(2, 2, H, W, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: locally_masked_conv2d(a, b, None, mask), (x, weight))


def test_raster_order_is_the_pixelcnn_mask_b_convolution():
    H, W = 5, 6
    conv = MaskedConv2d(3, 4, 3, "B", groups=1)
    layer = LocallyMaskedConv2d(3, 4, 3)
    with torch.no_grad():
        layer.weight.copy_(conv.weight * conv.mask)
        layer.bias.copy_(conv.bias)
    x = torch.randn(2, 3, H, W)
    mask = kernel_masks(generation_order("raster", H, W), H, W, 3, 1, "B")
    torch.testing.assert_close(layer(x, mask), conv(x), atol=1e-12, rtol=1e-12)


def test_masks_of_the_docstring_example():
    mask = kernel_masks(generation_order("s_curve", 4, 4), 4, 4, 3, 1, "A")
    assert mask[:, 1 * 4 + 1].view(3, 3).tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    mask_b = kernel_masks(generation_order("s_curve", 4, 4), 4, 4, 3, 1, "B")
    assert mask_b[4, :].tolist() == [1.0] * 16  # centre tap open everywhere
    assert mask[:, generation_order("s_curve", 4, 4)[0]].sum() == 0  # the first pixel sees nothing
    # dilation 2: the taps are two pixels apart, padding closed
    md = kernel_masks(generation_order("raster", 4, 4), 4, 4, 3, 2, "A")
    assert md[:, 2 * 4 + 2].view(3, 3).tolist() == [[1, 1, 0], [1, 0, 0], [0, 0, 0]]


def receptive_fields(layers, masks, H, W, C=2):
    """Which input pixels each output pixel depends on, (L, L) bool, from gradients of a layer stack."""
    L = H * W
    x = torch.randn(L, C, H, W, requires_grad=True)
    h = x
    for i, (layer, mask) in enumerate(zip(layers, masks)):
        h = layer(torch.tanh(h) if i else h, mask)
    sel = torch.zeros_like(h)
    sel.view(L, -1, L)[torch.arange(L), :, torch.arange(L)] = 1.0  # batch element p reads output pixel p
    (g,) = torch.autograd.grad((h * sel).sum(), x)
    return g.abs().sum(1).view(L, L) > 0


def test_a_stack_is_causal_in_its_order_and_a_wrong_mask_is_caught():
    H, W = 5, 4
    order = generation_order("gilbert", H, W, 6)
    r = ranks(order)
    earlier = r.view(1, -1) < r.view(-1, 1)  # earlier[p, q]: q generated before p
    layers = [LocallyMaskedConv2d(2, 3, 3), LocallyMaskedConv2d(3, 3, 3), LocallyMaskedConv2d(3, 2, 3, dilation=2)]
    good = [
        kernel_masks(order, H, W, 3, 1, "A"),
        kernel_masks(order, H, W, 3, 1, "B"),
        kernel_masks(order, H, W, 3, 2, "B"),
    ]
    dep = receptive_fields(layers, good, H, W)
    assert not (dep & ~earlier).any(), "an output depends on its own or a later pixel"
    assert dep.sum() > 0.5 * earlier.sum()  # and on most earlier pixels: the check is not vacuous
    bad = [kernel_masks(order, H, W, 3, 1, "B")] + good[1:]  # mask B in the first layer: x_p reaches out_p
    dep = receptive_fields(layers, bad, H, W)
    assert dep.diagonal().all()


def test_unfolded_input_is_not_kept_for_backward():
    B, C, H, W, k = 2, 4, 6, 6, 3
    layer = LocallyMaskedConv2d(C, 5, k)
    mask = kernel_masks(generation_order("s_curve", H, W), H, W, k, 1, "B")
    x = torch.randn(B, C, H, W, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = layer(x, mask)
    assert max(saved) < B * C * k * k * H * W, saved  # the im2col tensor is recomputed, not stored
    assert sum(saved) <= x.numel() + layer.weight.numel() + mask.numel(), saved
    out.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


def test_no_gradient_reaches_the_mask_and_mask_weight_learns():
    H, W = 4, 4
    mask = kernel_masks(generation_order("raster", H, W), H, W, 3, 1, "B").requires_grad_(True)
    layer = LocallyMaskedConv2d(2, 3, 3, mask_weight=True)
    layer(torch.randn(2, 2, H, W), mask).square().sum().backward()
    assert mask.grad is None
    assert layer.mask_weight.grad.abs().sum() > 0


def test_bf16_autocast_forward_and_backward():
    H, W = 4, 5
    layer = LocallyMaskedConv2d(3, 4, 3).float()
    mask = kernel_masks(generation_order("s_curve", H, W), H, W, 3, 1, "B").float()
    x = torch.randn(2, 3, H, W, dtype=torch.float32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, mask)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and layer.weight.grad.dtype == torch.float32
    ref = locally_masked_conv2d(
        x.detach().double(), layer.weight.detach().double(), layer.bias.detach().double(), mask.double()
    )
    torch.testing.assert_close(out.double(), ref, atol=0.1, rtol=0.05)


def test_bad_arguments():
    with pytest.raises(ValueError, match="odd kernel"):
        LocallyMaskedConv2d(2, 2, 4)
    with pytest.raises(ValueError, match=r"mask must be \(k\*k, H\*W\)"):
        LocallyMaskedConv2d(2, 2, 3)(torch.randn(1, 2, 4, 4), torch.ones(9, 15))
    with pytest.raises(ValueError, match="mask_type"):
        kernel_masks(generation_order("raster", 2, 2), 2, 2, 3, 1, "C")
    with pytest.raises(ValueError, match="exactly once"):
        kernel_masks(torch.tensor([0, 0, 1, 2]), 2, 2)
