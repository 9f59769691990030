"""Shifted convolutions of PixelCNN++ (Salimans et al. 2017, released code `pixel_cnn_pp/nn.py`).

Instead of masking, the input is padded on the top (and left) only, so that output (i, j) sees input rows
<= i ("down" stream u) or rows <= i and, in row i, columns <= j ("down-right" stream ul). A final
`down_shift` / `right_shift` moves the receptive field strictly above / strictly left of the pixel.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..tracing import is_tracing
from .cache.graph import ConvGeometry


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> same shape, moved down one row with zeros on top."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> same shape, moved right one column with zeros on the left."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


class DownShiftedConv2d(nn.Conv2d):
    """Output (i, j) sees input rows i-kh+1..i and columns j-(kw-1)//2 .. j+(kw-1)//2 (kernel (kh, kw))."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(2, 3), stride=1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)
        kh, kw = self.kernel_size
        self._pad = ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self._pad))

    def cache_geometry(self):
        """Describe this layer for cached (incremental) evaluation, see pixelar.nn.cache."""
        return ConvGeometry(self.weight, self.bias, tuple(self.stride), pad=tuple(self._pad))


class DownRightShiftedConv2d(nn.Conv2d):
    """Output (i, j) sees input rows i-kh+1..i and columns j-kw+1..j."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(2, 2), stride=1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)
        kh, kw = self.kernel_size
        self._pad = (kw - 1, 0, kh - 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self._pad))

    def cache_geometry(self):
        """Describe this layer for cached (incremental) evaluation, see pixelar.nn.cache."""
        return ConvGeometry(self.weight, self.bias, tuple(self.stride), pad=tuple(self._pad))


class DownShiftedConvTranspose2d(nn.ConvTranspose2d):
    """Stride-2 upsampling that keeps the "down" causality: crops the bottom rows and both side columns.

    `out_size` (H, W) is the size of the matching up-pass map; odd sizes are handled by cropping.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(2, 3), stride=2):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, output_padding=1)

    def forward(self, x: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        y = super().forward(x)  # (B, C, 2H+1, 2W+2) for kernel (2, 3)
        kh, kw = self.kernel_size
        left = (kw - 1) // 2
        return y[:, :, : out_size[0], left : left + out_size[1]]

    def cache_geometry(self):
        """Describe this layer for cached (incremental) evaluation, see pixelar.nn.cache."""
        return ConvGeometry(
            self.weight,
            self.bias,
            tuple(self.stride),
            transposed=True,
            crop=(0, (self.kernel_size[1] - 1) // 2),
            output_padding=tuple(self.output_padding),
        )


class DownRightShiftedConvTranspose2d(nn.ConvTranspose2d):
    """Stride-2 upsampling that keeps the "down-right" causality: crops the bottom rows and right columns."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(2, 2), stride=2):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, output_padding=1)

    def forward(self, x: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        y = super().forward(x)  # (B, C, 2H+1, 2W+1) for kernel (2, 2)
        return y[:, :, : out_size[0], : out_size[1]]

    def cache_geometry(self):
        """Describe this layer for cached (incremental) evaluation, see pixelar.nn.cache."""
        return ConvGeometry(
            self.weight,
            self.bias,
            tuple(self.stride),
            transposed=True,
            crop=(0, 0),
            output_padding=tuple(self.output_padding),
        )


class _ConcatELU(torch.autograd.Function):
    """elu([x, -x]) with the elu done in place on the concatenation and the gradient computed from the output
    (ELU's derivative is 1 where it is > 0, else output + 1): one autograd node and one (B, 2C, H, W) tensor
    kept for backward (the output, which the next layer keeps anyway) where autograd's cat -> elu keeps the
    concatenation as well. About 7% of a PixelCNN++ small training step on the CPU; the gradient equals
    autograd's up to float rounding (elu's derivative from its output, not its input)."""

    @staticmethod
    def forward(ctx, x):
        y = torch.cat([x, x.neg()], dim=1)
        F.elu(y, inplace=True)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        d = torch.ops.aten.elu_backward(grad, 1.0, 1, 1, True, y)
        C = d.shape[1] // 2
        return d[:, :C] - d[:, C:]


def concat_elu(x: torch.Tensor) -> torch.Tensor:
    """elu([x, -x]) over channels: (B, C, H, W) -> (B, 2C, H, W)."""
    if is_tracing():  # torch.compile fuses the plain form itself
        return F.elu(torch.cat([x, -x], dim=1))
    return _ConcatELU.apply(x)
