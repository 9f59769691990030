"""Errors whose message names an argument of the call that would change the outcome ("pass convert=True to ..."),
and the one rule for echoing a user-given string in a message (`shown`).

The library names its own arguments, never a command-line flag; a front end that spells the argument another
way (the CLI: `--convert`) asks the error for its message with that spelling instead (`naming`).
"""

from __future__ import annotations

import os

# a user-given string (a name, a path, a value) is echoed whole up to SHORT_LIMIT characters (any real path
# fits), else as its first SHORT_HEAD characters and its length: a 10 MB name must not become a 10 MB message
SHORT_LIMIT = 200
SHORT_HEAD = 60


def shown(value, quote: bool = True) -> str:
    """`value` as an error message echoes it: as repr() writes it (a string or path without quotes where quote
    is False), cut to its first SHORT_HEAD characters and its length where longer than SHORT_LIMIT:
    'xxxx...' (10,000,000 characters)."""
    if isinstance(value, (str, os.PathLike)):
        text = str(value)
        if len(text) <= SHORT_LIMIT:
            return repr(text) if quote else text
        head = repr(text[:SHORT_HEAD] + "...") if quote else text[:SHORT_HEAD] + "..."
        return f"{head} ({len(text):,} characters)"
    text = repr(value)
    return text if len(text) <= SHORT_LIMIT else f"{text[:SHORT_HEAD]}... ({len(text):,} characters)"


class NamesArgument:
    """Mixin of an exception whose message names one argument of the call: `argument` is its name, and the
    message is `before + spelling + after`, str() spelling it as Python does (e.g. "convert=True")."""

    argument: str | None = None
    before: str = ""
    after: str = ""

    def _name_argument(self, argument: str, spelled: str, before: str, after: str) -> str:
        self.argument, self.spelled, self.before, self.after = argument, spelled, before, after
        return before + spelled + after

    def naming(self, spelled: str) -> str:
        """The message with the argument spelled as given (e.g. a command-line flag)."""
        return self.before + spelled + self.after if self.argument is not None else str(self)


class ArgumentValueError(NamesArgument, ValueError):
    """A ValueError whose message names an argument of the call (see NamesArgument)."""

    def __init__(self, argument: str, spelled: str, before: str, after: str = ""):
        super().__init__(self._name_argument(argument, spelled, before, after))

    def __reduce__(self):
        return type(self), (self.argument, self.spelled, self.before, self.after)
