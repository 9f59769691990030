"""Reusable layers. Nothing here knows about a model."""

from .attention import AttentionPattern, CausalSelfAttention, attend
from .dropout import Dropout, dropout
from .lmconv import LocallyMaskedConv2d, MaskPlan, kernel_masks, locally_masked_conv2d
from .masked_conv import MaskedConv2d, causal_mask, channel_groups
from .orders import block_raster_order
from .shifted_conv import (
    DownRightShiftedConv2d,
    DownRightShiftedConvTranspose2d,
    DownShiftedConv2d,
    DownShiftedConvTranspose2d,
    concat_elu,
    down_shift,
    right_shift,
)

__all__ = [
    "AttentionPattern",
    "CausalSelfAttention",
    "attend",
    "block_raster_order",
    "MaskedConv2d",
    "causal_mask",
    "channel_groups",
    "DownShiftedConv2d",
    "DownRightShiftedConv2d",
    "DownShiftedConvTranspose2d",
    "DownRightShiftedConvTranspose2d",
    "concat_elu",
    "down_shift",
    "right_shift",
    "LocallyMaskedConv2d",
    "MaskPlan",
    "kernel_masks",
    "locally_masked_conv2d",
    "Dropout",
    "dropout",
]
