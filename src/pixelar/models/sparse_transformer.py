"""Sparse Transformer (Child, Gray, Radford, Sutskever 2019, "Generating Long Sequences with Sparse
Transformers"; released code `openai/sparse_attention`).

A pre-norm decoder-only transformer over the C*H*W sub-pixels in raster order (R, G, B within a pixel),
with summed learned row, column and channel embeddings, GeLU feed-forward layers, dropout only at the end
of each residual branch, residual projections initialised with 1/sqrt(2N) and zero output logits. Each
layer uses one entry of `attention`, cycled over the layers; the paper's three ways to combine the two
factorised sets are all available: "strided" / "fixed" (each head attends to the union of the two sets,
the "merged" head); one factor alone ("strided.local", "strided.stride", "fixed.local", "fixed.summary") to
interleave factors layer by layer; or factors joined by "+" ("strided.local+strided.stride") to split the
layer's heads into equal groups, one pattern each (the "multi-head" combination). "dense" for comparison.
The stride defaults to one image row of sub-pixels (96 for CIFAR-10, as the released code's local_attn_ctx).
`checkpoint=True` recomputes each block in the backward pass.

Differences from the paper: plain PyTorch block-sparse computation (gathered blocks) instead of the
custom GPU kernels; fp32 by default (no fp16 loss scaling); the fixed pattern's summary positions are the
same for every head (the paper suggests different ones per head); any output distribution may be chosen
(the paper: a 256-way softmax per sub-pixel).

Options that openai's released Sparse Transformer code (openai/distribution_augmentation's train.py) needs,
each defaulting to the model pixelar had before them (registry `added=`): activation "quick_gelu" (its
blocksparse fast_gelu, x * sigmoid(1.702 x)); position_of "read" (its positional embeddings are added to the
tokens before the shift, so position t carries the coordinates of sub-pixel t-1 and the start token none);
cond_at "start" (DistAug's conditioning replaces the start token); final_norm_eps 1e-6 (its final norm).
"""

from __future__ import annotations

import torch

from ..nn.attention import AttentionPattern, parse_pattern
from ..nn.orders import raster_order
from .registry import register_model
from .sequence import SequenceTransformer


def _preset(n_layer, d_model, n_head, dropout, attention=("strided",), checkpoint=False):
    return dict(
        n_layer=n_layer,
        d_model=d_model,
        n_head=n_head,
        qk_dim=d_model // 2,
        ff_dim=2 * d_model,
        attention=list(attention),
        stride=0,
        summary=0,
        dropout=dropout,
        checkpoint=checkpoint,
        output={"kind": "categorical"},
        num_classes=0,
        cond_dim=0,
        activation="gelu",
        position_of="predicted",
        cond_at="all",
        final_norm_eps=1e-5,
    )


@register_model(
    "sparse_transformer",
    sizes={
        "tiny": _preset(2, 16, 2, 0.0),
        "small": _preset(4, 64, 2, 0.0),
        # CIFAR-10 (section 7.1): 128 layers, d = 256, 2 heads, half-size query/key and feed-forward, 59M
        "paper": _preset(128, 256, 2, 0.25, checkpoint=True),
    },
    added={"activation": "gelu", "position_of": "predicted", "cond_at": "all", "final_norm_eps": 1e-5},
)
class SparseTransformer(SequenceTransformer):
    """Args:
    n_layer, d_model, n_head: depth, width, heads.
    qk_dim: total query/key width (the paper: d_model / 2); values use d_model.
    ff_dim: feed-forward width (the paper: half of the usual 4 * d_model).
    attention: pattern names cycled over the layers; "a+b" splits a layer's heads between patterns a and b
        (see the module doc).
    stride: l of the strided / fixed patterns; 0 = one image row of sub-pixels (W * C).
    summary: c, summary positions per block of the fixed pattern; 0 = min(8, l) (the paper: c = 8 to 32,
        fixed, so that the summaries grow like N / l * c = O(sqrt(N)) per position).
    dropout, checkpoint, output, num_classes, cond_dim.
    activation: "gelu" (exact, the default), "quick_gelu" (x * sigmoid(1.702 x)) or "relu".
    position_of: "predicted" (position t embeds the coordinates of the sub-pixel it predicts) or "read" (of
        sub-pixel t-1, whose value it reads; none at the start token).
    cond_at: "all" (the conditioning embedding at every position) or "start" (the start token only).
    final_norm_eps: epsilon of the final layer norm.
    """

    def __init__(
        self,
        image,
        n_layer,
        d_model,
        n_head,
        qk_dim,
        ff_dim,
        attention,
        stride,
        summary,
        dropout,
        checkpoint,
        output,
        num_classes=0,
        cond_dim=0,
        activation="gelu",
        position_of="predicted",
        cond_at="all",
        final_norm_eps=1e-5,
    ):
        if isinstance(attention, str):
            attention = [attention]
        if not attention:
            raise ValueError("attention must name at least one pattern, e.g. ['strided']")
        for entry in attention:
            for name in str(entry).split("+"):
                kind, _ = parse_pattern(name)
                if kind.startswith("local"):
                    raise ValueError(
                        f"the Sparse Transformer uses dense, strided or fixed patterns, got {name!r}; "
                        "local patterns belong to the image_transformer models"
                    )
            groups = len(str(entry).split("+"))
            if n_head % groups:
                raise ValueError(
                    f"attention entry {entry!r} splits the heads into {groups} groups, which must divide "
                    f"n_head={n_head}"
                )
        C, H, W = image.shape
        N = C * H * W
        l = int(stride) or W * C
        c = int(summary) or min(8, l)
        shared = {}  # one pattern object per distinct name: the tables are built once
        patterns = []
        for k in range(n_layer):
            group = []
            for name in str(attention[k % len(attention)]).split("+"):  # one pattern per head group
                if name not in shared:
                    shared[name] = AttentionPattern(name, N, stride=l, summary=min(c, l))
                group.append(shared[name])
            patterns.append(group[0] if len(group) == 1 else tuple(group))
        with torch.device("cpu"):  # index data, also under a meta default device
            order = raster_order(image, "subpixel")
        super().__init__(
            image,
            output,
            unit="subpixel",
            unit_order=order,
            patterns=patterns,
            d_model=d_model,
            n_head=n_head,
            qk_dim=qk_dim,
            v_dim=d_model,
            ff_dim=ff_dim,
            dropout=dropout,
            norm="pre",
            activation=activation,
            checkpoint=checkpoint,
            num_classes=num_classes,
            cond_dim=cond_dim,
            cond_at=cond_at,
            position_of=position_of,
            final_norm_eps=final_norm_eps,
        )
