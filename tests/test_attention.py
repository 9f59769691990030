"""pixelar.nn.attention: every pattern against a dense reference with an explicit mask written from the
papers' set definitions, causality (no position reads a later one), KV-cached steps, and the work saved."""

import itertools

import pytest
import torch

from pixelar.nn.attention import AttentionPattern, CausalSelfAttention, attend
from pixelar.nn.orders import block_raster_order

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def grid_coords(h, w, order):
    """(N, 2) row/column of each position of a (h, w) grid listed in `order`."""
    return torch.stack([order // w, order % w], dim=1)


def reference_mask(name, N, stride=None, summary=1, coords=None, query_shape=None, flange=None, strict=False):
    """[i, j] from the set definitions (Child et al. section 4.2, Parmar et al. section 3.2), by brute force."""
    kind, _, part = name.partition(".")
    part = part or "both"
    l, c = stride, summary
    m = torch.zeros(N, N, dtype=torch.bool)
    for i, j in itertools.product(range(N), range(N)):
        if j > i or (strict and j == i):
            continue
        if kind == "dense":
            ok = True
        elif kind == "strided":
            local, strd = i - j < l, (i - j) % l == 0
            ok = {"both": local or strd, "local": local, "stride": strd}[part]
        elif kind == "fixed":
            local, summ = j // l == i // l, j % l >= l - c
            ok = {"both": local or summ, "local": local, "summary": summ}[part]
        elif kind == "local_1d":
            ok = j // l in (i // l, i // l - 1)
        elif kind == "local_2d":
            (qh, qw), (fh, fw) = query_shape, flange
            r0, c0 = int(coords[i, 0]) // qh * qh, int(coords[i, 1]) // qw * qw
            rj, cj = int(coords[j, 0]), int(coords[j, 1])
            ok = r0 - fh <= rj < r0 + qh and c0 - fw <= cj < c0 + qw + fw
        m[i, j] = ok
    return m


def reference_attend(q, k, v, mask):
    """Plain softmax attention with an explicit (N, N) mask; rows without keys give zeros."""
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return p @ v


_o = block_raster_order(5, 7, (2, 3))
CASES = {
    "dense": dict(name="dense", N=23),
    "dense_strict": dict(name="dense", N=23, strict=True),
    "strided": dict(name="strided", N=23, stride=5),
    "strided_exact_blocks": dict(name="strided", N=24, stride=6),
    "strided.local": dict(name="strided.local", N=23, stride=5),
    "strided.stride": dict(name="strided.stride", N=23, stride=5),
    "fixed": dict(name="fixed", N=23, stride=5, summary=2),
    "fixed.local": dict(name="fixed.local", N=23, stride=5),
    "fixed.summary": dict(name="fixed.summary", N=23, stride=5, summary=1),
    "local_1d": dict(name="local_1d", N=23, stride=4),
    "local_1d_strict": dict(name="local_1d", N=23, stride=4, strict=True),
    "local_2d_block_raster": dict(
        name="local_2d", N=35, coords=grid_coords(5, 7, _o), query_shape=(2, 3), flange=(1, 2)
    ),
    "local_2d_raster": dict(
        name="local_2d", N=35, coords=grid_coords(5, 7, torch.arange(35)), query_shape=(2, 3), flange=(2, 1)
    ),
}


def build(case):
    kw = dict(CASES[case])
    return AttentionPattern(kw.pop("name"), kw.pop("N"), **kw), CASES[case]


@pytest.mark.parametrize("case", list(CASES))
def test_pattern_mask_matches_the_set_definition(case):
    pattern, kw = build(case)
    ref = reference_mask(**kw)
    assert torch.equal(pattern.dense_mask(), ref)
    assert not pattern.dense_mask().triu(1).any(), "no position may see a later one"
    for t in range(kw["N"]):
        assert pattern.keys_for(t).tolist() == ref[t].nonzero().flatten().tolist(), t


@pytest.mark.parametrize("method", ["blocks", "dense", "auto"])
@pytest.mark.parametrize("case", list(CASES))
def test_attend_equals_dense_reference(case, method):
    pattern, kw = build(case)
    g = torch.Generator().manual_seed(0)
    B, h, N = 2, 3, kw["N"]
    q, k = (torch.randn(B, h, N, 4, generator=g) for _ in range(2))
    v = torch.randn(B, h, N, 5, generator=g)
    for t in (q, k, v):
        t.requires_grad_(True)
    ref = reference_attend(q, k, v, reference_mask(**kw))
    out = attend(q, k, v, pattern, method)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    # gradients too: the block paths have their own backward (fused masked softmax + log-sum-exp)
    w = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("case", list(CASES))
def test_no_position_is_influenced_by_a_later_one_and_gradients_are_finite(case):
    """Perturb the input at each position t: outputs before t stay bitwise equal; later ones may change.

    Like is compared with like: every input, perturbed or not, goes through the layer alone (batch 1, no
    autograd), so both sides run the same kernels on the same shapes. Kernels of different batch shapes may
    round differently (seen on AMD EPYC CPUs), which would make a bitwise comparison across shapes fail
    without any leak."""
    pattern, kw = build(case)
    pattern.block_work = 0  # "auto" takes the block-sparse path (the dense path is checked above)
    torch.manual_seed(0)
    N = kw["N"]
    layer = CausalSelfAttention(8, 2, 4, 6, pattern)
    x = torch.randn(1, N, 8, requires_grad=True)
    layer(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in layer.parameters())
    changed_later = 0
    with torch.no_grad():
        base = layer(x)
        for t in range(N):
            xt = x.clone()
            xt[0, t] += 1.0
            out = layer(xt)
            assert torch.equal(out[0, :t], base[0, :t]), f"position {t} changed an earlier output"
            changed_later += int((out[0, t:] != base[0, t:]).any())
    assert changed_later > N // 2


def test_a_leaking_mask_is_caught():
    """The checks above fail for a pattern whose tables let one position read a later one."""
    pattern, kw = build("strided")
    part = pattern.parts[0]  # the band: block 1 holds queries 5..9 and keys 0..9
    assert part.q_idx[1, 0] == 5 and part.kv_idx[1, 8] == 8
    part.mask[1, 0, 8] = True  # query 5 reads key 8, a later position
    pattern.block_work = 0  # block-sparse path
    assert not torch.equal(pattern.dense_mask(), reference_mask(**kw))
    assert pattern.dense_mask().triu(1).any()
    torch.manual_seed(0)
    layer = CausalSelfAttention(8, 2, 4, 6, pattern)
    x = torch.randn(2, kw["N"], 8)
    x2 = x.clone()
    x2[:, 8] += 1
    assert not torch.equal(layer(x)[:, 5], layer(x2)[:, 5])


@pytest.mark.parametrize("case", ["dense", "dense_strict", "strided", "fixed", "local_1d", "local_2d_block_raster"])
def test_kv_cached_steps_equal_the_full_forward(case):
    pattern, kw = build(case)
    torch.manual_seed(0)
    layer = CausalSelfAttention(8, 2, 4, 6, pattern)
    x = torch.randn(3, kw["N"], 8)
    full = layer(x)
    cache = {}
    steps = torch.cat([layer.step(x[:, t : t + 1], t, cache) for t in range(kw["N"])], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-10, rtol=1e-10)


def test_heads_split_between_patterns_equal_per_group_dense_references():
    """The Sparse Transformer's multi-head combination: heads [0, 2) read the local part, heads [2, 4) the
    stride part; forward, gradients and KV-cached steps against each group's explicit-mask reference."""
    torch.manual_seed(0)
    names = ("strided.local", "strided.stride")
    layer = CausalSelfAttention(8, 4, 8, 12, tuple(AttentionPattern(n, 23, stride=5) for n in names))
    x = torch.randn(3, 23, 8, requires_grad=True)
    q, k, v = layer._heads(x)
    ref = torch.cat(
        [
            reference_attend(
                q[:, 2 * g : 2 * g + 2],
                k[:, 2 * g : 2 * g + 2],
                v[:, 2 * g : 2 * g + 2],
                reference_mask(n, 23, stride=5),
            )
            for g, n in enumerate(names)
        ],
        dim=1,
    )
    ref = layer.proj(ref.transpose(1, 2).reshape(3, 23, 12))
    out = layer(x)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    w = torch.randn(out.shape)
    torch.testing.assert_close(
        torch.autograd.grad((out * w).sum(), x)[0], torch.autograd.grad((ref * w).sum(), x)[0], atol=1e-10, rtol=1e-10
    )
    # the two groups really differ: the same heads under one shared pattern give another output
    merged = CausalSelfAttention(8, 4, 8, 12, AttentionPattern("strided.local", 23, stride=5))
    merged.load_state_dict(layer.state_dict())
    assert not torch.allclose(merged(x), out)
    cache = {}
    with torch.no_grad():
        steps = torch.cat([layer.step(x[:, t : t + 1], t, cache) for t in range(23)], dim=1)
    torch.testing.assert_close(steps, out.detach(), atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="divide n_head"):
        CausalSelfAttention(8, 4, 8, 12, tuple(AttentionPattern(n, 23, stride=5) for n in ("dense", *names)))


def scores_computed(pattern):
    """Query-key pairs the block-sparse computation evaluates (padding included)."""
    if pattern.kind == "dense":
        return pattern.length**2
    return sum(p.mask.numel() for p in pattern.parts)


def test_sparse_patterns_do_o_n_sqrt_n_work():
    """32x32x3 sub-pixels with the CIFAR stride of one image row (96): the sparse patterns evaluate a few
    percent of the N^2 pairs, and quadrupling N (stride doubled, about sqrt(N)) multiplies their work by about
    8 (N^1.5), dense work by 16. The fixed pattern keeps c = 8 summary positions per block, as in the paper."""

    def work(kind, N, l):
        return scores_computed(AttentionPattern(kind, N, stride=l, summary=8))

    N = 3072
    for kind in ("strided", "fixed", "local_1d"):
        assert work(kind, N, 96) < 0.15 * N * N, kind
    for kind in ("strided", "fixed", "local_1d"):
        assert 7 <= work(kind, 4 * N, 192) / work(kind, N, 96) <= 9, kind
    assert work("dense", 4 * N, 192) / work("dense", N, 96) == 16


def test_block_raster_order():
    order = block_raster_order(5, 7, (2, 3))
    assert sorted(order.tolist()) == list(range(35))
    assert order[:6].tolist() == [0, 1, 2, 7, 8, 9]  # the first 2x3 block, raster inside
    assert order[6:12].tolist() == [3, 4, 5, 10, 11, 12]
    assert order[12:16].tolist() == [6, 13, 14, 15]  # partial edge block (column 6), then the next block row


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="unknown attention pattern"):
        AttentionPattern("diagonal", 10)
    with pytest.raises(ValueError, match="stride"):
        AttentionPattern("strided", 10)
    with pytest.raises(ValueError, match="coords"):
        AttentionPattern("local_2d", 10, query_shape=(2, 2), flange=(1, 1))
    with pytest.raises(ValueError, match="summary"):
        AttentionPattern("fixed", 10, stride=4, summary=5)
    with pytest.raises(ValueError, match="divisible"):
        CausalSelfAttention(8, 3, 4, 6, AttentionPattern("dense", 4))
