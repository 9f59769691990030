"""Public API: registry errors, input validation, save/load round trip, naive sampling and completion."""

import json

import pytest
import torch

import pixelar
from pixelar import ImageSpec, create_model, load_model

SPEC = ImageSpec(3, 6, 6, 16)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="pixelcnn_pp"):
        create_model("pixelcnn_plus", SPEC)
    with pytest.raises(ValueError, match="tiny, small, paper"):
        create_model("pixelcnn", SPEC, "huge")
    with pytest.raises(ValueError, match="nr_filters"):
        create_model("pixelcnn_pp", SPEC, filters=3)
    with pytest.raises(ValueError, match="logistic_mixture"):
        create_model("pixelcnn", SPEC, output="gaussian")


def test_bad_image_specs_fail_when_built():
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        ImageSpec(2, 4, 4)
    with pytest.raises(ValueError, match="num_values"):
        ImageSpec(1, 4, 4, 1)
    with pytest.raises(ValueError, match="num_values=2"):
        create_model("pixelcnn", ImageSpec(1, 4, 4, 256), output="bernoulli")


@pytest.mark.parametrize("name", pixelar.list_models())
def test_log_prob_rejects_bad_input(name):
    model = create_model(name, SPEC)
    with pytest.raises(ValueError, match=r"shape \(B, 3, 6, 6\)"):
        model.log_prob(torch.zeros(2, 1, 6, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        model.log_prob(torch.zeros(2, 3, 6, 6))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model.log_prob(torch.full((2, 3, 6, 6), 16))
    with pytest.raises(ValueError, match="unconditional"):
        model.log_prob(torch.zeros(2, 3, 6, 6, dtype=torch.long), cond=torch.zeros(2, dtype=torch.long))
    cond_model = create_model(name, SPEC, num_classes=4)
    with pytest.raises(ValueError, match="class-conditional"):
        cond_model.log_prob(torch.zeros(2, 3, 6, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        cond_model.log_prob(torch.zeros(2, 3, 6, 6, dtype=torch.long), cond=torch.tensor([0, 4]))


@pytest.mark.parametrize("name", pixelar.list_models())
def test_save_load_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, SPEC, num_classes=3, output="categorical").eval()
    x = torch.randint(0, 16, (4, *SPEC.shape))
    c = torch.tensor([0, 1, 2, 0])
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(tmp_path / "m")  # no architecture arguments needed
    assert type(loaded) is type(model) and loaded.image == SPEC
    torch.manual_seed(1)  # latent-variable models draw their latents: the same draws for both
    before = model.log_prob(x, c)
    torch.manual_seed(1)
    assert torch.equal(loaded.log_prob(x, c), before)


@pytest.mark.parametrize("name", pixelar.list_models())
def test_hparams_are_the_constructor_arguments(name):
    """The registry records what a model was built with; rebuilding from it gives the same model."""
    from pixelar.models import preset
    from pixelar.models.registry import check_hparams

    model = create_model(name, SPEC, num_classes=3)
    expected = check_hparams(name, {**preset(name, "tiny"), "num_classes": 3})
    assert model.hparams == expected and model.config()["hparams"] == expected
    again = type(model)(SPEC, **model.hparams)
    assert again.hparams == model.hparams and again.num_parameters() == model.num_parameters()


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model directory"):
        load_model(tmp_path / "missing")
    model = create_model("pixelcnn", SPEC)
    model.save(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="model.safetensors"):
        load_model(tmp_path / "m")
    model.save(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        load_model(tmp_path / "m")
    model.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["hparams"]["hidden"] = 12  # weights no longer match the architecture
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize("name", pixelar.list_models())
def test_naive_sampling_is_reproducible_and_in_range(name):
    spec = ImageSpec(3, 3, 3, 8)
    model = create_model(name, spec, num_classes=2)
    cond = torch.tensor([0, 1, 1])
    a = model.sample(3, cond, generator=torch.Generator().manual_seed(5), method="naive")
    b = model.sample(3, cond, generator=torch.Generator().manual_seed(5), method="naive")
    c = model.sample(3, cond, generator=torch.Generator().manual_seed(6), method="naive")
    assert a.shape == (3, *spec.shape) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < 8


@pytest.mark.parametrize("name", pixelar.list_models())
def test_completion_keeps_the_given_pixels(name):
    from pixelar.sampling.complete import complete, keep_mask

    spec = ImageSpec(1, 4, 4, 4)
    model = create_model(name, spec)
    if model.likelihood == "bound":
        pytest.skip("latent-variable models do not complete images (test_vdvae.py checks the error)")
    x = torch.randint(0, 4, spec.shape, generator=torch.Generator().manual_seed(0))
    for keep in ("top-half", "left-half"):
        mask = keep_mask(keep, 4, 4)
        out = complete(model, x, mask, n=3, generator=torch.Generator().manual_seed(1), method="naive")
        assert torch.equal(out[:, :, mask], x[:, mask].expand(3, -1, -1))


def test_sample_rejects_bad_arguments():
    model = create_model("pixelcnn", SPEC)
    with pytest.raises(ValueError, match="method"):
        model.sample(1, method="fast")
    with pytest.raises(ValueError, match="temperature"):
        model.sample(1, temperature=-1, method="naive")
    with pytest.raises(ValueError, match="positive"):
        model.sample(0, method="naive")


def test_bits_per_dim():
    import math

    spec = ImageSpec(3, 32, 32)
    assert pixelar.bits_per_dim(3072 * math.log(2), spec) == pytest.approx(1.0)
