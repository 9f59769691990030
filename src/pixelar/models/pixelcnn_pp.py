"""PixelCNN++ (Salimans, Karpathy, Chen, Kingma 2017), following the released `pixel_cnn_pp/model.py`.

Two streams replace masks: u (down-shifted convolutions) sees the rows above; ul (down-right-shifted) sees
the rows above and the pixels to the left. Gated resnets with concat_elu, three resolutions (stride-2
shifted convolutions down, shifted transposed convolutions up) with long short-cuts from the up pass to the
down pass, dropout, optional class conditioning, and a discretized logistic mixture read from ul.

Differences from the released code: no weight normalization (plain convolutions; the last convolution of
each resnet is initialised 10x smaller, like the code's init_scale=0.1); odd image sizes are allowed (the
upsampled maps are cropped to the short-cut's size); any output distribution may be chosen.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import (
    DownRightShiftedConv2d,
    DownRightShiftedConvTranspose2d,
    DownShiftedConv2d,
    DownShiftedConvTranspose2d,
    Dropout,
    concat_elu,
    down_shift,
    right_shift,
)
from ..nn.cache import Skip, begin_incremental
from .base import ARImageModel
from .conditioning import graph_bias, maybe_bias
from .registry import register_model


class GatedResnet(nn.Module):
    """x + a * sigmoid(b), [a, b] = conv(dropout(concat_elu(conv(concat_elu(x)) + nin(concat_elu(skip)))))."""

    def __init__(
        self,
        F_: int,
        conv_cls,
        skip_channels: int,
        dropout: float,
        num_classes: int,
        cond_dim: int,
        cond_channels: int = 0,
    ):
        super().__init__()
        self.conv1 = conv_cls(2 * F_, F_)
        self.skip = nn.Conv2d(2 * skip_channels, F_, 1) if skip_channels else None
        self.dropout = Dropout(dropout)
        self.conv2 = conv_cls(2 * F_, 2 * F_)
        with torch.no_grad():
            self.conv2.weight.mul_(0.1)
        self.cond = maybe_bias(2 * F_, num_classes, cond_dim, cond_channels)

    def forward(self, x, skip=None, cond=None):
        c = self.conv1(concat_elu(x))
        if self.skip is not None:
            c = c + self.skip(concat_elu(skip))
        c = self.conv2(self.dropout(concat_elu(c)))
        if self.cond is not None:
            c = c + self.cond(cond, c.shape[-2:])
        a, b = c.chunk(2, dim=1)
        return x + a * torch.sigmoid(b)

    def cache_graph(self, g, x, skip=(), cond=None, name="resnet"):
        """This resnet as nodes of a pixelar.nn.cache.CausalGraph; skip: nodes concatenated as the short-cut."""
        skip = list(skip)
        if self.skip is None:
            c = g.conv(x, self.conv1, pre=concat_elu, name=f"{name}.conv1")
        else:
            c = g.conv(x, self.conv1, pre=concat_elu, skip=_skip(self.skip, skip), name=f"{name}.conv1")
        bias_nodes, add_bias = graph_bias(g, self.cond, cond, x.H, x.W, name)

        def gated(y, xin, *bias):
            a, b = add_bias(y, *bias).chunk(2, dim=1)
            return torch.addcmul(xin, a, torch.sigmoid(b))  # xin + a * sigmoid(b)

        # dropout is the identity in eval mode (cached sampling needs it): the same pre as conv1's then
        pre = concat_elu if not self.training else lambda t: self.dropout(concat_elu(t))
        return g.conv(c, self.conv2, pre=pre, post=gated, extras=[x, *bias_nodes], name=f"{name}.conv2")


def _skip(module: nn.Conv2d, nodes: list) -> Skip:
    """The 1x1 short-cut module(concat_elu(cat(nodes))) as a pixelar.nn.cache.Skip: concat_elu of each map
    on its own (computed once per position and shared with the convolutions that read the map through
    concat_elu), so the weight's input columns are reordered from concat_elu(cat(s)) = [s1, s2, .., -s1,
    -s2, ..] to [s1, -s1, s2, -s2, ..]."""
    weight = module.weight.detach()[:, :, 0, 0]  # (out, 2 sum C_i)

    def reordered(channels: list[int]) -> torch.Tensor:
        S, o, order = sum(channels), 0, []
        for n in channels:
            order += [*range(o, o + n), *range(S + o, S + o + n)]
            o += n
        return weight[:, order]

    return Skip(nodes, reordered, module.bias.detach(), pre=concat_elu)


def init_streams_graph(net: nn.Module, g, x: torch.Tensor, scale):
    """The first layers of the u and ul streams (net.u_init, net.ul_init_up, net.ul_init_left) as nodes of a
    pixelar.nn.cache.CausalGraph on the image x (int64, filled in place); scale maps x to [-1, 1].
    -> (u, ul) nodes, as down_shift(u_init(x_pad)) and down_shift(ul_init_up) + right_shift(ul_init_left)."""

    def prepare(t):  # [scale(t), ones] over channels, as forward's x_pad
        return F.pad(scale(t), (0, 0, 0, 0, 0, 1), value=1.0)

    xp = g.input(x, prepare, name="x")
    u = g.shift(g.conv(xp, net.u_init, name="u_init"), 1, 0, name="u_init.down")
    ul_up = g.shift(g.conv(xp, net.ul_init_up, name="ul_init_up"), 1, 0, name="ul_init_up.down")
    ul_left = g.shift(g.conv(xp, net.ul_init_left, name="ul_init_left"), 0, 1, name="ul_init_left.right")
    return u, g.map(torch.add, ul_up, ul_left, name="ul_init")


@register_model(
    "pixelcnn_pp",
    sizes={
        "tiny": dict(
            nr_filters=8,
            nr_resnet=1,
            dropout=0.0,
            output={"kind": "logistic_mixture", "nr_mix": 2},
            num_classes=0,
            cond_dim=0,
            cond_channels=0,
        ),
        # small: sized so that `pixelar train` (the default) learns well in about 5 minutes on 2 CPU cores
        "small": dict(
            nr_filters=32,
            nr_resnet=1,
            dropout=0.0,
            output={"kind": "logistic_mixture", "nr_mix": 5},
            num_classes=0,
            cond_dim=0,
            cond_channels=0,
        ),
        # the released code's defaults (the 2.92 bpd CIFAR-10 model): 160 filters, 5 resnets, 10 mixtures
        "paper": dict(
            nr_filters=160,
            nr_resnet=5,
            dropout=0.5,
            output={"kind": "logistic_mixture", "nr_mix": 10},
            num_classes=0,
            cond_dim=0,
            cond_channels=0,
        ),
    },
    added={"cond_channels": 0},
)
class PixelCNNPP(ARImageModel):
    """Args: nr_filters, nr_resnet (per stage), dropout, output, num_classes, cond_dim, cond_channels (a map as
    cond: every gated resnet adds a 1x1 projection of it, average-pooled to the resnet's resolution)."""

    def __init__(self, image, nr_filters, nr_resnet, dropout, output, num_classes=0, cond_dim=0, cond_channels=0):
        super().__init__(image, output, False, num_classes, cond_dim, cond_channels)
        F_, R, C = nr_filters, nr_resnet, image.channels
        kw = dict(dropout=dropout, num_classes=num_classes, cond_dim=cond_dim, cond_channels=cond_channels)
        # first layer: +1 input channel of ones so the zero padding is told apart from the image
        self.u_init = DownShiftedConv2d(C + 1, F_, (2, 3))
        self.ul_init_up = DownShiftedConv2d(C + 1, F_, (1, 3))
        self.ul_init_left = DownRightShiftedConv2d(C + 1, F_, (2, 1))
        self.up_u = nn.ModuleList()
        self.up_ul = nn.ModuleList()
        self.down_u = nn.ModuleList()
        self.down_ul = nn.ModuleList()
        for stage in range(3):
            self.up_u.append(nn.ModuleList(GatedResnet(F_, DownShiftedConv2d, 0, **kw) for _ in range(R)))
            self.up_ul.append(nn.ModuleList(GatedResnet(F_, DownRightShiftedConv2d, F_, **kw) for _ in range(R)))
            n = R if stage == 0 else R + 1  # down pass: R, R+1, R+1 resnets per stage
            self.down_u.append(nn.ModuleList(GatedResnet(F_, DownShiftedConv2d, F_, **kw) for _ in range(n)))
            self.down_ul.append(nn.ModuleList(GatedResnet(F_, DownRightShiftedConv2d, 2 * F_, **kw) for _ in range(n)))
        self.downsample_u = nn.ModuleList(DownShiftedConv2d(F_, F_, (2, 3), stride=2) for _ in range(2))
        self.downsample_ul = nn.ModuleList(DownRightShiftedConv2d(F_, F_, (2, 2), stride=2) for _ in range(2))
        self.upsample_u = nn.ModuleList(DownShiftedConvTranspose2d(F_, F_) for _ in range(2))
        self.upsample_ul = nn.ModuleList(DownRightShiftedConvTranspose2d(F_, F_) for _ in range(2))
        self.out = nn.Conv2d(F_, self.distribution.num_params, 1)

    def forward(self, x, cond=None):
        xs = self.scale_input(x)
        x_pad = torch.cat([xs, torch.ones_like(xs[:, :1])], dim=1)  # (B, C+1, H, W)
        u_list = [down_shift(self.u_init(x_pad))]
        ul_list = [down_shift(self.ul_init_up(x_pad)) + right_shift(self.ul_init_left(x_pad))]
        # up pass: three stages, downsampling between them
        for stage in range(3):
            for res_u, res_ul in zip(self.up_u[stage], self.up_ul[stage]):
                u_list.append(res_u(u_list[-1], cond=cond))
                ul_list.append(res_ul(ul_list[-1], u_list[-1], cond=cond))
            if stage < 2:
                u_list.append(self.downsample_u[stage](u_list[-1]))
                ul_list.append(self.downsample_ul[stage](ul_list[-1]))
        # down pass: consume the up-pass maps in reverse (the long short-cuts)
        u, ul = u_list.pop(), ul_list.pop()
        for stage in range(3):
            for res_u, res_ul in zip(self.down_u[stage], self.down_ul[stage]):
                u = res_u(u, u_list.pop(), cond=cond)
                ul = res_ul(ul, torch.cat([u, ul_list.pop()], dim=1), cond=cond)
            if stage < 2:
                size = u_list[-1].shape[-2:]
                u = self.upsample_u[stage](u, size)
                ul = self.upsample_ul[stage](ul, size)
        assert not u_list and not ul_list
        return self.out(F.elu(ul))

    # ----- cached sampling (pixelar.nn.cache) --------------------------------------------------------------
    def cache_graph(self, g, x, cond=None):
        """The forward pass as a pixelar.nn.cache.CausalGraph on the image x (filled in place); -> params node."""

        dtype, K = next(self.parameters()).dtype, self.image.num_values

        def scale(t):  # scale_input with its dtype looked up once (it runs at every step)
            return t.to(dtype) * (2.0 / (K - 1)) - 1.0

        u, ul = init_streams_graph(self, g, x, scale)
        u_list, ul_list = [u], [ul]
        for stage in range(3):
            for k, (res_u, res_ul) in enumerate(zip(self.up_u[stage], self.up_ul[stage])):
                u_list.append(res_u.cache_graph(g, u_list[-1], cond=cond, name=f"up_u.{stage}.{k}"))
                ul_list.append(res_ul.cache_graph(g, ul_list[-1], [u_list[-1]], cond=cond, name=f"up_ul.{stage}.{k}"))
            if stage < 2:
                u_list.append(g.conv(u_list[-1], self.downsample_u[stage], name=f"downsample_u.{stage}"))
                ul_list.append(g.conv(ul_list[-1], self.downsample_ul[stage], name=f"downsample_ul.{stage}"))
        u, ul = u_list.pop(), ul_list.pop()
        for stage in range(3):
            for k, (res_u, res_ul) in enumerate(zip(self.down_u[stage], self.down_ul[stage])):
                u = res_u.cache_graph(g, u, [u_list.pop()], cond=cond, name=f"down_u.{stage}.{k}")
                ul = res_ul.cache_graph(g, ul, [u, ul_list.pop()], cond=cond, name=f"down_ul.{stage}.{k}")
            if stage < 2:
                size = (u_list[-1].H, u_list[-1].W)
                u = g.conv_transpose(u, self.upsample_u[stage], size, name=f"upsample_u.{stage}")
                ul = g.conv_transpose(ul, self.upsample_ul[stage], size, name=f"upsample_ul.{stage}")
        assert not u_list and not ul_list
        return g.conv(ul, self.out, pre=F.elu, name="out")

    def begin_cache(self, x, cond=None):
        """Incremental forward for cached sampling: an object whose params_at(i, j) is forward(x)[:, :, i, j]."""
        return begin_incremental(self, x, cond)
