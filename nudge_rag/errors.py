"""The package's one exception family."""

from __future__ import annotations


class NudgeError(ValueError):
    """Bad input or state: the message names the argument, what was found, and the fix."""


class MetricMismatchError(NudgeError):
    """Vectors that only mean something under one metric were sent to a store with another."""


class UnknownIdError(NudgeError, KeyError):
    """An id that the store does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
