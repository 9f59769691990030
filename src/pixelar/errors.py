"""Errors whose message names an argument of the call that would change the outcome ("pass convert=True to ...").

The library names its own arguments, never a command-line flag; a front end that spells the argument another
way (the CLI: `--convert`) asks the error for its message with that spelling instead (`naming`).
"""

from __future__ import annotations


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
