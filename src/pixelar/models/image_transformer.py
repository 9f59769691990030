"""Image Transformer (Parmar, Vaswani, Uszkoreit, Kaiser, Shazeer, Ku, Tran 2018; `tensor2tensor`
`image_transformer.py` / `common_image_attention.py` configurations).

A decoder-only transformer with post-norm residual blocks (the configs' "dan": dropout, add, norm), ReLU
feed-forward layers and local self-attention, in two representations (two registered models):

- ``image_transformer``: one position per sub-pixel (C*H*W), per-channel value embeddings and a softmax
  over the values of each sub-pixel ("cat"; best CIFAR-10 config `imagetransformer_cifar10_base`, 2.90).
- ``image_transformer_dmol``: one position per pixel (H*W); the C channel embeddings of a pixel are
  combined by one linear map (the paper's 1x3 window, 1x3 strided convolution) and a discretized logistic
  mixture models the pixel (`imagetransformer_cifar10_base_dmol`, 2.90).

Attention (nn.attention): "local_1d" (raster order, blocks of block_length positions, each attending to
its own block and the previous one) or "local_2d" (query blocks of query_shape tiling the image, memory
flange memory_flange above, left and right; generated block by block in raster order of blocks and raster
order inside a block; `generation_order()` reports that order and the samplers follow it).

Differences from the paper / t2t: query_shape and memory_flange are given in pixels (the sub-pixel model
uses rows x pixels*C of the (H, W*C) pixel-channel grid, so a pixel's channels share a block); positions
are learned row + column (+ channel) embeddings summed (t2t: sinusoidal or learned, half of the width for
rows and half for columns); class labels are an embedding added at every position; no Noam schedule here
(training/ owns the optimizer).
"""

from __future__ import annotations

import torch

from ..nn.attention import AttentionPattern
from ..nn.orders import grid_coords, raster_order, subpixel_block_raster_order
from ..types import ImageSpec
from .registry import register_model
from .sequence import SequenceTransformer

ATTENTIONS = ("local_1d", "local_2d", "dense")


def _preset(
    n_layer,
    d_model,
    n_head,
    ff_dim,
    attention,
    block_length,
    dropout,
    output,
    kv=0,
    query_shape=(2, 2),
    memory_flange=(1, 1),
):
    return dict(
        n_layer=n_layer,
        d_model=d_model,
        n_head=n_head,
        qk_dim=kv,
        v_dim=kv,
        ff_dim=ff_dim,
        attention=attention,
        block_length=block_length,
        query_shape=list(query_shape),
        memory_flange=list(memory_flange),
        dropout=dropout,
        checkpoint=False,
        output=output,
        num_classes=0,
        cond_dim=0,
    )


class _ImageTransformer(SequenceTransformer):
    """Args:
    n_layer, d_model, n_head, ff_dim: depth, width, heads, feed-forward width.
    qk_dim, v_dim: total query/key and value widths (t2t's attention key/value channels); 0 = d_model.
    attention: "local_1d", "local_2d" (or "dense", for comparison).
    block_length: local_1d query block length (positions).
    query_shape: local_2d query block [rows, pixels]; memory_flange: [rows above, pixels left and right].
    dropout, checkpoint, output, num_classes, cond_dim.
    """

    unit = "subpixel"

    def __init__(
        self,
        image,
        n_layer,
        d_model,
        n_head,
        qk_dim,
        v_dim,
        ff_dim,
        attention,
        block_length,
        query_shape,
        memory_flange,
        dropout,
        checkpoint,
        output,
        num_classes=0,
        cond_dim=0,
    ):
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {list(ATTENTIONS)}, got {attention!r}")
        with torch.device("cpu"):  # orders and pattern tables are index data (also under a meta default device)
            order, pattern = self._order_and_pattern(image, attention, block_length, query_shape, memory_flange)
        super().__init__(
            image,
            output,
            unit=self.unit,
            unit_order=order,
            patterns=[pattern] * n_layer,
            d_model=d_model,
            n_head=n_head,
            qk_dim=int(qk_dim) or d_model,
            v_dim=int(v_dim) or d_model,
            ff_dim=ff_dim,
            dropout=dropout,
            norm="post",
            activation="relu",
            checkpoint=checkpoint,
            num_classes=num_classes,
            cond_dim=cond_dim,
        )

    def _order_and_pattern(self, image, attention, block_length, query_shape, memory_flange):
        unit = self.unit
        C = image.channels if unit == "subpixel" else 1
        N = C * image.height * image.width
        if attention == "local_2d":
            qh, qw = (int(v) for v in query_shape)
            fh, fw = (int(v) for v in memory_flange)
            if min(qh, qw) < 1 or min(fh, fw) < 0:
                raise ValueError(f"query_shape must be >= 1 and memory_flange >= 0, got {query_shape}, {memory_flange}")
            # block-raster order of the units (a one-channel grid for pixels)
            grid = image if unit == "subpixel" else ImageSpec(1, image.height, image.width, image.num_values)
            order = subpixel_block_raster_order(grid, (qh, qw))
            pattern = AttentionPattern(
                "local_2d", N, coords=grid_coords(order, image, unit), query_shape=(qh, qw * C), flange=(fh, fw * C)
            )
        else:
            order = raster_order(image, unit)
            if attention == "local_1d" and int(block_length) < 1:
                raise ValueError(f"block_length must be >= 1, got {block_length}")
            pattern = AttentionPattern(attention, N, stride=int(block_length) if attention == "local_1d" else None)
        return order, pattern


@register_model(
    "image_transformer",
    sizes={
        "tiny": _preset(2, 16, 2, 32, "local_2d", 8, 0.0, {"kind": "categorical"}),
        "small": _preset(4, 64, 4, 128, "local_1d", 256, 0.0, {"kind": "categorical"}),
        # imagetransformer_cifar10_base (2.90 bpd): 12 layers, d 512, filter 2048, 4 heads, local 1D blocks of 256
        "paper": _preset(12, 512, 4, 2048, "local_1d", 256, 0.3, {"kind": "categorical"}),
    },
)
class ImageTransformer(_ImageTransformer):
    __doc__ = _ImageTransformer.__doc__
    unit = "subpixel"


@register_model(
    "image_transformer_dmol",
    sizes={
        # tiny: d 8; the brute-force tests evaluate every image of a tiny spec
        "tiny": _preset(2, 8, 2, 16, "local_1d", 4, 0.0, {"kind": "logistic_mixture", "nr_mix": 2}),
        "small": _preset(4, 64, 4, 128, "local_1d", 256, 0.0, {"kind": "logistic_mixture", "nr_mix": 5}),
        # imagetransformer_cifar10_base_dmol (2.90 bpd): 12 layers, d 256, filter 512, 8 heads, key/value
        # channels 512, 10 mixtures; local 1D blocks of 256 pixels (block length assumed, as the cat config)
        "paper": _preset(12, 256, 8, 512, "local_1d", 256, 0.1, {"kind": "logistic_mixture", "nr_mix": 10}, kv=512),
    },
)
class ImageTransformerDMOL(_ImageTransformer):
    __doc__ = _ImageTransformer.__doc__
    unit = "pixel"
