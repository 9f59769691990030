"""The transformations of Distribution Augmentation (Jun et al. 2020, "Distribution Augmentation for
Generative Modeling", ICML), as bijections of int images.

References:
    1. Jun, Child, Chen, Schulman, Ramesh, Radford, Sutskever. Distribution Augmentation for Generative
       Modeling. ICML 2020 (code: openai/distribution_augmentation, `AugmentationType` in train.py).

A transformation *type* has `num_choices` indices; index 0 is always the identity. Every index permutes the
pixels of an image (and, for "colour", the channels within each pixel), so each one is a bijection of the
image set and `inverse(apply(x, k), k) == x`. A pixel always stays whole (its channels travel together):
models whose output draws a whole pixel jointly (PixelCNN++'s mixture) still see whole pixels.

Each index is stored as a gather table over the C*H*W sub-pixels, built once from the type's rule on one
image, so batched apply / inverse with a different index per image is one `gather`:
    apply(x, k).flat[d] = x.flat[table[k, d]]      (flat index d = c*H*W + i*W + j)

Types (names from the paper's code in brackets):
    rot90      4   rotate by k * 90 degrees counter-clockwise (np.rot90)  [sos_rot]; needs H == W
    transpose  2   swap rows and columns                                  [sos_tr];  needs H == W
    colour     6   a permutation of the R, G, B channels                  [sos_c];   needs C == 3
    jigsaw    24   a permutation of the 2x2 grid of quadrants             [sos_js];  needs even H and W
    reverse    2   rotation by 180 degrees (= reversed raster order)      [sos_rev]
    randperm  n+1  identity + n fixed random permutations of the pixels   [sos_rd]

Difference from the paper: its "randomly determined order" permutes all 3072 sub-pixels; here the pixels are
permuted (channels kept together, see above), from a stored seed so that a saved model rebuilds them exactly.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..errors import shown
from ..tracing import is_tracing
from ..types import ImageSpec

# name -> the number of choices (randperm: identity + its `num` permutations, see make_transform)
TRANSFORM_TYPES = ("rot90", "transpose", "colour", "jigsaw", "reverse", "randperm")
RANDPERM_DEFAULT_NUM = 3  # the paper's sos_rd: identity + 3 fixed permutations
RANDPERM_DEFAULT_SEED = 0


@dataclass(frozen=True)
class Transform:
    """One transformation type on images of one ImageSpec.

    Attributes:
        name: the type's name (TRANSFORM_TYPES).
        options: the JSON-able options that rebuild it (randperm: num, seed; else empty).
        table: int64 (num_choices, C*H*W): apply(x, k).flat[d] = x.flat[table[k, d]].
        inverse_table: int64 (num_choices, C*H*W): the gather table of the inverse.
    """

    name: str
    options: dict
    table: torch.Tensor
    inverse_table: torch.Tensor

    @property
    def num_choices(self) -> int:
        return self.table.shape[0]

    def to_dict(self) -> dict:
        return {"name": self.name, **self.options}

    def _check(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        D = self.table.shape[1]
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x[0].numel() != D:
            raise ValueError(
                f"{self.name}: x must be a (B, C, H, W) tensor with C*H*W = {D}, got {tuple(getattr(x, 'shape', ()))}"
            )
        if not isinstance(index, torch.Tensor) or index.dtype.is_floating_point or index.shape != (x.shape[0],):
            raise ValueError(
                f"{self.name}: index must be an int64 tensor of shape ({x.shape[0]},) (one index per "
                f"image), got {getattr(index, 'dtype', type(index).__name__)} "
                f"{tuple(getattr(index, 'shape', ()))}"
            )
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_choices):
            raise ValueError(
                f"{self.name}: indices must be in [0, {self.num_choices}), got {int(index.min())}..{int(index.max())}"
            )
        return index.long()

    def _gather(self, table: torch.Tensor, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        index = self._check(x, index)
        rows = table.to(x.device)[index.to(x.device)]  # (B, D)
        return x.flatten(1).gather(1, rows).view_as(x)

    def apply(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) of any dtype (images, or per-sub-pixel maps), index int64 (B,) -> transformed x."""
        return self._gather(self.table, x, index)

    def inverse(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The inverse of `apply` with the same indices: inverse(apply(x, k), k) == x."""
        return self._gather(self.inverse_table, x, index)


# ----- the rules, on one (C, H, W) image -------------------------------------------------------------------------
def _rot90(img: torch.Tensor, k: int) -> torch.Tensor:
    return torch.rot90(img, k, dims=(1, 2))  # counter-clockwise, as np.rot90


def _transpose(img: torch.Tensor, k: int) -> torch.Tensor:
    return img.transpose(1, 2) if k else img


_COLOUR_PERMS = list(itertools.permutations(range(3)))  # (0, 1, 2) first: index 0 is the identity
_JIGSAW_PERMS = list(itertools.permutations(range(4)))  # 24; (0, 1, 2, 3) first


def _colour(img: torch.Tensor, k: int) -> torch.Tensor:
    return img[list(_COLOUR_PERMS[k])]  # output channel c <- input channel perm[c]


def _jigsaw(img: torch.Tensor, k: int) -> torch.Tensor:
    _, H, W = img.shape
    h, w = H // 2, W // 2
    quads = [img[:, :h, :w], img[:, :h, w:], img[:, h:, :w], img[:, h:, w:]]  # row-major quadrants
    q = [quads[p] for p in _JIGSAW_PERMS[k]]  # output quadrant i <- input quadrant perm[i]
    return torch.cat([torch.cat(q[:2], dim=2), torch.cat(q[2:], dim=2)], dim=1)


def _reverse(img: torch.Tensor, k: int) -> torch.Tensor:
    return torch.rot90(img, 2 * k, dims=(1, 2))


def _table(spec: ImageSpec, rule, n: int) -> torch.Tensor:
    """(n, D) gather tables: the rule applied to the image of flat indices."""
    ids = torch.arange(spec.dims).view(spec.shape)
    return torch.stack([rule(ids, k).reshape(-1) for k in range(n)])


def make_transform(spec: ImageSpec, name: str, **options) -> Transform:
    """Build transformation type `name` for images `spec` (ValueError when it does not apply to them).

    Args:
        spec: the images.
        name: one of TRANSFORM_TYPES.
        options: randperm only: num (permutations besides the identity, default 3), seed (default 0).
    """
    if name not in TRANSFORM_TYPES:
        raise ValueError(f"unknown transformation {shown(name)}; valid: {', '.join(TRANSFORM_TYPES)}")
    if name != "randperm" and options:
        raise ValueError(f"transformation {name!r} takes no options, got {sorted(options)}")
    C, H, W = spec.shape
    if name in ("rot90", "transpose") and H != W:
        raise ValueError(
            f"{name} maps an image onto itself only when it is square; these images are {H}x{W} "
            "(HxW): drop it or use reverse / jigsaw"
        )
    if name == "colour" and C != 3:
        raise ValueError(f"colour permutes the R, G, B channels: it needs 3-channel images, got {C} channel(s)")
    if name == "jigsaw" and (H % 2 or W % 2):
        raise ValueError(f"jigsaw swaps the four quadrants of a 2x2 grid: it needs even height and width, got {H}x{W}")
    if name == "randperm":
        unknown = set(options) - {"num", "seed"}
        if unknown:
            raise ValueError(f"randperm takes the options num and seed, got {sorted(unknown)}")
        num = options.get("num", RANDPERM_DEFAULT_NUM)
        seed = options.get("seed", RANDPERM_DEFAULT_SEED)
        if not isinstance(num, int) or isinstance(num, bool) or num < 1:
            raise ValueError(f"randperm num must be an integer >= 1 (permutations besides the identity), got {num!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"randperm seed must be an integer >= 0, got {seed!r}")
        options = {"num": num, "seed": seed}
        g = torch.Generator().manual_seed(seed)
        perms = [torch.arange(H * W)] + [torch.randperm(H * W, generator=g) for _ in range(num)]

        def rule(img, k):  # output pixel p <- input pixel perms[k][p], channels together
            return img.reshape(C, H * W)[:, perms[k]].view(C, H, W)

        table = _table(spec, rule, num + 1)
    else:
        rule, n = {
            "rot90": (_rot90, 4),
            "transpose": (_transpose, 2),
            "colour": (_colour, 6),
            "jigsaw": (_jigsaw, 24),
            "reverse": (_reverse, 2),
        }[name]
        table = _table(spec, rule, n)
    return Transform(name, options, table, torch.argsort(table, dim=1))


def parse_transforms(spec: ImageSpec, types) -> list[Transform]:
    """Transforms from names ("rot90,transpose", ["rot90", "colour"]) or their saved dicts
    ([{"name": "randperm", "num": 3, "seed": 0}]). Each type at most once."""
    if isinstance(types, str):
        types = [t.strip() for t in types.split(",") if t.strip()]
    if not isinstance(types, (list, tuple)) or not types:
        raise ValueError(
            f"transformations must be a non-empty list of names from {', '.join(TRANSFORM_TYPES)}, got {types!r}"
        )
    out = []
    for t in types:
        if isinstance(t, str):
            out.append(make_transform(spec, t))
        elif isinstance(t, dict) and isinstance(t.get("name"), str):
            opts = {k: v for k, v in t.items() if k != "name"}
            out.append(make_transform(spec, t["name"], **opts))
        else:
            raise ValueError(f"a transformation is a name or a dict with 'name', got {t!r}")
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ValueError(f"each transformation type may appear once, got {names}")
    return out


class Augmenter:
    """A list of transformation types applied in turn, with per-image index vectors aug int64 (B, n_types).

    apply(x, aug) applies type 0 with aug[:, 0], then type 1 with aug[:, 1], ...; inverse undoes them in
    reverse order. `draw` picks each type's index independently and uniformly (the paper's default).
    """

    def __init__(self, transforms: list[Transform]):
        self.transforms = list(transforms)

    @property
    def num_types(self) -> int:
        return len(self.transforms)

    @property
    def choices(self) -> list[int]:
        return [t.num_choices for t in self.transforms]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.transforms]

    def to_list(self) -> list[dict]:
        return [t.to_dict() for t in self.transforms]

    def check(self, aug, batch: int) -> torch.Tensor:
        """Validate aug: int (B, n_types) with aug[:, t] in [0, choices[t]); a (n_types,) vector is broadcast."""
        n = self.num_types
        if not isinstance(aug, torch.Tensor) or aug.dtype.is_floating_point or aug.dtype == torch.bool:
            raise ValueError(
                f"aug must be an int64 tensor of shape ({batch}, {n}) (one index per transformation "
                f"type {self.names}), got {getattr(aug, 'dtype', type(aug).__name__)}"
            )
        if aug.shape == (n,):
            aug = aug.view(1, n).expand(batch, n)
        if aug.shape != (batch, n):
            raise ValueError(
                f"aug must have shape ({batch}, {n}) (one index per type {self.names}), got {tuple(aug.shape)}"
            )
        if aug.numel() and not is_tracing():  # no value checks while torch.compile traces
            high = torch.tensor(self.choices, device=aug.device)
            if bool((aug < 0).any()) or bool((aug >= high).any()):
                raise ValueError(
                    f"aug[:, t] must be in [0, {self.choices}[t]) for the types {self.names}, "
                    f"got min {aug.min(0).values.tolist()} max {aug.max(0).values.tolist()}"
                )
        return aug.long()

    def apply(self, x: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
        aug = self.check(aug, x.shape[0])
        for t, tr in enumerate(self.transforms):
            x = tr.apply(x, aug[:, t])
        return x

    def inverse(self, x: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
        aug = self.check(aug, x.shape[0])
        for t in reversed(range(self.num_types)):
            x = self.transforms[t].inverse(x, aug[:, t])
        return x

    def table(self, aug: torch.Tensor, spec: ImageSpec) -> torch.Tensor:
        """The composite gather table (D,) of one index vector aug (n_types,): apply(x).flat[d] = x.flat[table[d]]."""
        ids = torch.arange(spec.dims).view(1, *spec.shape)
        return self.apply(ids, aug.view(1, -1)).reshape(-1)

    def draw(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Independent uniform indices, int64 (batch, n_types), from `generator` (CPU)."""
        cols = [torch.randint(n, (batch,), generator=generator) for n in self.choices]
        return torch.stack(cols, dim=1)

    def one_hot(self, aug: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Concatenated one-hot blocks, one per type: (B, sum(choices)). A linear map of it is a sum of one
        learned embedding per type (the paper's conditioning)."""
        blocks = [torch.nn.functional.one_hot(aug[:, t], n) for t, n in enumerate(self.choices)]
        return torch.cat(blocks, dim=1).to(dtype)

    def settings(self) -> list[tuple[int, int]]:
        """Every (type, index) once, identity first: [(-1, 0)] then (t, k) for k >= 1 of each type t."""
        return [(-1, 0)] + [(t, k) for t, n in enumerate(self.choices) for k in range(1, n)]

    def vector(self, t: int, k: int) -> torch.Tensor:
        """The index vector (n_types,) with type t at index k and every other type at the identity."""
        aug = torch.zeros(self.num_types, dtype=torch.long)
        if t >= 0:
            aug[t] = k
        return aug
