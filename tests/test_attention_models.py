"""The attention models beyond their registry defaults (test_likelihood.py and test_cached_sampling.py run
every registered model at its tiny preset): the other attention patterns, the block-raster order of local
2D attention, checkpointing, and the paper sizes."""

import pytest
import torch
from likelihood_checks import causality_violations, conditional_sums, total_probability

import pixelar
from pixelar import ImageSpec, create_model

VARIANTS = [
    ("sparse_transformer", {"attention": ["dense"]}),
    ("sparse_transformer", {"attention": ["fixed"], "summary": 2}),
    (
        "sparse_transformer",
        {"attention": ["strided.local", "strided.stride", "fixed.local", "fixed.summary"], "n_layer": 4},
    ),
    ("sparse_transformer", {"attention": ["strided"], "stride": 5, "output": "logistic_mixture"}),
    ("sparse_transformer", {"attention": ["strided.local+strided.stride", "fixed.local+fixed.summary"], "stride": 5}),
    (  # openai's released Sparse Transformer (the openai-distaug converter's options)
        "sparse_transformer",
        {"attention": ["strided.stride", "strided.local"], "stride": 5, "activation": "quick_gelu"}
        | {"position_of": "read", "cond_at": "start", "final_norm_eps": 1e-6, "num_classes": 3},
    ),
    ("image_transformer", {"attention": "local_1d", "block_length": 5}),
    ("image_transformer", {"attention": "local_2d", "query_shape": [1, 3], "memory_flange": [2, 1], "num_classes": 3}),
    ("image_transformer_dmol", {"attention": "local_2d", "query_shape": [3, 2], "memory_flange": [1, 1]}),
    ("image_transformer_dmol", {"attention": "dense", "output": "categorical"}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in VARIANTS]


pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def make(name, spec, seed=1, scale=0.3, **kw):
    torch.manual_seed(seed)
    model = create_model(name, spec, "tiny", **kw).eval()
    with torch.no_grad():  # random, not-too-small weights (the output head starts at zero)
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def cond_for(kw, n):
    return torch.arange(n) % 3 if kw.get("num_classes") else None


@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_variant_normalized_causal_and_cached_equals_naive(name, kw):
    spec = ImageSpec(3, 4, 4, 4)
    model = make(name, spec, **kw)
    x = torch.randint(0, 4, (1, *spec.shape), generator=torch.Generator().manual_seed(0))
    cond = cond_for(kw, 1)
    sums = conditional_sums(model, x, cond)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-9)
    violations, later = causality_violations(model, x, cond)
    assert violations == [] and later > 0
    small = ImageSpec(3, 1, 3, 3)
    assert abs(total_probability(make(name, small, **kw), small, cond_for(kw, 1)) - 1) < 1e-6
    torch.set_default_dtype(torch.float32)
    model = make(name, ImageSpec(3, 5, 5, 256), scale=0.2, **kw)
    cond = cond_for(kw, 2)
    for seed, temperature in [(0, 1.0), (1, 0.0)]:
        naive = model.sample(
            2, cond=cond, temperature=temperature, method="naive", generator=torch.Generator().manual_seed(seed)
        )
        cached = model.sample(2, cond=cond, temperature=temperature, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(naive, cached)


def test_local_2d_generates_block_by_block_and_the_check_sees_the_difference():
    """Local 2D attention generates in block-raster order; perturbing along plain raster order instead
    reports violations, so the causality check depends on (and verifies) the reported order."""
    spec = ImageSpec(1, 4, 4, 4)
    model = make("image_transformer", spec, attention="local_2d", query_shape=[2, 2], memory_flange=[1, 1])
    assert model.generation_order().tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    x = torch.randint(0, 4, (1, *spec.shape), generator=torch.Generator().manual_seed(0))
    assert causality_violations(model, x)[0] == []
    model.generation_order = lambda: torch.arange(16)  # claim raster order
    assert causality_violations(model, x)[0], "pixel 4 (row 1, column 0) is generated before pixel 2"


def test_sub_pixel_blocks_keep_the_channels_of_a_pixel_together():
    model = create_model("image_transformer", ImageSpec(3, 4, 6, 4), query_shape=[2, 3], memory_flange=[1, 1])
    order = model.generation_order().view(-1, 3)
    assert torch.equal(order - order[:, :1], torch.tensor([[0, 24, 48]]).expand_as(order))


def test_checkpointing_gives_the_same_gradients():
    spec = ImageSpec(3, 4, 4, 4)
    x = torch.randint(0, 4, (2, *spec.shape), generator=torch.Generator().manual_seed(0))
    grads = []
    for ckpt in (False, True):
        model = make("sparse_transformer", spec, checkpoint=ckpt).train()
        (-model.log_prob(x).mean()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_bad_options_raise_value_error():
    spec = ImageSpec(3, 4, 4, 4)
    with pytest.raises(ValueError, match="local patterns belong"):
        create_model("sparse_transformer", spec, attention=["local_1d"])
    with pytest.raises(ValueError, match="unknown attention pattern"):
        create_model("sparse_transformer", spec, attention=["strided.diagonal"])
    with pytest.raises(ValueError, match="must divide n_head"):  # tiny has 2 heads
        create_model("sparse_transformer", spec, attention=["strided.local+strided.stride+dense"])
    with pytest.raises(ValueError, match="attention must be one of"):
        create_model("image_transformer", spec, attention="strided")
    with pytest.raises(ValueError, match="query_shape"):
        create_model("image_transformer", spec, attention="local_2d", query_shape=[0, 2])


def test_the_released_codes_options_change_what_they_say_and_old_configs_lack_them():
    """position_of="read": position t carries the coordinates of sub-pixel t-1 and the start token none;
    cond_at="start": the conditioning reaches position 0 only; quick_gelu and the final norm's epsilon are
    used. A config saved before these options builds the model it described."""
    spec = ImageSpec(3, 2, 3, 4)
    kw = {"num_classes": 3}
    read = make("sparse_transformer", spec, position_of="read", cond_at="start", **kw)
    x = torch.randint(0, 4, (2, *spec.shape), generator=torch.Generator().manual_seed(0))
    cond = torch.tensor([0, 2])
    with torch.no_grad():
        e = read.embed(x, cond)
        units = read.unit_order  # raster: position t predicts sub-pixel unit_order[t]
        prev = units[:-1]
        pix, chan = prev % 6, prev // 6
        want = read.value_emb(x.reshape(2, -1)[:, prev] + chan * 4)
        want = want + read.row_emb(pix // 3) + read.col_emb(pix % 3) + read.chan_emb(chan)
        torch.testing.assert_close(e[:, 1:], want)
        torch.testing.assert_close(e[:, 0], read.start.expand(2, -1) + read.cond_emb(cond))  # no position at 0
    hparams = dict(read.hparams)
    for key in ("activation", "position_of", "cond_at", "final_norm_eps"):
        del hparams[key]
    old = pixelar.models.registry.build_model("sparse_transformer", spec, hparams)
    assert (old.position_of, old.cond_at, old.ln_f.eps, type(old.blocks[0].act).__name__) == (
        "predicted",
        "all",
        1e-5,
        "GELU",
    )
    quick = create_model("sparse_transformer", spec, activation="quick_gelu", final_norm_eps=1e-6)
    assert type(quick.blocks[0].act).__name__ == "QuickGELU" and quick.ln_f.eps == 1e-6
    for bad, message in (({"position_of": "next"}, "position_of must be one of"), ({"final_norm_eps": 0.0}, "> 0")):
        with pytest.raises(ValueError, match=message):
            create_model("sparse_transformer", spec, **bad)


@pytest.mark.parametrize(
    "name,paper", [("sparse_transformer", 59e6), ("image_transformer", 38e6), ("image_transformer_dmol", 9.4e6)]
)
def test_paper_sizes(name, paper):
    """Within 6% of the published / computed count (papers.md): 59M, about 38M and 9.4M for CIFAR-10."""
    torch.set_default_dtype(torch.float32)
    with torch.device("meta"):  # shapes only: no memory, no init time
        n = create_model(name, ImageSpec(3, 32, 32, 256), "paper").num_parameters()
    assert abs(n - paper) / paper < 0.06, n


@pytest.mark.parametrize(
    "name,kw",
    [
        ("pixelsnail", {}),
        ("pixelsnail", {"num_classes": 3}),
        ("sparse_transformer", {}),
        ("image_transformer", {}),
        ("image_transformer_dmol", {"attention": "local_2d"}),
    ],
)
def test_cached_steps_equal_the_full_forward(name, kw):
    """float64: every step's parameters from the cache equal forward(x) at that pixel, the current x
    holding the pixels drawn so far (and zeros after them), as the samplers fill it."""
    spec = ImageSpec(3, 5, 4, 4)
    model = make(name, spec, **kw)
    g = torch.Generator().manual_seed(0)
    final = torch.randint(0, 4, (2, *spec.shape), generator=g)
    cond = cond_for(kw, 2)
    x = torch.zeros_like(final)
    state = model.begin_cache(x, cond)
    joint = model.distribution.joint
    from pixelar.sampling.naive import pixel_order

    for i, j in pixel_order(model):
        for c in range(1 if joint else spec.channels):
            ref = model(x, cond)[:, :, i, j]
            torch.testing.assert_close(state.params_at(i, j), ref, atol=1e-11, rtol=1e-9)
            if joint:
                x[:, :, i, j] = final[:, :, i, j]
            else:
                x[:, c, i, j] = final[:, c, i, j]


@pytest.mark.parametrize("name", ["sparse_transformer", "image_transformer", "image_transformer_dmol", "pixelsnail"])
def test_moves_between_dtypes_and_devices(name):
    """nn.Module.to / .float() reach every submodule (a block method named _apply once broke this)."""
    spec = ImageSpec(3, 4, 4, 4)
    model = create_model(name, spec).to("cpu").float()
    x = torch.randint(0, 4, (2, *spec.shape))
    assert model.log_prob(x).dtype == torch.float32
