"""The runtime layer of cached evaluation: each map's ring of rows and the step loop that computes, per
input frontier, the positions that became computable (see pixelar.nn.cache)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...inference import require_eval
from .graph import CausalGraph, Node
from .plan import Plan, ceil_div, make_plan


class _Map:
    """Runtime state of one node: reads windows (zeros outside the map) and, when stored, computes positions."""

    def __init__(self, node: Node):
        self.node, self.name, self.H, self.W = node, node.name, node.H, node.W
        self.stored = node.stored
        self.front = 0  # positions [0, front) computed (stored nodes)
        self.srcs: list[_Map] = []
        self.extras: list[_Map] = []
        self.table: list[int] = []

    # --- stored maps: a ring of R rows, row R of the buffer is all zeros (rows outside the map) ---
    def allocate(self, batch, channels, rows, pad_left, pad_right, dtype, device):
        self.R, self.padL = rows, pad_left
        # channels-last storage seen as (B, C, rows, cols): small windows of it stay fast to compute with
        self.buf = torch.zeros(
            batch, rows + 1, pad_left + self.W + pad_right, channels, dtype=dtype, device=device
        ).permute(0, 3, 1, 2)
        self.tags = [-1] * rows
        self._index = {}  # (r0, r1) -> ring slots of a window that wraps around or leaves the map

    def _check_row(self, r):
        if self.tags[r % self.R] != r and r <= (self.front - 1) // self.W:
            raise RuntimeError(f"cache bug: row {r} of {self.name} was evicted (ring of {self.R} rows)")

    def window(self, r0, r1, c0, c1):
        """Rows [r0, r1), columns [c0, c1) of the map, zero outside it: (B, C, r1-r0, c1-c0)."""
        R, H = self.R, self.H
        # rows are evicted oldest first: if the first row is still held, so is every later row computed so
        # far (rows not started yet are only read under zero weights, masked taps)
        v0 = r0 if r0 > 0 else 0
        if v0 < r1 and v0 < H and self.tags[v0 % R] != v0:
            self._check_row(v0)
        cols = slice(self.padL + c0, self.padL + c1)
        if r0 >= 0 and r1 <= H:
            s0 = r0 % R
            if s0 + r1 - r0 <= R:
                return self.buf[:, :, s0 : s0 + r1 - r0, cols]
        idx = self._index.get((r0, r1))
        if idx is None:
            slots = [r % R if 0 <= r < H else R for r in range(r0, r1)]
            idx = self._index[r0, r1] = torch.tensor(slots, device=self.buf.device)
        return self.buf[:, :, :, cols].index_select(2, idx)

    def write(self, r, c0, c1, y):
        slot = r % self.R
        self.buf[:, :, slot, self.padL + c0 : self.padL + c1] = y[:, :, 0]
        self.tags[slot] = r


def _clip(lo, hi, n):
    """Valid sub-range [vlo, vhi) of [lo, hi) within [0, n), empty ranges placed inside [lo, hi]."""
    vlo = min(max(lo, 0), hi)
    return vlo, max(min(hi, n), vlo)


class _Input(_Map):
    def window(self, r0, r1, c0, c1):
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


class _Conv(_Map):
    """A convolution as a matrix product over im2col rows (much faster than conv2d on tiny windows)."""

    def setup(self, dtype, device):
        n = self.node
        g = n.geo
        a0, a1, b0, b1 = n.box
        w = g.weight.detach()[:, :, a0 : a1 + 1, b0 : b1 + 1].to(dtype=dtype, device=device)
        self.wmat = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).t().contiguous()  # (kh*kw*Cin, Cout)
        self.bias = None if g.bias is None else g.bias.detach().to(dtype=dtype, device=device)
        self.stride = tuple(g.stride)
        self.kh, self.kw = a1 - a0 + 1, b1 - b0 + 1
        self.row_off, self.col_off = a0 - g.pad[2], b0 - g.pad[0]

    def compute(self, r, c0, c1):
        n = self.node
        sh, sw = self.stride
        rl = r * sh + self.row_off
        cl = c0 * sw + self.col_off
        ch = (c1 - 1) * sw + self.col_off + self.kw
        if len(self.srcs) == 1:
            t = self.srcs[0].window(rl, rl + self.kh, cl, ch)
        else:
            t = torch.cat([s.window(rl, rl + self.kh, cl, ch) for s in self.srcs], 1)
        if n.pre is not None:
            t = n.pre(t)
        B, m = t.shape[0], c1 - c0
        if m == 1:
            y = _matmul(t.permute(0, 2, 3, 1).reshape(B, -1), self.wmat, self.bias)[:, :, None, None]
        else:
            cols = t.unfold(3, self.kw, sw).permute(0, 3, 2, 4, 1).reshape(B * m, -1)  # (B*m, kh*kw*Cin)
            y = _matmul(cols, self.wmat, self.bias).view(B, m, -1).permute(0, 2, 1)[:, :, None, :]
        if n.post is not None:
            y = n.post(y, *(e.window(r, r + 1, c0, c1) for e in self.extras))
        return y


class _ConvTranspose(_Map):
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
            if len(self.srcs) == 1:
                t = self.srcs[0].window(q + da, q + 1, qc + db, qc + 1)
            else:
                t = torch.cat([s.window(q + da, q + 1, qc + db, qc + 1) for s in self.srcs], 1)
            if n.pre is not None:
                t = n.pre(t)
            cols.append(_matmul(t.permute(0, 2, 3, 1).reshape(t.shape[0], -1), wmat, self.bias))
        y = (cols[0][:, :, None] if len(cols) == 1 else torch.stack(cols, 2))[:, :, None, :]
        if n.post is not None:
            y = n.post(y, *(e.window(r, r + 1, c0, c1) for e in self.extras))
        return y


class _PointwiseMap(_Map):
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
        for n in graph.nodes:
            if n.kind == "constant":
                maps[n.name].setup(self.dtype, self.device)
            elif n.stored:
                maps[n.name].allocate(
                    self.batch, plan.channels[n.name], plan.rows[n.name], *plan.margins[n.name], self.dtype, self.device
                )
                maps[n.name].setup(self.dtype, self.device)
        self.maps, self.out = maps, maps[output.name]
        self._late, self._ready_before = plan.late, plan.ready_before
        self._stored = [maps[n.name] for n in graph.nodes if n.stored]

    # ----- run -----------------------------------------------------------------------------------------------
    def _run(self, f: int, provisional: bool = False):
        """Compute every stored map up to its frontier for input frontier f; provisional: f - 1 is the pixel
        being drawn, compute only what its output needs."""
        trace = self.trace
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
            return out.buf[:, :, i % out.R, out.padL + j].clone()
        saved = [m.front for m in self._stored]
        self._run(p + 1, provisional=True)
        val = out.buf[:, :, i % out.R, out.padL + j].clone()
        for m, f in zip(self._stored, saved):
            m.front = f
        return val

    def memory(self) -> dict[str, int]:
        """Rows kept per stored map {name: rows} (each row is B x C x (W + margins) values)."""
        return {m.name: m.R for m in self._stored}

    def memory_bytes(self) -> int:
        return sum(m.buf.numel() * m.buf.element_size() for m in self._stored)


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
