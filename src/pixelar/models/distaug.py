"""Distribution Augmentation (Jun, Child, Chen, Schulman, Ramesh, Radford, Sutskever 2020): one model of the
whole family of transformed data distributions, conditioned on the transformation.

DistAugModel wraps any registered model (the *base*) and a list of transformation types (pixelar.augment).
With aug = (k_1, ..., k_n), one index per type, and T_aug their composition,

    log p(x | cond, aug) = log p_base(T_aug(x) | [cond, one_hot(k_1), ..., one_hot(k_n)])

The base is built with a cond_dim that holds the concatenated one-hot blocks (after the class one-hot or the
user's cond vector, if any). Every model maps its cond_dim vector linearly into its conditioning (GlobalBias for
the convolutional models, the conditioning embedding of the transformers), and a linear map of concatenated
one-hots is a sum of one learned embedding per type: the paper's conditioning, with no second mechanism. Test
bits/dim use the identity, aug = 0, which is the default everywhere (log_prob, sample, generation_order).

Since T_aug only moves sub-pixels, log p(x | aug) is a normalized distribution over x for every aug, its
per-sub-pixel conditionals are the base's mapped back through T_aug^-1, and its generation order is the base's
order mapped back: a rotation is another generation order over the same image.

permute_embeddings=True is the paper's `permute_embeddings`: a base that embeds coordinates (the transformers)
gives every sub-pixel of T_aug(x) the positional embeddings of the place it had in x (ImageModel.positions_from),
so the transformation is purely another generation order over x's own coordinates. Off (the default, and what
configs saved before the option mean), the base embeds the coordinates of the transformed image.

Differences from the paper: the conditioning of the transformers is added at every position (pixelar's
transformers add cond there) unless the base is built with cond_at="start" (image_gpt always is; the paper
sums it into the start token); RandAugment and the dataset-indicator types are not included.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn as nn

from ..augment import Augmenter, parse_transforms
from ..types import ImageSpec
from .base import ARImageModel, ImageModel, SampleRequest
from .registry import check_hparams, create_model, merge_hparams, preset, register_wrapper


@register_wrapper("distaug")
class DistAugModel(ImageModel):
    """A base model conditioned on transformation indices (see the module docstring).

    Build it with `create_distaug_model`; `pixelar.load_model` rebuilds it from its config (the base's, plus a
    "distaug" section).

    Args:
        base: the wrapped model; its cond_dim must be the user conditioning's size (num_classes or cond_dim)
            plus the sum of the types' numbers of choices.
        transforms: the types (names or saved dicts), see pixelar.augment.parse_transforms.
        num_classes: class labels accepted as cond (0: none); passed to the base as one-hot blocks.
        cond_dim: size of a float cond vector (0: none); passed to the base in front of the one-hots.
        permute_embeddings: the base's positional embeddings travel with the sub-pixels (see the module
            docstring); needs a base that embeds positions.
    """

    def __init__(
        self, base: ARImageModel, transforms, num_classes: int = 0, cond_dim: int = 0, permute_embeddings=False
    ):
        if isinstance(base, ImageModel) and base.likelihood == "bound":
            raise ValueError(
                f"Distribution Augmentation wraps autoregressive models; {base.name!r} is a latent-variable model"
            )
        if not isinstance(base, ARImageModel):
            raise ValueError(f"base must be a registered pixelar model, got {type(base).__name__}")
        for key, v in (("num_classes", num_classes), ("cond_dim", cond_dim)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{key} must be an integer >= 0, got {v!r}")
        if not isinstance(permute_embeddings, bool):
            raise ValueError(f"permute_embeddings must be true or false, got {permute_embeddings!r}")
        if permute_embeddings and not base.embeds_positions:
            raise ValueError(
                f"permute_embeddings moves the base's positional embeddings with the sub-pixels, and {base.name!r} "
                "has none; the transformers (sparse_transformer, image_transformer, image_gpt) have"
            )
        super().__init__(base.image, num_classes, cond_dim)
        self.permute_embeddings = permute_embeddings
        self.base = base  # it owns the distribution and the weights; no second copy here
        self.augmenter = Augmenter(parse_transforms(base.image, transforms))
        self.user_dim = self.num_classes or self.cond_dim  # width of the user block of the base's cond vector
        need = self.user_dim + sum(self.augmenter.choices)
        if base.num_classes or base.cond_dim != need:
            raise ValueError(
                f"the base model must take a cond vector of {need} = {self.user_dim} (labels / cond) + "
                f"{sum(self.augmenter.choices)} (one-hots of {self.augmenter.names}) entries; it has "
                f"num_classes={base.num_classes}, cond_dim={base.cond_dim} (build it with "
                "create_distaug_model)"
            )
        self.hparams = base.hparams
        self._aug = torch.zeros(self.augmenter.num_types, dtype=torch.long)  # the default: identity

    # ----- persistence: the base's config plus a "distaug" section ---------------------------------------------
    def config_section(self) -> dict:
        return {
            "transforms": self.augmenter.to_list(),
            "num_classes": self.num_classes,
            "cond_dim": self.cond_dim,
            "permute_embeddings": self.permute_embeddings,
        }

    @classmethod
    def from_config(cls, base: ARImageModel, section) -> DistAugModel:
        """The wrapper of `base` that config_section() describes (the base's hparams hold its cond_dim)."""
        if not isinstance(section, dict) or "transforms" not in section:
            raise ValueError(f"'distaug' must be an object with 'transforms', got {section!r}")
        return cls(
            base,
            section["transforms"],
            section.get("num_classes", 0),
            section.get("cond_dim", 0),
            section.get("permute_embeddings", False),  # saved before the option: the transformed image's
        )

    def config(self) -> dict:
        return {**self.base.config(), self.wrapper_key: self.config_section()}

    # ----- what the base provides ----------------------------------------------------------------------------
    @property
    def name(self) -> str:  # the base's registry name (config.json's "model")
        return self.base.name

    @property
    def distribution(self):
        return self.base.distribution

    @property
    def has_cached_sampler(self) -> bool:
        return self.base.has_cached_sampler

    @property
    def grouped(self) -> bool:
        return self.base.grouped

    @property
    def tokenizer(self):  # e.g. Image GPT's palette: the wrapper transforms the base's token images
        return self.base.tokenizer

    @property
    def data_image(self) -> ImageSpec:
        return self.base.data_image

    @property
    def factorizes(self) -> bool:
        return self.base.factorizes

    @property
    def num_orders(self) -> int:
        return self.base.num_orders

    @property
    def has_parts(self) -> bool:
        return self.base.has_parts

    @property
    def transforms(self):
        return self.augmenter.transforms

    # ----- the augmentation in use ---------------------------------------------------------------------------
    def _as_vector(self, aug) -> torch.Tensor:
        """aug as (n_types,) int64: a sequence of indices, or {type name: index} (missing types: 0)."""
        names = self.augmenter.names
        if isinstance(aug, dict):
            unknown = set(aug) - set(names)
            if unknown:
                raise ValueError(f"unknown transformation type(s) {sorted(unknown)}; this model has {names}")
            aug = [aug.get(n, 0) for n in names]
        vec = aug if isinstance(aug, torch.Tensor) else torch.tensor(aug, dtype=torch.long)
        return self.augmenter.check(vec.view(-1) if vec.dim() == 1 else vec, 1)[0].clone()

    @contextlib.contextmanager
    def augmentation(self, aug):
        """Use the fixed index vector `aug` (sequence, (n_types,) tensor, or {type name: index}) as the
        default inside the block: log_prob, evaluation, sampling and generation_order() then describe the
        distribution of T_aug(x) mapped back to x. Restores the previous default afterwards."""
        old, self._aug = self._aug, self._as_vector(aug)
        try:
            yield self
        finally:
            self._aug = old

    def _batch_aug(self, aug, batch: int) -> torch.Tensor:
        return self.augmenter.check(self._aug if aug is None else aug, batch)

    def base_cond(self, cond, aug: torch.Tensor, batch: int) -> torch.Tensor:
        """The base's cond vector (B, base.cond_dim): [one-hot label or cond vector, one-hots of aug]."""
        dtype = next(self.base.parameters()).dtype
        cond = self.check_cond(cond, batch)
        parts = []
        if self.num_classes:
            parts.append(nn.functional.one_hot(cond, self.num_classes).to(dtype))
        elif self.cond_dim:
            parts.append(cond.to(dtype))
        parts.append(self.augmenter.one_hot(aug, dtype).to(aug.device))
        device = next(self.base.parameters()).device
        return torch.cat([p.to(device) for p in parts], dim=1)

    def _moved(self, aug: torch.Tensor):
        """The context the base runs in for per-image indices aug (B, n_types): with permute_embeddings, every
        sub-pixel of T_aug(x) keeps the positional embeddings of its place in x."""
        if not self.permute_embeddings:
            return contextlib.nullcontext()
        B, D = aug.shape[0], self.image.dims
        ids = torch.arange(D, device=aug.device).view(1, *self.image.shape).expand(B, *self.image.shape)
        return self.base.positions_from(self.augmenter.apply(ids, aug).reshape(B, D))  # T(x).flat[d] = x.flat[.]

    # ----- likelihood ----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, cond=None) -> torch.Tensor:
        raise NotImplementedError(
            "DistAugModel has no parameters in x's layout (a colour permutation changes what "
            "each output channel means); use log_prob, or model.base on augment.apply(x)"
        )

    def log_prob(self, x: torch.Tensor, cond=None, reduce: bool = True, aug=None) -> torch.Tensor:
        """log p(x | cond, aug) in nats: (B,), or (B, C, H, W) per-sub-pixel conditionals in x's layout.

        aug: int64 (B, n_types) or (n_types,); None: the default (identity, or the `augmentation` block's).
        """
        x = self.check_input(x)
        aug = self._batch_aug(aug, x.shape[0]).to(x.device)
        with self._moved(aug):
            lp = self.base.log_prob(self.augmenter.apply(x, aug), self.base_cond(cond, aug, x.shape[0]), reduce=reduce)
        return lp if reduce else self.augmenter.inverse(lp, aug)  # conditional of T(x)_k belongs to x_{table[k]}

    def log_prob_per_order(self, x: torch.Tensor, cond=None, aug=None, **kw) -> torch.Tensor:
        x = self.check_input(x)
        aug = self._batch_aug(aug, x.shape[0]).to(x.device)
        with self._moved(aug):
            return self.base.log_prob_per_order(
                self.augmenter.apply(x, aug), self.base_cond(cond, aug, x.shape[0]), **kw
            )

    def log_prob_parts(self, x: torch.Tensor, cond=None, aug=None) -> dict[str, torch.Tensor]:
        x = self.check_input(x)
        aug = self._batch_aug(aug, x.shape[0]).to(x.device)
        with self._moved(aug):
            return self.base.log_prob_parts(self.augmenter.apply(x, aug), self.base_cond(cond, aug, x.shape[0]))

    def generation_order(self, aug=None) -> torch.Tensor:
        """The base's order mapped back through T_aug^-1: flat indices of x, (C*H*W,) int64. aug (n_types,);
        None: the default (identity unless inside an `augmentation` block)."""
        vec = self._aug if aug is None else self._as_vector(aug)
        table = self.augmenter.table(vec, self.image)  # T(x).flat[k] = x.flat[table[k]]
        return table[self.base.generation_order()]

    def stepwise(self, cond, batch: int) -> tuple[ARImageModel, torch.Tensor]:
        """(base, its cond vector) whose conditionals are p(x | cond, identity), in x's own layout: what code
        that steps through a model's conditionals drives (e.g. pixelar.codec, which codes under the identity,
        the protocol of the reported likelihood)."""
        aug = self.augmenter.check(torch.zeros(self.augmenter.num_types, dtype=torch.long), batch)
        return self.base, self.base_cond(cond, aug, batch)

    # ----- sampling ------------------------------------------------------------------------------------------
    def _draw(self, req: SampleRequest, aug=None) -> torch.Tensor:
        """n images of p(x | cond, aug) (default aug: the identity, or the `augmentation` block's): the base
        samples T_aug(x), which is mapped back; known (n, H, W) pixels are moved with the transform."""
        n, known, x_known = req.n, req.known, req.x_known
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        aug = self._batch_aug(aug, n)
        if x_known is not None:
            x_known = self.augmenter.apply(self.check_input(x_known), aug.to(x_known.device))
        if isinstance(known, torch.Tensor) and known.shape == (n, self.image.height, self.image.width):
            # every transform moves whole pixels: move the mask as a one-channel image of the same pixels
            C = self.image.channels
            k = known.long().unsqueeze(1).expand(n, C, *known.shape[1:])
            known = self.augmenter.apply(k, aug.to(known.device))[:, 0].bool()
        base_req = dataclasses.replace(req, cond=self.base_cond(req.cond, aug, n), x_known=x_known, known=known)
        with self._moved(aug):
            y = self.base._draw(base_req)
        return self.augmenter.inverse(y, aug.to(y.device))

    def num_parameters(self) -> int:
        return self.base.num_parameters()

    def shard_units(self) -> list[nn.Module]:
        return self.base.shard_units()  # the base's blocks (the wrapper's own forward is the base's)


def distaug_cond_dim(image: ImageSpec, transforms, num_classes: int = 0, cond_dim: int = 0) -> int:
    """The base's cond_dim for these transforms and user conditioning."""
    return int(num_classes or cond_dim) + sum(Augmenter(parse_transforms(image, transforms)).choices)


def create_distaug_model(
    name: str, image: ImageSpec, size: str = "tiny", transforms=("rot90",), permute_embeddings=False, **overrides
) -> DistAugModel:
    """A registered model wrapped with Distribution Augmentation.

    `create_distaug_model("pixelcnn_pp", ImageSpec(3, 32, 32), "small", ["rot90", "transpose"], num_classes=10)`
    builds PixelCNN++ with cond_dim = 10 + 4 + 2 (class one-hot + one block per type) and wraps it. Overrides
    are the model's options; num_classes / cond_dim are the user's conditioning (moved into the vector).
    permute_embeddings: see DistAugModel (the paper's option; transformers only).
    """
    checked = check_hparams(name, merge_hparams(preset(name, size), overrides, name))  # before they are moved
    num_classes, cond_dim = checked["num_classes"], checked["cond_dim"]
    overrides = {k: v for k, v in overrides.items() if k not in ("num_classes", "cond_dim")}
    if num_classes and cond_dim:
        raise ValueError("a model takes either class labels (num_classes) or a vector (cond_dim) as cond, not both")
    dim = distaug_cond_dim(image, transforms, num_classes, cond_dim)
    base = create_model(name, image, size, num_classes=0, cond_dim=dim, **overrides)
    return DistAugModel(base, transforms, num_classes, cond_dim, permute_embeddings)
