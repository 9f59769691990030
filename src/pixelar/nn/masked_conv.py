"""Masked convolutions with R/G/B channel groups (van den Oord et al. 2016, PixelRNN paper, section 3.4).

Every feature map is assigned to a colour group g in [0, C). A connection from input group g_in to output
group g_out through the kernel tap at the centre (the current pixel) is allowed only when
g_in < g_out (mask A, first layer) or g_in <= g_out (mask B, all later layers). Taps strictly above, or
left of the centre in the centre row, are fully open; taps below or right of the centre are closed.
With C = 1 this reduces to the familiar spatial masks A and B.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache.graph import ConvGeometry


def channel_groups(n: int, groups: int) -> torch.Tensor:
    """Colour group of each of n feature maps: contiguous, as even as possible. (n,) int64."""
    if n < groups:
        raise ValueError(f"{n} feature maps cannot be split into {groups} colour groups; use at least {groups}")
    return torch.arange(n) * groups // n


def causal_mask(
    kernel_size: tuple[int, int],
    center: tuple[int, int],
    in_groups: torch.Tensor,
    out_groups: torch.Tensor,
    mask_type: str,
) -> torch.Tensor:
    """Weight mask (out, in, kh, kw) for a raster-order causal convolution with colour groups."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    kh, kw = kernel_size
    ci, cj = center
    spatial = torch.zeros(kh, kw)
    spatial[:ci, :] = 1.0  # rows above
    spatial[ci, :cj] = 1.0  # left in the current row
    mask = spatial.expand(len(out_groups), len(in_groups), kh, kw).clone()
    g_out = out_groups.view(-1, 1)
    g_in = in_groups.view(1, -1)
    allowed = (g_in < g_out) if mask_type == "A" else (g_in <= g_out)
    mask[:, :, ci, cj] = allowed.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """Conv2d whose weight is multiplied by a fixed causal mask.

    Args:
        in_channels, out_channels, kernel_size: as nn.Conv2d (kernel_size int or (kh, kw)).
        mask_type: "A" (current sub-pixel's own group excluded) or "B" (own group included).
        groups: number of colour groups C (1 or 3).
        in_groups, out_groups: optional explicit group id per channel, (in,) / (out,) int64; default
            `channel_groups(n, groups)`.
        center: position of the current pixel in the kernel; default the kernel centre. The input is
            padded so that output (i, j) is centred there: `center[0]` rows on top, `center[1]` columns on
            the left, the rest on the bottom/right.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        mask_type: str = "B",
        groups: int = 1,
        in_groups: torch.Tensor | None = None,
        out_groups: torch.Tensor | None = None,
        center: tuple[int, int] | None = None,
        bias: bool = True,
    ):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        super().__init__(in_channels, out_channels, (kh, kw), padding=0, bias=bias)
        ci, cj = center if center is not None else (kh // 2, kw // 2)
        in_groups = channel_groups(in_channels, groups) if in_groups is None else in_groups
        out_groups = channel_groups(out_channels, groups) if out_groups is None else out_groups
        self.register_buffer(
            "mask", causal_mask((kh, kw), (ci, cj), in_groups, out_groups, mask_type), persistent=False
        )
        # F.pad order: (left, right, top, bottom)
        self._pad = (cj, kw - 1 - cj, ci, kh - 1 - ci)
        with torch.no_grad():  # keep the initial scale of an unmasked conv despite the zeroed taps
            frac = self.mask.mean().clamp_min(1e-3)
            self.weight.mul_(frac.rsqrt().clamp(max=3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self._pad):
            x = F.pad(x, self._pad)
        return F.conv2d(x, self.weight * self.mask, self.bias)

    def cache_geometry(self):
        """Describe this layer for cached (incremental) evaluation, see pixelar.nn.cache."""
        return ConvGeometry(
            self.weight * self.mask,
            self.bias,
            tuple(self.stride),
            pad=tuple(self._pad),
            taps=self.mask.flatten(0, 1).ne(0).any(0),
        )
