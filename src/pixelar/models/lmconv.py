"""LMConv (Jain, Abbeel, Pathak 2020, "Locally Masked Convolution for Autoregressive Models"), following the
released `ours.py` (OurPixelCNN) and `masking.py`.

One network generates the image in any pixel order: every convolution is a locally masked convolution
(pixelar.nn.lmconv) whose per-location masks come from the order. The backbone is PixelCNN++'s with a single
stream (no u/ul split): a mask-A first layer on [x, ones], gated resnets with concat_elu and mask-B 3x3
LMConvs, three stages up and three down (nr_resnet, then nr_resnet, nr_resnet+1, nr_resnet+1 resnets with
short-cuts from the up pass), and, since a stride would break the per-location masks, dilated (dilation 2)
mask-B LMConvs where PixelCNN++ down- and upsamples. The output is a joint per-pixel distribution (the
discretized logistic mixture by default: R -> G -> B inside the pixel comes from its coefficients).

Orders: a base order ("s_curve" by default; "raster", "hilbert", "gilbert") and its first `num_orders`
dihedral variants (pixelar.nn.orders). Training draws one of them per batch (per forward call, from the
global torch RNG, so a resumed run draws the same ones). In eval mode the selected order (variant 0 unless
`set_order` chose another) is used; `generation_order()` returns the order in use.

Likelihood: `log_prob(x)` is exact under the order in use; `log_prob(x, orders="all")` is the uniform
mixture over the K orders, logsumexp_k log p_k(x) - log K per image (a proper likelihood, never below the
best single order minus log K); `log_prob_per_order` gives the K single-order values beside it.

Completion: `completion_order(known)` picks the training order that already puts the hidden pixels latest
and moves any remaining hidden pixels to the end (the paper's move_to_end); `sample(..., known=...)` uses
it, and `conditional_log_prob(x, known)` is log p(x_hidden | x_visible) under it.

Cached sampling (`begin_cache`, `_LMConvCache`): every map is at full resolution, and under the masks the
value of any layer at pixel p depends only on pixels earlier than p in the order (the first layer's mask A
closes the centre; mask B opens only the centre, whose lower-layer value obeys the same rule). So before
pixel p is drawn, every layer's value at p can be computed from the values already computed at earlier
pixels: one "column" of small matrix products per pixel, read from per-map buffers (full maps, zero
padded; pixels not yet generated sit under closed taps). It works in any order, including completion
orders, and draws exactly the naive sampler's images.

Options of the released code: `normalization="pono"` is its `--normalization pono` (positional
normalisation, pixelar.nn.norm.positional_norm: each pixel's features over the channels to zero mean, unit
variance, no parameters), applied where the released model applies it: after the first layer, after each
resnet's first convolution (before the short-cut is added), to the gated half `a` of each resnet's second
convolution, and after each dilated layer. It reads one pixel, so it keeps the masks' causality, and the
column cache applies it to each column. `mask_weight=True` is its `--learn_weight_for_masks`: every locally
masked convolution also adds a learned W_m @ mask, conditioning the network on the order at each pixel
(data-independent, so causal too).

Differences from the released code: no weight normalization (plain convolutions, which a weight-normed
checkpoint folds into exactly; the last convolution of each resnet initialised 10x smaller, the mask weights
at zero); any output distribution may be chosen.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..inference import require_eval
from ..nn import Dropout, concat_elu
from ..nn.lmconv import LocallyMaskedConv2d, MaskPlan, kernel_masks
from ..nn.norm import positional_norm
from ..nn.orders import check_order, dihedral_orders, hidden_last_score, move_to_end, ranks
from .base import ARImageModel
from .conditioning import maybe_bias
from .registry import register_model

NORMALIZATIONS = ("none", "pono")


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class LMGatedResnet(nn.Module):
    """x + norm(a) * sigmoid(b), [a, b] = conv2(dropout(concat_elu(norm(conv1(concat_elu(x))) +
    nin(concat_elu(skip))))); conv1 and conv2 are mask-B locally masked convolutions (one mask for both, given
    at call time); norm is positional_norm or the identity (the model's `normalization`)."""

    def __init__(
        self,
        F_: int,
        kernel_size: int,
        skip_channels: int,
        dropout: float,
        num_classes: int,
        cond_dim: int,
        norm=_identity,
        mask_weight: bool = False,
    ):
        super().__init__()
        self.norm = norm
        self.conv1 = LocallyMaskedConv2d(2 * F_, F_, kernel_size, mask_weight=mask_weight)
        self.skip = nn.Conv2d(2 * skip_channels, F_, 1) if skip_channels else None
        self.dropout = Dropout(dropout)
        self.conv2 = LocallyMaskedConv2d(2 * F_, 2 * F_, kernel_size, mask_weight=mask_weight)
        with torch.no_grad():
            self.conv2.weight.mul_(0.1)
        self.cond = maybe_bias(2 * F_, num_classes, cond_dim)

    def forward(self, x, mask, skip=None, cond=None):
        c = self.norm(self.conv1(concat_elu(x), mask))
        if self.skip is not None:
            c = c + self.skip(concat_elu(skip))  # 1x1: reads position p only, causal as it is
        c = self.conv2(self.dropout(concat_elu(c)), mask)
        if self.cond is not None:
            c = c + self.cond(cond)
        a, b = c.chunk(2, dim=1)
        return x + self.norm(a) * torch.sigmoid(b)


@register_model(
    "lmconv",
    sizes={
        # tiny: no up-pass resnets (nr_resnet=0 still leaves two down-pass resnets with short-cuts): brute-force
        # likelihood tests evaluate 65,536 images, and every LMConv layer is im2col-heavy on the CPU
        "tiny": dict(
            nr_filters=6,
            nr_resnet=0,
            kernel_size=3,
            dilation=2,
            dropout=0.0,
            order="s_curve",
            num_orders=8,
            output={"kind": "logistic_mixture", "nr_mix": 2},
            num_classes=0,
            cond_dim=0,
            normalization="none",
            mask_weight=False,
        ),
        # small: the same budget as pixelcnn_pp small (a few minutes of CPU training on Fashion-MNIST)
        "small": dict(
            nr_filters=32,
            nr_resnet=1,
            kernel_size=3,
            dilation=2,
            dropout=0.0,
            order="s_curve",
            num_orders=8,
            output={"kind": "logistic_mixture", "nr_mix": 5},
            num_classes=0,
            cond_dim=0,
            normalization="none",
            mask_weight=False,
        ),
        # the released CIFAR-10 command (2.887 bpd with 8 S-curve orders): 160 filters, 5 resnets, 3x3, dropout 0
        # (its --normalization pono is the option normalization="pono", which the lmconv-cifar10 recipe sets)
        "paper": dict(
            nr_filters=160,
            nr_resnet=5,
            kernel_size=3,
            dilation=2,
            dropout=0.0,
            order="s_curve",
            num_orders=8,
            output={"kind": "logistic_mixture", "nr_mix": 10},
            num_classes=0,
            cond_dim=0,
            normalization="none",
            mask_weight=False,
        ),
    },
    # configs saved before these options existed describe models without either
    added={"normalization": "none", "mask_weight": False},
)
class LMConv(ARImageModel):
    """Args: nr_filters, nr_resnet (per stage), kernel_size (odd), dilation (of the 4 stage-joining convs),
    dropout, order (base order name), num_orders (K dihedral variants, 1..8), output, num_classes, cond_dim,
    normalization ("none" or "pono": positional normalisation, see the module doc), mask_weight (every LMConv
    also adds a learned weight times its mask: the network is told the order at each pixel)."""

    def __init__(
        self,
        image,
        nr_filters,
        nr_resnet,
        kernel_size,
        dilation,
        dropout,
        order,
        num_orders,
        output,
        num_classes=0,
        cond_dim=0,
        normalization="none",
        mask_weight=False,
    ):
        super().__init__(image, output, grouped=False, num_classes=num_classes, cond_dim=cond_dim)
        F_, R, C, k = nr_filters, nr_resnet, image.channels, kernel_size
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
        if normalization == "pono" and F_ < 2:
            raise ValueError("normalization 'pono' divides by the unbiased variance over the filters: nr_filters >= 2")
        self.kernel_size, self.dilation = k, dilation
        # per-pixel normalisation after the layers the released model normalises (the module doc)
        self.norm = positional_norm if normalization == "pono" else _identity
        # (K, H*W) pixel orders; plain tensors (derived from the hparams, not saved with the weights)
        self.orders = dihedral_orders(order, image.height, image.width, num_orders)
        self._selected = self.orders[0]  # the eval-mode order (set_order)
        self._drawn: torch.Tensor | None = None  # the order drawn for the current training batch
        self._pinned = 0  # > 0 inside using_order(): training does not draw
        self._mask_cache: dict = {}
        kw = dict(dropout=dropout, num_classes=num_classes, cond_dim=cond_dim, norm=self.norm, mask_weight=mask_weight)
        # first layer: +1 input channel of ones so that zero padding is told apart from earlier pixels
        self.init = LocallyMaskedConv2d(C + 1, F_, k, mask_weight=mask_weight)
        self.up = nn.ModuleList(nn.ModuleList(LMGatedResnet(F_, k, 0, **kw) for _ in range(R)) for _ in range(3))
        self.down = nn.ModuleList(
            nn.ModuleList(LMGatedResnet(F_, k, F_, **kw) for _ in range(R if s == 0 else R + 1)) for s in range(3)
        )
        # where PixelCNN++ strides down and up: dilated convolutions at full resolution
        dilated = dict(dilation=dilation, mask_weight=mask_weight)
        self.dilated_up = nn.ModuleList(LocallyMaskedConv2d(F_, F_, k, **dilated) for _ in range(2))
        self.dilated_down = nn.ModuleList(LocallyMaskedConv2d(F_, F_, k, **dilated) for _ in range(2))
        self.out = nn.Conv2d(F_, self.distribution.num_params, 1)

    # ----- orders ------------------------------------------------------------------------------------------
    @property
    def num_orders(self) -> int:
        return len(self.orders)

    def current_order(self) -> torch.Tensor:
        """The pixel order in use, flat indices r*W + c, int64 (H*W,)."""
        if self.training and self._drawn is not None and not self._pinned:
            return self._drawn
        return self._selected

    def generation_order(self) -> torch.Tensor:
        """Sub-pixel flat indices into (C, H, W) in the order in use: pixels in `current_order()`, R, G, B
        within a pixel. (C*H*W,) int64."""
        C, H, W = self.image.shape
        return (self.current_order().view(-1, 1) + torch.arange(C).view(1, C) * (H * W)).reshape(-1)

    def _as_order(self, order) -> torch.Tensor:
        if isinstance(order, int) and not isinstance(order, bool):
            if not 0 <= order < self.num_orders:
                raise ValueError(
                    f"order index must be in [0, {self.num_orders}) (this model has {self.num_orders} "
                    f"orders), got {order}"
                )
            return self.orders[order]
        return check_order(order, self.image.height, self.image.width)

    def set_order(self, order) -> LMConv:
        """Select the eval-mode order: an index into `orders` or any permutation of the H*W pixels."""
        self._selected = self._as_order(order)
        return self

    @contextlib.contextmanager
    def using_order(self, order):
        """Use `order` (index or permutation) inside the block, in training mode too; restore afterwards."""
        old = self._selected
        self._selected = self._as_order(order)
        self._pinned += 1
        try:
            yield self
        finally:
            self._pinned -= 1
            self._selected = old

    def train(self, mode: bool = True):
        if not mode:
            self._drawn = None  # eval always uses the selected order
        return super().train(mode)

    def _masks(self, order: torch.Tensor, device, dtype):
        """MaskPlans of (mask A, mask B, dilated mask B), each mask (k*k, H*W), for `order`; cached per order."""
        key = (order.numpy().tobytes(), str(device), dtype)
        if key not in self._mask_cache:
            if len(self._mask_cache) >= 64:
                self._mask_cache.clear()
            H, W, k = self.image.height, self.image.width, self.kernel_size
            self._mask_cache[key] = tuple(
                MaskPlan(kernel_masks(order, H, W, k, d, t), H, W, k, d).to(device, dtype)
                for d, t in ((1, "A"), (1, "B"), (self.dilation, "B"))
            )
        return self._mask_cache[key]

    # ----- forward -----------------------------------------------------------------------------------------
    def forward(self, x, cond=None):
        if self.training and self.num_orders > 1 and not self._pinned:
            # one order per batch (the paper's training), from the global RNG
            self._drawn = self.orders[int(torch.randint(self.num_orders, (1,)))]
        xs = self.scale_input(x)
        xp = torch.cat([xs, torch.ones_like(xs[:, :1])], dim=1)  # (B, C+1, H, W)
        mask_a, mask_b, mask_d = self._masks(self.current_order(), xp.device, xp.dtype)
        u_list = [self.norm(self.init(xp, mask_a))]
        for stage in range(3):
            for res in self.up[stage]:
                u_list.append(res(u_list[-1], mask_b, cond=cond))
            if stage < 2:
                u_list.append(self.norm(self.dilated_up[stage](u_list[-1], mask_d)))
        u = u_list.pop()
        for stage in range(3):
            for res in self.down[stage]:
                u = res(u, mask_b, skip=u_list.pop(), cond=cond)
            if stage < 2:
                u = self.norm(self.dilated_down[stage](u, mask_d))
        assert not u_list
        return self.out(F.elu(u))

    # ----- cached sampling ---------------------------------------------------------------------------------
    def begin_cache(self, x: torch.Tensor, cond=None) -> _LMConvCache:
        """Incremental forward for cached sampling under the order in use: params_at(i, j) equals
        forward(x)[:, :, i, j] when pixels are requested in that order (skipping is fine)."""
        require_eval(self)
        return _LMConvCache(self, x, cond)

    # ----- likelihood over orders --------------------------------------------------------------------------
    def _order_list(self, orders) -> list:
        if isinstance(orders, str):
            if orders != "all":
                raise ValueError(
                    f"orders must be 'all', a number of orders, or a list of order indices; got {orders!r}"
                )
            return list(range(self.num_orders))
        if isinstance(orders, int) and not isinstance(orders, bool):
            if not 1 <= orders <= self.num_orders:
                raise ValueError(f"orders={orders}: this model has {self.num_orders} orders; use 1..{self.num_orders}")
            return list(range(orders))
        if isinstance(orders, Sequence) and len(orders) > 0:
            return list(orders)
        raise ValueError(f"orders must be 'all', a number of orders, or a list of order indices; got {orders!r}")

    def log_prob_per_order(self, x: torch.Tensor, cond: torch.Tensor | None = None, orders="all") -> torch.Tensor:
        """log p_k(x) in nats under each order k of `orders` ("all", a count K, or indices/permutations). (B, K)."""
        out = []
        for o in self._order_list(orders):
            with self.using_order(o):
                out.append(super().log_prob(x, cond))
        return torch.stack(out, dim=1)

    def log_prob(
        self, x: torch.Tensor, cond: torch.Tensor | None = None, reduce: bool = True, orders=None
    ) -> torch.Tensor:
        """log p(x | cond) in nats.

        Args:
            reduce: (B,) when True; (B, C, H, W) per-sub-pixel conditionals under the order in use when False.
            orders: None: the order in use. "all", a count K, or a list of order indices: the uniform mixture
                over those orders, log(1/K sum_k p_k(x)) per image (reduce must be True).
        """
        if orders is None:
            return super().log_prob(x, cond, reduce)
        if not reduce:
            raise ValueError("per-sub-pixel conditionals exist for one order only: use orders=None with reduce=False")
        per = self.log_prob_per_order(x, cond, orders)  # (B, K)
        return torch.logsumexp(per, dim=1) - math.log(per.shape[1])

    # ----- completion --------------------------------------------------------------------------------------
    def _hidden(self, known: torch.Tensor) -> torch.Tensor:
        H, W = self.image.height, self.image.width
        if (
            not isinstance(known, torch.Tensor)
            or known.dtype != torch.bool
            or known.shape[-2:] != (H, W)
            or known.dim() not in (2, 3)
        ):
            raise ValueError(
                f"known must be a bool mask (H, W) = ({H}, {W}) or (n, {H}, {W}) of pixels to keep, got "
                f"{getattr(known, 'dtype', type(known).__name__)} {tuple(getattr(known, 'shape', ()))}"
            )
        # pixels known in every image come first; the rest are generated (and kept where known)
        return ~(known if known.dim() == 2 else known.all(0)).cpu()

    def completion_order(self, known: torch.Tensor) -> torch.Tensor:
        """A pixel order that generates every hidden pixel (known False) after all known ones: the training
        order that already puts the hidden pixels latest, with any remaining hidden pixels moved to the end.
        known: bool (H, W), or (n, H, W) (then pixels known in every image count as known). (H*W,) int64."""
        hidden = self._hidden(known)
        scores = [hidden_last_score(o, hidden) for o in self.orders]
        best = self.orders[scores.index(min(scores))]
        return move_to_end(best, hidden)

    def conditional_log_prob(
        self, x: torch.Tensor, known: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log p(x_hidden | x_known) in nats, (B,): the hidden pixels' conditionals under completion_order(known)
        (all known pixels come first there, so this is exactly the conditional likelihood of the region).

        known: bool (H, W), shared by the batch, True where the pixel is given.
        """
        if not isinstance(known, torch.Tensor) or known.dim() != 2:
            raise ValueError(
                "known must be one bool mask (H, W) for the batch; score images with different masks separately"
            )
        hidden = self._hidden(known)
        with self.using_order(self.completion_order(known)):
            lp = super().log_prob(x, cond, reduce=False)  # (B, C, H, W)
        return (lp * hidden.to(lp.device, lp.dtype)).flatten(1).sum(1)

    def completing(self, known: torch.Tensor | None):
        """Sampling with `known` pixels generates in completion_order(known) (every hidden pixel after all
        known ones); without, in the order in use."""
        if (
            isinstance(known, torch.Tensor)
            and known.dtype == torch.bool
            and known.dim() == 3
            and known.shape[1:] == (self.image.height, self.image.width)
        ):
            return self.using_order(self.completion_order(known))
        return self.using_order(self.current_order())


class _LMConvCache:
    """Cached sampling state of an LMConv model (see the module doc): per-map buffers (n, C, H + 2P, W + 2P)
    with zero margins P (the widest dilated tap reach), filled one pixel ("column") at a time in the order.

    `params_at(i, j)` computes the columns of every pixel up to (i, j) in the order not computed yet (pixels
    skipped by completion included: later pixels read them) and returns the output at (i, j), (n, P). The
    pixels before (i, j) must be final in x; (i, j) itself is never read.
    """

    def __init__(self, model: LMConv, x: torch.Tensor, cond):
        self.model, self.x, self.cond = model, x, cond
        H, W, k = model.image.height, model.image.width, model.kernel_size
        self.H, self.W, self.k = H, W, k
        order = model.current_order()
        self.order, self.rank = order.tolist(), ranks(order).tolist()
        self.P = model.dilation * (k // 2)  # the widest tap reach (dilation >= 1)
        # per-pixel (k, k) masks: A (first layer), B (resnets), D (the dilated mask-B layers)
        dtype = next(model.parameters()).dtype
        self.dtype, self.device = dtype, x.device
        masks = {
            "A": kernel_masks(order, H, W, k, 1, "A"),
            "B": kernel_masks(order, H, W, k, 1, "B"),
            "D": kernel_masks(order, H, W, k, model.dilation, "B"),
        }  # (k*k, H*W) each
        self.masks = {t: m.to(x.device, dtype).t().reshape(H * W, k, k).contiguous() for t, m in masks.items()}
        self.bias = {}  # id(resnet) -> (n, 2F) conditioning bias
        for res in [*(r for stage in model.up for r in stage), *(r for stage in model.down for r in stage)]:
            if res.cond is not None:
                self.bias[id(res)] = res.cond(cond).flatten(1)
        self.buffers: list[torch.Tensor] = []
        self.done = 0  # columns computed: pixels order[:done]
        self._written = 0  # pixels order[:_written] have their input values in slot 0
        self.last = None  # (pixel, params) of the newest column

    # ----- one map at one pixel ------------------------------------------------------------------------------
    def _buffer(self, slot: int, channels: int) -> torch.Tensor:
        if slot == len(self.buffers):
            n, P = self.x.shape[0], self.P
            self.buffers.append(
                torch.zeros(n, channels, self.H + 2 * P, self.W + 2 * P, dtype=self.dtype, device=self.device)
            )
        return self.buffers[slot]

    def _store(self, value: torch.Tensor) -> int:
        """Write value (n, C) at the current pixel into the next map buffer; -> its slot."""
        slot = self._slot
        self._buffer(slot, value.shape[1])[:, :, self.i + self.P, self.j + self.P] = value
        self._slot += 1
        return slot

    def _conv(self, conv: LocallyMaskedConv2d, slot: int, kind: str, pre=None) -> torch.Tensor:
        """conv(pre(map)) at the current pixel under its mask: (n, Cout)."""
        d, r = conv.dilation, conv.dilation * (self.k // 2)
        i, j = self.i + self.P, self.j + self.P
        window = self.buffers[slot][:, :, i - r : i + r + 1 : d, j - r : j + r + 1 : d]  # (n, C, k, k)
        if pre is not None:
            window = pre(window)
        mask = self.masks[kind][self.p]  # (k, k): taps open at this pixel
        out = (window * mask).flatten(1) @ conv.weight.flatten(1).t()
        if conv.bias is not None:
            out = out + conv.bias
        if conv.mask_weight is not None:
            out = out + conv.mask_weight @ mask.flatten()
        return out

    def _resnet(self, res: LMGatedResnet, slot: int, skip: torch.Tensor | None) -> int:
        """The gated resnet at the current pixel (as LMGatedResnet.forward, eval mode); input map in `slot`.
        res.norm works on the (n, C) column as on maps: it reads one pixel's channels."""
        c = res.norm(self._conv(res.conv1, slot, "B", concat_elu))
        if res.skip is not None:
            c = c + concat_elu(skip[:, :, None, None]).flatten(1) @ res.skip.weight.flatten(1).t() + res.skip.bias
        c = self._conv(res.conv2, self._store(c), "B", concat_elu)  # dropout is the identity in eval mode
        if res.cond is not None:
            c = c + self.bias[id(res)]
        a, b = c.chunk(2, dim=1)
        return self._store(self._value(slot) + res.norm(a) * torch.sigmoid(b))

    def _value(self, slot: int) -> torch.Tensor:
        return self.buffers[slot][:, :, self.i + self.P, self.j + self.P]

    # ----- one pixel through the whole network (as LMConv.forward) -------------------------------------------
    def _column(self, p: int) -> torch.Tensor:
        m = self.model
        self.p, (self.i, self.j) = p, divmod(p, self.W)
        # slot 0: [scaled x, ones] of the pixels generated so far, written as they become final
        xbuf = self._buffer(0, m.image.channels + 1)
        P = self.P
        for q in self.order[self._written : self.done]:
            qi, qj = divmod(q, self.W)
            xs = m.scale_input(self.x[:, :, qi, qj])  # (n, C)
            xbuf[:, :, qi + P, qj + P] = torch.cat([xs, torch.ones_like(xs[:, :1])], dim=1)
        self._written = self.done
        self._slot = 1  # the maps computed at this pixel go to slots 1, 2, ... in forward's order
        u_list = [self._store(m.norm(self._conv(m.init, 0, "A")))]
        for stage in range(3):
            for res in m.up[stage]:
                u_list.append(self._resnet(res, u_list[-1], None))
            if stage < 2:
                u_list.append(self._store(m.norm(self._conv(m.dilated_up[stage], u_list[-1], "D"))))
        u = u_list.pop()
        for stage in range(3):
            for res in m.down[stage]:
                u = self._resnet(res, u, self._value(u_list.pop()))
            if stage < 2:
                u = self._store(m.norm(self._conv(m.dilated_down[stage], u, "D")))
        return F.elu(self._value(u)) @ m.out.weight.flatten(1).t() + m.out.bias

    def memory_bytes(self) -> int:
        """Bytes held by the map buffers (every map whole, as the raster caches' memory_bytes counts theirs)."""
        return sum(b.numel() * b.element_size() for b in self.buffers)

    def params_at(self, i: int, j: int) -> torch.Tensor:
        """(n, P) output at pixel (i, j); pixels before it in the order must be final in x."""
        p = i * self.W + j
        if self.last is not None and self.last[0] == p:
            return self.last[1]  # per-channel outputs ask once per channel
        t = self.rank[p]
        if t < self.done:
            raise ValueError(f"pixel ({i}, {j}) was requested after later pixels: request pixels in the order in use")
        with torch.no_grad():
            while self.done <= t:
                q = self.order[self.done]
                params = self._column(q)
                self.done += 1
        self.last = (p, params)
        return params
