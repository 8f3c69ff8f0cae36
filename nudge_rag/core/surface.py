"""The NUDGE surface of a wrapped store, written once for both faces.

A face (the LangChain or the LlamaIndex ``NudgedVectorStore``) holds a
:class:`~nudge_rag.core.state.NudgeState` as ``nudge_state`` and inherits :class:`NudgeSurface`:
feedback, citations, traces, vectors, versions and the trace id of the latest search all have one
signature and one implementation here.

The latest trace id is kept per store and per context (thread or asyncio task) in a small
mutable slot: a search writes into the slot of the context it runs in, and work that context
spawns afterwards (a chain's steps, ``run_in_executor``, ``asyncio.gather``) shares that slot, so
``store.last_trace_id`` after ``chain.invoke(...)`` names the chain's search, never an older one.
:meth:`NudgeSurface.trace_scope` opens a fresh slot explicitly (one per request in a server, or
around an agent run) and lists every search made inside it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from nudge_rag.core.errors import NudgeError

if TYPE_CHECKING:
    from nudge_rag.core.state import NudgeState
    from nudge_rag.core.traces import Feedback, Trace
    from nudge_rag.core.versions import VersionInfo


@dataclass
class TraceScope:
    """The searches made in one scope: their trace ids (oldest first) and the latest one.

    ``last`` is None before any search and after an untraced one (tracing off).
    """

    trace_ids: list[str] = field(default_factory=list)
    last: str | None = None


class LastTrace:
    """The latest trace id of one store, per context and shared with the work it spawns."""

    def __init__(self, name: str) -> None:
        self._var: ContextVar[TraceScope | None] = ContextVar(name, default=None)

    def get(self) -> str | None:
        """The trace id of the latest search in this context (None if none)."""
        scope = self._var.get()
        return None if scope is None else scope.last

    def set(self, trace_id: str | None) -> None:
        """Record ``trace_id`` as this context's latest search (None: an untraced search)."""
        scope = self._var.get()
        if scope is None:
            scope = TraceScope()
            self._var.set(scope)
        scope.last = trace_id
        if trace_id is not None:
            scope.trace_ids.append(trace_id)

    @contextmanager
    def scope(self) -> Iterator[TraceScope]:
        """A fresh slot for the block; the outer one comes back afterwards."""
        scope = TraceScope()
        token = self._var.set(scope)
        try:
            yield scope
        finally:
            self._var.reset(token)


@dataclass(frozen=True)
class Citations:
    """What :meth:`NudgeSurface.record_citations` found in an answer."""

    relevant_ids: list[str]
    unknown_ids: list[str]


_CITATION = re.compile(r"\[([^\[\]\n]{1,200})\]")


def cited_ids(answer: Any) -> list[str]:
    """The ids an answer cites as ``[id]`` (a string, or a message with ``.content``), in order."""
    text = getattr(answer, "content", answer)
    if isinstance(text, list):  # content blocks of a chat message
        text = " ".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in text)
    if not isinstance(text, str):
        msg = (
            f"answer: found {type(answer).__name__}, expected a string or a message with "
            "string .content."
        )
        raise NudgeError(msg)
    found: list[str] = []
    for match in _CITATION.finditer(text):
        for part in match.group(1).split(","):
            part = part.strip()
            if part.lower().startswith("id:"):
                part = part[3:].strip()
            if part:
                found.append(part)
    return list(dict.fromkeys(found))


class NudgeSurface:
    """Traces, feedback, vectors and versions of a wrapped store (a face's ``nudge_state``).

    A face inherits this mixin and provides ``nudge_state``; nothing here knows a framework.
    """

    if TYPE_CHECKING:

        @property
        def nudge_state(self) -> NudgeState: ...

    # -- tracing --------------------------------------------------------------------------------
    @property
    def tracing(self) -> bool:
        """Whether searches are logged as traces (settable; off for evaluation runs)."""
        return self.nudge_state.tracing

    @tracing.setter
    def tracing(self, on: bool) -> None:
        self.nudge_state.tracing = bool(on)

    @property
    def last_trace_id(self) -> str | None:
        """Trace id of this store's latest search in this thread or task (or work it spawned)."""
        return self.nudge_state.last_trace.get()

    def trace_scope(self) -> Any:
        """A context manager collecting every search of this store made inside it.

        .. code-block:: python

            with store.trace_scope() as scope:
                answer = chain.invoke("how do refunds work?")
            store.record_feedback(scope.last, relevant_ids=["refund"])
        """
        return self.nudge_state.last_trace.scope()

    # -- feedback -------------------------------------------------------------------------------
    def record_feedback(
        self,
        trace_id: str,
        *,
        relevant_ids: Iterable[str] = (),
        irrelevant_ids: Iterable[str] = (),
        rating: float | None = None,
        text: str | None = None,
        id_key: str | None = None,
    ) -> None:
        """Attach a judgment to a search; relevant ids need not be among its results.

        ``id_key``: the ids are parent ids (a ``ParentDocumentRetriever``'s or
        ``MultiVectorRetriever``'s ``id_key``); each maps to the chunks whose metadata carries
        it. The store's ``parent_id_key`` is used for ids the store does not hold when not given.
        """
        self.nudge_state.record_feedback(
            trace_id,
            relevant_ids=relevant_ids,
            irrelevant_ids=irrelevant_ids,
            rating=rating,
            text=text,
            id_key=id_key,
        )

    def record_citations(self, trace_id: str, answer: Any) -> Citations:
        """Turn the ``[id]`` citations of an answer into relevant ids of ``trace_id``.

        Returns the cited ids that were recorded as relevant and those the store does not hold
        (not recorded).
        """
        cited = cited_ids(answer)
        known = self.nudge_state.known_ids(cited)
        relevant = [i for i in cited if i in known]
        if relevant:
            self.record_feedback(trace_id, relevant_ids=relevant)
        return Citations(relevant, [i for i in cited if i not in known])

    def traces(self, **kwargs: Any) -> list[Trace]:
        """Every recorded search, oldest first (``since=`` a time for newer ones only)."""
        return self.nudge_state.traces(**kwargs)

    def feedback(self, trace_id: str | None = None) -> list[Feedback]:
        """Every feedback row, or those of one trace."""
        return self.nudge_state.feedback(trace_id)

    # -- vectors and versions -------------------------------------------------------------------
    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """The vectors the wrapped store serves now for ``ids`` (float32, in order)."""
        return self.nudge_state.get_vectors(ids)

    def base_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """The base (version 0) vectors of ``ids``, float32."""
        return self.nudge_state.base_vectors(ids)

    def apply_vectors(
        self,
        vectors: Mapping[str, np.ndarray],
        *,
        note: str | None = None,
        method: str | None = None,
        gamma: float | None = None,
        report: dict | None = None,
    ) -> int:
        """Write ``{id: vector}`` in place as a new version; return its number."""
        return self.nudge_state.apply_vectors(
            vectors, note=note, method=method, gamma=gamma, report=report
        )

    def rollback(self, version: int | None = None) -> int:
        """Restore ``version`` exactly (None: the previous one, 0: the base); return it."""
        return self.nudge_state.rollback(version)

    def versions(self) -> list[VersionInfo]:
        """Every recorded version, oldest first."""
        return self.nudge_state.versions()

    def close(self) -> None:
        """Close the trace and version logs (the wrapped store stays open)."""
        self.nudge_state.close()
