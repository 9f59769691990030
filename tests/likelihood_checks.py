"""Black-box likelihood checks usable on any model through the public API (shared by several test files)."""

from __future__ import annotations

import itertools

import torch


def all_images(spec) -> torch.Tensor:
    """Every image of `spec`, (K**D, C, H, W) int64. Only for tiny specs."""
    D = spec.dims
    vals = torch.tensor(list(itertools.product(range(spec.num_values), repeat=D)), dtype=torch.long)
    return vals.view(-1, *spec.shape)


def total_probability(model, spec, cond=None, chunk=8192) -> float:
    xs = all_images(spec)
    total = []
    with torch.no_grad():
        for i in range(0, len(xs), chunk):
            x = xs[i : i + chunk]
            c = None if cond is None else cond.expand(len(x), *cond.shape[1:])
            total.append(model.log_prob(x, c))
    return torch.logsumexp(torch.cat(total), 0).exp().item()


def conditional_sums(model, x, cond=None) -> torch.Tensor:
    """For one image x (1, C, H, W): sum over values v of p(x_d = v | x_<d) for every sub-pixel d. (D,)"""
    spec = model.image
    D, K = spec.dims, spec.num_values
    xs = x.reshape(1, D).repeat(D * K, 1)
    d_idx = torch.arange(D).repeat_interleave(K)
    v_idx = torch.arange(K).repeat(D)
    xs[torch.arange(D * K), d_idx] = v_idx
    c = None if cond is None else cond.expand(D * K, *cond.shape[1:])
    with torch.no_grad():
        lp = model.log_prob(xs.view(-1, *spec.shape), c, reduce=False).reshape(D * K, D)
    picked = lp[torch.arange(D * K), d_idx].view(D, K)
    return torch.logsumexp(picked, dim=1).exp()


def causality_violations(model, x, cond=None) -> tuple[list, int]:
    """Change each sub-pixel in turn (in generation order) and list (changed, affected) pairs where the
    conditional of an earlier sub-pixel changed at all (exact comparison). Also returns how many later
    conditionals did change, so a constant model cannot pass vacuously."""
    spec = model.image
    D, K = spec.dims, spec.num_values
    order = model.generation_order()
    flat = x.reshape(1, D)
    xs = flat.repeat(D + 1, 1)
    for t in range(D):
        d = order[t]
        xs[t + 1, d] = (flat[0, d] + 1) % K
    c = None if cond is None else cond.expand(D + 1, *cond.shape[1:])
    # one image per call: vectorized kernels (e.g. F.elu) may round the tail of a batch differently from the
    # rest, so the same image could score a last-bit differently at another batch position
    with torch.no_grad():
        lp = torch.cat(
            [
                model.log_prob(
                    xs[k : k + 1].view(1, *spec.shape), None if c is None else c[k : k + 1], reduce=False
                ).reshape(1, D)
                for k in range(D + 1)
            ]
        )
    violations, later_changes = [], 0
    for t in range(D):
        before, after = order[:t], order[t + 1 :]
        diff = lp[t + 1, before] != lp[0, before]
        violations += [(int(order[t]), int(b)) for b in before[diff]]
        later_changes += int((lp[t + 1, after] != lp[0, after]).sum())
    return violations, later_changes
