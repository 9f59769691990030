"""Locally masked convolution (Jain, Abbeel, Pathak 2020, "Locally Masked Convolution for Autoregressive
Models", section 3.1 and its released `locally_masked_convolution.py`).

A masked convolution (PixelCNN) uses one kernel mask at every location, which fixes the generation order
to raster scan. A locally masked convolution uses a different mask at every output location, derived from
any pixel order, so one set of weights serves many orders:

    out[:, :, p] = W (O, C*k*k) @ (unfold(x)[:, :, p] * mask[:, p])   for every location p

with the mask (k*k, H*W) shared by all input channels. Tap t of location p is open when the pixel it reads
(at offset (t - centre) * dilation) was generated before p; taps in the zero padding are closed. The
centre tap is closed for mask A (first layer: a pixel never sees itself) and open for mask B (later
layers: the features at p already exclude x_p). Example, 3x3 mask A at the pixel marked o of a 4x4 image
generated in S-curve order (even rows left to right, odd rows right to left):

    order:  0  1  2  3        neighbourhood of o = pixel 6 (row 1, col 1):   1 1 1     (0, 1, 2: earlier)
            7  6  5  4                                                        0 o 1     (7: later, 5: earlier)
            8  9 10 11                                                        0 0 0     (8, 9, 10: later)
           15 14 13 12

Memory: im2col makes a tensor k*k times the input. The autograd function below keeps only the input and
recomputes the masked columns in the backward pass (as the released layer does), so training memory per
layer is that of an ordinary convolution. No gradient flows to the mask.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .orders import check_order, ranks


def kernel_masks(order: torch.Tensor, height: int, width: int, kernel_size: int = 3, dilation: int = 1,
                 mask_type: str = "B") -> torch.Tensor:
    """Per-location kernel masks for a pixel order, float (k*k, H*W); see the module docstring.

    Args:
        order: flat pixel indices r*W + c in generation order, (H*W,).
        kernel_size: k, odd.
        dilation: spacing of the taps (the layer's dilation).
        mask_type: "A" (centre closed) or "B" (centre open).
    """
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"locally masked convolutions need an odd kernel size, got {kernel_size}")
    H, W, k = height, width, kernel_size
    L = H * W
    order = check_order(order, H, W)
    rank = ranks(order).view(1, 1, H, W).double()  # (1, 1, H, W) position of each pixel in the order
    pad = dilation * (k // 2)
    # the padding gets rank L: "never generated", so its taps stay closed
    padded = F.pad(rank, (pad, pad, pad, pad), value=float(L))
    nbr = F.unfold(padded, k, dilation=dilation)  # (1, k*k, L) rank of the pixel under each tap
    mask = (nbr[0] < rank.view(1, L)).double()  # (k*k, L)
    if mask_type == "B":
        mask[(k * k) // 2] = 1.0
    return mask.to(torch.get_default_dtype())


def _masked_columns(x: torch.Tensor, mask: torch.Tensor, k: int, dilation: int, pad: int) -> torch.Tensor:
    """im2col of x (B, C, H, W) with the per-location mask applied: (B, C*k*k, H*W)."""
    B, C = x.shape[:2]
    cols = F.unfold(x, k, dilation=dilation, padding=pad)  # (B, C*k*k, L)
    L = cols.shape[-1]
    # (B, C, k*k, L) * (k*k, L): the mask broadcasts over batch and channels without being copied
    return (cols.view(B, C, k * k, L) * mask).view(B, C * k * k, L)


class _LocallyMaskedConvFunction(torch.autograd.Function):
    """out = W @ masked_columns(x) + b, saving x (not the k*k times larger columns) for the backward pass."""

    @staticmethod
    def forward(ctx, x, weight, bias, mask, k: int, dilation: int, pad: int):
        B, C, H, W = x.shape
        O = weight.shape[0]
        cols = _masked_columns(x, mask, k, dilation, pad)  # (B, C*k*k, L); freed when forward returns
        out = torch.matmul(weight.view(O, -1), cols)  # (B, O, L)
        if bias is not None:
            out = out + bias.view(1, O, 1).to(out.dtype)
        ctx.save_for_backward(x, weight, mask)
        ctx.geometry = (k, dilation, pad, H, W)
        ctx.has_bias = bias is not None
        # replay autocast in backward so that its matmuls run in the forward's precision
        dev = x.device.type
        ctx.autocast = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        return out.view(B, O, H, W)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight, mask = ctx.saved_tensors
        k, dilation, pad, H, W = ctx.geometry
        B, C = x.shape[:2]
        O = weight.shape[0]
        dev, enabled, dtype = ctx.autocast
        g = grad_out.reshape(B, O, H * W)  # (B, O, L)
        grad_x = grad_w = grad_b = None
        with torch.autocast(dev, dtype=dtype, enabled=enabled):
            if ctx.needs_input_grad[0]:
                gcols = torch.matmul(weight.view(O, -1).t(), g)  # (B, C*k*k, L)
                L = gcols.shape[-1]
                gcols = (gcols.view(B, C, k * k, L) * mask).view(B, C * k * k, L)
                # col2im sums the contributions of every window that read a pixel
                grad_x = F.fold(gcols, (H, W), k, dilation=dilation, padding=pad).to(x.dtype)
            if ctx.needs_input_grad[1]:
                cols = _masked_columns(x, mask, k, dilation, pad)  # recomputed instead of stored
                grad_w = torch.matmul(g, cols.transpose(1, 2)).sum(0).view_as(weight).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum((0, 2)).to(weight.dtype)
        return grad_x, grad_w, grad_b, None, None, None, None


def locally_masked_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                          dilation: int = 1) -> torch.Tensor:
    """Functional form: x (B, C, H, W), weight (O, C, k, k), mask (k*k, H*W) -> (B, O, H, W), same size."""
    k = weight.shape[-1]
    if weight.dim() != 4 or weight.shape[-2] != k or k % 2 != 1:
        raise ValueError(f"weight must be (out, in, k, k) with odd k, got {tuple(weight.shape)}")
    if x.dim() != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"input must be (B, {weight.shape[1]}, H, W), got {tuple(x.shape)}")
    L = x.shape[2] * x.shape[3]
    if mask.shape != (k * k, L):
        raise ValueError(f"mask must be (k*k, H*W) = ({k * k}, {L}) for this input, got {tuple(mask.shape)}; "
                         "build it with kernel_masks(order, H, W, k, dilation, mask_type)")
    mask = mask.to(device=x.device, dtype=x.dtype if x.dtype.is_floating_point else mask.dtype).detach()
    return _LocallyMaskedConvFunction.apply(x, weight, bias, mask, k, dilation, dilation * (k // 2))


class LocallyMaskedConv2d(nn.Module):
    """A k x k convolution (stride 1, "same" zero padding) with a per-location mask given at call time.

    Args:
        in_channels, out_channels: as nn.Conv2d.
        kernel_size: k, odd.
        dilation: tap spacing; the mask must be built with the same dilation.
        bias: add a learned bias.
        mask_weight: also add W_m (out, k*k) @ mask (k*k, H*W), which tells the layer which taps are open
            (the released layer's optional mask conditioning). Off by default.

    Call: layer(x (B, in, H, W), mask (k*k, H*W)) -> (B, out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1,
                 bias: bool = True, mask_weight: bool = False):
        super().__init__()
        if kernel_size % 2 != 1 or kernel_size < 1:
            raise ValueError(f"locally masked convolutions need an odd kernel size, got {kernel_size}")
        if dilation < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.dilation = kernel_size, dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.mask_weight = nn.Parameter(torch.zeros(out_channels, kernel_size * kernel_size)) if mask_weight else None
        # nn.Conv2d's default initialisation
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = locally_masked_conv2d(x, self.weight, self.bias, mask, self.dilation)
        if self.mask_weight is not None:
            B, O, H, W = out.shape
            out = out + (self.mask_weight @ mask.detach().to(self.mask_weight)).view(1, O, H, W)
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
                f"bias={self.bias is not None}, mask_weight={self.mask_weight is not None}")
