"""Every exception nudge-rag raises, under one root, ``NudgeError(Exception)``; all are
importable from ``nudge_rag``. Only bad input (``BadInputError`` and its subclasses) is also a
``ValueError``."""

from __future__ import annotations

__all__ = [
    "BadInputError",
    "ConcurrentMoveError",
    "GainNotProvenError",
    "InvalidAnswerError",
    "LLMCallError",
    "MetricMismatchError",
    "NudgeError",
    "StaleStoreError",
    "StoreDriftError",
    "UnknownIdError",
    "VersionLogError",
    "WrongStoreError",
]


class NudgeError(Exception):
    """The root: bad input, or a state nudge-rag cannot trust; the message names what was found
    and the fix."""


class BadInputError(NudgeError, ValueError):
    """An argument, record or vector that nudge-rag cannot accept; nothing stored was changed."""


class MetricMismatchError(BadInputError):
    """Vectors that only mean something under one metric were sent to a store with another."""


class UnknownIdError(BadInputError, KeyError):
    """An id that the store does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class VersionLogError(NudgeError):
    """The version log is missing, damaged, or is not the log this state folder had."""


class StoreDriftError(NudgeError):
    """The store does not hold the vectors of the version the log says it is at."""


class StaleStoreError(StoreDriftError):
    """Another process moved the version and this process's store client cannot see it."""


class ConcurrentMoveError(NudgeError):
    """Another process moved the version during this move (the lock that serialises moves was
    lost); this move did not commit, and the store holds what the log says."""


class WrongStoreError(StoreDriftError):
    """The store holds none, or only a small share, of the ids its version log names: it is not
    the store (collection) this log belongs to. Nothing is written and nothing is forgotten."""


class LLMCallError(NudgeError):
    """One LLM request failed; ``transient`` failures are worth retrying."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status
        self.retry_after = retry_after


class InvalidAnswerError(NudgeError):
    """An LLM answer that does not parse, or names ids / values outside what was asked.

    ``raw`` is the answer's text where a framework's own parser rejected it.
    """

    def __init__(self, message: str, *, raw: str | None = None) -> None:
        super().__init__(message)
        self.raw = raw


class GainNotProvenError(NudgeError):
    """``apply`` was asked to write vectors whose held-out gain is not proven."""
