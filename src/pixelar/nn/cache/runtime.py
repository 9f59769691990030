"""The runtime layer of cached evaluation: each map's ring of rows and the step loop that computes, per
input frontier, the positions that became computable (see pixelar.nn.cache)."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...inference import require_eval
from .graph import CausalGraph, Node
from .plan import Plan, ceil_div, make_plan


class _Map:
    """Runtime state of one node: reads windows (zeros outside the map) and, when stored, computes positions.

    Windows come channels-last, (B, rows, cols, C) (`window_nhwc`): a convolution's im2col rows are then
    one reshape of them; `window` is the same as (B, C, rows, cols) for position-wise functions."""

    def __init__(self, node: Node):
        self.node, self.name, self.H, self.W = node, node.name, node.H, node.W
        self.stored = node.stored
        self.front = 0  # positions [0, front) computed (stored nodes)
        self.srcs: list[_Map] = []
        self.extras: list[_Map] = []
        self.table: list[int] = []
        self.derived: list[_Derived] = []  # rings of pre(this map), written with it (stored maps)
        self.raw_read = True  # stored maps: read as they are (not only through derived rings)

    def window(self, r0, r1, c0, c1):
        """Rows [r0, r1), columns [c0, c1) of the map, zero outside it: (B, C, r1-r0, c1-c0)."""
        return self.window_nhwc(r0, r1, c0, c1).permute(0, 3, 1, 2)

    def window_nhwc(self, r0, r1, c0, c1):
        """The same window channels-last: (B, r1-r0, c1-c0, C)."""
        return self.window(r0, r1, c0, c1).permute(0, 2, 3, 1)


class _Ring(_Map):
    """A stored map: a ring of R rows (row r in slot r % R), followed by copies of its first `mirror` slots (so
    that a window of up to mirror + 1 rows never wraps around: it is one view, not a gather) and one slot of
    zeros (rows outside the map)."""

    def allocate(self, batch, channels, rows, pad_left, pad_right, dtype, device, span=1):
        """span: the most rows a reader's window covers."""
        self.R, self.padL, self.mirror = rows, pad_left, min(span, rows) - 1
        self.zero = rows + self.mirror
        # channels-last storage: small windows of it stay fast to compute with
        self._set_buffer(
            torch.zeros(batch, self.zero + 1, pad_left + self.W + pad_right, channels, dtype=dtype, device=device)
        )
        self.tags = [-1] * rows
        self._index = {}  # (r0, r1) -> ring slots of a window that wraps around or leaves the map

    def _set_buffer(self, nhwc):
        self.nhwc = nhwc  # (B, R + mirror + 1, cols, C), contiguous
        self.buf = nhwc.permute(0, 3, 1, 2)  # seen as (B, C, rows, cols)
        B, _, _, C = nhwc.shape
        self.B, self.C, self.sB, self.sR = B, C, nhwc.stride(0), nhwc.stride(1)
        self._nhwc_strides, self._nchw_strides = (self.sB, self.sR, C, 1), (self.sB, 1, self.sR, C)

    def _check_row(self, r):
        if self.tags[r % self.R] != r and r <= (self.front - 1) // self.W:
            raise RuntimeError(f"cache bug: row {r} of {self.name} was evicted (ring of {self.R} rows)")

    def _slot0(self, r0, r1):
        """The ring slot of row r0 where rows [r0, r1) lie in consecutive slots, else None."""
        R, H = self.R, self.H
        # rows are evicted oldest first: if the first row is still held, so is every later row computed so
        # far (rows not started yet are only read under zero weights, masked taps)
        v0 = r0 if r0 > 0 else 0
        if v0 < r1 and v0 < H and self.tags[v0 % R] != v0:
            self._check_row(v0)
        if r0 >= 0 and r1 <= H:
            s0 = r0 % R
            if s0 + r1 - r0 <= R + self.mirror:
                return s0
        return None

    def _wrapped(self, r0, r1, c0, c1):
        idx = self._index.get((r0, r1))
        if idx is None:
            slots = [r % self.R if 0 <= r < self.H else self.zero for r in range(r0, r1)]
            idx = self._index[r0, r1] = torch.tensor(slots, device=self.nhwc.device)
        return self.nhwc[:, :, self.padL + c0 : self.padL + c1].index_select(1, idx)

    # windows are single as_strided views of the buffer (one operation, where slicing takes several)
    def window_nhwc(self, r0, r1, c0, c1):
        if 0 <= r0 < r1 <= self.H:  # the common case, inlined: rows inside the map
            s0 = r0 % self.R
            if self.tags[s0] != r0:
                self._check_row(r0)
            if s0 + r1 - r0 <= self.R + self.mirror:
                C = self.C
                return self.nhwc.as_strided(
                    (self.B, r1 - r0, c1 - c0, C), self._nhwc_strides, s0 * self.sR + (self.padL + c0) * C
                )
        s0 = self._slot0(r0, r1)
        if s0 is None:
            return self._wrapped(r0, r1, c0, c1)
        C = self.C
        return self.nhwc.as_strided(
            (self.B, r1 - r0, c1 - c0, C), self._nhwc_strides, s0 * self.sR + (self.padL + c0) * C
        )

    def window(self, r0, r1, c0, c1):
        s0 = self._slot0(r0, r1)
        if s0 is None:
            return self._wrapped(r0, r1, c0, c1).permute(0, 3, 1, 2)
        C = self.C
        return self.nhwc.as_strided(
            (self.B, C, r1 - r0, c1 - c0), self._nchw_strides, s0 * self.sR + (self.padL + c0) * C
        )

    def _row(self, slot, c0, c1):
        """Ring slot `slot`, columns [c0, c1), as (B, C, 1, c1-c0)."""
        C = self.C
        return self.nhwc.as_strided((self.B, C, 1, c1 - c0), self._nchw_strides, slot * self.sR + (self.padL + c0) * C)

    def write(self, r, c0, c1, y):
        """Store y (B, C, 1, c1-c0) at row r, columns [c0, c1), and pre(y) in the derived rings."""
        slot = r % self.R
        mirrored = slot < self.mirror
        if self.raw_read or y.dtype != self.nhwc.dtype:
            stored = self._row(slot, c0, c1)
            stored.copy_(y)
            if mirrored:
                self._row(slot + self.R, c0, c1).copy_(stored)
        else:  # only pre(this map) is read (e.g. a convolution's output read through an activation)
            stored = y
        for d in self.derived:  # pre of the stored values (y may be of a lower precision under autocast)
            value = d._row(slot, c0, c1).copy_(d.pre(stored))
            if mirrored:
                d._row(slot + self.R, c0, c1).copy_(value)
        self.tags[slot] = r

    def derive(self, pre: Callable) -> _Derived:
        """The ring of pre(this map) (one per pre function), allocated on first use."""
        for d in self.derived:
            if d.pre is pre:
                return d
        d = _Derived(self, pre)
        self.derived.append(d)
        return d


class _Derived(_Ring):
    """pre(map) for a position-wise pre with pre(0) = 0, kept beside a stored map (same ring slots, tags and
    zero margins), written when the map is: convolutions that read the map through windows apply pre once per
    position instead of once per window that covers it (kh x kw times)."""

    def __init__(self, base: _Map, pre: Callable):
        super().__init__(base.node)
        # the map weakly: it lists this ring in base.derived, and a reference back would make a cycle, which
        # keeps the rings (megabytes per sampling call) alive until Python's cycle collector runs
        self._base, self.pre = weakref.ref(base), pre
        self.R, self.padL, self.tags, self._index = base.R, base.padL, base.tags, {}
        self.mirror, self.zero = base.mirror, base.zero
        B, _, _, C = base.nhwc.shape
        probe = pre(base.nhwc[:1, :1, :1].permute(0, 3, 1, 2))  # channels of pre's output
        self._set_buffer(base.nhwc.new_zeros(B, *base.nhwc.shape[1:3], probe.shape[1]))

    @property
    def front(self):
        return self._base().front

    @front.setter
    def front(self, value):  # set by _Map.__init__ only
        pass


def _spans(graph: CausalGraph) -> dict[str, int]:
    """The most rows a window of any reader covers, per stored map (read through shifts)."""
    span: dict[str, int] = {}
    for n in graph.nodes:
        if n.kind == "conv":
            rows = n.box[1] - n.box[0] + 1
        elif n.kind == "conv_transpose":
            rows = 1 - ceil_div(1 - n.geo.kernel[0], n.geo.stride[0])  # rows q + da .. q of output phase 0
        else:
            continue
        for s in n.srcs:
            while s.kind == "shift":
                s = s.srcs[0]
            span[s.name] = max(span.get(s.name, 1), rows)
    return span


def _through_pre(m: _Map, pre: Callable) -> _Map | None:
    """A map reading pre(m) (pre position-wise, pre(0) = 0) from derived rings, or None where m (through
    shifts) is not a stored map."""
    if isinstance(m, _Shift):
        inner = _through_pre(m.srcs[0], pre)
        if inner is None:
            return None
        shifted = _Shift(m.node)
        shifted.srcs = [inner]
        return shifted
    if isinstance(m, _Ring) and not isinstance(m, _Derived):
        return m.derive(pre)
    return None


class _PreApplied(_Map):
    """pre(src) computed on each window, for maps without derived rings (the input, constants)."""

    def __init__(self, src: _Map, pre: Callable):
        super().__init__(src.node)
        self.srcs, self.pre = [src], pre

    def window(self, r0, r1, c0, c1):
        return self.pre(self.srcs[0].window(r0, r1, c0, c1))


def _clip(lo, hi, n):
    """Valid sub-range [vlo, vhi) of [lo, hi) within [0, n), empty ranges placed inside [lo, hi]."""
    vlo = min(max(lo, 0), hi)
    return vlo, max(min(hi, n), vlo)


class _Input(_Map):
    """The image being filled in. Its transform is applied once per position, when the input frontier
    passes it (`refresh`), into a zero-padded channels-last copy that windows are sliced from (the transform
    is position-wise, so this equals transforming each window). Positions not refreshed yet hold zeros or an
    earlier value and are only read under masked (zero) taps, as the caller's x is."""

    def setup(self, dtype, device, margins, rows):
        (self.padL, pad_right), (self.padT, pad_bottom) = margins, rows
        x = self.node.x
        probe = x[:, :, :1, :1] if self.node.transform is None else self.node.transform(x[:, :, :1, :1])
        H, W = self.H, self.W
        self.done = 0  # positions [0, done) transformed and final
        self.nhwc = torch.zeros(
            x.shape[0],
            self.padT + H + pad_bottom,
            self.padL + W + pad_right,
            probe.shape[1],
            dtype=probe.dtype,
            device=device,
        )
        self.buf = self.nhwc.permute(0, 3, 1, 2)

    def refresh(self, f: int, final: bool) -> None:
        """Transform input positions [done, f); final: they will not change any more."""
        a, W = self.done, self.W
        while a < f:
            r, c = divmod(a, W)
            e = min(f, (r + 1) * W)
            x = self.node.x
            B, C, _, _ = x.shape
            sb, sc, sh, sw = x.stride()
            t = x.as_strided((B, C, 1, e - a), (sb, sc, sh, sw), x.storage_offset() + r * sh + c * sw)
            if self.node.transform is not None:
                t = self.node.transform(t)
            n = self.nhwc
            n.as_strided(
                (B, n.shape[3], 1, e - a),
                (n.stride(0), 1, n.stride(1), n.stride(2)),
                (self.padT + r) * n.stride(1) + (self.padL + c) * n.stride(2),
            ).copy_(t)
            a = e
        if final:
            self.done = max(self.done, f)

    def _inside(self, r0, r1, c0, c1) -> bool:
        """Whether the window lies within the padded copy (else it is read from x, zero-filled)."""
        return (
            r0 + self.padT >= 0
            and c0 + self.padL >= 0
            and r1 + self.padT <= self.nhwc.shape[1]
            and c1 + self.padL <= self.nhwc.shape[2]
        )

    def window_nhwc(self, r0, r1, c0, c1):
        if self._inside(r0, r1, c0, c1):
            n = self.nhwc
            return n.as_strided(
                (n.shape[0], r1 - r0, c1 - c0, n.shape[3]),
                n.stride(),
                (self.padT + r0) * n.stride(1) + (self.padL + c0) * n.stride(2),
            )
        return self.window(r0, r1, c0, c1).permute(0, 2, 3, 1)

    def window(self, r0, r1, c0, c1):
        if self._inside(r0, r1, c0, c1):
            return self.buf[:, :, self.padT + r0 : self.padT + r1, self.padL + c0 : self.padL + c1]
        vr0, vr1 = _clip(r0, r1, self.H)
        vc0, vc1 = _clip(c0, c1, self.W)
        t = self.node.x[:, :, vr0:vr1, vc0:vc1]
        if self.node.transform is not None:
            t = self.node.transform(t)
        if (vr0, vr1, vc0, vc1) != (r0, r1, c0, c1):
            t = F.pad(t, (vc0 - c0, c1 - vc1, vr0 - r0, r1 - vr1))
        return t


class _Constant(_Map):
    def setup(self, dtype, device):
        self.value = self.node.x.detach().to(dtype=dtype, device=device)

    def window(self, r0, r1, c0, c1):
        vr0, vr1 = _clip(r0, r1, self.H)
        vc0, vc1 = _clip(c0, c1, self.W)
        t = self.value[:, :, vr0:vr1, vc0:vc1]
        if (vr0, vr1, vc0, vc1) != (r0, r1, c0, c1):
            t = F.pad(t, (vc0 - c0, c1 - vc1, vr0 - r0, r1 - vr1))
        return t


class _Shift(_Map):
    def window_nhwc(self, r0, r1, c0, c1):
        dy, dx = self.node.offset
        if r1 <= self.H and c1 <= self.W:  # above / left of the map the source is zero too
            return self.srcs[0].window_nhwc(r0 - dy, r1 - dy, c0 - dx, c1 - dx)
        return self.window(r0, r1, c0, c1).permute(0, 2, 3, 1)

    def window(self, r0, r1, c0, c1):
        dy, dx = self.node.offset
        src = self.srcs[0]
        if r1 <= self.H and c1 <= self.W:  # above / left of the map the source is zero too
            return src.window(r0 - dy, r1 - dy, c0 - dx, c1 - dx)
        vr1 = max(min(r1, self.H), r0)
        vc1 = max(min(c1, self.W), c0)
        t = src.window(r0 - dy, vr1 - dy, c0 - dx, vc1 - dx)
        return F.pad(t, (0, c1 - vc1, 0, r1 - vr1))


def _matmul(t: torch.Tensor, wmat: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(N, K) @ (K, Cout) + bias."""
    return torch.mm(t, wmat) if bias is None else torch.addmm(bias, t, wmat)


class _Conv(_Ring):
    """A convolution as a matrix product over im2col rows (much faster than conv2d on tiny windows)."""

    def setup(self, dtype, device, skip_channels=()):
        """skip_channels: the channel counts of the skip maps (before the skip's pre)."""
        n = self.node
        g = n.geo
        a0, a1, b0, b1 = n.box
        w = g.weight.detach()[:, :, a0 : a1 + 1, b0 : b1 + 1].to(dtype=dtype, device=device)
        self.wmat = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).t().contiguous()  # (kh*kw*Cin, Cout)
        self.bias = None if g.bias is None else g.bias.detach().to(dtype=dtype, device=device)
        self.stride = tuple(g.stride)
        self.kh, self.kw = a1 - a0 + 1, b1 - b0 + 1
        self.row_off, self.col_off = a0 - g.pad[2], b0 - g.pad[0]
        self._col = None  # im2col buffer of single-position steps: the window, then the skip maps
        self.skip_in: list[_Map] = []  # the skip maps after the skip's pre (set by IncrementalForward)
        k = n.skip
        if k is not None:  # folded in: [window | skip maps] @ [wmat; skip weight^T] + (bias + skip bias)
            kw = k.matrix(list(skip_channels)).detach().t().to(dtype=dtype, device=device)
            self.wmat = torch.cat([self.wmat, kw], 0).contiguous()
            if k.bias is not None:
                kb = k.bias.detach().to(dtype=dtype, device=device)
                self.bias = kb if self.bias is None else self.bias + kb

    def compute(self, r, c0, c1):
        n = self.node
        sh, sw = self.stride
        rl = r * sh + self.row_off
        cl = c0 * sw + self.col_off
        ch = (c1 - 1) * sw + self.col_off + self.kw
        if self.src_pre is not None:  # pre(src) is stored: (B, kh, cols, Cin) channels-last
            t = self.src_pre.window_nhwc(rl, rl + self.kh, cl, ch)
        elif n.pre is None and len(self.srcs) == 1:
            t = self.srcs[0].window_nhwc(rl, rl + self.kh, cl, ch)
        else:
            if len(self.srcs) == 1:
                t = self.srcs[0].window(rl, rl + self.kh, cl, ch)
            else:
                t = torch.cat([s.window(rl, rl + self.kh, cl, ch) for s in self.srcs], 1)
            if n.pre is not None:
                t = n.pre(t)
            t = t.permute(0, 2, 3, 1)
        B, m = t.shape[0], c1 - c0
        if m == 1:  # the im2col row: the window (and skip maps) copied into a buffer kept for this layer
            acts = [e.window_nhwc(r, r + 1, c0, c1) for e in self.skip_in]  # (B, 1, 1, C_i) each
            if self._col is None or self._col[0].shape != t.shape or self._col_rows.dtype != t.dtype:
                self._allocate_col(t, acts)
            col, parts = self._col
            col.copy_(t)
            for part, a in zip(parts, acts):
                part.copy_(a)
            if self.bias is None or torch.is_autocast_enabled(t.device.type):  # autocast: no out=
                y = _matmul(self._col_rows, self.wmat, self.bias).view(B, -1, 1, 1)
            else:  # into a buffer kept for this layer: y is read (post, write) before the next step
                torch.addmm(self.bias, self._col_rows, self.wmat, out=self._y)
                y = self._y4
        else:
            cols = t.unfold(2, self.kw, sw).permute(0, 2, 1, 4, 3).reshape(B * m, -1)  # (B*m, kh*kw*Cin)
            if self.skip_in:  # (B*m, channels) per skip map, after the window's columns
                acts = [e.window_nhwc(r, r + 1, c0, c1).reshape(B * m, -1) for e in self.skip_in]
                cols = torch.cat([cols, *acts], 1)
            y = _matmul(cols, self.wmat, self.bias).view(B, m, -1).permute(0, 2, 1)[:, :, None, :]
        if n.post is not None:
            y = n.post(y, *(e.window(r, r + 1, c0, c1) for e in self.extras))
        return y

    def _allocate_col(self, t, acts):
        """The im2col buffer (B, K) of single-position steps, seen as the window t (B, kh, kw, Cin) followed by
        one (B, 1, 1, C_i) part per skip map (acts), and the output buffer."""
        B, K = t.shape[0], self.wmat.shape[0]
        rows = torch.empty(B, K, dtype=t.dtype, device=t.device)
        k0 = t[0].numel()
        parts, o = [], k0
        for a in acts:
            c = a.shape[-1]
            parts.append(rows.narrow(1, o, c).view(B, 1, 1, c))
            o += c
        if o != K:
            raise ValueError(f"{self.name}: the skip weight reads {K - k0} channels, its maps give {o - k0}")
        self._col, self._col_rows = (rows.narrow(1, 0, k0).view(t.shape), parts), rows
        self._y = torch.empty(B, self.wmat.shape[1], dtype=t.dtype, device=t.device)
        self._y4 = self._y.view(B, -1, 1, 1)


class _ConvTranspose(_Ring):
    """A transposed convolution, one output column at a time: for each output phase (position modulo the
    stride) the contributing input window and kernel taps are fixed, so it is one matrix product."""

    def setup(self, dtype, device):
        g = self.node.geo
        w = g.weight.detach().to(dtype=dtype, device=device)  # (Cin, Cout, kh, kw)
        self.bias = None if g.bias is None else g.bias.detach().to(dtype=dtype, device=device)
        (sh, sw), (kh, kw) = g.stride, g.kernel
        self.stride, self.crop = (sh, sw), tuple(g.crop)
        self.phases = {}
        for pr in range(sh):
            da = ceil_div(pr - kh + 1, sh)  # window rows q+da .. q for output row q*sh + pr
            for pc in range(sw):
                db = ceil_div(pc - kw + 1, sw)
                blocks = [w[:, :, pr - d * sh, pc - e * sw] for d in range(da, 1) for e in range(db, 1)]
                self.phases[pr, pc] = (da, db, torch.cat(blocks, 0).contiguous())  # (na*nb*Cin, Cout), window order

    def compute(self, r, c0, c1):
        n = self.node
        sh, sw = self.stride
        q, pr = divmod(r + self.crop[0], sh)
        cols = []
        for c in range(c0, c1):
            qc, pc = divmod(c + self.crop[1], sw)
            da, db, wmat = self.phases[pr, pc]
            if self.src_pre is not None:
                t = self.src_pre.window_nhwc(q + da, q + 1, qc + db, qc + 1)
            else:
                if len(self.srcs) == 1:
                    t = self.srcs[0].window(q + da, q + 1, qc + db, qc + 1)
                else:
                    t = torch.cat([s.window(q + da, q + 1, qc + db, qc + 1) for s in self.srcs], 1)
                if n.pre is not None:
                    t = n.pre(t)
                t = t.permute(0, 2, 3, 1)
            cols.append(_matmul(t.reshape(t.shape[0], -1), wmat, self.bias))
        y = (cols[0][:, :, None] if len(cols) == 1 else torch.stack(cols, 2))[:, :, None, :]
        if n.post is not None:
            y = n.post(y, *(e.window(r, r + 1, c0, c1) for e in self.extras))
        return y


class _PointwiseMap(_Ring):
    def setup(self, dtype, device):
        pass

    def compute(self, r, c0, c1):
        return self.node.fn(*(s.window(r, r + 1, c0, c1) for s in self.srcs))


_RUNTIME = {
    "input": _Input,
    "constant": _Constant,
    "shift": _Shift,
    "conv": _Conv,
    "conv_transpose": _ConvTranspose,
    "map": _PointwiseMap,
}


class IncrementalForward:
    """Evaluates a CausalGraph incrementally as its input is filled in raster order (see the module doc).

    Args:
        graph: the graph; its input tensor is read in place.
        output: the node to read, at the input's resolution (e.g. the distribution parameters).
        trace: optional callable(name, r, c0, c1, value, provisional) called for every computed segment
            (tests compare it to `graph.full()`).
        require_causal: refuse graphs whose output at a pixel needs later pixels (params_at could not be
            served); False allows them for `advance` alone (e.g. testing a single layer).
    """

    def __init__(self, graph: CausalGraph, output: Node, trace: Callable | None = None, require_causal: bool = True):
        inp = graph.input_node
        if inp is None:
            raise ValueError("the graph has no input")
        if (output.H, output.W) != (inp.H, inp.W) and require_causal:
            raise ValueError(f"the output {output.name} is {output.H}x{output.W}, the input {inp.H}x{inp.W}")
        self.graph, self.trace, self.require_causal = graph, trace, require_causal
        self.H, self.W = inp.H, inp.W
        self.HW = self.H * self.W
        x = inp.x
        self.batch, self.device = x.shape[0], x.device
        self.front_in = 0
        self._started = False
        with torch.no_grad():
            self._build(graph, output, make_plan(graph, output, require_causal))

    def _build(self, graph: CausalGraph, output: Node, plan: Plan) -> None:
        """The runtime maps of the planned graph, their rings allocated and their weights laid out."""
        maps: dict[str, _Map] = {}
        for n in graph.nodes:
            m = _RUNTIME[n.kind](n)
            m.srcs = [maps[s.name] for s in n.srcs]
            m.extras = [maps[e.name] for e in n.extras]
            m.table, m.provisional = plan.ready[n.name], plan.provisional[n.name]
            maps[n.name] = m
        self.dtype = plan.dtype
        span = _spans(graph)
        for n in graph.nodes:
            if n.kind == "constant":
                maps[n.name].setup(self.dtype, self.device)
            elif n.kind == "input":
                maps[n.name].setup(self.dtype, self.device, plan.margins[n.name], plan.input_rows)
            elif n.stored:
                maps[n.name].allocate(
                    self.batch,
                    plan.channels[n.name],
                    plan.rows[n.name],
                    *plan.margins[n.name],
                    self.dtype,
                    self.device,
                    span.get(n.name, 1),
                )
                if n.kind == "conv" and n.skip is not None:
                    maps[n.name].setup(self.dtype, self.device, [plan.channels[e.name] for e in n.skip.nodes])
                else:
                    maps[n.name].setup(self.dtype, self.device)
        for n in graph.nodes:  # convolutions that read pre(one map): that map keeps pre(itself) beside it
            if n.kind in ("conv", "conv_transpose"):
                m = maps[n.name]
                m.src_pre = _through_pre(m.srcs[0], n.pre) if n.pre is not None and len(m.srcs) == 1 else None
                k = n.skip
                if k is not None:  # the skip maps after the skip's pre, from derived rings where possible
                    skip = [maps[e.name] for e in k.nodes]
                    m.skip_in = (
                        skip if k.pre is None else [_through_pre(e, k.pre) or _PreApplied(e, k.pre) for e in skip]
                    )
        raw = {output.name}  # stored maps read as they are: the output and every window not through pre
        for m in maps.values():
            if isinstance(m, (_Conv, _ConvTranspose)):
                reads = (m.srcs if m.src_pre is None else []) + m.extras + getattr(m, "skip_in", [])
            elif isinstance(m, _PointwiseMap):
                reads = m.srcs
            else:
                continue
            for src in reads:
                while isinstance(src, (_Shift, _PreApplied)):
                    src = src.srcs[0]
                raw.add(src.name) if not isinstance(src, _Derived) else None
        for m in maps.values():
            if isinstance(m, _Ring):
                m.raw_read = m.name in raw or not m.derived
        self.maps, self.out = maps, maps[output.name]
        self._late, self._ready_before = plan.late, plan.ready_before
        self._stored = [maps[n.name] for n in graph.nodes if n.stored]
        self._input = maps[graph.input_node.name]

    # ----- run -----------------------------------------------------------------------------------------------
    def _run(self, f: int, provisional: bool = False):
        """Compute every stored map up to its frontier for input frontier f; provisional: f - 1 is the pixel
        being drawn, compute only what its output needs."""
        trace = self.trace
        self._input.refresh(f, final=not provisional)
        for m in self._stored:
            new = m.provisional[f - 1] if provisional else m.table[f]
            a = m.front
            if new <= a:
                continue
            W = m.W
            r, c = divmod(a, W)
            while a < new:
                e = min(new, (r + 1) * W)
                c1 = c + e - a
                y = m.compute(r, c, c1)
                m.write(r, c, c1, y)
                if trace is not None:
                    trace(m.name, r, c, c1, y, provisional)
                a, r, c = e, r + 1, 0
            m.front = new

    def advance(self, f: int) -> None:
        """Commit: input positions [0, f) (raster order) are final; compute everything they make computable."""
        if f < self.front_in or f > self.HW:
            raise ValueError(f"cannot advance from input position {self.front_in} to {f}")
        if not self._started:  # positions that need no input at all (e.g. the first row of shifted maps)
            self._run(0)
            self._started = True
        while self.front_in < f:
            nxt = min(f, (self.front_in // self.W + 1) * self.W)
            self._run(nxt)
            self.front_in = nxt

    def params_at(self, i: int, j: int) -> torch.Tensor:
        """The output at pixel (i, j), (B, P): pixels before (i, j) must be final (see the module doc)."""
        p = i * self.W + j
        if p != self.front_in or not self._started:
            self.advance(p)
        if self._late[p]:
            raise ValueError(f"the output at pixel ({i}, {j}) depends on later pixels")
        out = self.out
        if self._ready_before[p]:
            return out.window(i, i + 1, j, j + 1).reshape(self.batch, -1).clone()
        saved = [m.front for m in self._stored]
        self._run(p + 1, provisional=True)
        val = out.window(i, i + 1, j, j + 1).reshape(self.batch, -1).clone()
        for m, f in zip(self._stored, saved):
            m.front = f
        return val

    def memory(self) -> dict[str, int]:
        """Rows kept per stored map {name: rows} (each row is B x C x (W + margins) values)."""
        return {m.name: m.R for m in self._stored}

    def memory_bytes(self) -> int:
        rings = self._stored + [d for m in self._stored for d in m.derived]
        return sum(m.nhwc.numel() * m.nhwc.element_size() for m in rings)


def begin_incremental(model: nn.Module, x: torch.Tensor, cond=None) -> IncrementalForward:
    """The generic `begin_cache` of a model with `cache_graph(graph, x, cond) -> output node`, which must
    generate in raster order (the rings hold the last rows of every map)."""
    require_eval(model)
    H, W = x.shape[-2:]
    pixels = model.generation_order() % (H * W)  # sub-pixel order -> the order pixels are first reached in
    first = torch.ones_like(pixels, dtype=torch.bool)
    first[1:] = pixels[1:] != pixels[:-1]
    if not torch.equal(pixels[first], torch.arange(H * W)):
        raise NotImplementedError(
            f"the per-layer cache follows raster order, but {type(model).__name__}'s generation order is "
            "another; use method='naive'"
        )
    graph = CausalGraph()
    with torch.no_grad():
        output = model.cache_graph(graph, x, cond)
    return IncrementalForward(graph, output)
