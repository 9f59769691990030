"""Inference entry points build no autograd graph, whatever their decorators, leave nothing in reference cycles,
and evaluation, sampling and coding memory does not grow with the number of images.

A graph kept alive across batches once made `pixelar train`'s final evaluation run out of memory (a decorator
had slid off `evaluate` onto a helper); these tests fail if any entry point runs the model with autograd on.
"""

import gc

import pytest
import torch
from memory_helpers import heap_in_use, no_cycle_collector

import pixelar
from pixelar import ImageSpec, create_model
from pixelar.codec import compress, decompress, decompress_segments
from pixelar.codec.images import SEGMENT_IMAGES
from pixelar.data import ImageDataset
from pixelar.evaluation import evaluate, evaluate_per_augmentation, image_log_prob
from pixelar.evaluation.probe import extract_features
from pixelar.models import create_distaug_model
from pixelar.sampling import sample_chunks
from pixelar.sampling.complete import complete

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SPEC = ImageSpec(1, 4, 4, 4)


class SavedTensors:
    """Counts the tensors autograd saves for a backward pass inside the block (none under no_grad)."""

    def __enter__(self):
        self.count = 0

        def pack(t):
            self.count += 1
            return t

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


def dataset(spec, n=6, labels=False):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, spec.num_values, (n, *spec.shape), generator=g).to(torch.uint8)
    y = torch.arange(n) % 3 if labels else None
    return ImageDataset(images, y, spec, 3 if labels else None, "random", split="test")


def assert_inference(model, fn, *args, **kw):
    """fn(*args, **kw) runs the model without building a graph and leaves it in training mode, as it found it."""
    assert torch.is_grad_enabled()
    model.train()
    with SavedTensors() as saved:
        fn(*args, **kw)
    assert saved.count == 0, f"{saved.count} tensors were saved for backward: autograd was on"
    assert model.training, "the model's training mode was not restored"


def test_the_check_catches_a_call_with_autograd():
    model = create_model("pixelcnn_pp", SPEC, "tiny")
    with SavedTensors() as saved:
        model.log_prob(torch.zeros(2, *SPEC.shape, dtype=torch.long))
    assert saved.count > 0


@pytest.mark.parametrize("name", pixelar.list_models())
def test_evaluation_scoring_sampling_and_completion_run_without_autograd(name):
    torch.manual_seed(0)
    model = create_model(name, SPEC, "tiny", num_classes=3)
    ds = dataset(SPEC, labels=True)
    x = ds.images[:2].long()
    cond = torch.tensor([0, 2])
    assert_inference(model, evaluate, model, ds, batch_size=4)
    assert_inference(model, image_log_prob, model, x, cond)
    methods = ["naive"] + (["cached"] if model.has_cached_sampler else [])
    for method in methods:
        assert_inference(model, model.sample, 2, cond=cond, method=method)
        if model.likelihood == "bound":  # no completion (test_vdvae.py checks the error)
            continue
        keep = torch.zeros(SPEC.height, SPEC.width, dtype=torch.bool)
        keep[:2] = True
        assert_inference(model, complete, model, x[0], keep, n=2, cond=cond, method=method)
    if getattr(model, "factorizes", True):
        data = compress(model, x, cond)  # in training mode: compress switches to eval itself
        assert_inference(model, compress, model, x, cond)
        assert_inference(model, decompress, model, data, cond)


def test_order_mixture_and_parts_and_augmentation_run_without_autograd():
    ds = dataset(SPEC)
    for model in (
        create_model("lmconv", SPEC, "tiny", num_orders=2),
        create_model("grayscale_pixelcnn", SPEC, "tiny"),
        create_distaug_model("pixelcnn_pp", SPEC, "tiny", ["rot90"]),
    ):
        assert_inference(model, evaluate, model, ds, batch_size=4)
        assert_inference(model, image_log_prob, model, ds.images[:2].long())
    model = create_distaug_model("pixelcnn_pp", SPEC, "tiny", ["rot90"])
    assert_inference(model, evaluate_per_augmentation, model, ds, None, batch_size=4)


def test_linear_probe_features_run_without_autograd():
    spec = ImageSpec(3, 4, 4, 256)
    model = create_model("image_gpt", spec, "tiny")
    ds = dataset(spec, labels=True)
    assert_inference(model, extract_features, model, ds, [0, 1], batch_size=4)


# ----- memory --------------------------------------------------------------------------------------------------
def test_evaluation_memory_does_not_grow_with_the_number_of_images():
    """The heap in use when batch 20 starts is within a small margin of when batch 2 starts (measured: 18 KiB
    more). A graph kept per batch (the old fault) adds about 50 MiB per batch here: 933 MiB by batch 20."""
    in_use = heap_in_use()
    if in_use is None:
        pytest.skip("needs glibc's mallinfo2 to read the heap in use")
    spec = ImageSpec(1, 28, 28, 256)
    torch.manual_seed(0)
    model = create_model("pixelcnn_pp", spec, "tiny")
    ds = dataset(spec, n=20 * 16)
    heap = []
    log_prob = model.log_prob

    def recording(x, cond=None, **kw):
        heap.append(in_use())
        return log_prob(x, cond, **kw)

    model.log_prob = recording
    evaluate(model, ds, batch_size=16)
    assert len(heap) == 20
    growth = heap[19] - heap[1]
    assert growth < 4 * 2**20, f"heap grew by {growth / 2**20:.1f} MiB from batch 2 to batch 20"


# ----- reference cycles: memory freed when a call returns, not at Python's next full collection ----------------
def cyclic_tensor_bytes(fn, *args, **kw) -> int:
    """Bytes of tensor storage that fn(*args, **kw) leaves in reference cycles: garbage that reference counting
    cannot free, which waits for a full run of Python's cycle collector (rare where many objects live, as
    torch's), so that a loop of such calls grows by its size every time."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # the garbage a collection finds is kept in gc.garbage, to be looked at
    try:
        fn(*args, **kw)
        gc.collect()
        storages = {id(t.untyped_storage()): t.untyped_storage().nbytes() for t in gc.garbage if torch.is_tensor(t)}
        return sum(storages.values())
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


@pytest.mark.parametrize("name", pixelar.list_models())
def test_sampling_completion_and_coding_leave_nothing_in_reference_cycles(name):
    """The per-layer cache of the convolutional models once held its rings in cycles (a derived ring and its
    map, nodes and their graph): 90 MiB per chunk of 64 samples of the pretrained PixelCNN++, freed only when
    the cycle collector ran, so `pixelar sample` and `compress` grew by about 120 KB per image."""
    torch.manual_seed(0)
    model = create_model(name, SPEC, "tiny").eval()
    x = torch.randint(0, SPEC.num_values, (2, *SPEC.shape), generator=torch.Generator().manual_seed(0))
    for method in ["naive"] + (["cached"] if model.has_cached_sampler else []):
        assert cyclic_tensor_bytes(model.sample, 2, method=method) == 0, method
        if model.likelihood == "exact":
            keep = torch.zeros(SPEC.height, SPEC.width, dtype=torch.bool)
            keep[:2] = True
            assert cyclic_tensor_bytes(complete, model, x[0], keep, n=2, method=method) == 0, method
    if getattr(model, "factorizes", True):
        data = compress(model, x)
        assert cyclic_tensor_bytes(compress, model, x) == 0
        assert cyclic_tensor_bytes(decompress, model, data) == 0


def test_seeded_sampling_and_coding_memory_does_not_grow_with_the_chunks():
    """The heap in use when the last chunk (segment) starts is within a small margin of when the second starts,
    the cycle collector off. The rings kept in cycles (the old fault) added about 0.9 MiB per chunk of 4 images
    here: 9.3 MiB from chunk 2 to chunk 12."""
    in_use = heap_in_use()
    if in_use is None:
        pytest.skip("needs glibc's mallinfo2 to read the heap in use")
    spec = ImageSpec(1, 8, 8, 256)
    torch.manual_seed(0)
    model = create_model("pixelcnn_pp", spec, "tiny").eval()
    heap = []
    begin_cache = model.begin_cache

    def recording(*a, **kw):
        heap.append(in_use())
        return begin_cache(*a, **kw)

    model.begin_cache = recording  # once per chunk, and once per segment of the codec
    with no_cycle_collector():
        sample_chunks(model, 4 * 12, 0, lambda rows, x: None, batch_size=4)
    assert len(heap) == 12
    growth = heap[-1] - heap[1]
    assert growth < 2**20, f"sampling: the heap grew by {growth / 2**20:.1f} MiB from chunk 2 to chunk 12"
    x = torch.randint(0, 256, (SEGMENT_IMAGES * 8, *spec.shape), generator=torch.Generator().manual_seed(0))
    data = compress(model, x)
    for what, run in (
        ("compression", lambda: compress(model, x)),
        ("decompression", lambda: decompress_segments(model, data, lambda rows, images: None)),
    ):
        heap.clear()
        with no_cycle_collector():
            run()
        assert len(heap) == 8
        growth = heap[-1] - heap[1]
        assert growth < 2**20, f"{what}: the heap grew by {growth / 2**20:.1f} MiB from segment 2 to segment 8"
