"""Test bits/dim per transformation (Distribution Augmentation, Jun et al. 2020): how well a model describes
each transformed copy of the data, T(x) for x in the split, one transformation type and index at a time.

For a model conditioned on the transformation (DistAugModel) the number of setting (type t, index k) is the
likelihood of the data under p(. | aug), where aug has type t at k and every other type at the identity; the
identity row is the test bpd the paper reports. A plain model (e.g. trained with unconditioned augmentation) has
no conditioning: its rows score the transformed images T(x) themselves (same transforms, same numbers for a
DistAug model: its log p(x | aug) is log p_base(T_aug(x) | aug)). For dynamically binarized data the plain rows
binarize the transformed grey images, so their draws differ from the identity row's (same distribution).
"""

from __future__ import annotations

import dataclasses

from ..augment import Augmenter
from ..data import ImageDataset
from .bpd import evaluate


def evaluate_per_augmentation(model, dataset: ImageDataset, augmenter: Augmenter | None = None, **kwargs) -> list[dict]:
    """Bits/dim of `dataset` under every (type, index) setting, identity first.

    Args:
        model: a DistAugModel (its own types are used; `augmenter` must be None or have the same types), or
            any model together with `augmenter` (its images are transformed instead).
        dataset: the split to score.
        augmenter: the transformation types for a model without augmentation conditioning.
        kwargs: passed to pixelar.evaluation.evaluate (batch_size, precision, subset).

    Returns:
        [{"type": "identity" or a type name, "index": k, "bpd", "nats_per_image", "num_images", "bound"}, ...]
        with "bound" True where bpd is an upper bound (a latent-variable model's, as evaluate's "bound").
    """
    own = model.augmenter  # the transformations a DistAug model is conditioned on, else None
    if own is not None:
        if augmenter is not None and augmenter.to_list() != own.to_list():
            raise ValueError(f"the model is conditioned on {own.names}; it cannot be scored under {augmenter.names}")
        augmenter = own
    elif augmenter is None:
        raise ValueError(
            "this model is not conditioned on transformations: pass augmenter, the transformation types to "
            "score it under (e.g. the ones it was trained with: Augmenter(parse_transforms(model.data_image, "
            '["rot90", "transpose"])))'
        )
    rows = []
    for t, k in augmenter.settings():
        vec = augmenter.vector(t, k)
        if own is not None:
            with model.augmentation(vec):
                res = evaluate(model, dataset, **kwargs)
        else:
            images = augmenter.apply(dataset.images, vec.view(1, -1).expand(len(dataset), -1))
            res = evaluate(model, dataclasses.replace(dataset, images=images), **kwargs)
        rows.append(
            {
                "type": "identity" if t < 0 else augmenter.names[t],
                "index": k,
                "bpd": res["bpd"],
                "nats_per_image": res["nats_per_image"],
                "num_images": res["num_images"],
                "bound": bool(res.get("bound", False)),
            }
        )
    return rows


__all__ = ["evaluate_per_augmentation"]
