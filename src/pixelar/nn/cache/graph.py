"""The description layer of cached evaluation: a model states its forward pass as a graph of causal map
operations (see pixelar.nn.cache), and each convolution states its geometry."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


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
        if (
            _pair(module.dilation) != (1, 1)
            or module.groups != 1
            or module.padding_mode != "zeros"
            or isinstance(module.padding, str)
        ):
            raise ValueError(
                f"cached evaluation supports {type(module).__name__} with dilation 1, groups 1 "
                "and integer zero padding only"
            )
        ph, pw = _pair(module.padding)
        if type(module) is nn.ConvTranspose2d:
            if pad is not None:
                raise ValueError("pad applies to regular convolutions only")
            return ConvGeometry(
                module.weight,
                module.bias,
                _pair(module.stride),
                transposed=True,
                crop=(ph, pw),
                output_padding=_pair(module.output_padding),
            )
        extra = pad if pad is not None else (0, 0, 0, 0)
        return ConvGeometry(
            module.weight,
            module.bias,
            _pair(module.stride),
            pad=(pw + extra[0], pw + extra[1], ph + extra[2], ph + extra[3]),
        )
    raise TypeError(
        f"{type(module).__name__} does not describe itself for cached evaluation; "
        "give it a cache_geometry() method returning a pixelar.nn.cache.ConvGeometry"
    )


def conv_box(geo: ConvGeometry):
    """Bounding box (a0, a1, b0, b1), inclusive, of the active kernel taps."""
    kh, kw = geo.kernel
    taps = geo.taps if geo.taps is not None else torch.ones(kh, kw, dtype=torch.bool)
    taps = taps.to(torch.bool).cpu()
    if not bool(taps.any()):
        return None
    rows = taps.any(1).nonzero().flatten()
    cols = taps.any(0).nonzero().flatten()
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


@dataclass
class Skip:
    """weight @ cat(pre(m) for m in nodes) + bias at every position: a 1x1 convolution of other maps (at the
    convolution's output resolution, read at its own positions) added to a convolution's output, e.g. the
    short-cut of a gated resnet. pre is applied to each map on its own (position-wise, pre(0) = 0; the cache
    computes it once per position and shares it with windows read through the same pre function).

    Args:
        nodes: the maps, concatenated over channels after pre.
        weight: (out, in) over those channels, or a function of the maps' channel counts (before pre)
            returning it (for weights laid out by the maps' sizes, known once the graph is planned).
        bias: (out,) or None.
        pre: position-wise function of each map, or None.
    """

    nodes: Sequence[Node]
    weight: torch.Tensor | Callable[[list[int]], torch.Tensor]
    bias: torch.Tensor | None = None
    pre: Callable | None = None

    def matrix(self, channels: list[int]) -> torch.Tensor:
        """The (out, in) weight for maps of these channel counts."""
        return self.weight if isinstance(self.weight, torch.Tensor) else self.weight(list(channels))

    def full(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The skip term on whole maps (B, C_i, H, W) -> (B, out, H, W)."""
        t = torch.cat([m if self.pre is None else self.pre(m) for m in maps], 1)
        w = self.matrix([m.shape[1] for m in maps]).to(t.dtype)[:, :, None, None]
        return F.conv2d(t, w, None if self.bias is None else self.bias.to(t.dtype))


class Node:
    """One map (B, channels, H, W) of a CausalGraph. Created by the CausalGraph methods, not directly."""

    def __init__(self, graph: CausalGraph, kind: str, H: int, W: int, name: str | None):
        # the graph weakly: graph.nodes holds the node, and a reference back would make a cycle, which keeps a
        # sampling call's graph (and the image it reads) alive until Python's cycle collector runs
        self._graph = weakref.ref(graph)
        self.kind, self.H, self.W = kind, int(H), int(W)
        self.name = name or f"{kind}{len(graph.nodes)}"
        self.srcs: list[Node] = []  # read through windows (concatenated over channels for convolutions)
        self.extras: list[Node] = []  # read at the node's own positions, passed to post
        self.skip: Skip | None = None  # conv: a 1x1 convolution of other maps added to the output
        self.geo: ConvGeometry | None = None
        self.pre: Callable | None = None
        self.post: Callable | None = None
        self.fn: Callable | None = None
        self.offset = (0, 0)  # shift: (down, right)
        self.x: torch.Tensor | None = None  # input
        self.transform: Callable | None = None
        self.box: tuple[int, int, int, int] | None = None  # conv: rows / columns of the active taps

    @property
    def graph(self) -> CausalGraph | None:
        """The CausalGraph the node belongs to (None once that graph is gone)."""
        return self._graph()

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
        for s in node.srcs + node.extras + (list(node.skip.nodes) if node.skip is not None else []):
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

    def conv(
        self,
        src,
        module: nn.Module,
        *,
        pad=None,
        pre: Callable | None = None,
        post: Callable | None = None,
        extras: Sequence[Node] = (),
        skip: Skip | None = None,
        name: str | None = None,
    ) -> Node:
        """post(conv(pre(cat(src))) + skip, *extras): a (masked / shifted / strided) convolution.

        src: a node or a list of nodes at one resolution (concatenated over channels).
        pad: extra zero padding (F.pad order) for a plain nn.Conv2d that the model pads itself.
        pre: position-wise function of the input with pre(0) = 0 (applied before zero padding).
        post: position-wise function of the output and the `extras` maps (at the output's resolution).
        skip: a 1x1 convolution of other maps at the output's positions (see Skip), added before post; the
            cached evaluation folds it into this convolution's matrix product.
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
        node.box = conv_box(geo)
        if node.box is None:
            raise ValueError(f"{node.name}: every kernel tap is masked")
        node.extras = self._extras(extras, H, W, post)
        if skip is not None:
            if not isinstance(skip, Skip) or not skip.nodes:
                raise TypeError("skip must be a pixelar.nn.cache.Skip of one or more nodes")
            for e in skip.nodes:
                if (e.H, e.W) != (H, W):
                    raise ValueError(f"skip map {e.name} is {e.H}x{e.W}, the output is {H}x{W}")
            w = skip.weight
            if isinstance(w, torch.Tensor) and (w.dim() != 2 or w.shape[0] != geo.weight.shape[0]):
                raise ValueError(
                    f"skip weight must be (out channels {geo.weight.shape[0]}, in), got {tuple(skip.weight.shape)}"
                )
            node.skip = skip
        return self._add(node)

    def conv_transpose(
        self,
        src,
        module: nn.Module,
        out_size: tuple[int, int],
        *,
        pre: Callable | None = None,
        post: Callable | None = None,
        extras: Sequence[Node] = (),
        name: str | None = None,
    ) -> Node:
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
                    if n.skip is not None:
                        y = y + n.skip.full([out[e.name] for e in n.skip.nodes])
                else:
                    y = F.conv_transpose2d(t, g.weight, g.bias, g.stride, output_padding=g.output_padding)
                    y = y[:, :, g.crop[0] : g.crop[0] + n.H, g.crop[1] : g.crop[1] + n.W]
                if n.post is not None:
                    y = n.post(y, *(out[e.name] for e in n.extras))
            out[n.name] = y
        return out


def pointwise_conv(module: nn.Conv2d) -> Callable[[torch.Tensor], torch.Tensor]:
    """A 1x1 nn.Conv2d as a function for post / map closures: a matrix product over channels, much faster
    than conv2d on the few positions a cached step computes. (B, Cin, h, w) -> (B, Cout, h, w)."""
    if (
        tuple(module.kernel_size) != (1, 1)
        or _pair(module.stride) != (1, 1)
        or _pair(module.padding) != (0, 0)
        or module.groups != 1
    ):
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
