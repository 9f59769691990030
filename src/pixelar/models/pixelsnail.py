"""PixelSNAIL (Chen, Mishra, Rohaninejad, Abbeel 2018, "PixelSNAIL: An Improved Autoregressive Generative
Model"; released code `neocxi/pixelsnail-public`, model `h12_noup_smallkey`).

One down-right stream `ul` (no vertical stream), initialised as in PixelCNN++. `nr_block` blocks, each:
`nr_resnet` gated resnets with 2x2 down-right shifted convolutions and elu, then an attention block over
the pixels in raster order:

- keys and values from [x (the raw scaled input), ul, background] -> gated resnet (1x1) -> 1x1 to
  key_size + value_size channels; queries from [ul, background] -> gated resnet (1x1) -> 1x1 to key_size;
- single-head dot-product attention scaled by 1/sqrt(key_size) with a *strictly* causal mask (a pixel
  never attends to itself, since the keys hold its raw value); the first pixel gets a zero vector;
- the result enters the stream as gated_resnet(ul, a=attention output, conv=1x1).

"background" is two positional channels, (i - H/2)/H and (j - W/2)/W, fed to the attention inputs only.
The output is a discretized logistic mixture read from elu(ul) by a 1x1 convolution.

Differences from the released code: no weight normalization (the last convolution of each gated resnet
starts 10x smaller, like the code's init_scale=0.1); the softmax is the standard one (the code adds 1e-6
to its normaliser); class / vector conditioning adds a learned bias in every gated resnet (the released
CIFAR model is unconditional); any output distribution may be chosen.

Cached sampling (`begin_cache`, `_PixelSNAILCache`): everything at pixel p can be computed from the pixels
before p, layer by layer: the 2x2 convolutions read two-row rings of their input maps, the attention
blocks read a cache of keys and values. The keys and values of pixel p need its raw value, so they are
added once p is final, at the next step.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..inference import require_eval
from ..nn import DownRightShiftedConv2d, DownShiftedConv2d, Dropout, down_shift, right_shift
from ..nn.attention import AttentionPattern, attend, attend_step
from .base import ARImageModel
from .conditioning import maybe_bias
from .registry import register_model


class GatedResnet(nn.Module):
    """x + a * sigmoid(b), [a, b] = conv(dropout(elu(conv(elu(x)) + nin(elu(aux))))) (+ conditioning bias).

    conv: a causal convolution class (2x2 down-right shifted) or None for 1x1 convolutions.
    """

    def __init__(self, channels: int, conv_cls, aux_channels: int, dropout: float, num_classes: int, cond_dim: int):
        super().__init__()
        make = conv_cls if conv_cls is not None else (lambda i, o: nn.Conv2d(i, o, 1))
        self.conv1 = make(channels, channels)
        self.aux = nn.Conv2d(aux_channels, channels, 1) if aux_channels else None
        self.dropout = Dropout(dropout)
        self.conv2 = make(channels, 2 * channels)
        with torch.no_grad():
            self.conv2.weight.mul_(0.1)
        self.cond = maybe_bias(2 * channels, num_classes, cond_dim)

    def forward(self, x, aux=None, cond=None):
        c = self.conv1(F.elu(x))
        if self.aux is not None:
            c = c + self.aux(F.elu(aux))
        c = self.conv2(self.dropout(F.elu(c)))
        if self.cond is not None:
            c = c + self.cond(cond)
        a, b = c.chunk(2, dim=1)
        return x + a * torch.sigmoid(b)


class AttentionBlock(nn.Module):
    """PixelSNAIL's causal attention block (see the module doc): (ul, x, background) -> new ul."""

    def __init__(
        self,
        nr_filters: int,
        channels: int,
        key_size: int,
        value_size: int,
        dropout: float,
        num_classes: int,
        cond_dim: int,
    ):
        super().__init__()
        kw = dict(dropout=dropout, num_classes=num_classes, cond_dim=cond_dim)
        kv_in, q_in = channels + nr_filters + 2, nr_filters + 2
        self.key_size, self.value_size = key_size, value_size
        self.kv_res = GatedResnet(kv_in, None, 0, **kw)
        self.kv = nn.Conv2d(kv_in, key_size + value_size, 1)
        self.q_res = GatedResnet(q_in, None, 0, **kw)
        self.q = nn.Conv2d(q_in, key_size, 1)
        self.out = GatedResnet(nr_filters, None, value_size, **kw)

    def forward(self, ul, x, background, pattern: AttentionPattern, cond=None):
        B, _, H, W = ul.shape
        kv = self.kv(self.kv_res(torch.cat([x, ul, background], 1), cond=cond))  # (B, ks+vs, H, W)
        q = self.q(self.q_res(torch.cat([ul, background], 1), cond=cond))  # (B, ks, H, W)
        # one head over the H*W pixels in raster order: (B, 1, HW, d)
        k, v = kv.flatten(2).transpose(1, 2).unsqueeze(1).split([self.key_size, self.value_size], dim=-1)
        q = q.flatten(2).transpose(1, 2).unsqueeze(1)
        mixed = attend(q, k, v, pattern)  # (B, 1, HW, vs); strictly causal, zeros at the first pixel
        mixed = mixed.squeeze(1).transpose(1, 2).reshape(B, self.value_size, H, W)
        return self.out(ul, mixed, cond=cond)


@register_model(
    "pixelsnail",
    sizes={
        "tiny": dict(
            nr_filters=8,
            nr_resnet=1,
            nr_block=2,
            key_size=4,
            value_size=4,
            dropout=0.0,
            output={"kind": "logistic_mixture", "nr_mix": 2},
            num_classes=0,
            cond_dim=0,
        ),
        "small": dict(
            nr_filters=32,
            nr_resnet=2,
            nr_block=4,
            key_size=16,
            value_size=16,
            dropout=0.0,
            output={"kind": "logistic_mixture", "nr_mix": 5},
            num_classes=0,
            cond_dim=0,
        ),
        # the released CIFAR-10 model h12_noup_smallkey (2.85 bpd): 12 blocks of 4 resnets, 256 filters, elu,
        # keys 16, values 128, dropout 0.5, 10 mixtures
        "paper": dict(
            nr_filters=256,
            nr_resnet=4,
            nr_block=12,
            key_size=16,
            value_size=128,
            dropout=0.5,
            output={"kind": "logistic_mixture", "nr_mix": 10},
            num_classes=0,
            cond_dim=0,
        ),
    },
    zero_ok=("value_size",),
)
class PixelSNAIL(ARImageModel):
    """Args: nr_filters, nr_resnet (per block), nr_block, key_size, value_size (0 = nr_filters // 2),
    dropout, output, num_classes, cond_dim."""

    def __init__(
        self, image, nr_filters, nr_resnet, nr_block, key_size, value_size, dropout, output, num_classes=0, cond_dim=0
    ):
        super().__init__(image, output, grouped=False, num_classes=num_classes, cond_dim=cond_dim)
        if min(nr_filters, nr_resnet, nr_block, key_size) < 1:
            raise ValueError("nr_filters, nr_resnet, nr_block and key_size must be >= 1")
        F_, C = nr_filters, image.channels
        value_size = int(value_size) or F_ // 2
        kw = dict(dropout=dropout, num_classes=num_classes, cond_dim=cond_dim)
        # first layer as PixelCNN++'s ul stream, +1 input channel of ones to tell the image from the padding
        self.init_up = DownShiftedConv2d(C + 1, F_, (1, 3))
        self.init_left = DownRightShiftedConv2d(C + 1, F_, (2, 1))
        self.resnets = nn.ModuleList(
            nn.ModuleList(GatedResnet(F_, DownRightShiftedConv2d, 0, **kw) for _ in range(nr_resnet))
            for _ in range(nr_block)
        )
        self.attention = nn.ModuleList(AttentionBlock(F_, C, key_size, value_size, **kw) for _ in range(nr_block))
        self.out = nn.Conv2d(F_, self.distribution.num_params, 1)
        H, W = image.height, image.width
        # strictly causal over the pixels in raster order (the generation order)
        self.pattern = AttentionPattern("dense", H * W, strict=True)
        i = (torch.arange(H, dtype=torch.float32) - H / 2) / H
        j = (torch.arange(W, dtype=torch.float32) - W / 2) / W
        self.register_buffer(
            "background", torch.stack([i.view(H, 1).expand(H, W), j.view(1, W).expand(H, W)]), persistent=False
        )  # (2, H, W)

    def forward(self, x, cond=None):
        xs = self.scale_input(x)  # (B, C, H, W) in [-1, 1]
        B = xs.shape[0]
        x_pad = torch.cat([xs, torch.ones_like(xs[:, :1])], dim=1)
        ul = down_shift(self.init_up(x_pad)) + right_shift(self.init_left(x_pad))  # sees pixels before (i, j)
        background = self.background.to(xs.dtype).expand(B, -1, -1, -1)
        for resnets, attn in zip(self.resnets, self.attention):
            for res in resnets:
                ul = res(ul, cond=cond)
            ul = attn(ul, xs, background, self.pattern, cond=cond)
        return self.out(F.elu(ul))

    # ----- cached sampling ---------------------------------------------------------------------------------
    def begin_cache(self, x, cond=None) -> _PixelSNAILCache:
        """Incremental forward for cached sampling: params_at(i, j) equals forward(x)[:, :, i, j]."""
        require_eval(self)
        return _PixelSNAILCache(self, x, cond)


class _Ring:
    """The last two rows of a map, (B, ch, 2, W), row r in slot r % 2; windows read zeros outside the map."""

    def __init__(self, B, ch, W, dtype, device):
        self.buf = torch.zeros(B, ch, 2, W, dtype=dtype, device=device)
        self.W = W

    def put(self, i, j, v):  # v (B, ch)
        self.buf[:, :, i % 2, j] = v

    def window(self, i, j, kh, kw):
        """Rows i-kh+1..i, columns j-kw+1..j: (B, ch, kh, kw), zeros outside (kh <= 2)."""
        out = self.buf.new_zeros(*self.buf.shape[:2], kh, kw)
        for a in range(kh):
            r = i - kh + 1 + a
            if r < 0:
                continue
            c0 = j - kw + 1
            lo = max(c0, 0)
            out[:, :, a, lo - c0 :] = self.buf[:, :, r % 2, lo : j + 1]
        return out


class _PixelSNAILCache:
    """Cached forward of PixelSNAIL, one pixel at a time in raster order (see the module doc)."""

    def __init__(self, model: PixelSNAIL, x: torch.Tensor, cond):
        self.m, self.x, self.cond = model, x, cond
        B, (H, W) = x.shape[0], model.image.shape[1:]
        p0 = next(model.parameters())
        dtype, dev = p0.dtype, x.device
        self.H, self.W = H, W
        F_ = model.out.in_channels
        ring = lambda ch: _Ring(B, ch, W, dtype, dev)  # noqa: E731
        # per block, per resnet: rings of the resnet's input and of its first convolution's output
        self.rings = [[(ring(F_), ring(F_)) for _ in blk] for blk in model.resnets]
        HW = H * W
        self.k = [torch.zeros(B, 1, HW, a.key_size, dtype=dtype, device=dev) for a in model.attention]
        self.v = [torch.zeros(B, 1, HW, a.value_size, dtype=dtype, device=dev) for a in model.attention]
        self.att_in = [None] * len(model.attention)  # ul entering each attention block at the last pixel
        self.next = 0  # pixels [0, next) have been computed

    def _xpad(self, r0, r1, c0, c1):
        """Scaled input with the channel of ones, rows [r0, r1), columns [c0, c1), zeros outside the image."""
        H, W = self.H, self.W
        xs = self.m.scale_input(self.x[:, :, max(r0, 0) : min(r1, H), max(c0, 0) : min(c1, W)])
        t = torch.cat([xs, torch.ones_like(xs[:, :1])], 1)
        return F.pad(t, (max(c0, 0) - c0, c1 - min(c1, W), max(r0, 0) - r0, r1 - min(r1, H)))

    def _finalize(self, p):
        """Pixel p is final: add its keys and values (they hold its raw value) to every attention block."""
        i, j = divmod(p, self.W)
        m = self.m
        xs = m.scale_input(self.x[:, :, i : i + 1, j : j + 1])
        bg = m.background[:, i : i + 1, j : j + 1].to(xs.dtype).expand(xs.shape[0], -1, -1, -1)
        for b, attn in enumerate(m.attention):
            kv = attn.kv(attn.kv_res(torch.cat([xs, self.att_in[b], bg], 1), cond=self.cond))[:, :, 0, 0]
            self.k[b][:, 0, p], self.v[b][:, 0, p] = kv.split([attn.key_size, attn.value_size], dim=1)

    def _compute(self, p) -> torch.Tensor:
        """Every layer at pixel p (from the pixels before p); returns the output parameters (B, P)."""
        i, j = divmod(p, self.W)
        m, cond = self.m, self.cond
        # first layer: down_shift(init_up) + right_shift(init_left), zero where the shifts bring in zeros
        ul = 0
        if i > 0:
            ul = ul + F.conv2d(self._xpad(i - 1, i, j - 1, j + 2), m.init_up.weight, m.init_up.bias)
        if j > 0:
            ul = ul + F.conv2d(self._xpad(i - 1, i + 1, j - 1, j), m.init_left.weight, m.init_left.bias)
        if not torch.is_tensor(ul):
            ul = self.x.new_zeros(self.x.shape[0], m.out.in_channels, 1, 1, dtype=next(m.parameters()).dtype)
        bg = m.background[:, i : i + 1, j : j + 1].to(ul.dtype).expand(ul.shape[0], -1, -1, -1)
        for b, (resnets, attn) in enumerate(zip(m.resnets, m.attention)):
            for res, (ring_in, ring_c) in zip(resnets, self.rings[b]):
                ring_in.put(i, j, ul[:, :, 0, 0])
                kh, kw = res.conv1.kernel_size
                c = F.conv2d(F.elu(ring_in.window(i, j, kh, kw)), res.conv1.weight, res.conv1.bias)  # (B, F, 1, 1)
                ring_c.put(i, j, c[:, :, 0, 0])
                c = F.conv2d(F.elu(ring_c.window(i, j, kh, kw)), res.conv2.weight, res.conv2.bias)
                if res.cond is not None:
                    c = c + res.cond(cond)
                a, g = c.chunk(2, dim=1)
                ul = ul + a * torch.sigmoid(g)
            self.att_in[b] = ul
            q = attn.q(attn.q_res(torch.cat([ul, bg], 1), cond=cond))[:, :, 0, 0]  # (B, ks)
            mixed = attend_step(q.view(q.shape[0], 1, 1, -1), self.k[b], self.v[b], m.pattern, p)  # (B, 1, 1, vs)
            ul = attn.out(ul, mixed.view(mixed.shape[0], -1, 1, 1), cond=cond)
        return m.out(F.elu(ul))[:, :, 0, 0]

    @torch.no_grad()
    def params_at(self, i: int, j: int) -> torch.Tensor:
        p = i * self.W + j
        if p < self.next:  # one request per pixel (the outputs are joint over the channels)
            raise ValueError(f"pixel ({i}, {j}) was already computed; requests must follow raster order")
        while self.next < p:  # pixels skipped (known in every image): compute them for the later layers
            self._step(self.next)
        return self._step(p)

    def _step(self, p):
        if p > 0:
            self._finalize(p - 1)
        out = self._compute(p)
        self.next = p + 1
        return out
