"""Distribution Augmentation (Jun et al. 2020): transformations of images, each index 0 the identity."""

from .transforms import TRANSFORM_TYPES, Augmenter, Transform, make_transform, parse_transforms

__all__ = ["TRANSFORM_TYPES", "Augmenter", "Transform", "make_transform", "parse_transforms"]
