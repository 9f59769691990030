"""PixelCNN with auxiliary variables (Kolesnikov and Lampert 2017, "PixelCNN Models with Auxiliary Variables
for Natural Image Modeling", ICML): the Grayscale PixelCNN and the Pyramid PixelCNN.

Grayscale PixelCNN (`grayscale_pixelcnn`). The auxiliary variable is a quantized grey view y = f(x) of the
image (16 levels = 4 bits in the paper). Since y is a function of x, log p(x) = log p(y) + log p(x | y)
exactly. p(y) is a PixelCNN++ over the grey image (a softmax over the grey levels); p(x | y) is a conditional
PixelCNN that reads an embedding of the whole y (unmasked: y is observed). p(x | y) must put no mass on
colours whose grey level is not y, else the probabilities of all images sum to less than one: with the
monotone quantized luminance used here, the values of a sub-pixel that can still reach grey level y given
the earlier channels of the pixel form an interval, and every per-sub-pixel conditional is renormalized
over its interval (`OutputDistribution.interval_log_prob`). `log_prob_parts` gives log p(y) and
log p(x | y); sampling draws y first, then the image given y. The likelihood does not factor into one
per-sub-pixel order of x, so `log_prob(reduce=False)` and `generation_order()` raise NotImplementedError.

Pyramid PixelCNN (`pyramid_pixelcnn`). The auxiliary variables are a pyramid of pixel subsamplings: level l
is x[:, :, ::2**l, ::2**l], halved until its longer side is at most `coarsest_size`. The coarsest level is
modelled by a small PixelCNN; every finer level by a small conditional PixelCNN over its new pixels (the
ones not on the coarser level's grid), given the coarser level through an embedding. Each pixel's
conditional comes from exactly one level, so the model factors per sub-pixel: the generation order is the
coarsest level in raster order, then each finer level's new pixels in raster order (R, G, B within a
pixel), and the shared naive sampler runs coarse to fine by following `generation_order()`.

Differences from the paper (whose architecture details and results were not retrievable: only its
abstract, see the paper's section 2.4): the grey view is floor(levels * BT.601 luma / K) (0.299 R +
0.587 G + 0.114 B; the pixel value itself for one channel); the conditional networks are our own: PixelCNN++'s
two shifted streams (u, ul) and gated resnets at one resolution, each resnet also reading the auxiliary
embedding (a small unmasked residual CNN) through its 1x1 short-cut; the pyramid subsamples (averaging
would break the exact likelihood); any output distribution may be chosen.

Cached sampling (the default): every stage is a causal convolutional network at one resolution whose
auxiliary input is fully known before the stage starts, so each stage runs pixelar.nn.cache's incremental
forward with the auxiliary embedding as a constant map (computed once per stage). The pyramid builds one
incremental forward per level when its first new pixel is requested; the level's coarse pixels are final
by then and its new pixels are requested in the level's raster order.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..distributions.base import check_temperature, gumbel_argmax
from ..inference import inference, require_eval
from ..nn import DownRightShiftedConv2d, DownShiftedConv2d, concat_elu, down_shift, right_shift
from ..nn.cache import CausalGraph, IncrementalForward
from ..progress import tracking
from ..types import ImageSpec
from .base import ARImageModel, SampleRequest
from .pixelcnn_pp import GatedResnet, PixelCNNPP, init_streams_graph
from .registry import register_model

# ITU-R BT.601 luma weights (sum 1000): integer arithmetic keeps the grey level an exact function of x
LUMA = (299, 587, 114)


class AuxEmbedding(nn.Module):
    """Unmasked residual CNN over a fully observed auxiliary image: (B, A, H, W) -> (B, filters, H, W)."""

    def __init__(self, in_channels: int, filters: int, blocks: int):
        super().__init__()
        self.inp = nn.Conv2d(in_channels, filters, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                [nn.Conv2d(2 * filters, filters, 3, padding=1), nn.Conv2d(2 * filters, filters, 3, padding=1)]
            )
            for _ in range(blocks)
        )

    def forward(self, aux: torch.Tensor) -> torch.Tensor:
        h = self.inp(aux)
        for conv1, conv2 in self.blocks:
            h = h + conv2(concat_elu(conv1(concat_elu(h))))
        return h


class ConditionalPixelCNN(nn.Module):
    """A causal PixelCNN at one resolution that may also read an auxiliary image everywhere.

    PixelCNN++'s streams: u (down-shifted: rows above) and ul (down-right-shifted: rows above and pixels to
    the left), `nr_resnet` gated resnets each, class / vector conditioning as a bias. With aux_channels > 0
    the auxiliary image is embedded by an unmasked CNN, and every resnet reads the embedding at its own
    position through its 1x1 short-cut (u: the embedding; ul: [u, embedding]). Outputs (B, num_params, H, W)
    where the parameters of pixel (i, j) see earlier pixels in raster order and the whole auxiliary image.
    """

    def __init__(
        self,
        channels: int,
        num_params: int,
        nr_filters: int,
        nr_resnet: int,
        aux_channels: int,
        embed_filters: int,
        embed_blocks: int,
        dropout: float,
        num_classes: int,
        cond_dim: int,
    ):
        super().__init__()
        F_ = nr_filters
        E = embed_filters if aux_channels else 0
        kw = dict(dropout=dropout, num_classes=num_classes, cond_dim=cond_dim)
        self.embed = AuxEmbedding(aux_channels, E, embed_blocks) if aux_channels else None
        # +1 input channel of ones so that the zero padding is told apart from the image
        self.u_init = DownShiftedConv2d(channels + 1, F_, (2, 3))
        self.ul_init_up = DownShiftedConv2d(channels + 1, F_, (1, 3))
        self.ul_init_left = DownRightShiftedConv2d(channels + 1, F_, (2, 1))
        self.u = nn.ModuleList(GatedResnet(F_, DownShiftedConv2d, E, **kw) for _ in range(nr_resnet))
        self.ul = nn.ModuleList(GatedResnet(F_, DownRightShiftedConv2d, F_ + E, **kw) for _ in range(nr_resnet))
        self.out = nn.Conv2d(F_, num_params, 1)

    def forward(self, xs: torch.Tensor, aux: torch.Tensor | None, cond=None) -> torch.Tensor:
        """xs: image scaled to [-1, 1] (B, C, H, W); aux: (B, A, H, W) floats or None -> (B, P, H, W)."""
        x_pad = torch.cat([xs, torch.ones_like(xs[:, :1])], dim=1)  # (B, C+1, H, W)
        u = down_shift(self.u_init(x_pad))
        ul = down_shift(self.ul_init_up(x_pad)) + right_shift(self.ul_init_left(x_pad))
        e = self.embed(aux) if self.embed is not None else None  # (B, E, H, W)
        for res_u, res_ul in zip(self.u, self.ul):
            u = res_u(u, e, cond=cond)
            ul = res_ul(ul, torch.cat([u, e], dim=1) if e is not None else u, cond=cond)
        return self.out(F.elu(ul))

    def cache_graph(self, g, x: torch.Tensor, scale, aux: torch.Tensor | None, cond=None):
        """The forward pass as a pixelar.nn.cache.CausalGraph on the image x (int64, filled in place; scale
        maps it to [-1, 1]) given the whole auxiliary image aux (B, A, H, W), whose embedding is computed once
        here and read as a constant map. -> the parameters node."""
        u, ul = init_streams_graph(self, g, x, scale)
        e = g.constant(self.embed(aux), name="aux_embedding") if self.embed is not None else None
        for k, (res_u, res_ul) in enumerate(zip(self.u, self.ul)):
            u = res_u.cache_graph(g, u, [e] if e is not None else [], cond=cond, name=f"u.{k}")
            ul = res_ul.cache_graph(g, ul, [u, e] if e is not None else [u], cond=cond, name=f"ul.{k}")
        return g.conv(ul, self.out, pre=F.elu, name="out")

    def begin_cache(self, x: torch.Tensor, scale, aux: torch.Tensor | None, cond=None):
        """Incremental forward (pixelar.nn.cache) of this network on x given aux: params_at(i, j) equals
        forward(scale(x), aux, cond)[:, :, i, j] while x is filled in raster order."""
        require_eval(self)
        graph = CausalGraph()
        with torch.no_grad():
            output = self.cache_graph(graph, x, scale, aux, cond)
        return IncrementalForward(graph, output)


# ----- the grey view and the values it allows ------------------------------------------------------------------
def _ceil_div(n: torch.Tensor, d: int) -> torch.Tensor:
    return -torch.div(-n, d, rounding_mode="floor")


def luma_weights(channels: int) -> tuple[int, ...]:
    return LUMA if channels == 3 else (1,)


def to_gray(x: torch.Tensor, levels: int, num_values: int) -> torch.Tensor:
    """Quantized grey level of every pixel: x int64 (B, C, H, W) -> y int64 (B, 1, H, W) in [0, levels).

    y = floor(levels * sum_c w_c x_c / (S * K)) with integer weights w (sum S): monotone in every channel."""
    w = luma_weights(x.shape[1])
    lum = sum(wc * x[:, c : c + 1] for c, wc in enumerate(w))  # (B, 1, H, W) int64, in [0, S*(K-1)]
    return torch.div(lum * levels, sum(w) * num_values, rounding_mode="floor")


def gray_intervals(x: torch.Tensor, y: torch.Tensor, levels: int, num_values: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The values of each sub-pixel consistent with grey level y given the pixel's earlier channels.

    Grey level y holds exactly the weighted sums lum in [A, B] with A = ceil(y S K / levels) and
    B = ceil((y+1) S K / levels) - 1. Channel c with earlier channels fixed (prefix sum P) can still reach
    that range iff P + w_c v + (K-1) * sum_{c'>c} w_c' >= A (later channels at their maximum) and
    P + w_c v <= B (later channels at 0): an interval of v. It is never empty for consistent earlier
    channels when levels <= K, because one step of one channel moves lum by w_c <= S while the range is at
    least S wide (checked exhaustively in the tests).
    x (B, C, H, W), y (B, 1, H, W) int64 -> lo, hi int64 (B, C, H, W).
    """
    K, C = num_values, x.shape[1]
    w = luma_weights(C)
    S = sum(w)
    A = _ceil_div(y * (S * K), levels)  # (B, 1, H, W)
    B = _ceil_div((y + 1) * (S * K), levels) - 1
    lo, hi, prefix = [], [], torch.zeros_like(y)
    for c in range(C):
        rest_max = (K - 1) * sum(w[c + 1 :])
        lo.append(_ceil_div(A - prefix - rest_max, w[c]).clamp(min=0))
        hi.append(torch.div(B - prefix, w[c], rounding_mode="floor").clamp(max=K - 1))
        prefix = prefix + w[c] * x[:, c : c + 1]
    return torch.cat(lo, dim=1), torch.cat(hi, dim=1)


@register_model(
    "grayscale_pixelcnn",
    sizes={
        # tiny: 2 grey levels so that every test image (num_values down to 2) is allowed
        "tiny": dict(
            gray_levels=2,
            gray_filters=6,
            gray_resnet=1,
            nr_filters=6,
            nr_resnet=1,
            embed_filters=4,
            embed_blocks=1,
            dropout=0.0,
            output={"kind": "logistic_mixture", "nr_mix": 2},
            num_classes=0,
            cond_dim=0,
        ),
        # small: the budget of pixelcnn_pp small (a few minutes of CPU training on Fashion-MNIST)
        "small": dict(
            gray_levels=16,
            gray_filters=32,
            gray_resnet=1,
            nr_filters=32,
            nr_resnet=3,
            embed_filters=16,
            embed_blocks=2,
            dropout=0.0,
            output={"kind": "logistic_mixture", "nr_mix": 5},
            num_classes=0,
            cond_dim=0,
        ),
        # the paper's 4-bit grey view; its network sizes were not retrievable: the grey stage is PixelCNN++ at the
        # released code's defaults (160 filters, 5 resnets), the colour stage as wide, local, with a deep embedding
        "paper": dict(
            gray_levels=16,
            gray_filters=160,
            gray_resnet=5,
            nr_filters=160,
            nr_resnet=8,
            embed_filters=80,
            embed_blocks=4,
            dropout=0.5,
            output={"kind": "logistic_mixture", "nr_mix": 10},
            num_classes=0,
            cond_dim=0,
        ),
    },
)
class GrayscalePixelCNN(ARImageModel):
    """Grayscale PixelCNN: p(x) = p(y) p(x | y), y = f(x) a quantized grey view.

    Args:
        gray_levels: number of grey levels of y (16 = the paper's 4 bits); 2 <= gray_levels <= num_values.
        gray_filters, gray_resnet: PixelCNN++ over y (nr_filters, nr_resnet per stage).
        nr_filters, nr_resnet: conditional PixelCNN for p(x | y) (one resolution).
        embed_filters, embed_blocks: the unmasked CNN that embeds y for p(x | y).
        dropout, output (the distribution of x | y), num_classes, cond_dim: as PixelCNN++; both stages
            get the class / vector conditioning.
    """

    factorizes = False  # p(y) p(x | y) is no product of per-sub-pixel conditionals of x
    has_cached_sampler = True  # _draw caches both stages itself (no begin_cache: there is no single order)
    has_parts = True  # log p(y) and log p(x | y)

    def __init__(
        self,
        image,
        gray_levels,
        gray_filters,
        gray_resnet,
        nr_filters,
        nr_resnet,
        embed_filters,
        embed_blocks,
        dropout,
        output,
        num_classes=0,
        cond_dim=0,
    ):
        super().__init__(image, output, grouped=False, num_classes=num_classes, cond_dim=cond_dim)
        C, H, W, K = image.channels, image.height, image.width, image.num_values
        if not isinstance(gray_levels, int) or not 2 <= gray_levels <= K:
            raise ValueError(
                f"gray_levels must be an int in [2, num_values={K}] (a grey level must not split finer "
                f"than the pixel values), got {gray_levels!r}; e.g. gray_levels=2 for binary images"
            )
        self.levels = gray_levels
        self.gray_net = PixelCNNPP(
            ImageSpec(1, H, W, gray_levels),
            nr_filters=gray_filters,
            nr_resnet=gray_resnet,
            dropout=dropout,
            output={"kind": "categorical"},
            num_classes=num_classes,
            cond_dim=cond_dim,
        )
        # one channel and as many grey levels as values: y is x, p(x | y) = 1 and there is nothing to model
        self.image_net = (
            None
            if (C == 1 and gray_levels == K)
            else ConditionalPixelCNN(
                C,
                self.distribution.num_params,
                nr_filters,
                nr_resnet,
                aux_channels=1,
                embed_filters=embed_filters,
                embed_blocks=embed_blocks,
                dropout=dropout,
                num_classes=num_classes,
                cond_dim=cond_dim,
            )
        )

    def to_gray(self, x: torch.Tensor) -> torch.Tensor:
        """The auxiliary grey image y = f(x): (B, C, H, W) -> (B, 1, H, W) int64 in [0, gray_levels)."""
        return to_gray(x, self.levels, self.image.num_values)

    def forward(self, x, cond=None):
        """Parameters of p(x | y = f(x)), (B, P, H, W): pixel (i, j) sees x before it and all of y."""
        return self.params_given_gray(x, self.to_gray(x), cond)

    def params_given_gray(self, x, y, cond=None):
        """Parameters of p(x | y), (B, P, H, W), for a given grey image y (B, 1, H, W); while sampling, x is
        only filled up to the current pixel, so y is the sampled grey image, not f(x)."""
        if self.image_net is None:
            raise ValueError("this model has no p(x | y) network: with one channel and gray_levels = num_values, y = x")
        aux = self.gray_net.scale_input(y)  # (B, 1, H, W) in [-1, 1]
        return self.image_net(self.scale_input(x), aux, cond)

    # ----- likelihood ------------------------------------------------------------------------------------------
    def log_prob_parts(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{"gray": log p(y), "image_given_gray": log p(x | y)}, each (B,) nats; they sum to log p(x)."""
        x = self.check_input(x)
        cond = self.check_cond(cond, x.shape[0])
        y = self.to_gray(x)
        lp_y = self.gray_net.log_prob(y, cond)
        if self.image_net is None:
            return {"gray": lp_y, "image_given_gray": torch.zeros_like(lp_y)}
        lo, hi = gray_intervals(x, y, self.levels, self.image.num_values)
        lp = self.distribution.interval_log_prob(self(x, cond), x, lo, hi)  # (B, C, H, W)
        return {"gray": lp_y, "image_given_gray": lp.flatten(1).sum(1)}

    def log_prob(self, x: torch.Tensor, cond: torch.Tensor | None = None, reduce: bool = True) -> torch.Tensor:
        """log p(x | cond) = log p(y) + log p(x | y) in nats, (B,). reduce=False: NotImplementedError."""
        if not reduce:
            raise NotImplementedError(
                "grayscale_pixelcnn models p(y) p(x | y), not one conditional per sub-pixel of x: "
                "use log_prob(x) or log_prob_parts(x)"
            )
        parts = self.log_prob_parts(x, cond)
        return parts["gray"] + parts["image_given_gray"]

    def generation_order(self) -> torch.Tensor:
        raise NotImplementedError(
            "grayscale_pixelcnn generates the grey image first, then the colour image given it: "
            "there is no single order of the sub-pixels of x"
        )

    # ----- sampling --------------------------------------------------------------------------------------------
    def _draw(self, req: SampleRequest) -> torch.Tensor:
        """Draw y with the grey PixelCNN++, then x | y pixel by pixel in raster order. `method` applies to both
        stages: "cached" keeps a few rows per layer (the colour stage reads y's embedding, computed once),
        "naive" runs a full forward pass per step; both make the same draws.

        Every sub-pixel of x is drawn from its conditional renormalized over the values allowed by y (all K
        values scored), softened by `temperature` like a softmax (0: the most likely allowed value). With
        x_known and known (completion), the known pixels' grey levels are kept while y is drawn and the known
        pixels themselves while x is drawn.
        """
        x_known = y_known = None
        if req.x_known is not None:
            x_known = self.check_input(req.x_known)
            y_known = self.to_gray(x_known)
        H, W = self.image.height, self.image.width
        # one count over both stages: H*W steps of the grey image, then H*W pixels of colour
        with tracking(req.progress, H * W * (1 if self.image_net is None else 2), "sampling", "step") as bar:
            # checks n, temperature, method, cond; its steps are counted into bar's total
            y = self.gray_net.sample(**{**req.kwargs(), "x_known": y_known, "progress": bar})
            if self.image_net is None:
                return y
            with inference(self):
                return self._sample_given_gray(
                    y,
                    self.check_cond(req.cond, req.n),
                    check_temperature(req.temperature),
                    req.generator,
                    x_known,
                    req.known,
                    req.method,
                    bar,
                )

    def _sample_given_gray(self, y, cond, temperature, generator, x_known, known, method, bar) -> torch.Tensor:
        n = y.shape[0]
        C, H, W, K = self.image.channels, self.image.height, self.image.width, self.image.num_values
        device = y.device
        x = (
            x_known.clone().to(device)
            if x_known is not None
            else torch.zeros(n, C, H, W, dtype=torch.long, device=device)
        )
        if method == "cached":  # the embedding of y once, then a few rows per layer updated pixel by pixel
            state = self.image_net.begin_cache(x, self.scale_input, self.gray_net.scale_input(y), cond)
            params_at = state.params_at
        else:  # the reference: a full forward pass per pixel

            def params_at(i, j):
                return self.params_given_gray(x, y, cond)[:, :, i, j]

        values = torch.arange(K, device=device).repeat(n)  # (n*K,) every value for every image
        for i in range(H):
            for j in range(W):
                keep = known[:, i, j].to(device) if known is not None else None
                if keep is not None and bool(keep.all()):
                    bar.advance()  # a pixel known in every image is a step done too
                    continue
                # the parameters at (i, j) see only earlier pixels: one evaluation serves all C channels
                params = params_at(i, j)[:, :, None, None].repeat_interleave(K, dim=0)  # (n*K, P, 1, 1)
                y_ij = y[:, :, i : i + 1, j : j + 1].repeat_interleave(K, dim=0)  # (n*K, 1, 1, 1)
                for c in range(C):
                    cand = x[:, :, i : i + 1, j : j + 1].repeat_interleave(K, dim=0)  # (n*K, C, 1, 1)
                    cand[:, c, 0, 0] = values  # channel c takes every value; later channels do not matter
                    lo, hi = gray_intervals(cand, y_ij, self.levels, K)
                    lq = self.distribution.interval_log_prob(params, cand, lo, hi)[:, c, 0, 0].view(n, K)
                    new = gumbel_argmax(lq, temperature, generator)  # (n,)
                    x[:, c, i, j] = new if keep is None else torch.where(keep, x[:, c, i, j], new)
                bar.advance()
        return x


def pyramid_sizes(height: int, width: int, coarsest_size: int) -> list[tuple[int, int]]:
    """(h, w) of every level, finest (the image) first: halved (rounding up) until max(h, w) <= coarsest_size."""
    sizes = [(height, width)]
    while max(sizes[-1]) > coarsest_size:
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


@register_model(
    "pyramid_pixelcnn",
    sizes={
        # tiny: 4x4 images get two levels (2x2, then 4x4); a 1x1 level would leave its network's taps unused
        "tiny": dict(
            coarsest_size=2,
            nr_filters=6,
            nr_resnet=1,
            embed_filters=4,
            embed_blocks=1,
            dropout=0.0,
            output={"kind": "logistic_mixture", "nr_mix": 2},
            num_classes=0,
            cond_dim=0,
        ),
        # small: 28x28 -> 14x14 -> 7x7, 32x32 -> 16x16 -> 8x8; about the budget of pixelcnn_pp small
        "small": dict(
            coarsest_size=8,
            nr_filters=32,
            nr_resnet=4,
            embed_filters=16,
            embed_blocks=2,
            dropout=0.0,
            output={"kind": "logistic_mixture", "nr_mix": 5},
            num_classes=0,
            cond_dim=0,
        ),
        # the paper's level networks were not retrievable; ours: an 8x8 base and a modest net per level
        "paper": dict(
            coarsest_size=8,
            nr_filters=128,
            nr_resnet=6,
            embed_filters=64,
            embed_blocks=4,
            dropout=0.5,
            output={"kind": "logistic_mixture", "nr_mix": 10},
            num_classes=0,
            cond_dim=0,
        ),
    },
)
class PyramidPixelCNN(ARImageModel):
    """Pyramid PixelCNN: p(x) = p(x^L) prod_l p(new pixels of x^l | x^(l+1)), x^l = x[:, :, ::2**l, ::2**l].

    Args:
        coarsest_size: the image is halved until both sides are at most this (8 in the paper's faces).
        nr_filters, nr_resnet: each level's conditional PixelCNN.
        embed_filters, embed_blocks: each finer level's embedding of the coarser level.
        dropout, output, num_classes, cond_dim: as PixelCNN++ (every level gets the class / vector).
    """

    has_parts = True  # one part per level

    def __init__(
        self,
        image,
        coarsest_size,
        nr_filters,
        nr_resnet,
        embed_filters,
        embed_blocks,
        dropout,
        output,
        num_classes=0,
        cond_dim=0,
    ):
        super().__init__(image, output, grouped=False, num_classes=num_classes, cond_dim=cond_dim)
        if not isinstance(coarsest_size, int) or coarsest_size < 1:
            raise ValueError(f"coarsest_size must be an int >= 1, got {coarsest_size!r}")
        C = image.channels
        self.sizes = pyramid_sizes(image.height, image.width, coarsest_size)
        L = len(self.sizes)
        # finer levels read the coarser level's pixels at their places plus a mask of those places (C + 1)
        self.level_nets = nn.ModuleList(
            ConditionalPixelCNN(
                C,
                self.distribution.num_params,
                nr_filters,
                nr_resnet,
                aux_channels=0 if level == L - 1 else C + 1,
                embed_filters=embed_filters,
                embed_blocks=embed_blocks,
                dropout=dropout,
                num_classes=num_classes,
                cond_dim=cond_dim,
            )
            for level in range(L)
        )

    @property
    def num_levels(self) -> int:
        return len(self.sizes)

    def pixel_levels(self) -> torch.Tensor:
        """The level whose network models each pixel, int64 (H, W): the coarsest level it belongs to."""
        H, W = self.image.height, self.image.width
        out = torch.zeros(H, W, dtype=torch.long)
        for level in range(1, self.num_levels):
            out[:: 2**level, :: 2**level] = level
        return out

    def forward(self, x, cond=None):
        """(B, C, H, W) -> (B, P, H, W): each pixel's parameters from the network of its level."""
        xs = self.scale_input(x)
        B, L = x.shape[0], self.num_levels
        out = xs.new_zeros(B, self.distribution.num_params, self.image.height, self.image.width)
        for level in range(L):  # finest first: each coarser level then overwrites its own pixels
            s = 2**level
            xl = xs[:, :, ::s, ::s]  # (B, C, h_l, w_l)
            aux = self.coarser_level(xl) if level < L - 1 else None
            out[:, :, ::s, ::s] = self.level_nets[level](xl, aux, cond)
        return out

    @staticmethod
    def coarser_level(xl: torch.Tensor) -> torch.Tensor:
        """What a finer level's embedding reads: the coarser level's pixels at their places (zero elsewhere)
        and a map of those places. xl (B, C, h, w) scaled level image -> (B, C+1, h, w)."""
        B, _, h, w = xl.shape
        coarse = torch.zeros(1, 1, h, w, dtype=xl.dtype, device=xl.device)
        coarse[:, :, ::2, ::2] = 1.0  # where the coarser level's pixels sit
        return torch.cat([xl * coarse, coarse.expand(B, 1, h, w)], dim=1)

    def generation_order(self) -> torch.Tensor:
        """Coarsest level in raster order, then each finer level's new pixels in raster order; R, G, B within
        a pixel. Flat indices into (C, H, W), (C*H*W,) int64."""
        C, H, W = self.image.shape
        pixels = []
        for level in reversed(range(self.num_levels)):
            s = 2**level
            h, w = self.sizes[level]
            for i in range(h):
                for j in range(w):
                    if level < self.num_levels - 1 and i % 2 == 0 and j % 2 == 0:
                        continue  # already generated on the coarser level
                    pixels.append(i * s * W + j * s)
        p = torch.tensor(pixels, dtype=torch.long).view(-1, 1)
        return (p + torch.arange(C).view(1, C) * (H * W)).reshape(-1)

    def begin_cache(self, x: torch.Tensor, cond=None) -> _PyramidCache:
        """Incremental forward for cached sampling: params_at(i, j) equals forward(x)[:, :, i, j] when the
        pixels are requested in generation_order() (coarse to fine)."""
        require_eval(self)
        return _PyramidCache(self, x, cond)

    def log_prob_parts(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """log p of each level's new pixels, coarsest first, keyed "HxW" by the level's size; (B,) nats each,
        summing to log p(x)."""
        lp = self.log_prob(x, cond, reduce=False).sum(1)  # (B, H, W)
        lv = self.pixel_levels().to(lp.device)
        return {
            f"{h}x{w}": torch.where(lv == level, lp, 0.0).flatten(1).sum(1)
            for level, (h, w) in reversed(list(enumerate(self.sizes)))
        }


class _PyramidCache:
    """Cached sampling state of a PyramidPixelCNN: one incremental forward (pixelar.nn.cache) per level, built
    when the level's first pixel is requested. Level l reads x[:, :, ::2**l, ::2**l], a view of the image the
    sampler fills in place; its aux embedding reads the coarser level's pixels, all final by then."""

    def __init__(self, model: PyramidPixelCNN, x: torch.Tensor, cond):
        self.model, self.x, self.cond = model, x, cond
        self.levels = model.pixel_levels().tolist()  # (H, W) nested lists: the level of every pixel
        self.level, self.state = None, None

    def params_at(self, i: int, j: int) -> torch.Tensor:
        """(n, P) parameters of pixel (i, j) of the full image."""
        level = self.levels[i][j]
        s = 2**level
        if level != self.level:
            if self.level is not None and level > self.level:
                raise ValueError(
                    f"pixel ({i}, {j}) is on level {level}, coarser than the level {self.level} in "
                    "progress: request pixels in generation_order() (coarse to fine)"
                )
            m = self.model
            xl = self.x[:, :, ::s, ::s]  # a view: the sampler's writes to x show through
            aux = m.coarser_level(m.scale_input(xl)) if level < m.num_levels - 1 else None
            self.state = m.level_nets[level].begin_cache(xl, m.scale_input, aux, self.cond)
            self.level = level
        return self.state.params_at(i // s, j // s)
