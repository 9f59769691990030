"""PixelCNN (van den Oord, Kalchbrenner, Kavukcuoglu 2016, "Pixel Recurrent Neural Networks", section 3.4).

A 7x7 mask-A convolution, residual blocks (1x1 2h->h, 3x3 mask B, 1x1 h->2h, ReLUs), then two ReLU + 1x1
mask-B output layers. Every feature map belongs to an R, G or B group so that the prediction of R sees only
earlier pixels, G also the current R, and B also R and G; the output is a softmax per sub-pixel.

Differences from the paper: any output distribution may be chosen (the logistic mixture then reads only the
R group, which sees earlier pixels only); optional class / vector conditioning adds a bias in every block.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import MaskedConv2d
from ..nn.cache import begin_incremental
from .base import ARImageModel
from .conditioning import graph_bias, maybe_bias
from .registry import register_model


def output_groups(distribution, channels: int) -> torch.Tensor:
    """Colour group of each parameter map: block c -> group c (per-channel outputs) or all group 0 (joint)."""
    P = distribution.num_params
    if distribution.joint:
        return torch.zeros(P, dtype=torch.long)
    return torch.arange(P) // (P // channels)


class ResidualBlock(nn.Module):
    def __init__(self, h: int, groups: int):
        super().__init__()
        self.conv1 = MaskedConv2d(2 * h, h, 1, "B", groups)
        self.conv2 = MaskedConv2d(h, h, 3, "B", groups)
        self.conv3 = MaskedConv2d(h, 2 * h, 1, "B", groups)

    def forward(self, x):
        y = self.conv1(F.relu(x))
        y = self.conv2(F.relu(y))
        y = self.conv3(F.relu(y))
        return x + y

    def cache_graph(self, g, x, bias, name="block"):
        """This block as nodes of a pixelar.nn.cache.CausalGraph; bias: graph_bias's (extras, add) for the
        conditioning added after it."""
        y = g.conv(x, self.conv1, pre=F.relu, name=f"{name}.conv1")
        y = g.conv(y, self.conv2, pre=F.relu, name=f"{name}.conv2")
        nodes, add = bias
        return g.conv(
            y, self.conv3, pre=F.relu, post=lambda t, h, *b: add(h + t, *b), extras=[x, *nodes], name=f"{name}.conv3"
        )


@register_model(
    "pixelcnn",
    sizes={
        "tiny": dict(
            hidden=6,
            num_blocks=2,
            out_hidden=12,
            output={"kind": "categorical"},
            num_classes=0,
            cond_dim=0,
            cond_channels=0,
        ),
        "small": dict(
            hidden=48,
            num_blocks=6,
            out_hidden=96,
            output={"kind": "categorical"},
            num_classes=0,
            cond_dim=0,
            cond_channels=0,
        ),
        # 15 layers: 7x7 mask A, 12 residual blocks, 2 output layers; h = 128 (2h = 256 maps) as in PixelRNN Tab.
        "paper": dict(
            hidden=128,
            num_blocks=12,
            out_hidden=1024,
            output={"kind": "categorical"},
            num_classes=0,
            cond_dim=0,
            cond_channels=0,
        ),
    },
    added={"cond_channels": 0},
)
class PixelCNN(ARImageModel):
    """Args: hidden (h; blocks carry 2h maps), num_blocks, out_hidden, output, num_classes, cond_dim,
    cond_channels (a map as cond: every block adds a 1x1 projection of it)."""

    def __init__(self, image, hidden, num_blocks, out_hidden, output, num_classes=0, cond_dim=0, cond_channels=0):
        super().__init__(image, output, True, num_classes, cond_dim, cond_channels)
        C = image.channels
        self.input_conv = MaskedConv2d(C, 2 * hidden, 7, "A", groups=C)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, C) for _ in range(num_blocks))
        self.cond_bias = (
            nn.ModuleList(maybe_bias(2 * hidden, num_classes, cond_dim, cond_channels) for _ in range(num_blocks))
            if (num_classes or cond_dim or cond_channels)
            else None
        )
        self.out1 = MaskedConv2d(2 * hidden, out_hidden, 1, "B", C)
        P = self.distribution.num_params
        self.out2 = MaskedConv2d(out_hidden, P, 1, "B", C, out_groups=output_groups(self.distribution, C))

    def forward(self, x, cond=None):
        h = self.input_conv(self.scale_input(x))
        for i, block in enumerate(self.blocks):
            h = block(h)
            if self.cond_bias is not None:
                h = h + self.cond_bias[i](cond)
        return self.out2(F.relu(self.out1(F.relu(h))))

    # ----- cached sampling (pixelar.nn.cache) --------------------------------------------------------------
    def cache_graph(self, g, x, cond=None):
        """The forward pass as a pixelar.nn.cache.CausalGraph on the image x (filled in place); -> params node."""
        h = g.conv(g.input(x, self.scale_input, name="x"), self.input_conv, name="input_conv")
        for i, block in enumerate(self.blocks):
            module = None if self.cond_bias is None else self.cond_bias[i]
            h = block.cache_graph(g, h, graph_bias(g, module, cond, h.H, h.W, f"blocks.{i}"), name=f"blocks.{i}")
        h = g.conv(h, self.out1, pre=F.relu, name="out1")
        return g.conv(h, self.out2, pre=F.relu, name="out2")

    def begin_cache(self, x, cond=None):
        """Incremental forward for cached sampling: an object whose params_at(i, j) is forward(x)[:, :, i, j]."""
        return begin_incremental(self, x, cond)
