"""Exceptions raised by :mod:`pixelar.data`.

They subclass the built-in exception a caller would naturally catch
(``FileNotFoundError`` for missing data, ``ValueError`` for bad data), so code
that does not know about pixelar still handles them sensibly.
"""

from __future__ import annotations

import pickle

from pixelar.errors import NamesArgument


class DatasetNotFoundError(NamesArgument, FileNotFoundError):
    """The files of a dataset are not on disk and could not be downloaded.

    The message says which files are needed and where they may be put; where it names the `data_dir` argument,
    `argument` is "data_dir" and `naming(...)` gives it with another spelling (see pixelar.errors.NamesArgument).
    """

    def __init__(self, message: str, argument: str | None = None, spelled: str = "", after: str = ""):
        """DatasetNotFoundError(message), or DatasetNotFoundError(before, argument, spelled, after): the message
        `before + spelled + after`, which names `argument`."""
        if argument is not None:
            message = self._name_argument(argument, spelled, message, after)
        super().__init__(message)

    def __reduce__(self):
        if self.argument is None:
            return type(self), (str(self),)
        return type(self), (self.before, self.argument, self.spelled, self.after)

    def __str__(self) -> str:
        # FileNotFoundError formats multi-argument instances as "[Errno ...]";
        # we only ever pass one message, so show it verbatim.
        return str(self.args[0]) if self.args else ""


class ChecksumError(ValueError):
    """A downloaded file does not have the expected MD5 checksum (it has been deleted)."""


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a global that the restricted unpickler does not allow.

    Also a ``ValueError`` so that "bad data file" handling catches it.
    """
