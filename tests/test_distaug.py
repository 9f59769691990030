"""Distribution Augmentation: the transformations (bijections, identity at index 0, the paper's rules) and the
DistAugModel wrapper (likelihood checks of every registered model under fixed non-identity indices, identity
equals the base with identity one-hots, generation order, sampling, saving)."""

import json

import numpy as np
import pytest
import torch
from likelihood_checks import causality_violations, conditional_sums, total_probability

import pixelar
from pixelar import ImageSpec, create_model
from pixelar.augment import TRANSFORM_TYPES, Augmenter, make_transform, parse_transforms
from pixelar.models.base import ImageModel
from pixelar.models.distaug import DistAugModel, create_distaug_model

# DistAug wraps the exact-likelihood (autoregressive) models; test_vdvae.py checks that it refuses a VAE
MODELS = [n for n in pixelar.list_models() if pixelar.models.registry.model_class(n).likelihood == "exact"]
ALL_TYPES = list(TRANSFORM_TYPES)


# ----- transformations -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [ImageSpec(3, 4, 4, 256), ImageSpec(3, 2, 2, 4), ImageSpec(3, 6, 6, 3)], ids=str)
@pytest.mark.parametrize("name", ALL_TYPES)
def test_every_index_is_a_bijection_with_an_exact_inverse(name, spec):
    tr = make_transform(spec, name)
    D = spec.dims
    assert tr.table.shape == (tr.num_choices, D)
    for k in range(tr.num_choices):
        assert sorted(tr.table[k].tolist()) == list(range(D)), f"index {k} is no permutation"
    assert torch.equal(tr.table[0], torch.arange(D)), "index 0 must be the identity"
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, spec.num_values, (tr.num_choices, *spec.shape), generator=g)
    idx = torch.arange(tr.num_choices)
    y = tr.apply(x, idx)
    assert torch.equal(tr.inverse(y, idx), x) and torch.equal(tr.apply(tr.inverse(x, idx), idx), x)
    assert torch.equal(y[0], x[0])
    # pixels travel whole: every output pixel's sub-pixels come from one input pixel
    HW = spec.height * spec.width
    src_pixel = (tr.table % HW).view(tr.num_choices, spec.channels, HW)
    assert (src_pixel == src_pixel[:, :1]).all()
    # distinct indices are distinct transformations (on images large enough to tell them apart)
    if spec.height > 2:
        assert len({tuple(t) for t in tr.table.tolist()}) == tr.num_choices


def test_the_rules_are_the_papers():
    spec = ImageSpec(3, 4, 4)
    x = torch.randint(0, 256, (1, *spec.shape))
    one = lambda name, k: make_transform(spec, name).apply(x, torch.tensor([k]))[0]  # noqa: E731
    xn = x[0].numpy()
    assert [make_transform(spec, n).num_choices for n in ALL_TYPES] == [4, 2, 6, 24, 2, 4]
    for k in range(4):
        assert np.array_equal(one("rot90", k).numpy(), np.rot90(xn, k, axes=(1, 2)))
    assert np.array_equal(one("transpose", 1).numpy(), xn.transpose(0, 2, 1))
    assert np.array_equal(one("reverse", 1).numpy(), xn[:, ::-1, ::-1])
    assert torch.equal(one("colour", 5), x[0, [2, 1, 0]])  # the last permutation of (R, G, B)
    # jigsaw 1 = quadrant order (0, 1, 3, 2): the two bottom quadrants swap
    j = one("jigsaw", 1)
    assert (
        torch.equal(j[:, :2], x[0, :, :2])
        and torch.equal(j[:, 2:, :2], x[0, :, 2:, 2:])
        and torch.equal(j[:, 2:, 2:], x[0, :, 2:, :2])
    )
    # randperm: fixed by its seed, a different seed gives other permutations
    a, b = make_transform(spec, "randperm"), make_transform(spec, "randperm", seed=1, num=5)
    assert torch.equal(a.table, make_transform(spec, "randperm").table) and b.num_choices == 6
    assert not torch.equal(a.table[1], b.table[1])


def test_transforms_refuse_images_they_do_not_map_onto_themselves():
    with pytest.raises(ValueError, match="rot90 .* square; these images are 4x6"):
        make_transform(ImageSpec(1, 4, 6), "rot90")
    with pytest.raises(ValueError, match="transpose .* square"):
        make_transform(ImageSpec(1, 4, 6), "transpose")
    with pytest.raises(ValueError, match="colour .* 3-channel images, got 1"):
        make_transform(ImageSpec(1, 4, 4), "colour")
    with pytest.raises(ValueError, match="jigsaw .* even height and width, got 3x4"):
        make_transform(ImageSpec(1, 3, 4), "jigsaw")
    with pytest.raises(ValueError, match="unknown transformation 'flip'; valid: rot90"):
        parse_transforms(ImageSpec(1, 4, 4), "rot90,flip")
    with pytest.raises(ValueError, match="once"):
        parse_transforms(ImageSpec(1, 4, 4), ["rot90", "rot90"])
    aug = Augmenter(parse_transforms(ImageSpec(1, 4, 4), "rot90,transpose"))
    x = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"aug\[:, t\] must be in \[0, \[4, 2\]"):
        aug.apply(x, torch.tensor([[0, 2], [0, 0]]))
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        aug.apply(x, torch.tensor([[0, 1, 0]]))
    with pytest.raises(ValueError, match="int64"):
        aug.apply(x, torch.zeros(2, 2))


def test_augmenter_composes_in_order_and_draws_uniformly():
    spec = ImageSpec(3, 4, 4)
    aug = Augmenter(parse_transforms(spec, ALL_TYPES))
    g = torch.Generator().manual_seed(0)
    idx = aug.draw(4000, g)
    assert idx.shape == (4000, 6)
    for t, n in enumerate(aug.choices):
        counts = torch.bincount(idx[:, t], minlength=n).double()
        assert counts.min() > 0.7 * 4000 / n, (aug.names[t], counts)  # every index drawn, about uniformly
    x = torch.randint(0, 256, (4000, *spec.shape), generator=g)
    y = aug.apply(x, idx)
    assert torch.equal(aug.inverse(y, idx), x)
    ref = x
    for t, tr in enumerate(aug.transforms):  # type 0 first
        ref = tr.apply(ref, idx[:, t])
    assert torch.equal(y, ref)
    one = torch.tensor([1, 1, 2, 5, 1, 3])
    assert torch.equal(aug.apply(x[:1], one.view(1, -1)).flatten(), x[0].flatten()[aug.table(one, spec)])


# ----- the wrapper under the likelihood checks ---------------------------------------------------------------
def make(name, spec, types, **kw):
    torch.manual_seed(1)
    model = create_distaug_model(name, spec, "tiny", types, **kw).eval()
    with torch.no_grad():  # random, not-too-small weights: the (zero-initialised) conditioning must matter too
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def fixed_augs(model) -> list[torch.Tensor]:
    """A few fixed index vectors: each type alone at its last index, and every type at once at index 1."""
    aug = model.augmenter
    out = [aug.vector(t, n - 1) for t, n in enumerate(aug.choices)]
    out.append(torch.ones(aug.num_types, dtype=torch.long))
    return out


def factorizes(name):
    return pixelar.models.registry._lookup(name)[0].factorizes


@pytest.mark.parametrize("name", MODELS)
def test_every_model_under_every_transformation_is_normalized_and_causal(name, float64):
    # 3x2x2 images with 2 values: all 4,096 images summed; every type applies (square, even, RGB)
    spec = ImageSpec(3, 2, 2, 2)
    model = make(name, spec, ALL_TYPES)
    x = torch.randint(0, 2, (1, *spec.shape), generator=torch.Generator().manual_seed(3))
    per_aug = []
    augs = fixed_augs(model)
    for a in augs:
        with model.augmentation(a):
            if a is augs[0] or a is augs[-1]:  # brute force twice (the rest follows from the conditionals)
                assert abs(total_probability(model, spec) - 1.0) < 1e-9, a
            per_aug.append(model.log_prob(x).item())
            if not factorizes(name):
                continue
            sums = conditional_sums(model, x)
            assert torch.allclose(sums, torch.ones_like(sums), atol=1e-9), (a, sums)
            violations, later = causality_violations(model, x)
            assert violations == [] and later > 0, (a, violations[:10])
    assert len(set(per_aug)) > 1, "the transformation indices change nothing: conditioning or transform is lost"


@pytest.mark.parametrize("name", MODELS)
def test_causality_along_the_mapped_order_on_4x4(name, float64):
    """4x4 images: rotations, jigsaw and random permutations move pixels far from their raster place."""
    if not factorizes(name):
        pytest.skip(f"{name} has no per-sub-pixel conditionals")
    spec = ImageSpec(1, 4, 4, 2)
    model = make(name, spec, ["rot90", "jigsaw", "randperm"], num_classes=3)
    x = torch.randint(0, 2, (1, *spec.shape), generator=torch.Generator().manual_seed(4))
    cond = torch.tensor([2])
    for a in ([3, 0, 0], [0, 7, 0], [0, 0, 2], [1, 23, 3]):
        with model.augmentation(a):
            order = model.generation_order()
            assert sorted(order.tolist()) == list(range(spec.dims))
            violations, later = causality_violations(model, x, cond)
            assert violations == [] and later > 0, (a, violations[:10])


def test_the_check_catches_an_order_not_mapped_back(float64):
    """A wrapper reporting the base's order (not mapped through T^-1) under a rotation must fail causality."""
    spec = ImageSpec(1, 4, 4, 2)
    model = make("pixelcnn", spec, ["rot90"])
    x = torch.randint(0, 2, (1, *spec.shape), generator=torch.Generator().manual_seed(4))
    with model.augmentation([1]):
        assert causality_violations(model, x)[0] == []
        model.generation_order = model.base.generation_order  # the bug: raster order of T(x) taken for x's
        assert causality_violations(model, x)[0], "an unmapped generation order must be caught"


@pytest.mark.parametrize("name", MODELS)
def test_identity_equals_the_base_with_identity_one_hots(name):
    spec = ImageSpec(3, 4, 4, 4)
    model = make(name, spec, ["rot90", "colour"], num_classes=3)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (3, *spec.shape), generator=g)
    y = torch.tensor([0, 2, 1])
    vec = torch.zeros(3, 3 + 4 + 6)
    vec[torch.arange(3), y] = 1
    vec[:, 3] = vec[:, 3 + 4] = 1  # index 0 of each type
    with torch.no_grad():
        assert torch.equal(model.log_prob(x, y), model.base.log_prob(x, vec))
        a = torch.tensor([[2, 3], [1, 0], [0, 5]])
        t = model.augmenter.apply(x, a)
        vec2 = vec.clone()
        vec2[:, 3:] = model.augmenter.one_hot(a, vec.dtype)
        assert torch.equal(model.log_prob(x, y, aug=a), model.base.log_prob(t, vec2))
        if factorizes(name):  # per-sub-pixel conditionals land back on x's sub-pixels
            per = model.log_prob(x, y, reduce=False, aug=a)
            assert torch.equal(model.augmenter.apply(per, a), model.base.log_prob(t, vec2, reduce=False))


def test_wrapper_refuses_bad_input():
    spec = ImageSpec(1, 4, 4, 2)
    with pytest.raises(ValueError, match="rot90 .* square"):
        create_distaug_model("pixelcnn", ImageSpec(1, 4, 6, 2), "tiny", ["rot90"])
    with pytest.raises(ValueError, match="cond vector of 4 = 0 .* \\+ 4"):
        DistAugModel(create_model("pixelcnn", spec), ["rot90"])
    model = create_distaug_model("pixelcnn", spec, "tiny", ["rot90", "transpose"], num_classes=2)
    x = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="class-conditional"):
        model.log_prob(x)
    with pytest.raises(ValueError, match=r"aug must have shape \(2, 2\)"):
        model.log_prob(x, torch.tensor([0, 1]), aug=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown transformation type"):
        with model.augmentation({"colour": 1}):
            pass
    with model.augmentation({"transpose": 1}):
        assert model._aug.tolist() == [0, 1]
    assert model._aug.tolist() == [0, 0]
    with pytest.raises(NotImplementedError, match="log_prob"):
        model(x)


# ----- sampling and saving -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pixelcnn_pp", "gated_pixelcnn", "sparse_transformer"])
def test_sampling_through_the_base(name):
    spec = ImageSpec(3, 4, 4, 4)
    model = make(name, spec, ["rot90", "colour"])
    a = torch.tensor([[1, 2], [3, 5]])
    s = model.sample(2, aug=a, generator=torch.Generator().manual_seed(0), method="naive")
    ref = model.base.sample(
        2, cond=model.base_cond(None, a, 2), generator=torch.Generator().manual_seed(0), method="naive"
    )
    assert torch.equal(s, model.augmenter.inverse(ref, a))
    cached = model.sample(2, aug=a, generator=torch.Generator().manual_seed(0), method="cached")
    assert torch.equal(cached, s)
    # completion: known pixels (in x's layout) are kept under any transformation
    x = torch.randint(0, 4, (2, *spec.shape))
    known = torch.zeros(2, 4, 4, dtype=torch.bool)
    known[:, :2] = True
    out = model.sample(2, aug=a, x_known=x, known=known, generator=torch.Generator().manual_seed(1), method="naive")
    assert torch.equal(out[:, :, :2], x[:, :, :2])


@pytest.mark.parametrize("name", ["sparse_transformer", "image_gpt", "image_transformer_dmol"])
def test_permute_embeddings_keeps_each_sub_pixel_s_coordinates(name, float64):
    """The paper's permute_embeddings: the base embeds T(x)'s sub-pixel d with the coordinates of x's sub-pixel
    table[d]; normalised and causal along the mapped order under every type, cached sampling equal to naive,
    identity unchanged, saved with the model; refused for a base that embeds no positions."""
    spec = ImageSpec(3, 2, 2, 2)
    model = make(name, spec, ["rot90", "colour", "transpose", "jigsaw"], permute_embeddings=True)
    plain = make(name, spec, ["rot90", "colour", "transpose", "jigsaw"])  # the same weights (seeded)
    x = torch.randint(0, 2, (3, *spec.shape), generator=torch.Generator().manual_seed(3))
    a = torch.tensor([[1, 2, 1, 5], [0, 0, 0, 0], [3, 5, 0, 23]])
    with torch.no_grad():
        assert torch.equal(model.log_prob(x[1:2], aug=a[1]), plain.log_prob(x[1:2], aug=a[1]))  # identity
        moved, kept = model.log_prob(x, aug=a), plain.log_prob(x, aug=a)
    assert (moved - kept).abs()[[0, 2]].min() > 1e-6
    for vec in (a[0], a[2]):
        with model.augmentation(vec):
            assert abs(total_probability(model, spec) - 1.0) < 1e-9
            violations, later = causality_violations(model, x[:1])
            assert violations == [] and later > 0
    torch.set_default_dtype(torch.float32)
    model = make(name, ImageSpec(3, 4, 4, 256), ["rot90", "jigsaw"], permute_embeddings=True)
    aug = torch.tensor([[1, 7], [3, 22]])
    naive = model.sample(2, aug=aug, method="naive", generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.sample(2, aug=aug, generator=torch.Generator().manual_seed(0)), naive)


def test_permute_embeddings_is_saved_and_needs_positional_embeddings(tmp_path):
    spec = ImageSpec(3, 4, 4, 4)
    model = make("sparse_transformer", spec, ["rot90"], permute_embeddings=True)
    model.save(tmp_path / "m")
    back = pixelar.load_model(tmp_path / "m")
    assert back.permute_embeddings
    x, a = torch.randint(0, 4, (2, *spec.shape)), torch.tensor([[1], [2]])
    with torch.no_grad():
        assert torch.equal(back.log_prob(x, aug=a), model.log_prob(x, aug=a))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    del cfg["distaug"]["permute_embeddings"]  # a config written before the option
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    assert not pixelar.load_model(tmp_path / "m").permute_embeddings
    with pytest.raises(ValueError, match="'pixelcnn_pp' has none; the transformers"):
        create_distaug_model("pixelcnn_pp", spec, "tiny", ["rot90"], permute_embeddings=True)
    with pytest.raises(NotImplementedError, match="embeds no coordinates"):
        with create_model("pixelcnn", spec).positions_from(torch.zeros(1, 48, dtype=torch.long)):
            pass


def test_save_load_round_trip(tmp_path):
    spec = ImageSpec(3, 4, 4, 4)
    model = make("pixelsnail", spec, ["transpose", {"name": "randperm", "num": 2, "seed": 7}], num_classes=3)
    model.save(tmp_path / "m")
    back = pixelar.load_model(tmp_path / "m")
    assert isinstance(back, DistAugModel) and back.augmenter.to_list() == model.augmenter.to_list()
    assert back.num_classes == 3 and back.name == "pixelsnail"
    x = torch.randint(0, 4, (2, *spec.shape))
    a = torch.tensor([[1, 2], [0, 1]])
    with torch.no_grad():
        assert torch.equal(
            back.log_prob(x, torch.tensor([0, 2]), aug=a), model.log_prob(x, torch.tensor([0, 2]), aug=a)
        )


# ----- command line ----------------------------------------------------------------------------------------------
def test_cli_train_distaug_and_plain_then_eval_per_augmentation(tmp_path, capsys):
    from pixelar.cli import main

    rng = np.random.default_rng(0)
    data = tmp_path / "rgb.npz"
    np.savez(
        data,
        x_train=rng.integers(0, 256, (24, 4, 4, 3), dtype=np.uint8),
        x_test=rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8),
    )
    common = [
        "train",
        "--model",
        "pixelcnn",
        "--size",
        "tiny",
        "--dataset",
        f"npz:{data}",
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--sample-n",
        "2",
        "--no-progress",
    ]
    assert main([*common, "--distaug", "rot90,colour", "--run-dir", str(tmp_path / "dist")]) == 0
    assert main([*common, "--augment", "transpose", "--run-dir", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "dist"), "--per-augmentation", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["per_augmentation"]
    assert [(r["type"], r["index"]) for r in rows] == [
        ("identity", 0),
        ("rot90", 1),
        ("rot90", 2),
        ("rot90", 3),
        *[("colour", k) for k in range(1, 6)],
    ]
    assert main(["eval", str(tmp_path / "dist"), "--json"]) == 0  # plain eval: the identity row
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bpd"] == pytest.approx(rows[0]["bpd"])
    assert main(["eval", str(tmp_path / "plain"), "--per-augmentation"]) == 0  # the run's own --augment types
    out = capsys.readouterr().out
    assert "transformed images" in out and "transpose" in out
    assert main(["eval", str(tmp_path / "plain"), "--per-augmentation", "jigsaw", "--subset", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["per_augmentation"]
    assert len(rows) == 24 and rows[0]["num_images"] == 3
    assert main(["sample", str(tmp_path / "dist"), "--n", "2", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["eval", str(tmp_path / "dist"), "--per-augmentation", "transpose"]) == 2  # not its types
    assert "conditioned on ['rot90', 'colour']" in capsys.readouterr().err
    assert main([*common, "--distaug", "rot90", "--augment", "transpose", "--run-dir", str(tmp_path / "x")]) == 2
    assert not rows[0]["bound"]  # an exact likelihood
    # a latent-variable model trained with plain augmentation: every row is an upper bound, marked as one
    vae = [*common[:2], "vdvae", *common[3:], "--augment", "transpose", "--run-dir", str(tmp_path / "vae")]
    assert main(vae) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "vae"), "--per-augmentation", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["per_augmentation"]
    assert len(rows) == 2 and all(r["bound"] for r in rows)
    assert main(["eval", str(tmp_path / "vae"), "--per-augmentation"]) == 0
    out = capsys.readouterr().out
    assert "upper bounds" in out and out.count("<= ") == 2


@pytest.mark.parametrize("name", ["lmconv", "grayscale_pixelcnn"])
def test_evaluation_keeps_order_mixtures_and_parts(name):
    """evaluate() scores a wrapped LMConv as its mixture over orders and splits a wrapped grayscale PixelCNN
    into its parts, as for the bare model, under the augmentation in use."""
    import dataclasses

    from pixelar.data import ImageDataset
    from pixelar.evaluation import evaluate, evaluate_per_augmentation

    spec = ImageSpec(3, 4, 4, 4)
    model = make(name, spec, ["transpose"])
    ds = ImageDataset(
        images=torch.randint(0, 4, (5, *spec.shape), dtype=torch.uint8),
        labels=None,
        spec=spec,
        num_classes=None,
        name="mem",
    )
    res = evaluate(model, ds)
    assert ("num_orders" in res) == (name == "lmconv") and ("bpd_parts" in res) == (name != "lmconv")
    vec = torch.tensor([[1.0, 0.0]]).expand(5, 2)
    base = evaluate(_Fixed(model.base, vec), ds)
    assert res["bpd"] == pytest.approx(base["bpd"], rel=1e-6)
    rows = evaluate_per_augmentation(model, ds)
    t = dataclasses.replace(ds, images=model.augmenter.apply(ds.images, torch.ones(5, 1, dtype=torch.long)))
    assert rows[1]["bpd"] == pytest.approx(evaluate(_Fixed(model.base, vec.flip(1)), t)["bpd"], rel=1e-6)


class _Fixed(ImageModel):
    """A base model with a fixed cond vector, seen by evaluate() as an unconditional model."""

    def __init__(self, base, vec):
        super().__init__(base.image)
        self.base, self.vec, self.data_image, self.tokenizer = base, vec, base.data_image, base.tokenizer
        self.num_orders, self.has_parts = base.num_orders, base.has_parts

    def log_prob(self, x, cond=None):
        return self.base.log_prob(x, self.vec[: len(x)])

    def log_prob_per_order(self, x, cond=None):
        return self.base.log_prob_per_order(x, self.vec[: len(x)])

    def log_prob_parts(self, x, cond=None):
        return self.base.log_prob_parts(x, self.vec[: len(x)])
