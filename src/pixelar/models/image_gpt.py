"""Image GPT (Chen, Radford, Child, Wu, Jun, Luan, Sutskever 2020, "Generative Pretraining from Pixels";
released code `openai/image-gpt`, src/model.py).

A GPT-2 style decoder over the pixels of an image as one sequence in raster order, with no 2D structure:

- tokens: with `palette=k` (the paper: k = 512), a colour palette fitted by k-means on the training pixels
  (pixelar.models.palette.Palette, saved with the weights) turns each pixel of an 8-bit image into one token,
  so the model sees ImageSpec(1, H, W, k); `data_image` is the 8-bit image it is built for, and
  `encode` / `decode` convert. With `palette=0` the model reads the sub-pixels of the given images
  directly (a sequence of C*H*W values; the brute-force likelihood tests use this on tiny images);
- a learned start-of-sequence token (SOS) and learned 1D position embeddings (`wpe`), the input shifted
  right by one position;
- pre-norm blocks with the released RMS-style norm (divide by sqrt(mean(x^2) + 1e-5), learned gain, no mean
  subtraction, no bias), x * sigmoid(1.702 x) in the 4d-wide MLP, dense causal attention, no biases in any
  linear map (`bias=True` adds them, for checkpoints trained with transformers' ImageGPT, which has them);
- an untied output head (`wtet`) initialised to zero; q/k/v initialised with std 1/sqrt(d), the attention
  output projection (`c_proj`) with 1/sqrt(d * n_layer), MLP weights and token embeddings 0.02, positions
  0.01, SOS 0.02.

Class labels (`num_classes`) or a vector (`cond_dim`) are embedded (zero-initialised) and summed into the
SOS token only; every position attends to it. The likelihood of palette tokens is the likelihood of the
*quantised* image: the palette is lossy (for colour data), so nats per token are not bits/dim of 8-bit
images (evaluation reports both the nats per token and the palette's reconstruction error).

Linear probe features (`features`): the normalised input of a block (what its attention reads), averaged
over positions; layer n_layer is the final norm's output.

Differences from the paper: the palette's centres are rounded to 8-bit colours (a token decodes to that
colour, as in the released code) and pixels are encoded to the nearest rounded colour, unless
`float_centres=True` (encoding to the nearest float centre, as the released tokenizer: what a converted
iGPT needs); data with at most k distinct colours (grayscale) get those colours (lossless); no BERT
objective and no fine-tuning head (`L_CLF`); sizes M / L / XL are overrides of `paper` (IGPT_M, IGPT_L,
IGPT_XL below), the registry's sizes being tiny / small / paper (= iGPT-S, 24 layers, d 512, 8 heads: 76.5M
parameters at 32x32 with k = 512).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..nn.attention import AttentionPattern
from ..nn.orders import raster_order
from ..types import ImageSpec
from .palette import Palette
from .registry import register_model
from .sequence import SequenceTransformer

# the paper's larger configurations (Table / blog), as overrides of size "paper":
#   create_model("image_gpt", ImageSpec(3, 32, 32), "paper", **IGPT_M)
IGPT_M = dict(n_layer=36, d_model=1024, n_head=8)  # 455M
IGPT_L = dict(n_layer=48, d_model=1536, n_head=16)  # 1.4B
IGPT_XL = dict(n_layer=60, d_model=3072, n_head=16)  # 6.8B (heads not stated; 16 assumed)


def _preset(n_layer, d_model, n_head, palette):
    return dict(
        n_layer=n_layer,
        d_model=d_model,
        n_head=n_head,
        palette=palette,
        dropout=0.0,
        checkpoint=False,
        output={"kind": "categorical"},
        num_classes=0,
        cond_dim=0,
        bias=False,
        float_centres=False,
    )


@register_model(
    "image_gpt",
    sizes={
        # tiny: no palette, so that the brute-force tests can enumerate every image of a tiny spec
        "tiny": _preset(2, 16, 2, 0),
        "small": _preset(6, 64, 4, 512),
        # iGPT-S: 24 layers, d 512, 8 heads, 9-bit palette (76M)
        "paper": _preset(24, 512, 8, 512),
    },
    added={"bias": False, "float_centres": False},
)
class ImageGPT(SequenceTransformer):
    """Args:
    image: the 8-bit images the model is for (with a palette), or the images it models directly.
    n_layer, d_model, n_head: depth, width, heads (MLP width 4 * d_model).
    palette: k colours of the k-means palette (the paper: 512); 0 models the values of `image` directly.
    dropout: at the end of each residual branch (the paper: none).
    checkpoint: recompute each block in the backward pass (training memory).
    output: output distribution (categorical over the tokens; with palette=0 any kind).
    num_classes, cond_dim: conditioning, summed into the start token.
    bias: biases in the linear maps and the head (the released model has none; transformers' ImageGPT has
        them in its attention and MLP: a checkpoint trained there needs them).
    float_centres: the palette keeps its float centres and encodes to the nearest of them, as the released
        tokenizer does (a converted iGPT); decoding gives 8-bit colours either way (models/palette.py).
    """

    def __init__(
        self,
        image,
        n_layer,
        d_model,
        n_head,
        palette,
        dropout,
        checkpoint,
        output,
        num_classes=0,
        cond_dim=0,
        bias=False,
        float_centres=False,
    ):
        if not isinstance(image, ImageSpec):
            raise ValueError(f"image must be a pixelar.ImageSpec, got {type(image).__name__}")
        if not isinstance(palette, int) or isinstance(palette, bool) or palette < 0 or palette == 1:
            raise ValueError(f"palette must be 0 (no palette) or a number of colours >= 2, got {palette!r}")
        if float_centres and not palette:
            raise ValueError("float_centres is an option of the palette: it needs palette=k (k >= 2)")
        if int(n_layer) < 1 or int(d_model) < 1 or int(n_head) < 1 or d_model % n_head:
            raise ValueError(f"need n_layer >= 1 and d_model divisible by n_head, got {n_layer}, {d_model}, {n_head}")
        tokens = image
        if palette:
            if image.num_values != 256:
                raise ValueError(
                    f"a colour palette is fitted on 8-bit images (num_values 256), got {image}; "
                    "set palette=0 to model these values directly"
                )
            kind = output.get("kind") if isinstance(output, dict) else output
            if kind != "categorical":
                raise ValueError(f"palette tokens have no order, so they need output 'categorical', got {kind!r}")
            tokens = ImageSpec(1, image.height, image.width, palette)  # one token per pixel
        N = tokens.dims
        with torch.device("cpu"):  # index data (also under a meta default device)
            order = raster_order(tokens, "subpixel")
        pattern = AttentionPattern("dense", N)
        super().__init__(
            tokens,
            output,
            unit="subpixel",
            unit_order=order,
            patterns=[pattern] * int(n_layer),
            d_model=d_model,
            n_head=n_head,
            qk_dim=d_model,
            v_dim=d_model,
            ff_dim=4 * d_model,
            dropout=dropout,
            norm="pre",
            activation="quick_gelu",
            checkpoint=checkpoint,
            num_classes=num_classes,
            cond_dim=cond_dim,
            norm_layer="rms",
            bias=bool(bias),
            positions="sequence",
            cond_at="start",
        )
        if palette:
            self.tokenizer = Palette(palette, image.channels, float_centres=bool(float_centres))
            self.data_image = image

    def _init_weights(self, d_model: int, n_layer: int):
        """The released initialisation (see the module doc)."""
        for blk in self.blocks:
            nn.init.normal_(blk.attn.qkv.weight, std=1.0 / math.sqrt(d_model))
            nn.init.normal_(blk.attn.proj.weight, std=1.0 / math.sqrt(d_model * n_layer))
            nn.init.normal_(blk.ff1.weight, std=0.02)
            nn.init.normal_(blk.ff2.weight, std=0.02)
        nn.init.normal_(self.value_emb.weight, std=0.02)  # wte
        nn.init.normal_(self.pos_emb.weight, std=0.01)  # wpe
        nn.init.normal_(self.start, std=0.02)  # sos
        if self.cond_emb is not None:
            nn.init.zeros_(self.cond_emb.weight)
        nn.init.zeros_(self.head.weight)  # wtet
        for m in self.modules():  # bias=True: biases start at zero (as transformers' Conv1D)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    # ----- linear probe ----------------------------------------------------------------------------------------
    @property
    def num_feature_layers(self) -> int:
        """Feature layers 0 .. n_layer: the input of block L (normalised), n_layer: the final norm's output."""
        return len(self.blocks) + 1

    @torch.no_grad()
    def features(self, x: torch.Tensor, cond=None, layers=None) -> dict[int, torch.Tensor]:
        """Average-pooled features {layer: (B, d)} of model inputs x (tokens; see `encode`).

        Layer L < n_layer: block L's first norm applied to its input (the "post-LN input to the attention
        block" of the paper's linear probes), averaged over the sequence; L = n_layer: ln_f of the output.
        """
        n = self.num_feature_layers
        layers = list(range(n)) if layers is None else [int(v) for v in layers]
        bad = [v for v in layers if not 0 <= v < n]
        if bad or not layers:
            raise ValueError(f"feature layers must be one or more of 0 .. {n - 1} (n_layer = {n - 1}), got {layers}")
        x = self.check_input(x)
        cond = self.check_cond(cond, x.shape[0])
        h = self.embed(x, cond)  # (B, N, d)
        out = {}
        for k, blk in enumerate(self.blocks):
            if k in layers:
                out[k] = blk.ln1(h).mean(1)  # (B, d)
            if k >= max(layers):
                break
            h = blk(h)
        if n - 1 in layers:
            out[n - 1] = self.ln_f(h).mean(1)
        return out
