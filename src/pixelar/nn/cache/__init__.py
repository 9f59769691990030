"""Incremental (cached) evaluation of causal convolutional networks, for fast sampling.

Ramachandran et al. 2017 ("Fast Generation for Convolutional Autoregressive Models") observe that when an
image is generated in raster order, each layer only needs its activations near the newest pixel: they keep
a small cache of past activations per layer and compute, per step, only the positions the new pixel makes
computable. This package provides that machinery for any convolutional model, independent of the family,
in three layers: description (graph.py), planning (plan.py, once per sampling call) and runtime (runtime.py):

1. A model *describes* its forward pass as a small dataflow graph of causal map operations with
   `CausalGraph` (`input`, `constant`, `conv` (optionally with a `Skip`), `conv_transpose`, `map`,
   `shift`). A `constant` is a map known in full before generation starts (e.g. the embedding of an
   observed auxiliary image): it is ready everywhere from the first step and is read, never recomputed.
   Pointwise work is fused into the
   convolutions as `pre` (applied to the convolution's input window; must map 0 to 0, like relu, elu,
   concat_elu or a gate) and `post` (applied to the convolution's output together with other maps read at
   the same positions, e.g. a residual, a gate, a 1x1 skip convolution, a conditioning bias). Convolution
   modules describe themselves with `cache_geometry()` -> `ConvGeometry` (weight, stride, padding, active
   taps, cropping of transposed convolutions); plain `nn.Conv2d` / `nn.ConvTranspose2d` are understood
   directly. `CausalGraph.full()` evaluates the graph on whole maps: the reference, equal to the model's
   forward.

2. `IncrementalForward(graph, output)` plans the graph (`make_plan`) and evaluates it position by position:

   - Readiness. For every edge it tabulates which source position each output position needs last (in
     raster order of the source map), so for every "input known up to raster position f" it knows how far
     every map can be computed (`frontier`). Every map, whatever its resolution (stride-2 downsampling,
     cropped transposed upsampling) or lag (a down-shifted 2x3 convolution at (r, c) needs (r, c+1) of its
     input), is thus updated at its own rate: a step computes, per map, exactly the newly computable
     positions (on average one per full-resolution map per pixel, 1/4 at half resolution, a run of columns
     at the end of a row for maps that look to the right).
   - Memory. Each map keeps a ring of a few rows (plus zero margins for padding); the number of rows is
     computed at compile time from the consumers' windows and how far ahead the producer can run (at most
     one input row is committed per internal step). Row tags detect any read of an evicted row. Rings are
     channels-last and repeat their first rows after the last, so every window is one strided view. The
     graph and the runtime hold no reference cycles (back references are weak), so the rings are freed as
     soon as a sampling or coding call drops its state, not at the cycle collector's next full run.
   - Few operations per step (a step is a handful of small tensor operations per layer, so their number
     sets the speed): a convolution with a single-map `pre` reads pre(map) from a ring kept beside the map
     and written with it (pre once per position, not once per window); a `Skip` (a 1x1 convolution of
     other maps at the output's positions, e.g. a resnet's short-cut) is folded into the convolution's
     matrix product; the input's transform is applied once per position.
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

from .graph import CausalGraph, ConvGeometry, Node, Skip, conv_geometry, pointwise_conv
from .runtime import IncrementalForward, begin_incremental

__all__ = [
    "ConvGeometry",
    "conv_geometry",
    "CausalGraph",
    "Node",
    "Skip",
    "IncrementalForward",
    "begin_incremental",
    "pointwise_conv",
]
