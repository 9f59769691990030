"""Where dataset files are looked for on disk, in order of preference.

For a dataset folder name such as ``fashion-mnist`` the search order is:

1. the ``data_dir`` argument: ``data_dir/<folder>/`` then ``data_dir/`` itself;
2. ``$PIXELAR_DATA``: the same two;
3. the user cache, ``platformdirs.user_cache_dir("pixelar")/<folder>`` (downloads go here);
4. the system data root, ``/usr/share/datasets/<folder>`` (where Debian's
   ``dataset-fashion-mnist`` package installs Fashion-MNIST). ``$PIXELAR_SYSTEM_DATA``
   replaces ``/usr/share/datasets``, e.g. to isolate tests.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

DATA_ENV = "PIXELAR_DATA"
SYSTEM_DATA_ENV = "PIXELAR_SYSTEM_DATA"
DEFAULT_SYSTEM_DATA_ROOT = "/usr/share/datasets"


def cache_root() -> Path:
    """Per-user cache directory of pixelar (downloads are stored below it)."""
    import platformdirs  # here, not at import: `import pixelar` works where only torch is installed (GPU images)

    return Path(platformdirs.user_cache_dir("pixelar"))


def system_data_root() -> Path:
    """System-wide dataset directory: ``$PIXELAR_SYSTEM_DATA`` or ``/usr/share/datasets``."""
    return Path(os.environ.get(SYSTEM_DATA_ENV) or DEFAULT_SYSTEM_DATA_ROOT)


def search_dirs(folder: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Directories to search for the files of dataset ``folder``, most preferred first."""
    dirs: list[Path] = []
    for base in (data_dir, os.environ.get(DATA_ENV) or None):
        if base is not None:
            base = Path(base).expanduser()
            # The dataset's own subfolder first: it cannot hold another dataset's
            # files of the same name (MNIST and Fashion-MNIST share file names).
            dirs += [base / folder, base]
    dirs += [cache_root() / folder, system_data_root() / folder]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def first_writable(dirs: Sequence[Path]) -> Path | None:
    """The first of dirs that exists (made if need be) and is writable, or None."""
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(d, os.W_OK):
            return d
    return None


def find_in(directory: Path, alternatives: Sequence[str]) -> Path | None:
    """First of ``alternatives`` (file or directory names) that exists in ``directory``."""
    for name in alternatives:
        p = directory / name
        if p.exists():
            return p
    return None


def locate(
    folder: str, required: Sequence[Sequence[str]], data_dir: str | os.PathLike | None = None
) -> list[Path] | None:
    """Find one directory holding every required file.

    Args:
        folder: dataset folder name, e.g. ``"mnist"``.
        required: for each needed file, the names it may have (e.g. gzipped or not).
        data_dir: optional user-given directory, searched first.

    Returns:
        The path of each required file, all from the same (most preferred) directory,
        or None if no directory has them all. Files are never mixed across
        directories, so a partial copy cannot combine with another version.
    """
    for d in search_dirs(folder, data_dir):
        found = [find_in(d, alts) for alts in required]
        if all(p is not None for p in found):
            return found  # type: ignore[return-value]
    return None
