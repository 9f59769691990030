"""Pixel generation orders for order-agnostic models (LMConv; Jain, Abbeel, Pathak 2020, section 3.2).

An order is an int64 tensor (H*W,) of flat pixel indices r*W + c, listed in the order the pixels are
generated. Base orders:

    raster    rows top to bottom, each row left to right
    s_curve   boustrophedon: even rows left to right, odd rows right to left
    hilbert   the Hilbert curve (square images with a power-of-two side only)
    gilbert   a generalized Hilbert curve for any rectangle (Cervenka's "gilbert2d" construction): it
              splits the rectangle recursively so that consecutive pixels stay neighbours; for some
              odd-by-even sizes one diagonal step cannot be avoided

Each base order comes in 8 dihedral variants (the paper's `--randomize_order`), index k:

    0 identity   1 rows reflected   2 columns reflected   3 both reflected
    4..7: the same four applied to the transposed order

The transposed variants of an H x W order are the base order built for a W x H image with its (row,
column) coordinates swapped, so they exist for non-square images too.

The sequence models' layouts live here too: sub-pixel raster order (R, G, B within a pixel), block-raster
orders of the Image Transformer's local 2D attention, and grid coordinates of a sequence's positions.
"""

from __future__ import annotations

import torch

ORDERS = ("raster", "s_curve", "hilbert", "gilbert")
NUM_VARIANTS = 8
VARIANT_NAMES = (
    "identity",
    "reflect_rows",
    "reflect_cols",
    "reflect_both",
    "transpose",
    "transpose_reflect_rows",
    "transpose_reflect_cols",
    "transpose_reflect_both",
)


# ----- base orders, as (L, 2) int64 (row, col) coordinates ---------------------------------------------------
def _raster(H: int, W: int) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(H, device="cpu"), torch.arange(W, device="cpu"), indexing="ij")
    return torch.stack([r.reshape(-1), c.reshape(-1)], dim=1)


def _s_curve(H: int, W: int) -> torch.Tensor:
    rc = _raster(H, W).view(H, W, 2).clone()
    rc[1::2] = rc[1::2].flip(1)  # odd rows run right to left
    return rc.view(-1, 2)


def _hilbert(H: int, W: int) -> torch.Tensor:
    if H != W or H & (H - 1):
        raise ValueError(
            f"the 'hilbert' order needs a square image with a power-of-two side, got {H}x{W}; "
            "use 'gilbert' (generalized Hilbert curve) for other sizes"
        )
    n = H
    out = []
    for d in range(n * n):
        # distance along the curve -> (x, y): peel off two bits per level, rotating the quadrant as needed
        x = y = 0
        t = d
        s = 1
        while s < n:
            rx = 1 & (t // 2)
            ry = 1 & (t ^ rx)
            if ry == 0:
                if rx == 1:
                    x, y = s - 1 - x, s - 1 - y
                x, y = y, x
            x += s * rx
            y += s * ry
            t //= 4
            s *= 2
        out.append((y, x))  # y: row, x: column
    return torch.tensor(out, dtype=torch.long, device="cpu").view(-1, 2)


def _sign(v: int) -> int:
    return (v > 0) - (v < 0)


def _gilbert_walk(x: int, y: int, ax: int, ay: int, bx: int, by: int, out: list) -> None:
    """Append the cells of the rectangle spanned from (x, y) by the major axis (ax, ay) and the minor axis
    (bx, by) (one of each pair is zero), entering at (x, y) and leaving next to (x, y) + (ax, ay)."""
    w, h = abs(ax + ay), abs(bx + by)
    dax, day = _sign(ax), _sign(ay)  # unit step along the major axis
    dbx, dby = _sign(bx), _sign(by)  # unit step along the minor axis
    if h == 1:  # a single line along the major axis
        for _ in range(w):
            out.append((x, y))
            x, y = x + dax, y + day
        return
    if w == 1:  # a single line along the minor axis
        for _ in range(h):
            out.append((x, y))
            x, y = x + dbx, y + dby
        return
    ax2, ay2 = ax // 2, ay // 2
    bx2, by2 = bx // 2, by // 2
    w2, h2 = abs(ax2 + ay2), abs(bx2 + by2)
    if 2 * w > 3 * h:
        # much longer than high: cut the major axis in two halves, walked one after the other
        if w2 % 2 and w > 2:
            ax2, ay2 = ax2 + dax, ay2 + day  # an even first half keeps the exit on the right side
        _gilbert_walk(x, y, ax2, ay2, bx, by, out)
        _gilbert_walk(x + ax2, y + ay2, ax - ax2, ay - ay2, bx, by, out)
    else:
        # the Hilbert pattern: up the first half of the minor axis, across, and back down
        if h2 % 2 and h > 2:
            bx2, by2 = bx2 + dbx, by2 + dby
        _gilbert_walk(x, y, bx2, by2, ax2, ay2, out)
        _gilbert_walk(x + bx2, y + by2, ax, ay, bx - bx2, by - by2, out)
        _gilbert_walk(
            x + (ax - dax) + (bx2 - dbx), y + (ay - day) + (by2 - dby), -bx2, -by2, -(ax - ax2), -(ay - ay2), out
        )


def _gilbert(H: int, W: int) -> torch.Tensor:
    out: list = []
    if W >= H:  # x = column, y = row; the longer side is the major axis
        _gilbert_walk(0, 0, W, 0, 0, H, out)
    else:
        _gilbert_walk(0, 0, 0, H, W, 0, out)
    return torch.tensor([(y, x) for x, y in out], dtype=torch.long, device="cpu").view(-1, 2)


_BASE = {"raster": _raster, "s_curve": _s_curve, "hilbert": _hilbert, "gilbert": _gilbert}


def _check_name(name: str) -> None:
    if name not in _BASE:
        raise ValueError(f"unknown generation order {name!r}; valid orders: {', '.join(ORDERS)}")


# ----- public functions ------------------------------------------------------------------------------------
def order_coords(name: str, height: int, width: int, variant: int = 0) -> torch.Tensor:
    """(row, col) coordinates of `name`'s dihedral variant `variant` (see the module docstring). (H*W, 2).

    Orders are always built on the CPU (also inside a `torch.device("meta")` block, which counts parameters)."""
    _check_name(name)
    if not isinstance(variant, int) or not 0 <= variant < NUM_VARIANTS:
        raise ValueError(f"order variant must be an int in [0, {NUM_VARIANTS}), got {variant!r}")
    H, W = height, width
    if variant >= 4:
        rc = _BASE[name](W, H).flip(1)  # built on the W x H image, then (row, col) swapped
    else:
        rc = _BASE[name](H, W)
    rc = rc.clone()
    if variant % 4 in (1, 3):
        rc[:, 0] = H - 1 - rc[:, 0]
    if variant % 4 in (2, 3):
        rc[:, 1] = W - 1 - rc[:, 1]
    return rc


def generation_order(name: str, height: int, width: int, variant: int = 0) -> torch.Tensor:
    """Flat pixel indices r*W + c in generation order, int64 (H*W,)."""
    rc = order_coords(name, height, width, variant)
    return rc[:, 0] * width + rc[:, 1]


def dihedral_orders(name: str, height: int, width: int, num: int = NUM_VARIANTS) -> torch.Tensor:
    """The first `num` dihedral variants of a base order, int64 (num, H*W)."""
    if not isinstance(num, int) or not 1 <= num <= NUM_VARIANTS:
        raise ValueError(f"the number of orders must be an int in [1, {NUM_VARIANTS}], got {num!r}")
    return torch.stack([generation_order(name, height, width, k) for k in range(num)])


def check_order(order, height: int, width: int) -> torch.Tensor:
    """Validate a pixel order: a permutation of range(H*W). Returns it as int64 (H*W,)."""
    L = height * width
    if not isinstance(order, torch.Tensor):
        order = torch.as_tensor(order, device="cpu")
    if order.dtype.is_floating_point or order.dtype == torch.bool or order.shape != (L,):
        raise ValueError(
            f"a pixel order must be {L} integer flat pixel indices (H*W,) for a {height}x{width} "
            f"image, got {order.dtype} {tuple(order.shape)}"
        )
    order = order.long().cpu()
    if not torch.equal(torch.sort(order).values, torch.arange(L, device="cpu")):
        raise ValueError(f"a pixel order must list every pixel index 0..{L - 1} exactly once")
    return order


def ranks(order: torch.Tensor) -> torch.Tensor:
    """The inverse permutation: ranks[p] = position of pixel p in `order`. (L,) int64."""
    r = torch.empty_like(order)
    r[order] = torch.arange(len(order), device=order.device)
    return r


def move_to_end(order: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """`order` with the pixels where `hidden` (H, W) bool is True moved last, both parts keeping their
    relative order (the paper's `move_to_end`, used for completing a hidden region). (L,) int64."""
    flat = hidden.reshape(-1).to(order.device)[order]
    return torch.cat([order[~flat], order[flat]])


def hidden_last_score(order: torch.Tensor, hidden: torch.Tensor) -> int:
    """How many (visible, hidden) pairs `order` puts hidden first: 0 when every hidden pixel is already last."""
    flat = hidden.reshape(-1).to(order.device)[order].long()  # 1 at hidden positions, in generation order
    hidden_before = torch.cumsum(flat, 0) - flat  # hidden pixels generated before each position
    return int((hidden_before * (1 - flat)).sum())


# ----- sequence layouts (attention models) --------------------------------------------------------------------
def block_raster_order(height: int, width: int, block: tuple[int, int]) -> torch.Tensor:
    """Flat raster indices of a (height, width) grid listed block by block (blocks in raster order, raster
    order inside each block; edge blocks may be partial). (height * width,) int64."""
    bh, bw = block
    r = torch.arange(height).view(-1, 1).expand(height, width).flatten()
    c = torch.arange(width).view(1, -1).expand(height, width).flatten()
    nbw = -(-width // bw)
    key = ((r // bh) * nbw + c // bw) * (bh * bw) + (r % bh) * bw + (c % bw)
    return torch.argsort(key)


def subpixel_block_raster_order(image, query_shape: tuple[int, int]) -> torch.Tensor:
    """Sub-pixels in block-raster order on the (H, W*C) pixel-channel grid, query blocks of
    query_shape = (rows, pixels), i.e. (rows, pixels*C) sub-pixels; (C*H*W,) flat indices into (C, H, W)."""
    C, H, W = image.shape
    g = block_raster_order(H, W * C, (query_shape[0], query_shape[1] * C))
    i, rem = g // (W * C), g % (W * C)
    return (rem % C) * H * W + i * W + rem // C


def grid_coords(unit_order: torch.Tensor, image, unit: str) -> torch.Tensor:
    """(N, 2) row / column of every position on the (H, W*C) grid (sub-pixels) or (H, W) grid (pixels)."""
    C, H, W = image.shape
    pix = unit_order % (H * W)
    row, col = pix // W, pix % W
    if unit == "subpixel":
        col = col * C + unit_order // (H * W)
    return torch.stack([row, col], dim=1)


def raster_order(image, unit: str) -> torch.Tensor:
    """Raster order: pixels in raster order, channels R, G, B within a pixel (sub-pixels), as flat indices."""
    C, H, W = image.shape
    if unit == "pixel":
        return torch.arange(H * W)
    return (torch.arange(C).view(1, C) * H * W + torch.arange(H * W).view(-1, 1)).reshape(-1)
