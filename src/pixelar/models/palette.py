"""Colour palette for Image GPT: k colours fitted by mini-batch k-means, images <-> one token per pixel.

References:
    1. Chen, Radford, Child, Wu, Jun, Luan, Sutskever 2020, "Generative Pretraining from Pixels" (a 9-bit
       palette: k-means with k = 512 on RGB values scaled to [-1, 1]; each pixel becomes its nearest centre).
    2. Sculley 2010, "Web-Scale K-Means Clustering" (mini-batch k-means with per-centre learning rates 1/n).

Differences from the released code: by default the centres are rounded to 8-bit colours and kept as uint8
(a token decodes to the stored colour, as `round(127.5 * (c + 1))` there) and pixels are encoded to the
nearest *rounded* centre, so encoding a decoded token gives the token back exactly. That is consistent for
a model trained on its own palette, but not the released tokenizer, which encodes to the nearest *float*
centre: rounding moves a centre by up to half a level per channel, which changes the nearest centre of
0.5% to 3.3% of pixels (3.3% of CIFAR-10's with 512 k-means centres of its training pixels; see
docs/converted.md and benchmarks/palette_rounding.py). With `float_centres=True` the palette keeps the
float centres too (`clusters`, (k, C) float32 on the [-1, 1] scale, as the released `kmeans_centers.npy`
and transformers' `clusters`): `encode` uses them, as the released code does, and `decode` still gives the
rounded colour (a converted iGPT needs this: its model was trained on the float centres' tokens). When the
data have no more distinct colours than k (e.g. grayscale images: at most 256 grey levels), the palette is
those colours and is lossless; the remaining entries repeat colour 0 and are never produced by `encode`.

The Palette is an nn.Module with buffers only, so it is saved with the model's weights (safetensors), never
pickled.
"""

from __future__ import annotations

import torch
import torch.nn as nn

# pixels per chunk of the nearest-centre search: chunk x k distances stay at a few MiB
_CHUNK_ELEMENTS = 1 << 21


class Palette(nn.Module):
    """k colours of C channels: centres uint8 (k, C) (and, with float_centres, clusters float32 (k, C)).

    Args:
        k: number of colours (tokens).
        channels: 1 (grayscale) or 3 (RGB).
        float_centres: keep the float centres and encode to the nearest of them (the released tokenizer;
            see the module doc); decoding gives the rounded colours either way.
    """

    def __init__(self, k: int, channels: int, float_centres: bool = False):
        super().__init__()
        if not isinstance(k, int) or isinstance(k, bool) or k < 2:
            raise ValueError(f"palette size k must be an int >= 2, got {k!r}")
        if channels not in (1, 3):
            raise ValueError(f"palette channels must be 1 or 3, got {channels!r}")
        self.k, self.channels, self.float_centres = k, channels, bool(float_centres)
        self.register_buffer("centres", torch.zeros(k, channels, dtype=torch.uint8))  # (k, C)
        if self.float_centres:  # (k, C) on the [-1, 1] scale; centres = round(127.5 * (clusters + 1))
            self.register_buffer("clusters", torch.zeros(k, channels, dtype=torch.float32))
        # centres in use: tokens [0, num_colours) are the palette's colours (distinct, unless float centres
        # round to one colour); the rest pad and are never produced by encode; 0 = not fitted yet
        self.register_buffer("num_colours", torch.zeros((), dtype=torch.long))

    @property
    def fitted(self) -> bool:
        return int(self.num_colours) > 0

    # ----- fitting -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def fit(
        self, images: torch.Tensor, seed: int = 0, steps: int = 300, batch_size: int = 4096, refine: int = 2
    ) -> Palette:
        """Fit the centres on training images, uint8 (N, C, H, W) (8-bit values). Deterministic for a seed.

        The distinct colours are counted first (exact, one bincount). If there are at most k of them, they are
        the palette (lossless). Otherwise: k-means++ seeding on a weighted sample, `steps` mini-batch updates
        of `batch_size` pixels drawn from the data, then `refine` full Lloyd iterations over the distinct
        colours weighted by their counts (the exact k-means objective on all pixels). The centres are then
        rounded to 8-bit colours and duplicates merged, or, with float centres, kept as they are.
        """
        colours, counts = self._distinct_colours(images)  # (D, C) uint8, (D,) int64
        D = len(colours)
        pts = colours.double() / 127.5 - 1.0  # (D, C) in [-1, 1], the paper's scale
        if D <= self.k:
            c = pts
        else:
            g = torch.Generator().manual_seed(int(seed))
            w = counts.double()
            c = _kmeans_pp(pts, w, self.k, g)
            c = _minibatch_kmeans(pts, w, c, steps, batch_size, g)
            for _ in range(refine):
                c = _lloyd_step(pts, w, c)
        if not self.float_centres:
            # distinct rounded centres (sorted, so the token order is reproducible)
            c = torch.unique(_rounded(c), dim=0).double() / 127.5 - 1.0
        return self.set_centres(c)

    @torch.no_grad()
    def set_centres(self, clusters: torch.Tensor) -> Palette:
        """Use the given centres, (n, C) floats on the [-1, 1] scale with n <= k, in token order: token t is
        centre t (the padding tokens n..k-1 repeat centre 0). A palette without float centres keeps them
        rounded to 8-bit colours (as `fit` does)."""
        clusters = torch.as_tensor(clusters, dtype=torch.float64).cpu()
        n = len(clusters) if clusters.dim() == 2 else 0
        if n == 0 or clusters.shape[1] != self.channels or n > self.k:
            raise ValueError(
                f"centres must have shape (n, {self.channels}) with 1 <= n <= {self.k}, got {tuple(clusters.shape)}"
            )
        if not bool(torch.isfinite(clusters).all()):
            raise ValueError("centres must be finite numbers on the [-1, 1] scale")
        padded = torch.cat([clusters, clusters[:1].expand(self.k - n, -1)])  # (k, C)
        self.centres.copy_(_rounded(padded).to(self.centres.device))
        if self.float_centres:
            self.clusters.copy_(padded.to(self.clusters))
        self.num_colours.fill_(n)
        return self

    def _distinct_colours(self, images: torch.Tensor):
        images = self._check_pixels(images, "images").cpu()  # fitting runs on the CPU, once
        C = self.channels
        code = torch.zeros(256**C, dtype=torch.long)
        if images.numel() == 0:
            raise ValueError("cannot fit a palette on zero images")
        # bincount of colour codes over chunks of whole images of about 4M pixels: bounded memory, and no copy
        # of all the images (they may be a memory-mapped data set larger than memory)
        step = max(1, (1 << 22) // (images.shape[2] * images.shape[3]))
        for i in range(0, images.shape[0], step):
            p = images[i : i + step].permute(0, 2, 3, 1).reshape(-1, C).long()  # (pixels, C)
            codes = p[:, 0] if C == 1 else (p[:, 0] << 16) | (p[:, 1] << 8) | p[:, 2]
            code += torch.bincount(codes, minlength=256**C)
        ids = code.nonzero().flatten()  # (D,) present colour codes, ascending
        if C == 1:
            colours = ids.view(-1, 1)
        else:
            colours = torch.stack([ids >> 16, (ids >> 8) & 255, ids & 255], dim=1)
        return colours.to(torch.uint8), code[ids]

    # ----- encoding ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """8-bit images (B, C, H, W) (uint8 or int64) -> tokens int64 (B, 1, H, W): the nearest centre.

        Ties go to the lower token. Distances are computed on the 0..255 scale (nearest in [-1, 1] is the same:
        the scaling is uniform): to the rounded centres in float32, exact for these integers, or to the float
        centres in float64 (where the released code's float32 search can differ, on up to 13 pixels in
        a million: near-ties within its rounding).
        """
        if not self.fitted:
            raise ValueError(
                "the palette is not fitted: call palette.fit(training images) first "
                "(pixelar train does this before the first step)"
            )
        images = self._check_pixels(images, "images")
        B, C, H, W = images.shape
        if C == 1:  # grayscale: the token of each of the 256 levels once, then a lookup
            levels = torch.arange(256, device=images.device).view(256, 1)
            return self._nearest_centre(levels)[images.long()]  # (B, 1, H, W)
        p = images.permute(0, 2, 3, 1).reshape(-1, C)  # (B*H*W, C)
        return self._nearest_centre(p).view(B, H, W).unsqueeze(1)

    def _nearest_centre(self, p: torch.Tensor) -> torch.Tensor:
        """Pixels (n, C) of 8-bit values -> token (n,) int64, chunked."""
        if self.float_centres:
            p, c = p.double(), 127.5 * (self.clusters.double() + 1.0)  # (k, C) on the 0..255 scale
        else:
            p, c = p.float(), self.centres.float()  # (k, C)
        c2 = (c * c).sum(1)  # (k,)
        out = torch.empty(p.shape[0], dtype=torch.long, device=p.device)
        chunk = max(1, _CHUNK_ELEMENTS // self.k)
        for i in range(0, p.shape[0], chunk):
            d = c2.unsqueeze(0) - 2.0 * p[i : i + chunk] @ c.T  # (n, k): |p - c|^2 - |p|^2
            out[i : i + chunk] = d.argmin(1)
        return out

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, 1, H, W) in [0, k) -> 8-bit images int64 (B, C, H, W)."""
        if (
            not isinstance(tokens, torch.Tensor)
            or tokens.dtype.is_floating_point
            or tokens.dim() != 4
            or tokens.shape[1] != 1
        ):
            raise ValueError(
                f"tokens must be an integer tensor (B, 1, H, W), got "
                f"{getattr(tokens, 'dtype', type(tokens).__name__)} {tuple(getattr(tokens, 'shape', ()))}"
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.k):
            raise ValueError(f"tokens must be in [0, {self.k}), got {int(tokens.min())}..{int(tokens.max())}")
        return self.centres[tokens[:, 0].long()].long().permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)

    @torch.no_grad()
    def reconstruction_error(self, images: torch.Tensor) -> dict:
        """How lossy the palette is on `images` (B, C, H, W): {"sq_err_sum", "exact_pixels", "pixels",
        "sub_pixels"} (sums, so that callers can add them over batches; RMSE = sqrt(sq_err_sum / sub_pixels)
        on the 0..255 scale)."""
        images = self._check_pixels(images, "images")
        diff = self.decode(self.encode(images)) - images.long()
        return {
            "sq_err_sum": float((diff.double() ** 2).sum()),
            "exact_pixels": int((diff == 0).all(1).sum()),
            "pixels": diff.shape[0] * diff.shape[2] * diff.shape[3],
            "sub_pixels": diff.numel(),
        }

    def _check_pixels(self, images, what: str) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dtype.is_floating_point or images.dtype == torch.bool:
            raise ValueError(
                f"{what} must be an integer tensor of 8-bit values (uint8 or int64), got "
                f"{getattr(images, 'dtype', type(images).__name__)}"
            )
        if images.dim() != 4 or images.shape[1] != self.channels:
            raise ValueError(
                f"{what} must have shape (B, {self.channels}, H, W) for a {self.channels}-channel "
                f"palette, got {tuple(images.shape)}"
            )
        if images.dtype != torch.uint8 and images.numel() and (int(images.min()) < 0 or int(images.max()) > 255):
            raise ValueError(f"{what} must hold 8-bit values in [0, 255], got {int(images.min())}..{int(images.max())}")
        return images

    def extra_repr(self) -> str:
        kind = ", float centres" if self.float_centres else ""
        return f"k={self.k}, channels={self.channels}, colours in use={int(self.num_colours)}{kind}"


def _rounded(c: torch.Tensor) -> torch.Tensor:
    """Centres on the [-1, 1] scale -> the 8-bit colours they decode to (the released `round(127.5 * (c + 1))`)."""
    return torch.round(127.5 * (c.double() + 1.0)).clamp(0, 255).to(torch.uint8)


# ----- k-means pieces (float64 points (D, C), weights (D,)) ------------------------------------------------------
def _nearest(pts: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre of each point, (D,), chunked."""
    out = torch.empty(len(pts), dtype=torch.long)
    chunk = max(1, _CHUNK_ELEMENTS // len(centres))
    for i in range(0, len(pts), chunk):
        out[i : i + chunk] = torch.cdist(pts[i : i + chunk], centres).argmin(1)
    return out


def _kmeans_pp(pts, w, k, g, sample: int = 20000) -> torch.Tensor:
    """k-means++ seeding (Arthur and Vassilvitskii 2007) on a weighted sample of the distinct colours."""
    idx = torch.multinomial(w, min(sample, len(pts)), replacement=True, generator=g)
    s = pts[idx]  # (S, C), drawn by frequency
    first = int(torch.randint(len(s), (1,), generator=g))
    centres = [s[first]]
    d2 = ((s - s[first]) ** 2).sum(1)
    for _ in range(1, k):
        if float(d2.sum()) <= 0:  # every sampled point is a centre: take any, duplicates merge later
            j = int(torch.randint(len(s), (1,), generator=g))
        else:
            j = int(torch.multinomial(d2, 1, generator=g))
        centres.append(s[j])
        d2 = torch.minimum(d2, ((s - s[j]) ** 2).sum(1))
    return torch.stack(centres)


def _minibatch_kmeans(pts, w, centres, steps, batch_size, g) -> torch.Tensor:
    """Sculley's mini-batch k-means: each centre moves towards its batch points with rate 1/(points seen)."""
    c = centres.clone()
    seen = torch.zeros(len(c), dtype=torch.float64)
    cdf = torch.cumsum(w, 0)
    cdf = cdf / cdf[-1]  # (D,) inverse-CDF sampling: much faster than multinomial over many colours
    for _ in range(steps):
        u = torch.rand(batch_size, generator=g, dtype=torch.float64)
        b = pts[torch.searchsorted(cdf, u).clamp(max=len(pts) - 1)]  # (b, C) pixels drawn by frequency
        a = _nearest(b, c)
        n = torch.bincount(a, minlength=len(c)).double()  # (k,) points per centre in this batch
        sums = torch.zeros_like(c).index_add_(0, a, b)
        seen += n
        hit = n > 0
        # c <- c + (n / seen) * (mean of the batch points - c): the per-point 1/seen updates, summed
        c[hit] += (sums[hit] - n[hit, None] * c[hit]) / seen[hit, None]
    return c


def _lloyd_step(pts, w, centres) -> torch.Tensor:
    """One exact weighted Lloyd iteration; a centre without points stays where it is."""
    a = _nearest(pts, centres)
    mass = torch.zeros(len(centres), dtype=torch.float64).index_add_(0, a, w)
    sums = torch.zeros_like(centres).index_add_(0, a, pts * w[:, None])
    out = centres.clone()
    hit = mass > 0
    out[hit] = sums[hit] / mass[hit, None]
    return out


__all__ = ["Palette"]
