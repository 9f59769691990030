"""Shared machinery of the transformer models: an image as a sequence in generation order.

A *unit* is a sub-pixel (sequence length C*H*W; Sparse Transformer, Image Transformer "cat") or a whole
pixel (length H*W; Image Transformer DMOL, whose channels enter through one linear map of their
embeddings, the paper's 1x3 strided convolution). Position t of the sequence holds the t-th unit of the
generation order; its input is the embedding of unit t-1 (a learned start vector at t = 0) plus learned
row / column / channel embeddings of unit t itself (or, with position_of="read", of unit t-1, the one whose
value it reads, and none at the start: the Sparse Transformer's released code) and the conditioning, so
attention to positions <= t (nn.attention's causality rule) sees only units generated before t.

`positions_from(units)` makes the positional embeddings those of other sub-pixels: a wrapper that moves
sub-pixels (DistAug's permute_embeddings) lets each keep the coordinates it had in the untransformed image.

Read-out to the (B, P, H, W) parameters every ARImageModel returns:

- per-channel distributions (categorical, Bernoulli) on sub-pixels: block c of pixel p is the head applied
  at the position of sub-pixel (c, p), which has seen the channels < c of p;
- joint distributions (logistic mixture, coupled categorical): the head at the position of channel 0 of p
  (sub-pixels) or of p itself (pixels), which has seen only earlier pixels.

KV-cached sampling (`begin_cache`) runs the same layers one position at a time with cached keys and
values (nn.attention.attend_step); see `_KVState`.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..inference import require_eval
from ..nn.attention import AttentionPattern, CausalSelfAttention
from ..nn.dropout import Dropout
from ..nn.norm import QuickGELU, RMSNorm
from .base import ARImageModel

UNITS = ("subpixel", "pixel")
NORMS = ("pre", "post")
NORM_LAYERS = ("layer", "rms")  # nn.LayerNorm, or Image GPT's RMS-style norm (nn.norm.RMSNorm)
ACTIVATIONS = ("gelu", "relu", "quick_gelu")  # quick_gelu: x * sigmoid(1.702 x) (Image GPT)
POSITIONS = ("grid", "sequence")  # summed row / column / channel embeddings, or one per sequence position
COND_AT = ("all", "start")  # conditioning added at every position, or only to the start token
POSITION_OF = ("predicted", "read")  # positional embeddings of the unit a position predicts, or of the one it reads


class TransformerBlock(nn.Module):
    """Attention + feed-forward with residuals. pre: x + f(norm(x)) (Sparse Transformer, Image GPT); post:
    norm(x + f(x)) (Image Transformer's "dan": dropout, add, norm). Dropout at the end of each branch only.
    norm_layer "layer" or "rms", bias False (no biases in the linear maps) and activation "quick_gelu" give
    Image GPT's block."""

    def __init__(
        self,
        d_model: int,
        n_head: int,
        qk_dim: int,
        v_dim: int,
        ff_dim: int,
        pattern: AttentionPattern | tuple[AttentionPattern, ...],
        dropout: float,
        norm: str,
        activation: str,
        norm_layer: str = "layer",
        bias: bool = True,
    ):
        super().__init__()
        self.norm = norm
        self.ln1, self.ln2 = _norm_layer(norm_layer, d_model), _norm_layer(norm_layer, d_model)
        self.attn = CausalSelfAttention(d_model, n_head, qk_dim, v_dim, pattern, bias=bias)
        self.ff1, self.ff2 = nn.Linear(d_model, ff_dim, bias=bias), nn.Linear(ff_dim, d_model, bias=bias)
        self.act = {"gelu": nn.GELU, "relu": nn.ReLU, "quick_gelu": QuickGELU}[activation]()
        self.drop = Dropout(dropout)

    def _ff(self, x):
        return self.ff2(self.act(self.ff1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, d) -> (B, N, d)
        return self._residual(x, self.attn)

    def step(self, x: torch.Tensor, t: int, cache: dict) -> torch.Tensor:  # (B, 1, d), position t
        return self._residual(x, lambda h: self.attn.step(h, t, cache))

    def _residual(self, x, attn):
        if self.norm == "pre":
            x = x + self.drop(attn(self.ln1(x)))
            return x + self.drop(self._ff(self.ln2(x)))
        x = self.ln1(x + self.drop(attn(x)))
        return self.ln2(x + self.drop(self._ff(x)))


def _norm_layer(kind: str, d_model: int, eps: float = 1e-5) -> nn.Module:
    return nn.LayerNorm(d_model, eps=eps) if kind == "layer" else RMSNorm(d_model, eps)


class SequenceTransformer(ARImageModel):
    """Base of the transformer models (see the module doc). Subclasses build the patterns per layer.

    Args:
        image, output, num_classes, cond_dim: as every ARImageModel.
        unit: "subpixel" or "pixel".
        unit_order: (N,) flat indices of the units (into C*H*W, or H*W for pixels) in generation order.
        patterns: one AttentionPattern per layer, over N positions (or a tuple of them: the layer's heads split
            into equal groups, one pattern each; see nn.attention.CausalSelfAttention).
        d_model, n_head, qk_dim, v_dim, ff_dim: widths (qk_dim / v_dim summed over heads).
        dropout, norm ("pre" / "post"), activation ("gelu" / "relu" / "quick_gelu").
        checkpoint: recompute each block's activations in the backward pass (training memory).
        norm_layer: "layer" (LayerNorm) or "rms" (Image GPT's norm); bias: biases in the linear maps and head.
        positions: "grid" (learned row + column (+ channel) embeddings of the unit each position predicts)
            or "sequence" (one learned embedding per sequence position, no 2D structure: Image GPT).
        cond_at: "all" (the conditioning embedding is added at every position) or "start" (only to the
            start token, which every position attends to: Image GPT's SOS).
        position_of: "predicted" (position t embeds the coordinates of unit t, which it predicts) or "read"
            (those of unit t-1, whose value it reads; the start token gets none: openai's Sparse Transformer
            and DistAug code, which add the positional embeddings to the tokens before shifting them).
        final_norm_eps: epsilon of the final norm (the blocks' norms use 1e-5).
    """

    embeds_positions = True

    def __init__(
        self,
        image,
        output,
        *,
        unit: str,
        unit_order: torch.Tensor,
        patterns: list[AttentionPattern | tuple[AttentionPattern, ...]],
        d_model: int,
        n_head: int,
        qk_dim: int,
        v_dim: int,
        ff_dim: int,
        dropout: float,
        norm: str,
        activation: str,
        checkpoint: bool,
        num_classes: int = 0,
        cond_dim: int = 0,
        norm_layer: str = "layer",
        bias: bool = True,
        positions: str = "grid",
        cond_at: str = "all",
        position_of: str = "predicted",
        final_norm_eps: float = 1e-5,
    ):
        for name, value, valid in (
            ("unit", unit, UNITS),
            ("norm", norm, NORMS),
            ("activation", activation, ACTIVATIONS),
            ("norm_layer", norm_layer, NORM_LAYERS),
            ("positions", positions, POSITIONS),
            ("cond_at", cond_at, COND_AT),
            ("position_of", position_of, POSITION_OF),
        ):
            if value not in valid:
                raise ValueError(f"{name} must be one of {list(valid)}, got {value!r}")
        if not float(final_norm_eps) > 0:
            raise ValueError(f"final_norm_eps must be > 0, got {final_norm_eps!r}")
        super().__init__(image, output, grouped=(unit == "subpixel"), num_classes=num_classes, cond_dim=cond_dim)
        C, H, W = image.shape
        K = image.num_values
        self.unit, self.use_checkpoint = unit, bool(checkpoint)
        N = len(unit_order)
        # unit_order (N,): flat unit index at each position; pos_of: the position of each unit
        self.register_buffer("unit_order", unit_order.clone(), persistent=False)
        self.register_buffer("pos_of", torch.argsort(unit_order), persistent=False)
        self.joint = self.distribution.joint
        P = self.distribution.num_params
        # value embeddings, one table per channel: row c*K + v
        self.value_emb = nn.Embedding(C * K, d_model)
        self.pixel_in = nn.Linear(C * d_model, d_model) if unit == "pixel" else None  # the 1x3 strided conv
        self.start = nn.Parameter(torch.zeros(d_model))
        self.cond_at, self.position_of = cond_at, position_of
        self._position_units: torch.Tensor | None = None  # positions_from's table, (B, C*H*W) or None
        if positions == "grid":
            self.row_emb, self.col_emb = nn.Embedding(H, d_model), nn.Embedding(W, d_model)
            self.chan_emb = nn.Embedding(C, d_model) if unit == "subpixel" else None
            self.pos_emb = None
        else:
            self.row_emb = self.col_emb = self.chan_emb = None
            self.pos_emb = nn.Embedding(N, d_model)  # (N, d): position t of the sequence
        if num_classes:
            self.cond_emb = nn.Embedding(num_classes, d_model)
        elif cond_dim:
            self.cond_emb = nn.Linear(cond_dim, d_model, bias=False)
        else:
            self.cond_emb = None
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_head, qk_dim, v_dim, ff_dim, p, dropout, norm, activation, norm_layer, bias)
            for p in patterns
        )
        self.ln_f = _norm_layer(norm_layer, d_model, final_norm_eps) if norm == "pre" else nn.Identity()
        self.head = nn.Linear(d_model, P if (self.joint or unit == "pixel") else P // C, bias=bias)
        self._init_weights(d_model, len(patterns))
        if any(b.attn.length != N for b in self.blocks):
            raise ValueError("every attention pattern must span the whole sequence")

    def _init_weights(self, d_model: int, n_layer: int):
        """Sparse Transformer init (section 6): small embeddings, residual projections scaled by
        1/sqrt(2 * layers), zero output logits."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.value_emb.weight, std=0.125 / math.sqrt(d_model))
        for emb in (self.row_emb, self.col_emb, self.chan_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.125 / math.sqrt(3 * d_model))
        if self.pos_emb is not None:
            nn.init.normal_(self.pos_emb.weight, std=0.125 / math.sqrt(d_model))
        for b in self.blocks:
            nn.init.normal_(b.attn.proj.weight, std=0.02 / math.sqrt(2 * n_layer))
            nn.init.normal_(b.ff2.weight, std=0.02 / math.sqrt(2 * n_layer))
        if self.cond_emb is not None:
            nn.init.zeros_(self.cond_emb.weight)
        nn.init.zeros_(self.head.weight)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)

    # ----- embedding -----------------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor, cond, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Inputs of the given sequence positions (default all): (B, n, d). Position t embeds unit t-1."""
        B = x.shape[0]
        C, K = self.image.channels, self.image.num_values
        N = len(self.unit_order)
        if positions is None:
            positions = torch.arange(N, device=x.device)
        prev = (positions - 1).clamp(min=0)
        units = self.unit_order[prev]  # (n,) the unit whose value each position reads
        if self.unit == "subpixel":
            vals = x.reshape(B, -1)[:, units]  # (B, n)
            e = self.value_emb(vals + (units // (x.shape[2] * x.shape[3])) * K)  # (B, n, d)
        else:
            vals = x.reshape(B, C, -1)[:, :, units]  # (B, C, n)
            ids = vals + torch.arange(C, device=x.device).view(1, C, 1) * K
            e = self.value_emb(ids).permute(0, 2, 1, 3).reshape(B, len(positions), -1)  # (B, n, C*d)
            e = self.pixel_in(e)  # (B, n, d)
        first = (positions == 0).view(1, -1, 1)
        e = torch.where(first, self.start.view(1, 1, -1).to(e.dtype), e)
        pe = self._position_embedding(positions if self.position_of == "predicted" else prev, B)
        e = e + (pe if self.position_of == "predicted" else pe * ~first)  # "read": none at the start token
        if self.cond_emb is not None:
            c = self.cond_emb(cond).unsqueeze(1)  # (B, 1, d)
            e = e + (c if self.cond_at == "all" else c * first.to(c.dtype))  # "start": the start token only
        return e

    def _position_embedding(self, at: torch.Tensor, batch: int) -> torch.Tensor:
        """Positional embeddings of the units at sequence positions `at` (n,): (n, d), or (B, n, d) inside
        positions_from (each image's units carry the coordinates the table gives them)."""
        C, H, W = self.image.shape
        HW = H * W
        units = self.unit_order[at]  # (n,): a sub-pixel (flat c*HW + pixel) or a pixel
        if self._position_units is not None:
            table = self._position_units
            if table.shape[0] != batch:
                raise ValueError(f"positions_from holds {table.shape[0]} images' positions, the input has {batch}")
            # a pixel unit p is read as its channel-0 sub-pixel p; the table's sub-pixel gives the coordinates
            units = table[:, units] if self.unit == "subpixel" else table[:, units] % HW  # (B, n)
        if self.pos_emb is not None:  # one embedding per sequence position: the position of that unit
            return self.pos_emb(self.pos_of[units])
        pix = units % HW
        e = self.row_emb(pix // W) + self.col_emb(pix % W)
        return e + self.chan_emb(units // HW) if self.chan_emb is not None else e

    @contextlib.contextmanager
    def positions_from(self, units: torch.Tensor):
        """Inside the block, input sub-pixel d of image b gets the positional embeddings of sub-pixel
        units[b, d] (int64 (B, C*H*W), flat c*H*W + i*W + j) instead of its own (see ImageModel)."""
        D = self.image.dims
        if not isinstance(units, torch.Tensor) or units.dim() != 2 or units.shape[1] != D:
            raise ValueError(f"positions_from takes int64 (B, {D}) flat sub-pixel indices, got {units!r}")
        old, self._position_units = self._position_units, units.to(self.start.device).long()
        try:
            yield self
        finally:
            self._position_units = old

    # ----- forward -------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(x, cond)  # (B, N, d)
        for blk in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                h = checkpoint(blk, h, use_reentrant=False)  # keep only the residual stream
            else:
                h = blk(h)
        return self.readout(self.ln_f(h))

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, N, d) in generation order -> parameters (B, P, H, W)."""
        B = h.shape[0]
        C, H, W = self.image.shape
        if self.unit == "pixel" or self.joint:
            # one position per pixel: the pixel itself, or its channel-0 sub-pixel
            out = self.head(h[:, self.pos_of[: H * W]])  # (B, HW, P)
            return out.transpose(1, 2).reshape(B, -1, H, W)
        out = self.head(h)[:, self.pos_of]  # (B, C*HW, P/C) in flat (c, pixel) order
        return out.view(B, C, H * W, -1).permute(0, 1, 3, 2).reshape(B, -1, H, W)

    def generation_order(self) -> torch.Tensor:
        if self.unit == "subpixel":
            return self.unit_order.clone().cpu()
        C, HW = self.image.channels, self.image.height * self.image.width
        pix = self.unit_order.cpu()
        return (pix.view(-1, 1) + torch.arange(C).view(1, C) * HW).reshape(-1)

    # ----- KV-cached sampling ----------------------------------------------------------------------------------
    def begin_cache(self, x: torch.Tensor, cond=None) -> _KVState:
        """Incremental forward for cached sampling: params_at(i, j) equals forward(x)[:, :, i, j]."""
        require_eval(self)
        return _KVState(self, x, cond)


class _KVState:
    """Keys and values of every layer at every position computed so far (B, h, N, d_head per layer).

    `done` positions are final (their inputs are final). To answer params_at(i, j) it runs the positions
    from `done` up to the one the request needs, one at a time. For per-channel outputs the sampler asks
    for pixel (i, j) once per channel; the full parameter vector, like forward's, also holds the blocks of
    the channels not drawn yet, computed provisionally from the current x; those positions are recomputed
    once their inputs are final (a position only reads keys at or before it, so a provisional key is
    always overwritten before anything final reads it).
    """

    def __init__(self, model: SequenceTransformer, x: torch.Tensor, cond):
        self.model, self.x, self.cond = model, x, cond
        self.caches = [dict() for _ in model.blocks]
        self.done = 0
        self.last_pixel, self.channel = None, 0
        self.blocks_out: torch.Tensor | None = None  # per-channel head outputs of the current pixel

    def _run(self, t: int) -> torch.Tensor:
        """Compute position t (all earlier positions final or provisional as needed): (B, d) final hidden."""
        m = self.model
        h = m.embed(self.x, self.cond, torch.tensor([t], device=self.x.device))  # (B, 1, d)
        for blk, cache in zip(m.blocks, self.caches):
            h = blk.step(h, t, cache)
        return m.ln_f(h)[:, 0]

    def _advance(self, t: int) -> torch.Tensor:
        """Make positions < t final, then compute t (final: its inputs are final); returns its hidden state."""
        while self.done < t:
            self._run(self.done)
            self.done += 1
        h = self._run(t)
        self.done = t + 1
        return h

    @torch.no_grad()
    def params_at(self, i: int, j: int) -> torch.Tensor:
        m = self.model
        C, H, W = m.image.shape
        p = i * W + j
        if m.unit == "pixel" or m.joint:
            t = int(m.pos_of[p])
            return m.head(self._advance(t))
        self.channel = self.channel + 1 if self.last_pixel == p else 0
        self.last_pixel = p
        c = self.channel
        t = int(m.pos_of[c * H * W + p])
        out = m.head(self._advance(t))  # (B, P/C), final
        if c == 0:
            self.blocks_out = out.new_zeros(out.shape[0], C, out.shape[1])
        self.blocks_out[:, c] = out
        for c2 in range(c + 1, C):  # provisional blocks of the later channels, as forward(x) has them now
            t2 = int(m.pos_of[c2 * H * W + p])
            if t2 != t + (c2 - c):
                raise ValueError("the channels of a pixel must be consecutive in the generation order")
            self.blocks_out[:, c2] = m.head(self._run(t2))
        return self.blocks_out.reshape(out.shape[0], -1)


__all__ = ["SequenceTransformer", "TransformerBlock"]
