"""Causal self-attention over a sequence in generation order, with sparse patterns.

References:
    1. Child, Gray, Radford, Sutskever 2019, "Generating Long Sequences with Sparse Transformers", section 4
       (strided and fixed factorized patterns).
    2. Parmar et al. 2018, "Image Transformer", section 3.2 (local 1D and local 2D attention).
    3. Chen, Mishra, Rohaninejad, Abbeel 2018, "PixelSNAIL" (strictly causal attention: never the position
       itself).

The sequence is always laid out in *generation order*: position t holds the t-th generated element (a
sub-pixel or a pixel). Causality is therefore one rule, applied in one place (`_causal`): position t may
attend to position s only if s <= t (s < t when `strict`). A pattern only *restricts* that set further.
Patterns that need image geometry (local 2D) get the (row, column) of every position, which the model
derives from its generation order, so the same pattern works for raster or block-raster orders.

Patterns, for query position i (l = stride / block length, all sets also causal):

- ``dense``:    every s <= i.
- ``strided``:  {i-l+1, ..., i} (the last l positions) and {i - k*l : k >= 1}; part "local" / "stride"
                keeps one of the two sets (the stride set then includes i itself).
- ``fixed``:    the positions of i's own block of l, and the last `summary` positions of every earlier
                block; part "local" / "summary" keeps one of the two.
- ``local_1d``: i's own block of l and the previous block (memory of at most 2l).
- ``local_2d``: positions in i's query block (query_shape rows x columns of the grid) or in its memory
                flange: `flange` = (rows above, columns left and right).

Computation. `dense` uses scaled_dot_product_attention with is_causal. Every other pattern is compiled
into "parts": tables of query blocks (nb, L) and the key/value positions each block may read (nb, M), with
a boolean mask (nb, L, M). Queries, keys and values are gathered into blocks, so the work is
O(N * M) instead of O(N^2). A single part runs through scaled_dot_product_attention with the block mask;
two parts (the union patterns) have disjoint key sets and are merged exactly through their
log-sum-exps. `AttentionPattern.dense_mask()` and `keys_for(t)` (used by KV-cached sampling) are derived
from the same tables, so training, the tests' dense reference and sampling share one definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

PATTERNS = ("dense", "strided", "fixed", "local_1d", "local_2d")
PARTS = {
    "dense": ("both",),
    "strided": ("both", "local", "stride"),
    "fixed": ("both", "local", "summary"),
    "local_1d": ("both",),
    "local_2d": ("both",),
}
_NEG = -1e30  # masked score: finite, so fully masked rows give no NaN in values or gradients


def parse_pattern(name: str) -> tuple[str, str]:
    """ "strided" -> ("strided", "both"); "strided.stride" -> ("strided", "stride"). Raises ValueError."""
    kind, _, part = str(name).partition(".")
    part = part or "both"
    if kind not in PATTERNS or part not in PARTS[kind]:
        valid = [k if p == "both" else f"{k}.{p}" for k in PATTERNS for p in PARTS[k]]
        raise ValueError(f"unknown attention pattern {name!r}; valid: {valid}")
    return kind, part


@dataclass
class BlockPart:
    """One block-sparse piece of a pattern (positions index the sequence; `length` marks padding).

    q_idx: (nb, L) query positions of each block; every real position appears exactly once.
    kv_idx: (nb, M) key/value positions each block may read.
    mask: (nb, L, M) bool, True where the query may attend to the key (causality included).
    """

    q_idx: torch.Tensor
    kv_idx: torch.Tensor
    mask: torch.Tensor


def _pad_rows(rows: list[list[int]], pad: int) -> torch.Tensor:
    width = max(1, max((len(r) for r in rows), default=1))
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long).view(len(rows), width)


class AttentionPattern:
    """A causal attention pattern over a sequence of `length` positions in generation order.

    Args:
        name: one of PATTERNS, optionally with a part ("strided.local", "fixed.summary", see the module doc).
        length: sequence length N.
        stride: l for strided / fixed / local_1d (block length).
        summary: c, the summary positions per block of the fixed pattern.
        coords: (N, 2) int64 (row, column) of every position, for local_2d.
        query_shape: (rows, columns) of a local_2d query block.
        flange: (rows above, columns left and right) of the local_2d memory flange.
        strict: a position never attends to itself (PixelSNAIL); positions with no key get zeros.
    """

    def __init__(
        self,
        name: str,
        length: int,
        *,
        stride: int | None = None,
        summary: int = 1,
        coords: torch.Tensor | None = None,
        query_shape: tuple[int, int] | None = None,
        flange: tuple[int, int] | None = None,
        strict: bool = False,
    ):
        self.kind, self.part = parse_pattern(name)
        self.name, self.length, self.strict = str(name), int(length), bool(strict)
        N = self.length
        if N < 1:
            raise ValueError(f"sequence length must be >= 1, got {length}")
        if self.kind in ("strided", "fixed", "local_1d"):
            if stride is None or int(stride) < 1:
                raise ValueError(f"pattern {name!r} needs stride (block length) >= 1, got {stride!r}")
            stride = int(stride)
        if self.kind == "fixed" and not 1 <= int(summary) <= stride:
            raise ValueError(f"fixed pattern: summary must be in [1, stride={stride}], got {summary}")
        if self.kind == "local_2d":
            if coords is None or query_shape is None or flange is None:
                raise ValueError("pattern 'local_2d' needs coords (N, 2), query_shape and flange")
            if tuple(coords.shape) != (N, 2):
                raise ValueError(f"coords must have shape ({N}, 2), got {tuple(coords.shape)}")
            if min(query_shape) < 1 or min(flange) < 0:
                raise ValueError(f"local_2d: query_shape must be >= 1 and flange >= 0, got {query_shape}, {flange}")
        self.stride, self.summary = stride, int(summary)
        with torch.device("cpu"):  # index tables live on the CPU (also under a meta / cuda default device)
            if coords is not None:
                coords = coords.cpu()
            self.parts: list[BlockPart] = [] if self.kind == "dense" else self._compile(coords, query_shape, flange)
            # positions with no key at all (strict patterns: at least position 0) get a zero output
            self.empty = self._key_counts() == 0
        # query-key pairs the block tables evaluate; short sequences are cheaper with one dense masked call
        self.block_work = sum(p.mask.numel() for p in self.parts) if self.parts else N * N
        self._masks: dict = {}

    # ----- compile ----------------------------------------------------------------------------------------
    def _compile(self, coords, query_shape, flange) -> list[BlockPart]:
        N, l, kind, part = self.length, self.stride, self.kind, self.part
        pos = list(range(N))
        blocks = [pos[b : b + l] for b in range(0, N, l)] if l else []
        parts = []
        if kind == "local_1d":
            # own block and the previous one
            parts.append(self._part(blocks, [sum(blocks[max(b - 1, 0) : b + 1], []) for b in range(len(blocks))]))
        elif kind == "strided":
            if part in ("both", "local"):  # the last l positions: own block and the previous one, band-masked
                kv = [sum(blocks[max(b - 1, 0) : b + 1], []) for b in range(len(blocks))]
                parts.append(self._part(blocks, kv, lambda q, k: q - k < l))
            if part in ("both", "stride"):  # same phase mod l: one "column" of the (N/l, l) reshape
                columns = [pos[r::l] for r in range(min(l, N))]
                own = part == "stride"  # alone, the stride set includes i itself; in the union, the band has it
                parts.append(self._part(columns, columns, (lambda q, k: k <= q) if own else (lambda q, k: k < q)))
        elif kind == "fixed":
            c = self.summary
            if part in ("both", "local"):
                parts.append(self._part(blocks, blocks))
            if part in ("both", "summary"):
                summ = [p for p in pos if p % l >= l - c]
                if part == "both":  # the own block is in the local part: summaries of earlier blocks only
                    keep = lambda q, k: k // l < q // l  # noqa: E731
                else:
                    keep = None
                parts.append(self._part(blocks, [summ] * len(blocks), keep))
        elif kind == "local_2d":
            qh, qw = query_shape
            fh, fw = flange
            rows, cols = coords[:, 0].tolist(), coords[:, 1].tolist()
            ids: dict[tuple[int, int], list[int]] = {}
            for p in pos:  # query blocks, positions in generation order inside each
                ids.setdefault((rows[p] // qh, cols[p] // qw), []).append(p)
            keys = sorted(ids)
            q_blocks = [ids[k] for k in keys]
            kv = []
            for br, bc in keys:
                r0, c0 = br * qh, bc * qw
                kv.append([p for p in pos if r0 - fh <= rows[p] < r0 + qh and c0 - fw <= cols[p] < c0 + qw + fw])
            parts.append(self._part(q_blocks, kv))
        return parts

    def _part(self, q_blocks, kv_blocks, keep=None) -> BlockPart:
        N = self.length
        q_idx, kv_idx = _pad_rows(q_blocks, N), _pad_rows(kv_blocks, N)
        q, k = q_idx[:, :, None], kv_idx[:, None, :]
        mask = _causal(q, k, self.strict) & (q < N) & (k < N)
        if keep is not None:
            mask &= keep(q, k)
        return BlockPart(q_idx, kv_idx, mask)

    # ----- derived views (tests, cached sampling) ---------------------------------------------------------
    def dense_mask(self) -> torch.Tensor:
        """(N, N) bool: [t, s] True where position t attends to position s. Built from the compiled tables."""
        with torch.device("cpu"):
            return self._dense_mask()

    def _dense_mask(self) -> torch.Tensor:
        N = self.length
        if self.kind == "dense":
            return _causal(torch.arange(N)[:, None], torch.arange(N)[None, :], self.strict)
        m = torch.zeros(N + 1, N + 1, dtype=torch.bool)
        for p in self.parts:
            q = p.q_idx[:, :, None].expand_as(p.mask)
            k = p.kv_idx[:, None, :].expand_as(p.mask)
            m[q[p.mask], k[p.mask]] = True
        return m[:N, :N]

    def sdpa_mask(self, device) -> torch.Tensor:
        """dense_mask() for scaled_dot_product_attention: rows without keys read themselves (zeroed later)."""
        key = str(device)
        if key not in self._masks:
            self._masks[key] = (self.dense_mask() | torch.diag(self.empty)).to(device)
        return self._masks[key]

    def _key_counts(self) -> torch.Tensor:
        N = self.length
        if self.kind == "dense":
            return torch.arange(N) + (0 if self.strict else 1)
        counts = torch.zeros(N + 1, dtype=torch.long)
        for p in self.parts:
            counts.index_add_(0, p.q_idx.flatten(), p.mask.sum(-1).flatten())
        return counts[:N]

    def keys_for(self, t: int) -> torch.Tensor:
        """Sorted positions (int64, on the CPU) that position t attends to (for one KV-cached step)."""
        with torch.device("cpu"):
            return self._keys_for(t)

    def _keys_for(self, t: int) -> torch.Tensor:
        if not hasattr(self, "_rows"):
            self._rows: dict[int, torch.Tensor] = {}
        rows = self._rows.get(t)
        if rows is None:
            if self.kind == "dense":
                rows = torch.arange(t if self.strict else t + 1)
            else:
                found = []
                for p in self.parts:
                    b, s = (p.q_idx == t).nonzero()[0].tolist()
                    found.append(p.kv_idx[b][p.mask[b, s]])
                rows = torch.cat(found).unique(sorted=True)
            self._rows[t] = rows
        return rows

    def __repr__(self):
        return f"AttentionPattern({self.name!r}, length={self.length}, stride={self.stride}, strict={self.strict})"


def _causal(q: torch.Tensor, k: torch.Tensor, strict: bool) -> torch.Tensor:
    """The causality rule, the only one: the sequence is in generation order, so key s is visible from
    query t iff s <= t (s < t when strict)."""
    return k < q if strict else k <= q


# ----- computation -----------------------------------------------------------------------------------------
def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, h, N, d), idx (nb, L) with N meaning padding -> (B, h, nb, L, d), zeros at padding."""
    xp = F.pad(x, (0, 0, 0, 1))  # (B, h, N+1, d): row N is the zero padding row
    return xp[:, :, idx.flatten()].view(*x.shape[:2], *idx.shape, x.shape[-1])


def _scatter_back(y: torch.Tensor, idx: torch.Tensor, N: int) -> torch.Tensor:
    """Inverse of _gather for query tables that hold each position once: (B, h, nb, L, d) -> (B, h, N, d)."""
    flat = idx.flatten()
    inv = torch.empty(N + 1, dtype=torch.long, device=flat.device)
    inv[flat] = torch.arange(flat.numel(), device=flat.device)
    return y.flatten(2, 3)[:, :, inv[:N]]


class _MaskedSoftmaxLSE(torch.autograd.Function):
    """Masked softmax and its log-sum-exp in one pass: (scores (..., L, M), keep (nb, L, M), scale) ->
    (p (..., L, M), lse (..., L)).

    Why not exp(s - logsumexp(s)): the CPU's exp takes a slow path for the masked scores (8x slower than
    for ordinary inputs); softmax's fused kernel does not. The log-sum-exp follows from the softmax itself:
    at the row maximum m, p = e^(m - lse), so lse = m - log(max p). Backward, with g and g_lse the incoming
    gradients: d s = scale * p * (g - sum(g * p) + g_lse), one fused expression instead of autograd's
    separate softmax, amax and masked_fill backward passes."""

    @staticmethod
    def forward(ctx, scores, keep, scale: float):
        s = scores * scale
        s.masked_fill_(~keep, _NEG)
        p = torch.softmax(s, dim=-1)
        lse = s.amax(dim=-1) - torch.log(p.amax(dim=-1))  # about _NEG where a row has no key
        ctx.save_for_backward(p)
        ctx.scale = scale
        return p, lse

    @staticmethod
    def backward(ctx, g, g_lse):
        (p,) = ctx.saved_tensors
        inner = -(g * p).sum(dim=-1, keepdim=True) if g is not None else torch.zeros_like(p[..., :1])
        if g_lse is not None:
            inner = inner + g_lse.unsqueeze(-1)
        grad = p * ((g + inner) if g is not None else inner)
        return grad.mul_(ctx.scale), None, None


def _blocks_with_lse(q, k, v, part: BlockPart, scale: float):
    """Manual attention of one part: -> out (B, h, N, dv) and log-sum-exp of the scores (B, h, N)."""
    N = q.shape[2]
    qg, kg, vg = _gather(q, part.q_idx), _gather(k, part.kv_idx), _gather(v, part.kv_idx)
    dtype = q.dtype if q.dtype == torch.float64 else torch.float32  # scores in >= fp32 (no overflow)
    s = torch.matmul(qg.to(dtype), kg.to(dtype).transpose(-1, -2))  # (B, h, nb, L, M)
    p, lse = _MaskedSoftmaxLSE.apply(s, part.mask.to(s.device), scale)  # (B, h, nb, L, M), (B, h, nb, L)
    out = torch.matmul(p.to(v.dtype), vg)  # (B, h, nb, L, dv)
    return _scatter_back(out, part.q_idx, N), _scatter_back(lse.unsqueeze(-1), part.q_idx, N).squeeze(-1)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: AttentionPattern, method: str = "auto"
) -> torch.Tensor:
    """Causal attention of q (B, h, N, dk) over k (B, h, N, dk), v (B, h, N, dv) -> (B, h, N, dv).

    Positions are in generation order; `pattern` decides which earlier positions each one reads.
    method: "blocks" (block-sparse tables), "dense" (one scaled_dot_product_attention call with the
    pattern's (N, N) mask) or "auto": dense when the blocks would evaluate more than half of the N^2 pairs
    (short sequences), else blocks. All give the same result up to rounding.
    """
    B, h, N, dk = q.shape
    if N != pattern.length:
        raise ValueError(f"sequence length {N} does not match the attention pattern's length {pattern.length}")
    if method not in ("auto", "blocks", "dense"):
        raise ValueError(f"method must be 'auto', 'blocks' or 'dense', got {method!r}")
    scale = 1.0 / math.sqrt(dk)
    empty = pattern.empty.to(q.device)
    if pattern.kind == "dense" and not pattern.strict:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if pattern.kind == "dense" or method == "dense" or (method == "auto" and 2 * pattern.block_work > N * N):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=pattern.sdpa_mask(q.device))
        return out * (~empty).to(out.dtype)[:, None] if bool(empty.any()) else out
    parts = pattern.parts
    if len(parts) == 1 and not bool(empty.any()):
        p = parts[0]
        nb, L = p.q_idx.shape
        M = p.kv_idx.shape[1]
        qg, kg, vg = _gather(q, p.q_idx), _gather(k, p.kv_idx), _gather(v, p.kv_idx)
        # padding query rows (no key) read their block's first key; their output is dropped by _scatter_back
        mask = p.mask.clone()
        mask[..., 0] |= ~mask.any(-1)
        # a 4-D mask (1, nb, L, M) broadcast over batch x heads: with a 3-D mask the CPU falls back from the
        # fused (flash) kernel to the unfused math one, 3x slower at 32x32x3
        out = F.scaled_dot_product_attention(
            qg.reshape(B * h, nb, L, dk),
            kg.reshape(B * h, nb, M, dk),
            vg.reshape(B * h, nb, M, -1),
            attn_mask=mask.to(q.device)[None],
        )
        return _scatter_back(out.view(B, h, nb, L, -1), p.q_idx, N)  # out: (B*h, nb, L, dv)
    # union of parts with disjoint key sets: merge exactly through the log-sum-exps
    outs, lses = zip(*(_blocks_with_lse(q, k, v, p, scale) for p in parts))
    lse = torch.logsumexp(torch.stack(lses), dim=0)  # (B, h, N)
    out = sum(o * torch.exp(l_ - lse).unsqueeze(-1).to(o.dtype) for o, l_ in zip(outs, lses))
    return out * (~empty).to(out.dtype)[:, None]


def attend_step(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pattern: AttentionPattern, t: int
) -> torch.Tensor:
    """One KV-cached step: query q (B, h, 1, dk) at position t over cached keys/values (B, h, >t, d) ->
    (B, h, 1, dv). Only the positions `pattern.keys_for(t)` are read."""
    idx = pattern.keys_for(t).to(q.device)
    if idx.numel() == 0:
        return q.new_zeros(*q.shape[:3], v_cache.shape[-1])
    return F.scaled_dot_product_attention(q, k_cache[:, :, idx], v_cache[:, :, idx])


def _split_heads(t: torch.Tensor, groups: int) -> tuple[torch.Tensor, ...]:
    return t.chunk(groups, dim=1) if groups > 1 else (t,)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention (B, N, d_model) -> (B, N, d_model) with a causal pattern.

    Args:
        d_model: width of the residual stream.
        n_head: number of heads.
        qk_dim: total query/key width over all heads (the Sparse Transformer uses d_model / 2).
        v_dim: total value width over all heads.
        pattern: the AttentionPattern (its length fixes the sequence length), or a sequence of G patterns
            that split the heads into G equal groups in order (the Sparse Transformer's "multi-head"
            combination: e.g. one head on the local part, one on the stride part).
        bias: biases in the input and output projections (Image GPT has none).
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        qk_dim: int,
        v_dim: int,
        pattern: AttentionPattern | tuple[AttentionPattern, ...],
        bias: bool = True,
    ):
        super().__init__()
        if qk_dim % n_head or v_dim % n_head:
            raise ValueError(f"qk_dim ({qk_dim}) and v_dim ({v_dim}) must be divisible by n_head ({n_head})")
        patterns = tuple(pattern) if isinstance(pattern, (list, tuple)) else (pattern,)
        if not patterns or n_head % len(patterns):
            raise ValueError(f"{len(patterns)} head groups (one per pattern) must divide n_head ({n_head}) evenly")
        if len({p.length for p in patterns}) != 1:
            raise ValueError("the patterns of one layer must span the same sequence length")
        self.n_head, self.qk_dim, self.v_dim = n_head, qk_dim, v_dim
        self.qkv = nn.Linear(d_model, 2 * qk_dim + v_dim, bias=bias)
        self.proj = nn.Linear(v_dim, d_model, bias=bias)
        self.patterns = patterns
        self.pattern = patterns[0] if len(patterns) == 1 else None  # the single pattern, when heads share it
        self.length = patterns[0].length

    def _heads(self, x: torch.Tensor):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).split([self.qk_dim, self.qk_dim, self.v_dim], dim=-1)
        h = self.n_head
        # (B, h, N, d_head)
        return (
            q.view(B, N, h, -1).transpose(1, 2),
            k.view(B, N, h, -1).transpose(1, 2),
            v.view(B, N, h, -1).transpose(1, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(x)
        G = len(self.patterns)
        parts = zip(_split_heads(q, G), _split_heads(k, G), _split_heads(v, G), self.patterns)
        y = torch.cat([attend(qg, kg, vg, p) for qg, kg, vg, p in parts], dim=1)  # (B, h, N, dv_head)
        return self.proj(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.v_dim))

    def step(self, x: torch.Tensor, t: int, cache: dict) -> torch.Tensor:
        """x (B, 1, d_model) at position t; cache {"k", "v"} (B, h, N, d_head), filled at t. -> (B, 1, d_model)."""
        q, k, v = self._heads(x)
        if "k" not in cache:
            N = self.length
            cache["k"] = k.new_zeros(k.shape[0], self.n_head, N, k.shape[-1])
            cache["v"] = v.new_zeros(v.shape[0], self.n_head, N, v.shape[-1])
        cache["k"][:, :, t] = k[:, :, 0]
        cache["v"][:, :, t] = v[:, :, 0]
        G = len(self.patterns)
        parts = zip(_split_heads(q, G), _split_heads(cache["k"], G), _split_heads(cache["v"], G), self.patterns)
        y = torch.cat([attend_step(qg, kg, vg, p, t) for qg, kg, vg, p in parts], dim=1)  # (B, h, 1, dv_head)
        return self.proj(y.transpose(1, 2).reshape(x.shape[0], 1, self.v_dim))


__all__ = ["PATTERNS", "AttentionPattern", "BlockPart", "CausalSelfAttention", "attend", "attend_step", "parse_pattern"]
