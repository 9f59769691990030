"""Output distributions: normalization (edge bins included), exact uniform bpd, sampling range, mode, and
that samples follow the probabilities."""

import itertools
import math

import pytest
import torch

from pixelar import ImageSpec
from pixelar.distributions import Bernoulli, Categorical, DiscretizedLogisticMixture, make_distribution


def all_pixels(C, K):
    """Every pixel value combination, (K**C, C, 1, 1) int64."""
    return torch.tensor(list(itertools.product(range(K), repeat=C))).view(-1, C, 1, 1)


def dists(C, K):
    out = [
        Categorical(ImageSpec(C, 1, 1, K)),
        Categorical(ImageSpec(C, 1, 1, K), joint=True),
        DiscretizedLogisticMixture(ImageSpec(C, 1, 1, K), nr_mix=3),
    ]
    if K == 2:
        out.append(Bernoulli(ImageSpec(C, 1, 1, K)))
    for d in out:
        if isinstance(d, Categorical) and d.coupling is not None:
            torch.nn.init.normal_(d.coupling)
    return out


def joint_log_prob(d, params, x):
    return d.log_prob(params.expand(len(x), -1, -1, -1), x).sum(dim=(1, 2, 3))


@pytest.mark.parametrize("C,K", [(1, 2), (1, 4), (1, 256), (3, 2), (3, 4), (3, 16)])
def test_every_value_probability_sums_to_one(C, K):
    torch.manual_seed(0)
    x = all_pixels(C, K)
    for d in dists(C, K):
        for scale in (0.1, 3.0, 30.0):  # large scales push log-scales to the clamp and bin masses far below 1e-5
            params = scale * torch.randn(1, d.num_params, 1, 1, dtype=torch.float64)
            total = torch.logsumexp(joint_log_prob(d, params, x), 0).exp().item()
            assert abs(total - 1) < 1e-12, (type(d).__name__, scale, total)


@pytest.mark.parametrize("C,K", [(1, 2), (1, 256), (3, 2), (3, 16)])
def test_value_log_probs_are_the_conditionals_of_every_value(C, K):
    """Each distribution's direct value_log_probs (used by the codec) equals log_prob of the K candidate pixels
    (the base class's generic version) for every channel, earlier channels teacher-forced, and sums to one."""
    from pixelar.distributions.base import OutputDistribution

    torch.manual_seed(1)
    for d in dists(C, K):
        for scale in (0.3, 5.0):
            params = scale * torch.randn(4, d.num_params, dtype=torch.float64)
            x = torch.randint(0, K, (4, C))
            for c in range(C):
                direct = d.value_log_probs(params, x, c)
                generic = OutputDistribution.value_log_probs(d, params, x, c)
                assert direct.shape == (4, K)
                torch.testing.assert_close(direct, generic, atol=1e-12, rtol=1e-12)
                torch.testing.assert_close(direct.exp().sum(1), torch.ones(4, dtype=torch.float64), atol=1e-12, rtol=0)


def test_logistic_edge_bins_take_the_tails():
    d = DiscretizedLogisticMixture(ImageSpec(1, 1, 1, 256), nr_mix=1)
    params = torch.tensor([0.0, 5.0, -3.0], dtype=torch.float64).view(1, 3, 1, 1)  # mean far above the top bin
    lp = d.log_prob(params, torch.tensor([255]).view(1, 1, 1, 1))
    assert lp.exp().item() > 0.99  # the last bin holds all the mass beyond it


def test_uniform_parameters_give_exactly_log2_k_bits():
    for K in (2, 4, 256):
        d = Categorical(ImageSpec(3, 2, 2, K))
        x = torch.randint(0, K, (5, 3, 2, 2))
        bits = -d.log_prob(torch.zeros(5, d.num_params, 2, 2), x).mean() / math.log(2)
        assert bits.item() == pytest.approx(math.log2(K), abs=1e-6)
    b = Bernoulli(ImageSpec(1, 2, 2, 2))
    bits = -b.log_prob(torch.zeros(3, 1, 2, 2), torch.randint(0, 2, (3, 1, 2, 2))).mean() / math.log(2)
    assert bits.item() == pytest.approx(1.0, abs=1e-6)
    m = DiscretizedLogisticMixture(ImageSpec(1, 2, 2, 2), nr_mix=1)  # mean 0 splits two values evenly
    bits = -m.log_prob(torch.zeros(3, 3, 2, 2), torch.randint(0, 2, (3, 1, 2, 2))).mean() / math.log(2)
    assert bits.item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("C,K", [(1, 2), (1, 256), (3, 4), (3, 256)])
def test_samples_stay_in_range(C, K):
    g = torch.Generator().manual_seed(0)
    for d in dists(C, K):
        params = 5 * torch.randn(500, d.num_params, generator=g)
        for t in (0.0, 0.5, 1.0, 3.0):
            s = (
                torch.stack([d.sample(params, t, g, channel=c) for c in range(C)], 1)
                if not d.joint
                else d.sample(params, t, g)
            )
            assert s.dtype == torch.long and s.shape == (500, C)
            assert int(s.min()) >= 0 and int(s.max()) < K


def test_temperature_zero_gives_the_mode():
    g = torch.Generator().manual_seed(0)
    cat = Categorical(ImageSpec(1, 1, 1, 10))
    logits = torch.randn(50, 10, generator=g)
    for t in (0.0, 1e-4):
        assert torch.equal(cat.sample(logits, t, g, channel=0), logits.argmax(1))
    b = Bernoulli(ImageSpec(1, 1, 1, 2))
    lg = torch.randn(50, 1, generator=g)
    assert torch.equal(b.sample(lg, 0.0, g, channel=0), (lg[:, 0] > 0).long())
    # one component with its mean on the centre of value v and a small scale: the mode is v
    m = DiscretizedLogisticMixture(ImageSpec(1, 1, 1, 256), nr_mix=1)
    v = torch.randint(1, 255, (50,), generator=g)
    params = torch.stack([torch.zeros(50), v * 2 / 255 - 1, torch.full((50,), -5.0)], 1)
    assert torch.equal(m.sample(params, 0.0, g)[:, 0], v)
    assert torch.equal(m.sample(params, 1e-4, g)[:, 0], v)


@pytest.mark.parametrize("C,K", [(1, 4), (3, 2)])
def test_samples_follow_the_probabilities(C, K):
    """Empirical frequencies of 40k draws match exp(log_prob) for every pixel value (joint, C channels)."""
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(1)
    x = all_pixels(C, K)
    for d in dists(C, K):
        params = torch.randn(1, d.num_params)
        p = joint_log_prob(d, params.view(1, -1, 1, 1), x).exp()
        n = 40000
        pp = params.expand(n, -1)
        s = torch.stack([d.sample(pp, 1.0, g, channel=c) for c in range(C)], 1) if not d.joint else d.sample(pp, 1.0, g)
        if not d.joint and C > 1:
            continue  # per-channel outputs are coupled by the backbone, not here
        codes = (s * (K ** torch.arange(C - 1, -1, -1))).sum(1)
        freq = torch.bincount(codes, minlength=K**C).float() / n
        assert torch.allclose(freq, p.float(), atol=0.012), (type(d).__name__, freq, p)


def test_make_distribution_errors_list_valid_names():
    with pytest.raises(ValueError, match="valid"):
        make_distribution(ImageSpec(1, 4, 4), "gaussian", joint=True)
    with pytest.raises(ValueError, match="num_values=2"):
        make_distribution(ImageSpec(1, 4, 4, 256), "bernoulli", joint=False)
    with pytest.raises(ValueError, match="nr_mix"):
        make_distribution(ImageSpec(1, 4, 4), "logistic_mixture", joint=True, mixtures=3)


def _reference_sample(dist, params, t, generator):
    """The logistic mixture's draw written channel by channel (the formulas of sample, step by step)."""
    K = dist.image.num_values
    logits, means, log_scales, coeffs = dist._split(params)
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float32).to(logits.dtype)
    if t == 0:
        comp = logits.argmax(-1)
    else:
        comp = (logits / t - torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))).argmax(-1)
    idx = comp.view(-1, 1, 1)
    mu = means.gather(2, idx.expand(-1, means.shape[1], 1)).squeeze(2)
    ls = log_scales.gather(2, idx.expand(-1, log_scales.shape[1], 1)).squeeze(2)
    co = coeffs.gather(2, idx.expand(-1, coeffs.shape[1], 1)).squeeze(2)
    u = torch.rand(mu.shape, generator=generator).to(mu.dtype).clamp(1e-7, 1.0 - 1e-7)
    noise = torch.log(u) - torch.log1p(-u)
    out = torch.zeros(mu.shape, dtype=torch.long)
    xs = torch.zeros(mu.shape, dtype=mu.dtype)
    for c in range(mu.shape[1]):
        m = mu[:, c]
        for k, (cc, p) in enumerate(dist.pairs):
            if cc == c:
                m = m + co[:, k] * xs[:, p]
        cont = m + (torch.exp(ls[:, c]) * t) * noise[:, c]
        out[:, c] = torch.round((cont + 1.0) * 0.5 * (K - 1)).clamp(0, K - 1).long()
        xs[:, c] = dist._to_unit(out[:, c], mu.dtype)
    return out


@pytest.mark.parametrize("C,K", [(1, 2), (3, 256), (3, 5)])
@pytest.mark.parametrize("t", [1.0, 0.7, 0.0])
def test_logistic_mixture_sample_is_exactly_the_channel_by_channel_draw(C, K, t):
    """sample() is written with few operations (it runs at every cached sampling step); its values must be
    exactly those of the formulas applied channel by channel, on the same random numbers."""
    dist = DiscretizedLogisticMixture(ImageSpec(C, 2, 2, K), nr_mix=4)
    params = torch.randn(300, dist.num_params, generator=torch.Generator().manual_seed(1)) * 3
    for p in (params, torch.cat([params, params], 1)[:, 1 : 1 + dist.num_params]):  # also not contiguous
        got = dist.sample(p, t, torch.Generator().manual_seed(7))
        assert got.dtype == torch.long
        assert torch.equal(got, _reference_sample(dist, p, t, torch.Generator().manual_seed(7)))


@pytest.mark.parametrize("C,K", [(1, 2), (1, 256), (3, 2), (3, 16)])
def test_value_probs_are_the_probabilities_of_value_log_probs(C, K):
    """value_probs (the codec's per-step tables, computed from CDF differences by the logistic mixture) is the
    softmax of value_log_probs: to 1e-12 in float64, to the absolute precision of float32 in float32."""
    torch.manual_seed(2)
    for d in dists(C, K):
        for scale in (0.3, 5.0):
            params = scale * torch.randn(4, d.num_params, dtype=torch.float64)
            x = torch.randint(0, K, (4, C))
            for c in range(C):
                want = torch.softmax(d.value_log_probs(params, x, c), dim=-1)
                torch.testing.assert_close(d.value_probs(params, x, c).double(), want, atol=1e-12, rtol=0)
                assert (d.value_probs(params, x, c) >= 0).all()
                torch.testing.assert_close(d.value_probs(params.float(), x, c).double(), want, atol=1e-6, rtol=0)
