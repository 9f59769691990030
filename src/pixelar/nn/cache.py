"""Incremental (cached) evaluation of causal convolutional networks, for fast sampling.

Ramachandran et al. 2017 ("Fast Generation for Convolutional Autoregressive Models") observe that when an
image is generated in raster order, each layer only needs its activations near the newest pixel: they keep
a small cache of past activations per layer and compute, per step, only the positions the new pixel makes
computable. This module provides that machinery for any convolutional model, independent of the family:

1. A model *describes* its forward pass as a small dataflow graph of causal map operations with
   `CausalGraph` (`input`, `constant`, `conv`, `conv_transpose`, `map`, `shift`). A `constant` is a map
   known in full before generation starts (e.g. the embedding of an observed auxiliary image): it is
   ready everywhere from the first step and is read, never recomputed. Pointwise work is fused into the
   convolutions as `pre` (applied to the convolution's input window; must map 0 to 0, like relu, elu,
   concat_elu or a gate) and `post` (applied to the convolution's output together with other maps read at
   the same positions, e.g. a residual, a gate, a 1x1 skip convolution, a conditioning bias). Convolution
   modules describe themselves with `cache_geometry()` -> `ConvGeometry` (weight, stride, padding, active
   taps, cropping of transposed convolutions); plain `nn.Conv2d` / `nn.ConvTranspose2d` are understood
   directly. `CausalGraph.full()` evaluates the graph on whole maps: the reference, equal to the model's
   forward.

2. `IncrementalForward(graph, output)` compiles the graph and evaluates it position by position:

   - Readiness. For every edge it tabulates which source position each output position needs last (in
     raster order of the source map), so for every "input known up to raster position f" it knows how far
     every map can be computed (`frontier`). Every map, whatever its resolution (stride-2 downsampling,
     cropped transposed upsampling) or lag (a down-shifted 2x3 convolution at (r, c) needs (r, c+1) of its
     input), is thus updated at its own rate: a step computes, per map, exactly the newly computable
     positions (on average one per full-resolution map per pixel, 1/4 at half resolution, a run of columns
     at the end of a row for maps that look to the right).
   - Memory. Each map keeps a ring of a few rows (plus zero margins for padding); the number of rows is
     computed at compile time from the consumers' windows and how far ahead the producer can run (at most
     one input row is committed per internal step). Row tags detect any read of an evicted row.
   - Sub-pixel steps. For backbones whose output at a pixel depends on earlier channels of that same pixel
     (R/G/B masks), `params_at` computes provisionally (with the channels set so far) only the positions
     the output at that pixel needs, and rolls the frontiers back; they are recomputed once the pixel is
     complete (C + 1 evaluations of the new positions per pixel instead of C full passes).

   The sampler-facing protocol is `params_at(i, j) -> (B, P)`: the output map at pixel (i, j), given that
   the caller fills the input tensor in raster order (pixels before (i, j) final; for per-channel outputs
   the channels of (i, j) drawn so far set). Positions are requested in non-decreasing raster order;
   skipping pixels (completion) is fine.

Limitations: raster generation order only (one input map, outputs at the input's resolution); every
layer must be causal in raster order (each map at row r depends only on input rows <= r, which the
readiness tables check); attention or other non-local layers need their own node type.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..inference import require_eval


@dataclass
class ConvGeometry:
    """What the cache needs to know about one convolution.

    Args:
        weight: effective weight (masks applied): (out, in, kh, kw), or (in, out, kh, kw) when transposed.
        bias: (out,) or None.
        stride: (sh, sw).
        pad: zero padding (left, right, top, bottom) in F.pad order, applied before a regular convolution.
        taps: bool (kh, kw), the kernel taps that may be non-zero for some channel pair; None: all.
        transposed: a transposed convolution (upsampling).
        crop: transposed only: rows and columns dropped at the top and left of the full output.
        output_padding: transposed only, as nn.ConvTranspose2d.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    taps: torch.Tensor | None = None
    transposed: bool = False
    crop: tuple[int, int] = (0, 0)
    output_padding: tuple[int, int] = (0, 0)

    @property
    def kernel(self) -> tuple[int, int]:
        return tuple(self.weight.shape[-2:])


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def conv_geometry(module: nn.Module, pad: tuple[int, int, int, int] | None = None) -> ConvGeometry:
    """The ConvGeometry of a module: its own `cache_geometry()`, or a plain nn.Conv2d / nn.ConvTranspose2d.

    `pad` (F.pad order) is extra zero padding a model applies before a plain nn.Conv2d in its forward.
    """
    if hasattr(module, "cache_geometry"):
        if pad is not None:
            raise ValueError(f"{type(module).__name__} pads its input itself; pass no pad")
        return module.cache_geometry()
    if type(module) in (nn.Conv2d, nn.ConvTranspose2d):
        if _pair(module.dilation) != (1, 1) or module.groups != 1 or module.padding_mode != "zeros" \
                or isinstance(module.padding, str):
            raise ValueError(f"cached evaluation supports {type(module).__name__} with dilation 1, groups 1 "
                             "and integer zero padding only")
        ph, pw = _pair(module.padding)
        if type(module) is nn.ConvTranspose2d:
            if pad is not None:
                raise ValueError("pad applies to regular convolutions only")
            return ConvGeometry(module.weight, module.bias, _pair(module.stride), transposed=True, crop=(ph, pw),
                                output_padding=_pair(module.output_padding))
        extra = pad if pad is not None else (0, 0, 0, 0)
        return ConvGeometry(module.weight, module.bias, _pair(module.stride),
                            pad=(pw + extra[0], pw + extra[1], ph + extra[2], ph + extra[3]))
    raise TypeError(f"{type(module).__name__} does not describe itself for cached evaluation; "
                    "give it a cache_geometry() method returning a pixelar.nn.cache.ConvGeometry")


class Node:
    """One map (B, channels, H, W) of a CausalGraph. Created by the CausalGraph methods, not directly."""

    def __init__(self, graph: "CausalGraph", kind: str, H: int, W: int, name: str | None):
        self.graph, self.kind, self.H, self.W = graph, kind, int(H), int(W)
        self.name = name or f"{kind}{len(graph.nodes)}"
        self.srcs: list[Node] = []  # read through windows (concatenated over channels for convolutions)
        self.extras: list[Node] = []  # read at the node's own positions, passed to post
        self.geo: ConvGeometry | None = None
        self.pre: Callable | None = None
        self.post: Callable | None = None
        self.fn: Callable | None = None
        self.offset = (0, 0)  # shift: (down, right)
        self.x: torch.Tensor | None = None  # input
        self.transform: Callable | None = None
        self.box: tuple[int, int, int, int] | None = None  # conv: rows / columns of the active taps

    @property
    def stored(self) -> bool:
        return self.kind in ("conv", "conv_transpose", "map")

    def __repr__(self):
        return f"Node({self.name!r}, {self.kind}, {self.H}x{self.W})"


def _as_list(src) -> list[Node]:
    srcs = list(src) if isinstance(src, (list, tuple)) else [src]
    if not srcs or not all(isinstance(s, Node) for s in srcs):
        raise TypeError("sources must be Nodes of the same CausalGraph")
    return srcs


class CausalGraph:
    """Describes a causal convolutional forward pass as a graph of map operations (see the module doc).

    Nodes are created in topological order: every method takes nodes created earlier.
    """

    def __init__(self):
        self.nodes: list[Node] = []
        self.input_node: Node | None = None

    def _add(self, node: Node) -> Node:
        if any(n.name == node.name for n in self.nodes):
            raise ValueError(f"duplicate node name {node.name!r}")
        for s in node.srcs + node.extras:
            if s.graph is not self:
                raise ValueError("a node of another CausalGraph was used")
        self.nodes.append(node)
        return node

    def input(self, x: torch.Tensor, transform: Callable | None = None, name: str = "input") -> Node:
        """The image being generated, (B, C, H, W), filled in place by the caller in raster order.

        transform: a position-wise function applied to windows of x (e.g. scaling integers to [-1, 1]);
        padding outside the image is zero after the transform.
        """
        if self.input_node is not None:
            raise ValueError("a CausalGraph has exactly one input")
        node = Node(self, "input", x.shape[-2], x.shape[-1], name)
        node.x, node.transform = x, transform
        self.input_node = node
        return self._add(node)

    def constant(self, value: torch.Tensor, name: str = "constant") -> Node:
        """A map known in full before generation, (B, C, h, w): read at any position from the first step (zero
        outside it), e.g. an embedding of an observed auxiliary image. Not copied: do not change it meanwhile."""
        if value.dim() != 4:
            raise ValueError(f"a constant map is (B, C, H, W), got shape {tuple(value.shape)}")
        node = Node(self, "constant", value.shape[-2], value.shape[-1], name)
        node.x = value
        return self._add(node)

    def conv(self, src, module: nn.Module, *, pad=None, pre: Callable | None = None, post: Callable | None = None,
             extras: Sequence[Node] = (), name: str | None = None) -> Node:
        """post(conv(pre(cat(src))), *extras): a (masked / shifted / strided) convolution.

        src: a node or a list of nodes at one resolution (concatenated over channels).
        pad: extra zero padding (F.pad order) for a plain nn.Conv2d that the model pads itself.
        pre: position-wise function of the input with pre(0) = 0 (applied before zero padding).
        post: position-wise function of the output and the `extras` maps (at the output's resolution).
        """
        srcs = _as_list(src)
        geo = conv_geometry(module, pad)
        if geo.transposed:
            raise ValueError("use conv_transpose for transposed convolutions")
        Hs, Ws = self._same_size(srcs)
        (kh, kw), (sh, sw), (pl, pr, pt, pb) = geo.kernel, geo.stride, geo.pad
        H, W = (Hs + pt + pb - kh) // sh + 1, (Ws + pl + pr - kw) // sw + 1
        node = Node(self, "conv", H, W, name)
        node.srcs, node.geo, node.pre, node.post = srcs, geo, pre, post
        node.box = _conv_box(geo)
        if node.box is None:
            raise ValueError(f"{node.name}: every kernel tap is masked")
        node.extras = self._extras(extras, H, W, post)
        return self._add(node)

    def conv_transpose(self, src, module: nn.Module, out_size: tuple[int, int], *, pre: Callable | None = None,
                       post: Callable | None = None, extras: Sequence[Node] = (), name: str | None = None) -> Node:
        """post(crop(conv_transpose(pre(cat(src)))), *extras), cropped to out_size (H, W) after geo.crop."""
        srcs = _as_list(src)
        geo = conv_geometry(module)
        if not geo.transposed:
            raise ValueError("conv_transpose needs a transposed convolution")
        Hs, Ws = self._same_size(srcs)
        (kh, kw), (sh, sw) = geo.kernel, geo.stride
        if kh < sh or kw < sw:
            raise ValueError("transposed convolutions with kernel smaller than stride are not supported")
        H, W = int(out_size[0]), int(out_size[1])
        full_h = (Hs - 1) * sh + kh + geo.output_padding[0]
        full_w = (Ws - 1) * sw + kw + geo.output_padding[1]
        if geo.crop[0] + H > full_h or geo.crop[1] + W > full_w:
            raise ValueError(f"out_size {out_size} exceeds the transposed convolution's output")
        node = Node(self, "conv_transpose", H, W, name)
        node.srcs, node.geo, node.pre, node.post = srcs, geo, pre, post
        node.extras = self._extras(extras, H, W, post)
        return self._add(node)

    def map(self, fn: Callable, *srcs: Node, name: str | None = None) -> Node:
        """fn(*srcs): a position-wise function of maps of one resolution."""
        srcs = _as_list(list(srcs))
        H, W = self._same_size(srcs)
        node = Node(self, "map", H, W, name)
        node.srcs, node.fn = srcs, fn
        return self._add(node)

    def shift(self, src: Node, down: int = 0, right: int = 0, name: str | None = None) -> Node:
        """src moved down / right with zeros filling in (down_shift is shift(x, 1, 0)); stores nothing."""
        if down < 0 or right < 0:
            raise ValueError("only down / right shifts keep raster causality")
        node = Node(self, "shift", src.H, src.W, name)
        node.srcs, node.offset = [src], (int(down), int(right))
        return self._add(node)

    @staticmethod
    def _same_size(srcs):
        sizes = {(s.H, s.W) for s in srcs}
        if len(sizes) != 1:
            raise ValueError(f"maps of different sizes {sorted(sizes)} cannot be combined position-wise")
        return sizes.pop()

    @staticmethod
    def _extras(extras, H, W, post):
        extras = list(extras)
        if extras and post is None:
            raise ValueError("extras are passed to post: give a post function")
        for e in extras:
            if (e.H, e.W) != (H, W):
                raise ValueError(f"extra map {e.name} is {e.H}x{e.W}, the output is {H}x{W}")
        return extras

    # ----- reference: whole maps ----------------------------------------------------------------------------
    @torch.no_grad()
    def full(self) -> dict[str, torch.Tensor]:
        """Evaluate every node on whole maps from the current input. {name: (B, C, H, W)}."""
        out: dict[str, torch.Tensor] = {}
        for n in self.nodes:
            if n.kind == "input":
                y = n.x if n.transform is None else n.transform(n.x)
            elif n.kind == "constant":
                y = n.x
            elif n.kind == "shift":
                dy, dx = n.offset
                y = F.pad(out[n.srcs[0].name], (dx, 0, dy, 0))[:, :, : n.H, : n.W]
            elif n.kind == "map":
                y = n.fn(*(out[s.name] for s in n.srcs))
            else:
                t = torch.cat([out[s.name] for s in n.srcs], 1) if len(n.srcs) > 1 else out[n.srcs[0].name]
                if n.pre is not None:
                    t = n.pre(t)
                g = n.geo
                if n.kind == "conv":
                    y = F.conv2d(F.pad(t, g.pad), g.weight, g.bias, g.stride)
                else:
                    y = F.conv_transpose2d(t, g.weight, g.bias, g.stride, output_padding=g.output_padding)
                    y = y[:, :, g.crop[0] : g.crop[0] + n.H, g.crop[1] : g.crop[1] + n.W]
                if n.post is not None:
                    y = n.post(y, *(out[e.name] for e in n.extras))
            out[n.name] = y
        return out


# ----- compile-time geometry ------------------------------------------------------------------------------------
def _ceil_div(a, b):
    return -((-a) // b)


def _conv_box(geo: ConvGeometry):
    """Bounding box (a0, a1, b0, b1), inclusive, of the active kernel taps."""
    kh, kw = geo.kernel
    taps = geo.taps if geo.taps is not None else torch.ones(kh, kw, dtype=torch.bool)
    taps = taps.to(torch.bool).cpu()
    if not bool(taps.any()):
        return None
    rows = taps.any(1).nonzero().flatten()
    cols = taps.any(0).nonzero().flatten()
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def _requirements(node: Node) -> list[tuple[Node, torch.Tensor]]:
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
        out += [(e, ident) for e in node.extras]
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


def _window_reads(node: Node) -> list[tuple[Node, torch.Tensor, torch.Tensor, int, int]]:
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
        reads += [(e, r, r, 0, W - 1) for e in node.extras]
    elif node.kind == "conv_transpose":
        g = node.geo
        (sh, sw), (kh, kw), (ct, cl) = g.stride, g.kernel, g.crop
        R = r + ct
        lo, hi = -((-(R - kh + 1)) // sh), R // sh
        reads += [(s, lo, hi, _ceil_div(cl - kw + 1, sw), (W - 1 + cl) // sw) for s in node.srcs]
        reads += [(e, r, r, 0, W - 1) for e in node.extras]
    return reads


# ----- runtime ------------------------------------------------------------------------------------------------
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
        self.buf = torch.zeros(batch, rows + 1, pad_left + self.W + pad_right, channels, dtype=dtype,
                               device=device).permute(0, 3, 1, 2)
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
            da = _ceil_div(pr - kh + 1, sh)  # window rows q+da .. q for output row q*sh + pr
            for pc in range(sw):
                db = _ceil_div(pc - kw + 1, sw)
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


_RUNTIME = {"input": _Input, "constant": _Constant, "shift": _Shift, "conv": _Conv, "conv_transpose": _ConvTranspose, "map": _PointwiseMap}


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
            self._compile(graph, output)

    # ----- compile -------------------------------------------------------------------------------------------
    def _compile(self, graph: CausalGraph, output: Node):
        HW = self.HW
        maps: dict[str, _Map] = {}
        tables: dict[str, torch.Tensor] = {}
        edges: dict[str, list] = {}
        for n in graph.nodes:
            m = _RUNTIME[n.kind](n)
            m.srcs = [maps[s.name] for s in n.srcs]
            m.extras = [maps[e.name] for e in n.extras]
            maps[n.name] = m
            if n.kind == "input":
                F_n = torch.arange(HW + 1)
            elif n.kind == "constant":  # known before the first input position
                F_n = torch.full((HW + 1,), n.H * n.W, dtype=torch.long)
                edges[n.name] = []
            else:
                F_n = None
                edges[n.name] = _requirements(n)
                for src, req in edges[n.name]:
                    ready = torch.searchsorted(req, tables[src.name])  # positions whose needs are met
                    F_n = ready if F_n is None else torch.minimum(F_n, ready)
            tables[n.name] = F_n
            m.table = F_n.tolist()
            if m.table[HW] != n.H * n.W:
                raise ValueError(f"{n.name} is never fully computable from the input (not causal)")
        self.maps = maps
        self.out = maps[output.name]
        F_out = tables[output.name]
        pos = torch.arange(HW)
        same_size = (output.H, output.W) == (self.H, self.W)
        late = F_out[1:] <= pos if same_size else torch.ones(HW, dtype=torch.bool)  # output at p needs input > p
        self._late = late.tolist()
        if self.require_causal and bool(late.any()):
            p = int(late.nonzero()[0])
            raise ValueError(f"the output at pixel {divmod(p, self.W)} depends on later pixels: not causal")
        # the output at p needs nothing of pixel p itself (joint outputs, 1-channel masks): no provisional step
        self._ready_before = (F_out[:-1] > pos).tolist() if same_size else [False] * HW
        # provisional steps (output at p needs part of pixel p): compute only what the output at p needs,
        # e.g. not a vertical stack that looks to the right; need[n][p] = leading positions of n needed
        need = {n.name: torch.zeros(HW, dtype=torch.long) for n in graph.nodes}
        if same_size:
            need[output.name] = pos + 1
        for n in reversed(graph.nodes):
            for src, req in edges.get(n.name, ()):
                d = need[n.name]
                from_n = torch.where(d > 0, req[(d - 1).clamp(min=0)] + 1, torch.zeros_like(d))
                need[src.name] = torch.maximum(need[src.name], from_n)
        for n in graph.nodes:
            F_n = tables[n.name]
            maps[n.name].provisional = torch.maximum(F_n[:-1], torch.minimum(F_n[1:], need[n.name])).tolist()

        # dtype / channels of every map: probe with zeros
        probe_in = maps[graph.input_node.name].window(0, 1, 0, 1)[:1]
        self.dtype = probe_in.dtype if probe_in.dtype.is_floating_point else torch.get_default_dtype()
        channels: dict[str, int] = {}
        for n in graph.nodes:
            channels[n.name] = self._probe(n, channels, probe_in)
            if n.kind == "constant":
                if n.x.shape[0] != self.batch:
                    raise ValueError(f"constant {n.name} has batch {n.x.shape[0]}, the input {self.batch}")
                maps[n.name].setup(self.dtype, self.device)

        # memory: rows each stored map must keep, and zero margins for the columns its readers touch
        reads: dict[str, list] = {n.name: [] for n in graph.nodes}
        margins = {n.name: [0, 0] for n in graph.nodes}

        def resolve(src: Node, consumer: Node, lo, hi, cmin, cmax):
            if src.kind == "shift":
                dy, dx = src.offset
                hi = torch.clamp(hi, max=src.H - 1)
                resolve(src.srcs[0], consumer, lo - dy, hi - dy, cmin - dx, min(cmax, src.W - 1) - dx)
            elif src.stored:
                reads[src.name].append((consumer, lo, hi))
                margins[src.name][0] = max(margins[src.name][0], -cmin)
                margins[src.name][1] = max(margins[src.name][1], cmax - (src.W - 1))

        for n in graph.nodes:
            if n.stored:
                for src, lo, hi, cmin, cmax in _window_reads(n):
                    resolve(src, n, lo, hi, cmin, cmax)
        step = self.W  # the most input positions committed by one internal step
        for n in graph.nodes:
            if not n.stored:
                continue
            F_n = tables[n.name]
            rows = 1
            for consumer, lo, hi in reads[n.name]:
                F_k = tables[consumer.name]
                Hk, Wk = consumer.H, consumer.W
                row_end = torch.clamp((torch.arange(Hk) + 1) * Wk, max=Hk * Wk)
                f_done = torch.searchsorted(F_k, row_end)  # the input frontier completing each consumer row
                f_hi = torch.clamp(f_done + step, max=HW)
                top = torch.div(F_n[f_hi] - 1, n.W, rounding_mode="floor")  # producer's newest row by then
                rows = max(rows, int((top - torch.clamp(lo, min=0) + 1).max()))
            if n is output and same_size:
                top = torch.div(F_n[torch.arange(1, HW + 1)] - 1, n.W, rounding_mode="floor")
                rows = max(rows, int((top - pos // self.W + 1).max()))
            maps[n.name].allocate(self.batch, channels[n.name], min(rows, n.H), margins[n.name][0],
                                  margins[n.name][1], self.dtype, self.device)
            maps[n.name].setup(self.dtype, self.device)
        self._stored = [maps[n.name] for n in graph.nodes if n.stored]

    def _probe(self, n: Node, channels, probe_in) -> int:
        if n.kind in ("input", "constant"):
            return probe_in.shape[1] if n.kind == "input" else n.x.shape[1]
        if n.kind == "shift":
            return channels[n.srcs[0].name]
        z = lambda name, h=1, w=1: torch.zeros(1, channels[name], h, w, dtype=self.dtype, device=self.device)
        if n.kind == "map":
            return n.fn(*(z(s.name) for s in n.srcs)).shape[1]
        kh, kw = n.geo.kernel
        t = torch.cat([z(s.name, kh, kw) for s in n.srcs], 1)
        if n.pre is not None:
            t = n.pre(t)
            if bool(t.ne(0).any()):
                raise ValueError(f"{n.name}: pre must map 0 to 0 (it is applied to zero padding)")
        w, b = n.geo.weight.to(self.dtype), None if n.geo.bias is None else n.geo.bias.to(self.dtype)
        if n.kind == "conv":
            y = F.conv2d(t, w, b)
        else:
            y = F.conv_transpose2d(t, w, b)[:, :, :1, :1]
        if n.post is not None:
            y = n.post(y, *(z(e.name) for e in n.extras))
        return y.shape[1]

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


def pointwise_conv(module: nn.Conv2d) -> Callable[[torch.Tensor], torch.Tensor]:
    """A 1x1 nn.Conv2d as a function for post / map closures: a matrix product over channels, much faster
    than conv2d on the few positions a cached step computes. (B, Cin, h, w) -> (B, Cout, h, w)."""
    if tuple(module.kernel_size) != (1, 1) or _pair(module.stride) != (1, 1) or _pair(module.padding) != (0, 0) \
            or module.groups != 1:
        raise ValueError("pointwise_conv needs a 1x1 convolution with stride 1, no padding and groups 1")
    wmat = module.weight.detach()[:, :, 0, 0].t().contiguous()
    bias = None if module.bias is None else module.bias.detach()

    def apply(t: torch.Tensor) -> torch.Tensor:
        B, _, h, w = t.shape
        rows = t.permute(0, 2, 3, 1).reshape(B * h * w, -1)
        if rows.dtype != wmat.dtype and not torch.is_autocast_enabled(rows.device.type):
            rows = rows.to(wmat.dtype)
        y = torch.mm(rows, wmat) if bias is None else torch.addmm(bias, rows, wmat)
        return y.view(B, h, w, -1).permute(0, 3, 1, 2)

    return apply


def begin_incremental(model: nn.Module, x: torch.Tensor, cond=None) -> IncrementalForward:
    """The generic `begin_cache` of a model with `cache_graph(graph, x, cond) -> output node`."""
    require_eval(model)
    graph = CausalGraph()
    with torch.no_grad():
        output = model.cache_graph(graph, x, cond)
    return IncrementalForward(graph, output)


__all__ = ["ConvGeometry", "conv_geometry", "CausalGraph", "Node", "IncrementalForward", "begin_incremental", "pointwise_conv"]
