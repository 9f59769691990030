"""Moved to pixelar.image_files. This name forwards there for code that still imports from here (nothing in
pixelar does any more); import from pixelar.image_files instead."""

from __future__ import annotations

from .. import image_files


def __getattr__(name: str):
    # forwarded at each access, so that whatever pixelar.image_files holds now (also a test's stand-in) is used
    return getattr(image_files, name)
