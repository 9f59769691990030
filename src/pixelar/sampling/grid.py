"""Moved to pixelar.image_files. This name forwards there while code outside this package (the training loop's
samples.png) still imports save_grid from here; import from pixelar.image_files instead."""

from __future__ import annotations


def __getattr__(name: str):
    # forwarded at each access, so that whatever pixelar.image_files holds now (also a test's stand-in) is used
    from .. import image_files

    return getattr(image_files, name)
