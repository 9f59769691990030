"""Generation orders (pixelar.nn.orders): permutations, neighbour steps, the 8 dihedral variants, completion."""

import itertools

import pytest
import torch

from pixelar.nn.orders import (
    NUM_VARIANTS,
    ORDERS,
    check_order,
    dihedral_orders,
    generation_order,
    hidden_last_score,
    move_to_end,
    order_coords,
    ranks,
)

SIZES = [(1, 1), (1, 5), (4, 1), (2, 3), (4, 4), (5, 5), (4, 6), (5, 7), (4, 7), (8, 8), (6, 11), (7, 3)]


def applicable(name, H, W):
    return name != "hilbert" or (H == W and H & (H - 1) == 0)


@pytest.mark.parametrize("name", ORDERS)
def test_every_variant_is_a_permutation(name):
    for (H, W), k in itertools.product(SIZES, range(NUM_VARIANTS)):
        if applicable(name, H, W):
            o = generation_order(name, H, W, k)
            assert o.dtype == torch.long and sorted(o.tolist()) == list(range(H * W)), (H, W, k)


def steps(name, H, W, k):
    rc = order_coords(name, H, W, k)
    return (rc[1:] - rc[:-1]).abs()  # (L-1, 2) |drow|, |dcol| between consecutive pixels


@pytest.mark.parametrize("name", ["s_curve", "hilbert"])
def test_consecutive_pixels_are_neighbours(name):
    for (H, W), k in itertools.product(SIZES + [(16, 16), (6, 6)], range(NUM_VARIANTS)):
        if applicable(name, H, W):
            assert torch.all(steps(name, H, W, k).sum(1) == 1), (H, W, k)


def test_gilbert_is_a_neighbour_walk_except_one_diagonal_for_odd_by_even():
    """The generalized Hilbert curve steps to a 4-neighbour every time, except for rectangles whose long
    side is odd and short side even, where one diagonal step is unavoidable."""
    for H, W in itertools.product(range(1, 12), range(1, 12)):
        odd_by_even = max(H, W) % 2 == 1 and min(H, W) % 2 == 0 and min(H, W) > 2
        for k in range(NUM_VARIANTS):
            d = steps("gilbert", H, W, k)
            manhattan = d.sum(1)
            assert d.numel() == 0 or int(d.max()) <= 1, (H, W, k)
            assert int((manhattan != 1).sum()) == (1 if odd_by_even else 0), (H, W, k)


def test_gilbert_on_power_of_two_squares_is_a_hilbert_curve():
    hilbert = {tuple(o.tolist()) for o in dihedral_orders("hilbert", 8, 8)}
    assert tuple(generation_order("gilbert", 8, 8).tolist()) in hilbert


def test_raster_and_s_curve_and_their_variants():
    assert generation_order("raster", 2, 3).tolist() == [0, 1, 2, 3, 4, 5]
    assert generation_order("s_curve", 2, 3).tolist() == [0, 1, 2, 5, 4, 3]
    assert generation_order("raster", 2, 3, 1).tolist() == [3, 4, 5, 0, 1, 2]  # rows reflected
    assert generation_order("raster", 2, 3, 2).tolist() == [2, 1, 0, 5, 4, 3]  # columns reflected
    assert generation_order("raster", 2, 3, 3).tolist() == [5, 4, 3, 2, 1, 0]  # both
    assert generation_order("raster", 2, 3, 4).tolist() == [0, 3, 1, 4, 2, 5]  # transposed: column-major
    assert generation_order("raster", 2, 3, 7).tolist() == [5, 2, 4, 1, 3, 0]
    for name in ORDERS:
        orders = dihedral_orders(name, 8, 8)
        assert orders.shape == (8, 64)
        assert len({tuple(o.tolist()) for o in orders}) == 8, name  # 8 distinct orders on a square


def test_bad_orders_are_refused():
    with pytest.raises(ValueError, match="gilbert"):
        generation_order("hilbert", 4, 6)
    with pytest.raises(ValueError, match="s_curve"):
        generation_order("zigzag", 4, 4)
    with pytest.raises(ValueError, match="variant"):
        generation_order("raster", 4, 4, 8)
    with pytest.raises(ValueError, match="exactly once"):
        check_order(torch.tensor([0, 1, 1, 3]), 2, 2)
    with pytest.raises(ValueError, match=r"\(H\*W,\)"):
        check_order(torch.arange(5), 2, 2)
    with pytest.raises(ValueError, match="1, 8"):
        dihedral_orders("raster", 4, 4, 9)


def test_move_to_end_puts_the_hidden_pixels_last_keeping_relative_order():
    order = generation_order("hilbert", 4, 4)
    hidden = torch.zeros(4, 4, dtype=torch.bool)
    hidden[1:3, 1:3] = True
    hidden[0, 3] = True
    assert hidden_last_score(order, hidden) > 0
    moved = move_to_end(order, hidden)
    assert hidden_last_score(moved, hidden) == 0
    n_hidden = int(hidden.sum())
    assert set(moved[-n_hidden:].tolist()) == set(torch.nonzero(hidden.view(-1)).view(-1).tolist())
    r = ranks(order)
    for part in (moved[:-n_hidden], moved[-n_hidden:]):
        assert torch.all(r[part][1:] > r[part][:-1])  # both parts keep the base order
    assert torch.equal(ranks(moved)[moved], torch.arange(16))
