"""The same guarantees on a CUDA GPU (skipped where there is none, e.g. in CI; run on a lent device with
`bash benchmarks/gpu_checks.sh`): every model's log-likelihood on the GPU equals the CPU's, cached sampling
equals naive sampling there, training runs end to end in fp32 and bf16 and resumes, and compressed images
decompress identically.

PIXELAR_TEST_DEVICE=cpu runs the same tests on the CPU (a dry run of this file where no GPU is at hand).
"""

import os

import numpy as np
import pytest
import torch

import pixelar
from pixelar import ImageSpec, create_model
from pixelar.config import TrainConfig
from pixelar.training import train

DEVICE = os.environ.get("PIXELAR_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")

SPEC = ImageSpec(3, 6, 6, 16)


def tiny(name, spec=SPEC, scale=0.2, **kw):
    torch.manual_seed(1)
    model = create_model(name, spec, "tiny", **kw).eval()
    with torch.no_grad():  # random weights: every connection matters (output heads start at zero)
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", pixelar.list_models())
def test_log_prob_on_the_gpu_equals_the_cpu(name, monkeypatch):
    model = tiny(name)
    if model.likelihood == "bound":  # latents drawn on the CPU and the GPU differ: take their means (noise 0)
        monkeypatch.setattr(torch, "randn_like", torch.zeros_like)
    x = torch.randint(0, SPEC.num_values, (4, *SPEC.shape), generator=torch.Generator().manual_seed(0))
    x = model.encode(x) if getattr(model, "tokenizer", None) is not None else x
    with torch.no_grad():
        cpu = model.log_prob(x)
        gpu = model.to(DEVICE).log_prob(x.to(DEVICE)).cpu()
    # TF32 may be on for matmuls / convolutions: a relative tolerance, per image (a few hundred nats)
    torch.testing.assert_close(gpu, cpu, rtol=2e-3, atol=1e-2)


@pytest.mark.parametrize(
    "name",
    [
        "pixelcnn_pp",
        "pixelsnail",
        "lmconv",
        "pyramid_pixelcnn",
        "grayscale_pixelcnn",
        "sparse_transformer",
        "image_transformer_dmol",
    ],
)
def test_cached_sampling_equals_naive_on_the_gpu(name):
    model = tiny(name).to(DEVICE)
    for seed in (0, 1):
        a = model.sample(3, generator=torch.Generator(DEVICE).manual_seed(seed), method="naive")
        b = model.sample(3, generator=torch.Generator(DEVICE).manual_seed(seed), method="cached")
        assert a.device.type == DEVICE and torch.equal(a, b), seed


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8),
        x_test=rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8),
    )
    return f"npz:{path}"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_on_the_gpu_runs_and_resumes(npz_data, tmp_path, precision):
    cfg = TrainConfig(
        size="tiny",
        dataset=npz_data,
        batch_size=8,
        max_steps=6,
        checkpoint_every=3,
        log_every=1,
        eval_batch_size=16,
        sample_n=4,
        lr=5e-3,
        device=DEVICE,
        precision=precision,
    )
    quiet = dict(progress=False, log=lambda m: None)
    whole = train(cfg, tmp_path / "whole", **quiet)

    def stop_after_4(step):
        if step == 4:
            raise KeyboardInterrupt  # killed after step 4: the last checkpoint is step 3

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", on_step=stop_after_4, **quiet)
    resumed = train(cfg, tmp_path / "cut", resume=True, **quiet)
    assert resumed["steps"] == whole["steps"] == 6
    # cuDNN's backward kernels may add in another order from run to run: equal up to that, not bitwise
    assert resumed["test_bpd"] == pytest.approx(whole["test_bpd"], abs=1e-3)
    assert (tmp_path / "whole" / "samples.png").exists()


@pytest.mark.parametrize("name", ["pixelcnn_pp", "lmconv", "sparse_transformer"])
def test_compression_round_trips_on_the_gpu(name):
    """Encoder and decoder must compute bit-identical probabilities on the GPU too (kernel choices included)."""
    from pixelar.codec import compress, decompress

    model = tiny(name).to(DEVICE)
    x = torch.randint(0, SPEC.num_values, (3, *SPEC.shape), generator=torch.Generator().manual_seed(2))
    assert torch.equal(decompress(model, compress(model, x)).cpu(), x)
