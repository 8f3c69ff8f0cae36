"""The trace id of a store's latest search, per thread or asyncio task.

Each thread or task that searches gets a slot of its own, so concurrent requests never read each
other's trace. A slot also passes each search up to the slots of the contexts it was spawned
from (a chain's steps, executor threads, gathered tasks), so a caller that has searched before,
or opened a :meth:`LastTrace.scope`, sees the searches of the work it waited on. A caller whose
chain ran the search in its own thread (LCEL's sync steps) sees it too. What a caller never
gets is another request's trace: a context that has not searched reads None, not an older id.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LastTrace", "TraceScope"]


@dataclass
class TraceScope:
    """The searches made in one scope: their trace ids (oldest first) and the latest one.

    ``last`` is None before any search and after an untraced one (tracing off).
    """

    trace_ids: list[str] = field(default_factory=list)
    last: str | None = None


def _unit() -> Any:
    """The running asyncio task, else the current thread: what runs one request's steps."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop in this thread
        task = None
    return task if task is not None else threading.current_thread()


class _Slot:
    """One context's latest trace id; ``scope`` (a ``trace_scope``) also lists every id."""

    __slots__ = ("last", "owner", "parent", "scope")

    def __init__(self, owner: Any, parent: _Slot | None, scope: TraceScope | None = None):
        self.owner = weakref.ref(owner)
        self.parent = parent
        self.scope = scope
        self.last: str | None = None


class LastTrace:
    """The latest trace id of one store (see the module docstring for whose search it is)."""

    def __init__(self, name: str) -> None:
        self._var: ContextVar[_Slot | None] = ContextVar(name, default=None)
        self._by_unit: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self) -> str | None:
        """The trace id of the latest search of this thread or task (None if none)."""
        unit = _unit()
        slot = self._var.get()
        if slot is not None and slot.owner() is unit:
            return slot.last
        with self._lock:
            return self._by_unit.get(unit)

    def set(self, trace_id: str | None) -> None:
        """Record ``trace_id`` as the latest search here (None: an untraced search)."""
        unit = _unit()
        slot = self._var.get()
        if slot is None or slot.owner() is not unit:  # this context's own slot, first time
            slot = _Slot(unit, slot)
            self._var.set(slot)
        with self._lock:
            self._by_unit[unit] = trace_id
        while slot is not None:  # and every slot of the contexts this one was spawned from
            slot.last = trace_id
            if slot.scope is not None:
                slot.scope.last = trace_id
                if trace_id is not None:
                    slot.scope.trace_ids.append(trace_id)
            slot = slot.parent

    @contextmanager
    def scope(self) -> Iterator[TraceScope]:
        """A slot for the block that lists every search made in it or in work it spawns."""
        scope = TraceScope()
        token = self._var.set(_Slot(_unit(), self._var.get(), scope))
        try:
            yield scope
        finally:
            self._var.reset(token)
