"""The NUDGE surface of a wrapped store, written once for both faces.

A face (the LangChain or the LlamaIndex ``NudgedVectorStore``) holds a
:class:`~nudge_rag.state.state.NudgeState` as ``nudge_state`` and inherits :class:`NudgeSurface`:
feedback, citations, traces, vectors and versions are the state's own methods, reached through
the face (one signature, one implementation, no forwarding code).

The latest trace id is kept per store and per thread or asyncio task, and passed up to the
contexts that spawned the search (:mod:`nudge_rag.state.last_trace`); ``store.trace_scope()``
lists every search made inside a block, in any thread or task it spawns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from nudge_rag.state.state import NudgeState

__all__ = ["NudgeSurface"]

P = ParamSpec("P")
R = TypeVar("R")


class _StateMethod(Generic[P, R]):
    """A face attribute that is its ``nudge_state``'s bound method (doc and signature kept)."""

    def __init__(self, method: Callable[Concatenate[NudgeState, P], R]) -> None:
        self.name = method.__name__
        self.__doc__ = method.__doc__

    @overload
    def __get__(self, face: None, owner: type) -> _StateMethod[P, R]: ...
    @overload
    def __get__(self, face: object, owner: type) -> Callable[P, R]: ...
    def __get__(self, face: object | None, owner: type) -> Any:
        if face is None:
            return self
        return getattr(face.nudge_state, self.name)  # type: ignore[attr-defined]


class NudgeSurface:
    """Traces, feedback, vectors and versions of a wrapped store (a face's ``nudge_state``).

    A face inherits this mixin and provides ``nudge_state``; nothing here knows a framework.
    """

    if TYPE_CHECKING:

        @property
        def nudge_state(self) -> NudgeState: ...

    record_feedback = _StateMethod(NudgeState.record_feedback)
    record_citations = _StateMethod(NudgeState.record_citations)
    import_traces = _StateMethod(NudgeState.import_traces)
    record_answer_feedback = _StateMethod(NudgeState.record_answer_feedback)
    trace_scope = _StateMethod(NudgeState.trace_scope)
    traces = _StateMethod(NudgeState.traces)
    iter_traces = _StateMethod(NudgeState.iter_traces)
    delete_traces = _StateMethod(NudgeState.delete_traces)
    feedback = _StateMethod(NudgeState.feedback)
    get_vectors = _StateMethod(NudgeState.get_vectors)
    base_vectors = _StateMethod(NudgeState.base_vectors)
    apply_vectors = _StateMethod(NudgeState.apply_vectors)
    rollback = _StateMethod(NudgeState.rollback)
    versions = _StateMethod(NudgeState.versions)
    close = _StateMethod(NudgeState.close)

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
