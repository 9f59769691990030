"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders").

Two stacks remove the blind spot: the vertical stack, an unmasked (k//2+1) x k convolution over the rows
up to the current one, reaches the horizontal stack only shifted down one row (so strictly above); the
horizontal stack, a 1 x (k//2+1) convolution over the current row up to the current pixel, is R/G/B masked
at the current pixel (mask A in the first layer, which is also blind to the current pixel and has no
residual). Gates are tanh(W_f * x + V_f h) * sigmoid(W_g * x + V_g h); the residual connection (1x1 after
the gate) is on the horizontal stack only. Conditioning h is a class label or any global vector.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import MaskedConv2d, channel_groups, down_shift
from ..nn.cache import begin_incremental
from .base import ARImageModel
from .conditioning import graph_bias, maybe_bias
from .pixelcnn import output_groups
from .registry import register_model


def gate(x: torch.Tensor) -> torch.Tensor:
    """(B, 2p, H, W) -> tanh(first half) * sigmoid(second half), (B, p, H, W)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    def __init__(
        self,
        in_ch: int,
        p: int,
        k: int,
        groups: int,
        first: bool,
        last: bool,
        num_classes: int,
        cond_dim: int,
        cond_channels: int = 0,
    ):
        super().__init__()
        self.first, self.last = first, last
        self.k = k
        self.v_conv = nn.Conv2d(in_ch, 2 * p, (k // 2 + 1, k))
        g_in = torch.arange(in_ch) if first else channel_groups(in_ch, groups)
        g_gate = channel_groups(p, groups).repeat(2)  # tanh half and sigmoid half share the grouping
        self.h_conv = MaskedConv2d(
            in_ch, 2 * p, (1, k // 2 + 1), "A" if first else "B", in_groups=g_in, out_groups=g_gate, center=(0, k // 2)
        )
        self.v_to_h = nn.Conv2d(2 * p, 2 * p, 1)
        self.h_res = MaskedConv2d(p, p, 1, "B", groups)
        # the last layer's vertical output would be unused: it only feeds the horizontal stack
        self.v_cond = None if last else maybe_bias(2 * p, num_classes, cond_dim, cond_channels)
        self.h_cond = maybe_bias(2 * p, num_classes, cond_dim, cond_channels)

    def forward(self, v, h, cond):
        k = self.k
        v_pre = self.v_conv(F.pad(v, (k // 2, k // 2, k // 2, 0)))  # row i sees rows i-k//2 .. i
        h_pre = self.h_conv(h) + self.v_to_h(down_shift(v_pre))  # vertical info strictly from above
        if self.h_cond is not None:
            h_pre = h_pre + self.h_cond(cond)
        v_out = None
        if not self.last:
            if self.v_cond is not None:
                v_pre = v_pre + self.v_cond(cond)
            v_out = gate(v_pre)
        h_out = self.h_res(gate(h_pre))
        if not self.first:  # the first layer's input holds the current pixel: no identity path
            h_out = h_out + h
        return v_out, h_out

    def cache_graph(self, g, v, h, cond, name="layer"):
        """This layer as nodes of a pixelar.nn.cache.CausalGraph: (v, h) nodes -> (v_out or None, h_out)."""
        k = self.k
        v_pre = g.conv(v, self.v_conv, pad=(k // 2, k // 2, k // 2, 0), name=f"{name}.v_conv")
        v_h = g.conv(g.shift(v_pre, 1, 0, name=f"{name}.v_down"), self.v_to_h, name=f"{name}.v_to_h")
        h_nodes, h_bias = graph_bias(g, self.h_cond, cond, h.H, h.W, f"{name}.h")
        h_pre = g.conv(
            h, self.h_conv, post=lambda y, vh, *b: h_bias(y + vh, *b), extras=[v_h, *h_nodes], name=f"{name}.h_conv"
        )
        v_out = None
        if not self.last:
            v_nodes, v_bias = graph_bias(g, self.v_cond, cond, v_pre.H, v_pre.W, f"{name}.v")
            v_out = g.map(lambda t, *b: gate(v_bias(t, *b)), v_pre, *v_nodes, name=f"{name}.v_gate")
        if self.first:
            h_out = g.conv(h_pre, self.h_res, pre=gate, name=f"{name}.h_res")
        else:
            h_out = g.conv(h_pre, self.h_res, pre=gate, post=lambda y, hin: y + hin, extras=[h], name=f"{name}.h_res")
        return v_out, h_out


@register_model(
    "gated_pixelcnn",
    sizes={
        "tiny": dict(
            channels=6,
            num_layers=3,
            kernel_size=3,
            out_hidden=12,
            output={"kind": "categorical"},
            num_classes=0,
            cond_dim=0,
            cond_channels=0,
        ),
        "small": dict(
            channels=96,
            num_layers=8,
            kernel_size=5,
            out_hidden=192,
            output={"kind": "categorical"},
            num_classes=0,
            cond_dim=0,
            cond_channels=0,
        ),
        # the paper's ImageNet model: 20 layers, 384 maps, 5x5 filters
        "paper": dict(
            channels=384,
            num_layers=20,
            kernel_size=5,
            out_hidden=1024,
            output={"kind": "categorical"},
            num_classes=0,
            cond_dim=0,
            cond_channels=0,
        ),
    },
    added={"cond_channels": 0},
)
class GatedPixelCNN(ARImageModel):
    """Args: channels (p), num_layers, kernel_size (odd k), out_hidden, output, num_classes, cond_dim,
    cond_channels (a map as cond: both stacks of every layer add a 1x1 projection of it, the paper's V * s)."""

    def __init__(
        self,
        image,
        channels,
        num_layers,
        kernel_size,
        out_hidden,
        output,
        num_classes=0,
        cond_dim=0,
        cond_channels=0,
    ):
        super().__init__(image, output, True, num_classes, cond_dim, cond_channels)
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}")
        C = image.channels
        self.layers = nn.ModuleList(
            GatedLayer(
                C if i == 0 else channels,
                channels,
                kernel_size,
                C,
                i == 0,
                i == num_layers - 1,
                num_classes,
                cond_dim,
                cond_channels,
            )
            for i in range(num_layers)
        )
        self.out1 = MaskedConv2d(channels, out_hidden, 1, "B", C)
        self.out2 = MaskedConv2d(
            out_hidden, self.distribution.num_params, 1, "B", C, out_groups=output_groups(self.distribution, C)
        )

    def forward(self, x, cond=None):
        v = h = self.scale_input(x)
        for layer in self.layers:
            v, h = layer(v, h, cond)
        return self.out2(F.relu(self.out1(F.relu(h))))

    # ----- cached sampling (pixelar.nn.cache) --------------------------------------------------------------
    def cache_graph(self, g, x, cond=None):
        """The forward pass as a pixelar.nn.cache.CausalGraph on the image x (filled in place); -> params node."""
        v = h = g.input(x, self.scale_input, name="x")
        for i, layer in enumerate(self.layers):
            v, h = layer.cache_graph(g, v, h, cond, name=f"layers.{i}")
        h = g.conv(h, self.out1, pre=F.relu, name="out1")
        return g.conv(h, self.out2, pre=F.relu, name="out2")

    def begin_cache(self, x, cond=None):
        """Incremental forward for cached sampling: an object whose params_at(i, j) is forward(x)[:, :, i, j]."""
        return begin_incremental(self, x, cond)
