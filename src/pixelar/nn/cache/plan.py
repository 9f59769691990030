"""The planning layer of cached evaluation: from a CausalGraph, for every map, how far it can be computed
for each input frontier (readiness), what a provisional sub-pixel step must compute, its channels, and how
many rows its ring keeps (see pixelar.nn.cache). Everything here runs once, before the first step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .graph import CausalGraph, Node


def ceil_div(a, b):
    return -((-a) // b)


def requirements(node: Node) -> list[tuple[Node, torch.Tensor]]:
    """For each source edge: the flat raster index (in the source) of the last source position that each
    output position needs, -1 for none; (H*W,) int64, made non-decreasing (cummax)."""
    H, W = node.H, node.W
    r = torch.arange(H).view(H, 1)
    c = torch.arange(W).view(1, W)
    ident = torch.arange(H * W)
    out = []
    if node.kind == "shift":
        src = node.srcs[0]
        dy, dx = node.offset
        rs, cs = r - dy, c - dx
        req = torch.where((rs >= 0) & (cs >= 0), rs * src.W + cs, torch.tensor(-1)).flatten()
        out.append((src, req))
    elif node.kind == "map":
        out += [(s, ident) for s in node.srcs]
    elif node.kind == "conv":
        g = node.geo
        src = node.srcs[0]
        Hs, Ws = src.H, src.W
        (sh, sw), (pl, _, pt, _) = g.stride, g.pad
        kh, kw = g.kernel
        taps = g.taps if g.taps is not None else torch.ones(kh, kw, dtype=torch.bool)
        req = torch.full((H, W), -1, dtype=torch.long)
        for a, b in taps.to(torch.bool).cpu().nonzero().tolist():
            ri, ci = r * sh - pt + a, c * sw - pl + b
            ok = (ri >= 0) & (ri < Hs) & (ci >= 0) & (ci < Ws)
            req = torch.maximum(req, torch.where(ok, ri * Ws + ci, torch.tensor(-1)))
        out += [(s, req.flatten()) for s in node.srcs]
        out += [(e, ident) for e in node.extras + _skip_nodes(node)]
    elif node.kind == "conv_transpose":
        g = node.geo
        Hs, Ws = node.srcs[0].H, node.srcs[0].W
        (sh, sw), (kh, kw), (ct, cl) = g.stride, g.kernel, g.crop
        R = torch.arange(H) + ct
        C = torch.arange(W) + cl
        a_hi = torch.clamp(R // sh, max=Hs - 1)
        a_lo = torch.clamp(-((-(R - kh + 1)) // sh), min=0)
        b_hi = torch.clamp(C // sw, max=Ws - 1)
        b_lo = torch.clamp(-((-(C - kw + 1)) // sw), min=0)
        ok = (a_lo <= a_hi).view(H, 1) & (b_lo <= b_hi).view(1, W)
        req = torch.where(ok, a_hi.view(H, 1) * Ws + b_hi.view(1, W), torch.tensor(-1)).flatten()
        out += [(s, req) for s in node.srcs]
        out += [(e, ident) for e in node.extras]
    return [(s, torch.cummax(q, 0).values) for s, q in out]


def _skip_nodes(node: Node) -> list[Node]:
    return list(node.skip.nodes) if node.skip is not None else []


def window_reads(node: Node) -> list[tuple[Node, torch.Tensor, torch.Tensor, int, int]]:
    """For each source read through a window: (source, lowest row, highest row) per output row (H,), and the
    extreme columns read over the whole row (inclusive), in source coordinates."""
    H, W = node.H, node.W
    r = torch.arange(H)
    reads = []
    if node.kind == "map":
        reads += [(s, r, r, 0, W - 1) for s in node.srcs]
    elif node.kind == "shift":
        dy, dx = node.offset
        reads.append((node.srcs[0], r - dy, r - dy, -dx, W - 1 - dx))
    elif node.kind == "conv":
        g = node.geo
        (sh, sw), (pl, _, pt, _) = g.stride, g.pad
        a0, a1, b0, b1 = node.box
        reads += [(s, r * sh - pt + a0, r * sh - pt + a1, b0 - pl, (W - 1) * sw - pl + b1) for s in node.srcs]
        reads += [(e, r, r, 0, W - 1) for e in node.extras + _skip_nodes(node)]
    elif node.kind == "conv_transpose":
        g = node.geo
        (sh, sw), (kh, kw), (ct, cl) = g.stride, g.kernel, g.crop
        R = r + ct
        lo, hi = -((-(R - kh + 1)) // sh), R // sh
        reads += [(s, lo, hi, ceil_div(cl - kw + 1, sw), (W - 1 + cl) // sw) for s in node.srcs]
        reads += [(e, r, r, 0, W - 1) for e in node.extras]
    return reads


@dataclass
class Plan:
    """What the runtime needs before the first step; every dict is keyed by node name.

    ready: ready[n][f], positions of map n computable once input positions [0, f) are final ((H*W + 1) ints).
    provisional: provisional[n][p], positions of n to compute while pixel p is being drawn: only what the
        output at p needs (H*W ints).
    late: late[p], the output at pixel p needs input after p (not causal).
    ready_before: ready_before[p], the output at p needs nothing of pixel p itself (no provisional step).
    channels: channels of every map; dtype: of the stored maps.
    rows, margins: ring rows and (left, right) zero columns of every stored map.
    input_rows: zero rows (top, bottom) around the input that its readers' windows reach (margins has its
        columns).
    """

    ready: dict[str, list[int]]
    provisional: dict[str, list[int]]
    late: list[bool]
    ready_before: list[bool]
    channels: dict[str, int]
    dtype: torch.dtype
    rows: dict[str, int]
    margins: dict[str, tuple[int, int]]
    input_rows: tuple[int, int] = (0, 0)


def make_plan(graph: CausalGraph, output: Node, require_causal: bool = True) -> Plan:
    """Plan the incremental evaluation of `graph` up to `output` (see IncrementalForward)."""
    inp = graph.input_node
    H, W = inp.H, inp.W
    HW = H * W
    tables, edges = _readiness(graph, HW)
    pos = torch.arange(HW)
    same_size = (output.H, output.W) == (H, W)
    out_table = tables[output.name]
    late = out_table[1:] <= pos if same_size else torch.ones(HW, dtype=torch.bool)  # output at p needs input > p
    if require_causal and bool(late.any()):
        p = int(late.nonzero()[0])
        raise ValueError(f"the output at pixel {divmod(p, W)} depends on later pixels: not causal")
    # the output at p needs nothing of pixel p itself (joint outputs, 1-channel masks): no provisional step
    ready_before = (out_table[:-1] > pos).tolist() if same_size else [False] * HW
    target = output if same_size else None
    dtype, channels = _channels(graph)
    rows, margins, input_rows = _rings(graph, tables, target, W)
    return Plan(
        ready={k: v.tolist() for k, v in tables.items()},
        provisional=_provisional(graph, tables, edges, target, HW),
        late=late.tolist(),
        ready_before=ready_before,
        channels=channels,
        dtype=dtype,
        rows=rows,
        margins=margins,
        input_rows=input_rows,
    )


def _readiness(graph: CausalGraph, HW: int):
    """For every node, (HW + 1,) int64: positions computable per input frontier; and its requirement edges."""
    tables: dict[str, torch.Tensor] = {}
    edges: dict[str, list] = {}
    for n in graph.nodes:
        if n.kind == "input":
            ready = torch.arange(HW + 1)
        elif n.kind == "constant":  # known before the first input position
            ready = torch.full((HW + 1,), n.H * n.W, dtype=torch.long)
            edges[n.name] = []
        else:
            ready = None
            edges[n.name] = requirements(n)
            for src, req in edges[n.name]:
                met = torch.searchsorted(req, tables[src.name])  # positions whose needs are met
                ready = met if ready is None else torch.minimum(ready, met)
        if int(ready[HW]) != n.H * n.W:
            raise ValueError(f"{n.name} is never fully computable from the input (not causal)")
        tables[n.name] = ready
    return tables, edges


def _provisional(graph: CausalGraph, tables, edges, output: Node | None, HW: int) -> dict[str, list[int]]:
    """Provisional steps (the output at p needs part of pixel p) compute only what the output at p needs, e.g.
    not a vertical stack that looks to the right. need[n][p] = leading positions of n needed."""
    need = {n.name: torch.zeros(HW, dtype=torch.long) for n in graph.nodes}
    if output is not None:
        need[output.name] = torch.arange(HW) + 1
    for n in reversed(graph.nodes):
        for src, req in edges.get(n.name, ()):
            d = need[n.name]
            from_n = torch.where(d > 0, req[(d - 1).clamp(min=0)] + 1, torch.zeros_like(d))
            need[src.name] = torch.maximum(need[src.name], from_n)
    return {
        n.name: torch.maximum(tables[n.name][:-1], torch.minimum(tables[n.name][1:], need[n.name])).tolist()
        for n in graph.nodes
    }


def _channels(graph: CausalGraph) -> tuple[torch.dtype, dict[str, int]]:
    """The stored maps' dtype and every map's channels, found by running each node on zeros."""
    inp = graph.input_node
    x = inp.x[:1, :, :1, :1]
    probe_in = x if inp.transform is None else inp.transform(x)
    dtype = probe_in.dtype if probe_in.dtype.is_floating_point else torch.get_default_dtype()
    device = inp.x.device
    channels: dict[str, int] = {}
    for n in graph.nodes:
        if n.kind == "constant" and n.x.shape[0] != inp.x.shape[0]:
            raise ValueError(f"constant {n.name} has batch {n.x.shape[0]}, the input {inp.x.shape[0]}")
        channels[n.name] = _probe(n, channels, probe_in, dtype, device)
    return dtype, channels


def _probe(n: Node, channels: dict[str, int], probe_in: torch.Tensor, dtype, device) -> int:
    if n.kind in ("input", "constant"):
        return probe_in.shape[1] if n.kind == "input" else n.x.shape[1]
    if n.kind == "shift":
        return channels[n.srcs[0].name]
    z = lambda name, h=1, w=1: torch.zeros(1, channels[name], h, w, dtype=dtype, device=device)  # noqa: E731
    if n.kind == "map":
        return n.fn(*(z(s.name) for s in n.srcs)).shape[1]
    kh, kw = n.geo.kernel
    t = torch.cat([z(s.name, kh, kw) for s in n.srcs], 1)
    if n.pre is not None:
        t = n.pre(t)
        if bool(t.ne(0).any()):
            raise ValueError(f"{n.name}: pre must map 0 to 0 (it is applied to zero padding)")
    w, b = n.geo.weight.to(dtype), None if n.geo.bias is None else n.geo.bias.to(dtype)
    if n.kind == "conv":
        y = F.conv2d(t, w, b)
        if n.skip is not None:
            k = n.skip
            acts = [z(e.name) if k.pre is None else k.pre(z(e.name)) for e in k.nodes]
            w = k.matrix([channels[e.name] for e in k.nodes])
            if w.dim() != 2 or tuple(w.shape) != (y.shape[1], sum(a.shape[1] for a in acts)):
                raise ValueError(
                    f"{n.name}: the skip weight is {tuple(w.shape)}, the output and skip maps need "
                    f"({y.shape[1]}, {sum(a.shape[1] for a in acts)})"
                )
    else:
        y = F.conv_transpose2d(t, w, b)[:, :, :1, :1]
    if n.post is not None:
        y = n.post(y, *(z(e.name) for e in n.extras))
    return y.shape[1]


def _rings(graph: CausalGraph, tables, output: Node | None, W: int):
    """Rows each stored map must keep, and zero margins (left, right) for the columns its readers touch."""
    reads: dict[str, list] = {n.name: [] for n in graph.nodes}
    margins = {n.name: [0, 0] for n in graph.nodes}
    input_rows = [0, 0]

    def resolve(src: Node, consumer: Node, lo, hi, cmin, cmax):
        # a loop, not recursion: a nested function that calls itself is a reference cycle (through its
        # closure), which would keep the graph alive until Python's cycle collector runs
        while src.kind == "shift":  # a shift stores nothing: its reader reads the shifted source
            dy, dx = src.offset
            hi = torch.clamp(hi, max=src.H - 1)
            src, lo, hi, cmin, cmax = src.srcs[0], lo - dy, hi - dy, cmin - dx, min(cmax, src.W - 1) - dx
        if src.stored or src.kind == "input":
            if src.stored:
                reads[src.name].append((consumer, lo, hi))
            else:
                input_rows[0] = max(input_rows[0], -int(lo.min()))
                input_rows[1] = max(input_rows[1], int(hi.max()) - (src.H - 1))
            margins[src.name][0] = max(margins[src.name][0], -cmin)
            margins[src.name][1] = max(margins[src.name][1], cmax - (src.W - 1))

    for n in graph.nodes:
        if n.stored:
            for src, lo, hi, cmin, cmax in window_reads(n):
                resolve(src, n, lo, hi, cmin, cmax)
    HW = len(tables[graph.input_node.name]) - 1
    step = W  # the most input positions committed by one internal step
    rows_of: dict[str, int] = {}
    for n in graph.nodes:
        if not n.stored:
            continue
        ready = tables[n.name]
        rows = 1
        for consumer, lo, _hi in reads[n.name]:
            Hk, Wk = consumer.H, consumer.W
            row_end = torch.clamp((torch.arange(Hk) + 1) * Wk, max=Hk * Wk)
            f_done = torch.searchsorted(tables[consumer.name], row_end)  # input frontier completing each row
            f_hi = torch.clamp(f_done + step, max=HW)
            top = torch.div(ready[f_hi] - 1, n.W, rounding_mode="floor")  # producer's newest row by then
            rows = max(rows, int((top - torch.clamp(lo, min=0) + 1).max()))
        if n is output:
            top = torch.div(ready[torch.arange(1, HW + 1)] - 1, n.W, rounding_mode="floor")
            rows = max(rows, int((top - torch.arange(HW) // W + 1).max()))
        rows_of[n.name] = min(rows, n.H)
    return rows_of, {k: (v[0], v[1]) for k, v in margins.items()}, (input_rows[0], input_rows[1])
