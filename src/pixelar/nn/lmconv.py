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

Computation: the released layer runs a full im2col (a tensor k*k times the input), masks it and multiplies.
Here (MaskPlan) the taps that are open or closed at every location run as one ordinary convolution, and
only the few taps whose mask changes with the location (S-curve: 2 of 9) are gathered and masked: the
same arithmetic, several times faster on a CPU. Memory: the autograd function keeps only the input and
recomputes the gathered taps in the backward pass (as the released layer recomputes its columns), so
training memory per layer is that of an ordinary convolution. No gradient flows to the mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .orders import check_order, ranks


def kernel_masks(
    order: torch.Tensor, height: int, width: int, kernel_size: int = 3, dilation: int = 1, mask_type: str = "B"
) -> torch.Tensor:
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


class MaskPlan:
    """A per-location mask (k*k, H*W) split into what one ordinary convolution can do and what it cannot.

    A tap that reads the zero padding contributes nothing whether it is open or not, so only taps inside
    the image matter. Over those, most taps are open everywhere (e.g. the row above in raster or S-curve
    order) or closed everywhere (the row below); they form one fixed kernel mask and run as a plain
    convolution (the fast library kernel). Only the *varying* taps (S-curve: left and right; Hilbert curves:
    a few more) need the per-location mask: their shifted, masked inputs are gathered for a small matmul.
    The raster order has no varying taps at all (it is PixelCNN's mask), S-curve orders have two of nine.

    Attributes: mask (k*k, L) as given; kernel (k, k) fixed mask of the convolution; taps (V,) indices of the
    varying taps; tap_mask (V, L) their per-location mask; k, dilation, height, width.
    """

    def __init__(self, mask: torch.Tensor, height: int, width: int, kernel_size: int, dilation: int = 1):
        k, L = kernel_size, height * width
        if mask.shape != (k * k, L):
            raise ValueError(
                f"mask must be (k*k, H*W) = ({k * k}, {L}) for this input, got {tuple(mask.shape)}; "
                "build it with kernel_masks(order, H, W, k, dilation, mask_type)"
            )
        self.mask, self.k, self.dilation, self.height, self.width = mask, k, dilation, height, width
        pad = dilation * (k // 2)
        # inside[t, p]: tap t of location p reads a pixel of the image, not the padding
        ones = torch.ones(1, 1, height, width, dtype=torch.float64)
        inside = F.unfold(ones, k, dilation=dilation, padding=pad)[0] > 0  # (k*k, L)
        m = mask.detach().to("cpu", torch.float64) != 0
        always = (m | ~inside).all(1) & inside.any(1)  # open wherever the tap reads the image
        never = ~(m & inside).any(1)
        varying = ~(always | never)
        self.kernel = always.to(mask.dtype).view(k, k).to(mask.device)
        self.taps = varying.nonzero().view(-1).tolist()
        self.tap_mask = mask.detach()[self.taps]  # (V, L)

    def to(self, device=None, dtype=None) -> MaskPlan:
        plan = object.__new__(MaskPlan)
        plan.__dict__.update(self.__dict__)
        plan.mask, plan.kernel, plan.tap_mask = (
            t.to(device=device, dtype=dtype) for t in (self.mask, self.kernel, self.tap_mask)
        )
        return plan


def _tap_columns(
    x: torch.Tensor, taps: list[int], tap_mask: torch.Tensor, k: int, dilation: int, pad: int
) -> torch.Tensor:
    """The inputs under the varying taps, masked per location: x (B, C, H, W) -> (B, C*V, H*W)."""
    B, C, H, W = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    cols = torch.stack(
        [
            xp[:, :, (t // k) * dilation : (t // k) * dilation + H, (t % k) * dilation : (t % k) * dilation + W]
            for t in taps
        ],
        dim=2,
    )  # (B, C, V, H, W)
    return (cols.view(B, C, len(taps), H * W) * tap_mask.to(x.dtype)).view(B, C * len(taps), H * W)


def _tap_scatter(gcols: torch.Tensor, taps: list[int], k: int, dilation: int, pad: int, H: int, W: int) -> torch.Tensor:
    """Adjoint of _tap_columns without the mask: (B, C, V, H*W) -> (B, C, H, W)."""
    B, C = gcols.shape[:2]
    gp = gcols.new_zeros(B, C, H + 2 * pad, W + 2 * pad)
    for v, t in enumerate(taps):
        gp[:, :, (t // k) * dilation : (t // k) * dilation + H, (t % k) * dilation : (t % k) * dilation + W] += gcols[
            :, :, v
        ].view(B, C, H, W)
    return gp[:, :, pad : pad + H, pad : pad + W]


class _LocallyMaskedConvFunction(torch.autograd.Function):
    """out = conv2d(x, W * kernel) + W[:, :, taps] @ tap_columns(x) + b (see MaskPlan).

    Saves only x and the weights: the gathered tap columns are recomputed in the backward pass, so training
    memory per layer is that of an ordinary convolution."""

    @staticmethod
    def forward(ctx, x, weight, bias, kernel, tap_mask, taps: list[int], dilation: int):
        B, C, H, W = x.shape
        O, k = weight.shape[0], weight.shape[-1]
        pad = dilation * (k // 2)
        wk = weight * kernel.to(weight.dtype)
        out = F.conv2d(x, wk, bias, padding=pad, dilation=dilation)  # (B, O, H, W); autocast applies here
        if taps:
            cols = _tap_columns(x, taps, tap_mask, k, dilation, pad)  # (B, C*V, L); freed when forward returns
            w_taps = weight.view(O, C, k * k)[:, :, taps].reshape(O, -1)  # (O, C*V), same (C, V) layout as cols
            out = out + torch.matmul(w_taps, cols).view(B, O, H, W).to(out.dtype)
        ctx.save_for_backward(x, weight, kernel, tap_mask)
        ctx.geometry = (taps, k, dilation, pad, bias is not None)
        ctx.compute_dtype = out.dtype  # bf16 under autocast: the backward runs in the forward's precision
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight, kernel, tap_mask = ctx.saved_tensors
        taps, k, dilation, pad, has_bias = ctx.geometry
        B, C, H, W = x.shape
        O = weight.shape[0]
        dt = ctx.compute_dtype
        g = grad_out.to(dt)
        xc, wk = x.to(dt), (weight * kernel.to(weight.dtype)).to(dt)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx, gwk, gb = torch.ops.aten.convolution_backward(
            g,
            xc,
            wk,
            [O] if has_bias else None,
            [1, 1],
            [pad, pad],
            [dilation, dilation],
            False,
            [0, 0],
            1,
            [need_x, need_w, need_b and has_bias],
        )
        grad_w = gwk * kernel.to(dt) if need_w else None
        if taps:
            g2 = g.view(B, O, H * W)
            w_taps = weight.view(O, C, k * k)[:, :, taps].reshape(O, -1).to(dt)  # (O, C*V)
            if need_x:
                gcols = torch.matmul(w_taps.t(), g2).view(B, C, len(taps), H * W) * tap_mask.to(dt)
                gx = gx + _tap_scatter(gcols, taps, k, dilation, pad, H, W)
            if need_w:
                cols = _tap_columns(xc, taps, tap_mask, k, dilation, pad)  # recomputed instead of stored
                gw_taps = torch.matmul(g2, cols.transpose(1, 2)).sum(0).view(O, C, len(taps))
                grad_w = grad_w.view(O, C, k * k).index_add(2, torch.tensor(taps, device=x.device), gw_taps)
        return (
            gx.to(x.dtype) if need_x else None,
            grad_w.view_as(weight).to(weight.dtype) if need_w else None,
            gb.to(weight.dtype) if (need_b and has_bias) else None,
            None,
            None,
            None,
            None,
        )


def locally_masked_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor | MaskPlan, dilation: int = 1
) -> torch.Tensor:
    """Functional form: x (B, C, H, W), weight (O, C, k, k), mask (k*k, H*W) or its MaskPlan -> (B, O, H, W).

    Pass a MaskPlan (built once per order) to skip re-planning the mask at every call."""
    k = weight.shape[-1]
    if weight.dim() != 4 or weight.shape[-2] != k or k % 2 != 1:
        raise ValueError(f"weight must be (out, in, k, k) with odd k, got {tuple(weight.shape)}")
    if x.dim() != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"input must be (B, {weight.shape[1]}, H, W), got {tuple(x.shape)}")
    H, W = x.shape[2:]
    plan = mask if isinstance(mask, MaskPlan) else MaskPlan(mask, H, W, k, dilation)
    if (plan.k, plan.dilation, plan.height, plan.width) != (k, dilation, H, W):
        raise ValueError(
            f"the mask plan was made for k={plan.k}, dilation={plan.dilation}, {plan.height}x{plan.width} "
            f"images; this call has k={k}, dilation={dilation}, {H}x{W}"
        )
    dt = x.dtype if x.dtype.is_floating_point else plan.kernel.dtype
    kernel, tap_mask = plan.kernel.to(x.device, dt), plan.tap_mask.to(x.device, dt)
    return _LocallyMaskedConvFunction.apply(x, weight, bias, kernel, tap_mask, plan.taps, dilation)


class LocallyMaskedConv2d(nn.Module):
    """A k x k convolution (stride 1, "same" zero padding) with a per-location mask given at call time.

    Args:
        in_channels, out_channels: as nn.Conv2d.
        kernel_size: k, odd.
        dilation: tap spacing; the mask must be built with the same dilation.
        bias: add a learned bias.
        mask_weight: also add W_m (out, k*k) @ mask (k*k, H*W), which tells the layer which taps are open
            (the released layer's optional mask conditioning). Off by default.

    Call: layer(x (B, in, H, W), mask (k*k, H*W) or its MaskPlan) -> (B, out, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        bias: bool = True,
        mask_weight: bool = False,
    ):
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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | MaskPlan) -> torch.Tensor:
        out = locally_masked_conv2d(x, self.weight, self.bias, mask, self.dilation)
        if self.mask_weight is not None:
            B, O, H, W = out.shape
            m = mask.mask if isinstance(mask, MaskPlan) else mask
            out = out + (self.mask_weight @ m.detach().to(self.mask_weight)).view(1, O, H, W)
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
            f"bias={self.bias is not None}, mask_weight={self.mask_weight is not None}"
        )
