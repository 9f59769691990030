"""Cached sampling (pixelar.nn.cache + sampling/cached.py) against the naive reference sampler.

- every model, 1- and 3-channel images, unconditional / class / vector conditioning, several seeds and
  temperatures: identical images, identical `dist.sample` calls (order, shapes, channel), parameters equal
  to 1e-5 at every step; completion keeps the given pixels and equals naive completion;
- stepwise: params_at == forward(x)[:, :, i, j] at every (sub-)pixel step, in float64 with strong weights;
- layer level: every cached map equals the whole-map evaluation at every computed position, for each
  layer type on its own (strides, transposed convolutions, masks, shifts) and inside every model;
- memory: the per-map caches are a few rows, independent of the image height.
"""

import pytest
import torch
import torch.nn as nn

import pixelar
from pixelar import ImageSpec, create_model
from pixelar.models.base import ARImageModel, ImageModel
from pixelar.nn import (
    DownRightShiftedConv2d,
    DownRightShiftedConvTranspose2d,
    DownShiftedConv2d,
    DownShiftedConvTranspose2d,
    MaskedConv2d,
    concat_elu,
)
from pixelar.nn.cache import CausalGraph, IncrementalForward, Skip, pointwise_conv

# models with an incremental forward (begin_cache): every autoregressive model but grayscale_pixelcnn (tested in
# test_aux_pixelcnn.py: its sampler caches both stages itself); latent-variable models sample in one decoder pass
MODELS = [
    name
    for name in pixelar.list_models()
    if pixelar.models.registry._lookup(name)[0].begin_cache is not ImageModel.begin_cache
    and pixelar.models.registry.model_class(name).likelihood == "exact"
]
# models whose cached sampler is the convolutional per-layer cache (pixelar.nn.cache): its internals are tested
GRAPH_MODELS = [m for m in MODELS if hasattr(pixelar.models.registry._lookup(m)[0], "cache_graph")]
SPECS = [ImageSpec(1, 6, 6, 4), ImageSpec(3, 5, 5, 256)]
CONDS = ["none", "class", "vector", "map"]


def takes_map(name):
    """Whether the model reads a conditioning map (cond_channels), as a VQ-VAE-2 bottom prior does."""
    return "cond_channels" in pixelar.models.registry.preset(name, "tiny")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make(name, spec, cond_kind="none", scale=0.2, seed=1):
    overrides = {"class": {"num_classes": 3}, "vector": {"cond_dim": 4}, "map": {"cond_channels": 2}}.get(cond_kind, {})
    torch.manual_seed(seed)
    model = create_model(name, spec, "tiny", **overrides).eval()
    with torch.no_grad():  # random weights (the conditioning maps start at zero): every connection matters
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def make_cond(cond_kind, n, seed=0, spec=None):
    g = torch.Generator().manual_seed(seed)
    if cond_kind == "class":
        return torch.randint(0, 3, (n,), generator=g)
    if cond_kind == "vector":
        return torch.randn(n, 4, generator=g, dtype=torch.get_default_dtype())
    if cond_kind == "map":
        return torch.randn(n, 2, spec.height, spec.width, generator=g, dtype=torch.get_default_dtype())
    return None


def recorded_sample(model, method, seed, **kw):
    """Sample, recording every dist.sample call as (params, channel, temperature)."""
    calls = []
    dist = model.distribution
    original = dist.sample

    def recording(params, temperature=1.0, generator=None, channel=None):
        calls.append((params.detach().clone(), channel, temperature))
        return original(params, temperature, generator, channel)

    dist.sample = recording
    try:
        out = model.sample(generator=torch.Generator().manual_seed(seed), method=method, **kw)
    finally:
        del dist.sample
    return out, calls


def assert_same_calls(naive_calls, cached_calls):
    """Same calls, parameters equal up to fp32 rounding. The cache multiplies small matrices where the full
    pass runs convolution kernels, and how those round differs between CPUs; the error grows with the
    activations' size (parameters reach 17 here), so the tolerance is relative to the step's largest
    parameter: 1e-5 of it (worst seen: 1.6e-5 of 1 + |p|), where a stale or leaking cache entry moves
    parameters by a fraction of it. The float64 stepwise tests below check the cache exactly."""
    assert len(naive_calls) == len(cached_calls)
    for k, ((pn, cn, tn), (pc, cc, tc)) in enumerate(zip(naive_calls, cached_calls)):
        assert pn.shape == pc.shape and pn.dtype == pc.dtype and cn == cc and tn == tc, k
        scale = max(1.0, pn.abs().max().item())
        torch.testing.assert_close(pc, pn, atol=1e-5 * scale, rtol=1e-5, msg=lambda m, k=k: f"step {k}: {m}")


@pytest.mark.parametrize("cond_kind", CONDS)
@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("name", MODELS)
def test_cached_equals_naive(name, spec, cond_kind):
    if cond_kind == "map" and not takes_map(name):
        pytest.skip(f"{name} takes no conditioning map")
    model = make(name, spec, cond_kind)
    n = 3
    cond = make_cond(cond_kind, n, spec=spec)
    runs = {"none": [(0, 1.0), (1, 0.7), (2, 0.0)], "class": [(3, 0.7)], "vector": [(4, 1.0)], "map": [(5, 1.0)]}
    runs = runs[cond_kind]
    for seed, temperature in runs:
        naive, naive_calls = recorded_sample(model, "naive", seed, n=n, cond=cond, temperature=temperature)
        cached, cached_calls = recorded_sample(model, "cached", seed, n=n, cond=cond, temperature=temperature)
        assert torch.equal(naive, cached), (seed, temperature)
        assert_same_calls(naive_calls, cached_calls)
        steps = spec.height * spec.width * (1 if model.distribution.joint else spec.channels)
        assert len(cached_calls) == steps


def test_cached_is_the_default_and_conditioning_matters():
    spec = SPECS[1]
    model = make("pixelcnn_pp", spec, "class")
    a = model.sample(4, cond=torch.tensor([0, 0, 1, 2]), generator=torch.Generator().manual_seed(0))
    b = model.sample(4, cond=torch.tensor([0, 0, 1, 2]), generator=torch.Generator().manual_seed(0), method="naive")
    c = model.sample(4, cond=torch.tensor([1, 1, 2, 0]), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("name", MODELS)
def test_cached_completion_equals_naive(name, spec):
    model = make(name, spec, "vector")
    n = 3
    C, H, W = spec.shape
    g = torch.Generator().manual_seed(7)
    x_known = torch.randint(0, spec.num_values, (n, C, H, W), generator=g)
    known = torch.rand(n, H, W, generator=g) < 0.4
    known[:, :2] = True  # whole rows known in every image: the samplers skip them (the cache jumps ahead)
    known[:, 3, 1:3] = True  # a few more pixels known everywhere, mid-row
    cond = make_cond("vector", n)
    for seed, temperature in [(0, 1.0), (3, 0.0)]:
        kw = dict(n=n, cond=cond, temperature=temperature, x_known=x_known, known=known)
        naive, naive_calls = recorded_sample(model, "naive", seed, **kw)
        cached, cached_calls = recorded_sample(model, "cached", seed, **kw)
        assert torch.equal(naive, cached)
        assert_same_calls(naive_calls, cached_calls)
        keep = known[:, None].expand_as(x_known)
        assert torch.equal(cached[keep], x_known[keep])


# ----- stepwise parameters and per-map values ----------------------------------------------------------------
@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def drive(model, x_final, cond, trace=None, check_params=True):
    """Fill x in generation order as a sampler would, asking the cache for each step's parameters and
    comparing them with a full forward pass on the current x. Returns the cache state."""
    C, H, W = model.image.shape
    x = torch.zeros_like(x_final)
    state = model.begin_cache(x, cond)
    state.trace = trace
    joint = model.distribution.joint
    worst = 0.0
    for i in range(H):
        for j in range(W):
            for c in range(1 if joint else C):
                params = state.params_at(i, j)
                if check_params:
                    ref = model(x, cond)[:, :, i, j]
                    assert params.shape == ref.shape
                    worst = max(worst, (params - ref).abs().max().item() / (1 + ref.abs().max().item()))
                if joint:
                    x[:, :, i, j] = x_final[:, :, i, j]
                else:
                    x[:, c, i, j] = x_final[:, c, i, j]
    state.advance(H * W)  # the last maps (e.g. a vertical stack's last row) are computed once x is complete
    return state, worst


@pytest.mark.parametrize("cond_kind", ["none", "class", "map"])
@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_step_params_and_every_map_match_full_forward(name, spec, cond_kind, float64):
    if cond_kind == "map" and not takes_map(name):
        pytest.skip(f"{name} takes no conditioning map")
    model = make(name, spec, cond_kind, scale=0.3)
    g = torch.Generator().manual_seed(5)
    x_final = torch.randint(0, spec.num_values, (2, *spec.shape), generator=g)
    cond = make_cond(cond_kind, 2, spec=spec)
    segments = []
    state, worst = drive(
        model, x_final, cond, trace=lambda name, r, c0, c1, y, prov: segments.append((name, r, c0, c1, y.clone(), prov))
    )
    assert worst < 1e-10, worst  # float64, relative to the parameters' scale
    # the graph describes the forward pass
    full = state.graph.full()
    out_name = state.out.name
    torch.testing.assert_close(full[out_name], model(x_final, cond), atol=1e-9, rtol=1e-9)
    # every committed computation of every map equals the whole-map value there (x is final by then)
    committed = [s for s in segments if not s[5]]
    names = {s[0] for s in committed}
    assert names == set(state.memory()), "every stored map is computed"
    covered = {name: torch.zeros(full[name].shape[-2:], dtype=torch.bool) for name in names}
    errors = []
    for name_, r, c0, c1, y, _ in committed:
        ref = full[name_][:, :, r : r + 1, c0:c1]
        errors.append(((y - ref).abs().max().item() / (1 + ref.abs().max().item()), name_, r, c0, c1))
        covered[name_][r, c0:c1] = True
    assert max(errors)[0] < 1e-10, max(errors)  # float64, relative to the values' scale
    assert all(bool(c.all()) for c in covered.values()), "every position of every map is computed"
    if not model.distribution.joint and spec.channels > 1:
        assert any(s[5] for s in segments), "per-channel outputs of RGB images need provisional steps"


def test_steps_compute_only_new_positions():
    """Pixel-level caching: per step, each full-resolution map computes O(1) positions, not a row."""
    spec = ImageSpec(1, 8, 12, 4)
    model = make("pixelcnn_pp", spec)
    x_final = torch.randint(0, 4, (1, *spec.shape))
    count = {}
    state, _ = drive(
        model,
        x_final,
        None,
        check_params=False,
        trace=lambda name, r, c0, c1, y, prov: count.__setitem__(name, count.get(name, 0) + c1 - c0),
    )
    # every map computes each of its positions exactly once (joint output: nothing provisional)
    full = state.graph.full()
    for name, n in count.items():
        assert n == full[name].shape[-2] * full[name].shape[-1], name


def test_cache_memory_is_a_few_rows_independent_of_height():
    rows = {}
    for H in (8, 24):
        spec = ImageSpec(3, H, 10, 256)
        for name in GRAPH_MODELS:
            model = create_model(name, spec, "tiny").eval()
            state = model.begin_cache(torch.zeros(1, *spec.shape, dtype=torch.long))
            rows[name, H] = state.memory()
            assert max(rows[name, H].values()) <= 5, (name, H, rows[name, H])
    for name in GRAPH_MODELS:
        assert rows[name, 8] == rows[name, 24], name


# ----- layer level -------------------------------------------------------------------------------------------
def run_graph(build, H, W, C=3, B=2, seed=0, schedule=None):
    """Build a one-layer graph on float input, reveal the input in raster order (with garbage in the
    unrevealed positions, which a correct cache never uses), advancing the cache to each input frontier of
    `schedule` (default: every pixel), and compare every computed segment with the whole-map evaluation."""
    g = torch.Generator().manual_seed(seed)
    final = torch.randn(B, C, H, W, generator=g)
    x = torch.randn(B, C, H, W, generator=g) * 100  # garbage until revealed
    graph = CausalGraph()
    out = build(graph, graph.input(x))
    segments = []
    state = IncrementalForward(
        graph, out, trace=lambda *a: segments.append(a[:4] + (a[4].clone(),)), require_causal=False
    )
    for f in schedule or range(1, H * W + 1):
        x.view(B, C, -1)[:, :, :f] = final.view(B, C, -1)[:, :, :f]
        state.advance(f)
    assert torch.equal(x, final)
    full = graph.full()
    seen, errors = {}, []
    for name, r, c0, c1, y in segments:
        errors.append(((y - full[name][:, :, r : r + 1, c0:c1]).abs().max().item(), name, r, c0, c1))
        seen[name] = seen.get(name, 0) + c1 - c0
    assert max(errors)[0] < 1e-5, max(errors)
    for n in graph.nodes:
        if n.stored:
            assert seen.get(n.name) == n.H * n.W, (n.name, seen.get(n.name), n.H * n.W)
    return state


LAYERS = {
    "masked_7x7_A_rgb": lambda g, x: g.conv(x, MaskedConv2d(3, 6, 7, "A", groups=3)),
    "masked_3x3_B_relu": lambda g, x: g.conv(x, MaskedConv2d(3, 6, 3, "B", groups=3), pre=torch.relu),
    "masked_1x1_B": lambda g, x: g.conv(x, MaskedConv2d(3, 6, 1, "B", groups=3)),
    "masked_1x3_row": lambda g, x: g.conv(x, MaskedConv2d(3, 6, (1, 3), "A", groups=3, center=(0, 2))),
    "down_2x3": lambda g, x: g.conv(x, DownShiftedConv2d(6, 5, (2, 3)), pre=concat_elu),
    "down_1x3": lambda g, x: g.conv(x, DownShiftedConv2d(3, 5, (1, 3))),
    "down_2x3_stride2": lambda g, x: g.conv(x, DownShiftedConv2d(3, 5, (2, 3), stride=2)),
    "downright_2x2": lambda g, x: g.conv(x, DownRightShiftedConv2d(3, 5, (2, 2))),
    "downright_2x1": lambda g, x: g.conv(x, DownRightShiftedConv2d(3, 5, (2, 1))),
    "downright_2x2_stride2": lambda g, x: g.conv(x, DownRightShiftedConv2d(3, 5, (2, 2), stride=2)),
    "plain_conv_padded": lambda g, x: g.conv(x, nn.Conv2d(3, 4, (2, 3)), pad=(1, 1, 1, 0)),
    "shift_down_right": lambda g, x: g.map(torch.add, g.shift(x, 1, 0), g.shift(x, 0, 1)),
    "transposed_down": lambda g, x: g.conv_transpose(
        g.conv(x, DownShiftedConv2d(3, 4, (2, 3), stride=2)), DownShiftedConvTranspose2d(4, 5), (x.H, x.W)
    ),
    "transposed_downright": lambda g, x: g.conv_transpose(
        g.conv(x, DownRightShiftedConv2d(3, 4, (2, 2), stride=2)), DownRightShiftedConvTranspose2d(4, 5), (x.H, x.W)
    ),
    "two_levels": lambda g, x: _two_levels(g, x),
    "multi_source_post": lambda g, x: _multi_source(g, x),
    "constant_map": lambda g, x: _with_constant(g, x),
    "skip": lambda g, x: _with_skip(g, x),
}


def _with_skip(g, x):
    """Skip terms folded into a convolution's matrix product: maps read through concat_elu (a stored map, a
    shifted one and a constant, which has no ring and gets pre per read), and without pre on a convolution
    whose positions come a row at a time (a weight laid out by the maps' channel counts)."""
    a = g.conv(x, DownRightShiftedConv2d(3, 4, (2, 2)))
    b = g.shift(g.conv(x, DownShiftedConv2d(3, 4, (2, 3))), 1, 0)
    e = g.constant(torch.randn(x.x.shape[0], 2, x.H, x.W))
    skip = Skip([a, b, e], torch.randn(5, 2 * (4 + 4 + 2)), torch.randn(5), pre=concat_elu)
    y = g.conv(a, DownRightShiftedConv2d(8, 5, (2, 2)), pre=concat_elu, skip=skip)
    w = torch.randn(5, 6)
    rows = g.conv(b, DownShiftedConv2d(4, 5, (2, 3)), skip=Skip([b, e], lambda channels: w[:, : sum(channels)]))
    return g.map(torch.add, y, rows)


def test_skip_weight_must_fit_the_maps():
    x = torch.zeros(1, 3, 4, 4)
    g = CausalGraph()
    xi = g.input(x)
    a = g.conv(xi, DownRightShiftedConv2d(3, 4, (2, 2)))
    with pytest.raises(ValueError, match="skip weight"):  # 5 output channels, the convolution has 4
        g.conv(a, DownRightShiftedConv2d(4, 4, (2, 2)), skip=Skip([a], torch.zeros(5, 4)))
    out = g.conv(a, DownRightShiftedConv2d(4, 4, (2, 2)), skip=Skip([a], torch.zeros(4, 4), pre=concat_elu))
    with pytest.raises(ValueError, match="skip weight"):  # concat_elu doubles the 4 channels
        IncrementalForward(g, out, require_causal=False)


def _with_constant(g, x):
    """A map known before generation (an observed auxiliary image's embedding), read through a window and at
    the output's own positions; a convolution of the constant alone may look anywhere (it is known)."""
    e = g.constant(torch.randn(x.x.shape[0], 4, x.H, x.W))
    around = g.conv(e, nn.Conv2d(4, 4, 3), pad=(1, 1, 1, 1))  # rows below: fine for a known map
    nin = pointwise_conv(nn.Conv2d(8, 5, 1))
    return g.conv([x, e], DownShiftedConv2d(7, 5, (2, 3)), post=lambda y, s: y + nin(concat_elu(s)), extras=[around])


def _two_levels(g, x):
    a = g.conv(x, DownShiftedConv2d(3, 4, (2, 3), stride=2))
    b = g.conv(a, DownShiftedConv2d(4, 4, (2, 3), stride=2))
    b = g.conv(b, DownShiftedConv2d(8, 4, (2, 3)), pre=concat_elu)
    up = g.conv_transpose(b, DownShiftedConvTranspose2d(4, 4), (a.H, a.W), pre=torch.tanh)
    return g.conv_transpose(up, DownShiftedConvTranspose2d(4, 3), (x.H, x.W))


def _multi_source(g, x):
    a = g.conv(x, DownRightShiftedConv2d(3, 4, (2, 2)))
    b = g.shift(g.conv(x, DownShiftedConv2d(3, 4, (2, 3))), 1, 0)
    nin = pointwise_conv(nn.Conv2d(16, 4, 1))
    return g.conv(
        [a, b],
        DownRightShiftedConv2d(16, 4, (2, 2)),
        pre=concat_elu,
        post=lambda y, s, t: y + nin(concat_elu(torch.cat([s, t], 1))),
        extras=[a, b],
    )


@pytest.mark.parametrize("size", [(6, 6), (5, 7)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("layer", list(LAYERS))
def test_each_cached_layer_matches_the_full_layer(layer, size):
    torch.manual_seed(0)
    with torch.no_grad():
        run_graph(LAYERS[layer], *size)


def test_jumps_match_single_steps():
    """advance() over many pixels at once (completion skips known pixels) computes the same maps."""
    torch.manual_seed(0)
    with torch.no_grad():
        run_graph(_two_levels, 7, 6, schedule=[0, 3, 20, 21, 41, 42])
        run_graph(_multi_source, 7, 6, schedule=[13, 14, 15, 42])


def test_non_causal_graph_is_refused():
    x = torch.zeros(1, 1, 4, 4)
    graph = CausalGraph()
    out = graph.conv(graph.input(x), nn.Conv2d(1, 2, 3), pad=(1, 1, 1, 1))  # sees the row below
    with pytest.raises(ValueError, match="causal"):
        IncrementalForward(graph, out)


def test_pre_must_keep_zero_padding_zero():
    x = torch.zeros(1, 1, 4, 4)
    graph = CausalGraph()
    out = graph.conv(graph.input(x), DownShiftedConv2d(1, 2), pre=torch.sigmoid)
    with pytest.raises(ValueError, match="pre must map 0 to 0"):
        IncrementalForward(graph, out, require_causal=False)


# ----- protocol ----------------------------------------------------------------------------------------------
class NoCache(ARImageModel):
    name = "no_cache_model"

    def __init__(self):
        super().__init__(ImageSpec(1, 3, 3, 2), {"kind": "bernoulli"}, grouped=True)
        self.logit = nn.Parameter(torch.zeros(1))

    def forward(self, x, cond=None):
        return self.logit.expand(x.shape[0], 1, *x.shape[2:])


def test_model_without_incremental_api_raises_naming_it():
    model = NoCache()
    with pytest.raises(NotImplementedError, match="no_cache_model"):
        model.sample(2)
    assert model.sample(2, method="naive").shape == (2, 1, 3, 3)


def test_begin_cache_needs_eval_mode():
    model = create_model("pixelcnn_pp", ImageSpec(1, 4, 4, 2)).train()
    with pytest.raises(ValueError, match="eval"):
        model.begin_cache(torch.zeros(1, 1, 4, 4, dtype=torch.long))
    model.sample(1)  # sample() switches to eval itself ...
    assert model.training  # ... and back
