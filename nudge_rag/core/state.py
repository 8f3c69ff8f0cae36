"""NudgeState: the one object both faces hold; it implements the version API once.

It owns a store adapter, the trace log (``traces.sqlite``) and the version log
(``versions.sqlite``) in one state folder, and the callbacks a face provides: how to embed
queries and how to read document texts. The engine talks to a store only through this object.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.core.citations import Citations, cited_ids
from nudge_rag.core.errors import NudgeError, UnknownIdError
from nudge_rag.core.last_trace import LastTrace
from nudge_rag.core.stores.base import (
    Metric,
    StoreAdapter,
    exact_readback,
    missing_ids,
    present_ids,
    raise_unknown,
)
from nudge_rag.core.traces import Feedback, Trace, TraceLog
from nudge_rag.core.versions import VerifyReport, VersionInfo, VersionLog, check_metric

TRACES_FILE = "traces.sqlite"
VERSIONS_FILE = "versions.sqlite"


def _expand(ids: list[str], held: set[str], children: Mapping[str, list[str]]) -> list[str]:
    """``ids`` with each parent id replaced by its chunk ids (order kept, no repeats)."""
    out: list[str] = []
    for i in ids:
        out.extend([i] if i in held else children.get(i, [i]))
    return list(dict.fromkeys(out))


class NudgeState:
    """Traces, versions and the store adapter of one wrapped store.

    Example:
        .. code-block:: python

            state = NudgeState(ChromaAdapter(collection), "nudge_state")
            tid = state.record_search("q", qvec, 4, None, ["a", "b"], [0.1, 0.2])
            state.record_feedback(tid, relevant_ids=["c"])
            v = state.apply_vectors({"c": new_vec}, method="nudge-n")
            state.rollback()          # back to the previous version
    """

    def __init__(
        self,
        adapter: StoreAdapter,
        state_dir: str | os.PathLike[str],
        *,
        embed_queries: Callable[[list[str]], np.ndarray] | None = None,
        get_texts: Callable[[list[str]], list[str | None]] | None = None,
        children_of: Callable[[list[str], str], dict[str, list[str]]] | None = None,
        parent_id_key: str | None = None,
        after_write: Callable[[], None] | None = None,
        tracing: bool = True,
        retention_days: float | None = None,
    ):
        for attr in ("get", "put", "ids", "metric"):
            if not hasattr(adapter, attr):
                msg = (
                    f"adapter: expected a StoreAdapter (get, put, ids, metric), found "
                    f"{type(adapter).__name__} without {attr!r}; use an adapter from "
                    "nudge_rag.core.stores."
                )
                raise NudgeError(msg)
        self.adapter = adapter
        self.metric: Metric = Metric(adapter.metric)
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.tracing = bool(tracing)
        self._embed_queries = embed_queries
        self._get_texts = get_texts
        self._children_of = children_of
        self.parent_id_key = parent_id_key
        self.last_trace = LastTrace(f"nudge_last_trace_{id(self)}")
        self.trace_log = TraceLog(self.state_dir / TRACES_FILE, retention_days=retention_days)
        self.version_log = VersionLog(self.state_dir / VERSIONS_FILE, adapter)
        self.version_log.after_write = after_write

    # -- traces --------------------------------------------------------------------------------
    def record_search(
        self,
        query: str | None,
        embedding: np.ndarray | Sequence[float],
        k: int,
        filter: Any,
        result_ids: Sequence[str],
        scores: Sequence[float],
    ) -> str | None:
        """Log one search; return its trace id (None when tracing is off)."""
        if not self.tracing:
            return None
        return self.trace_log.record(
            query=query,
            embedding=embedding,
            k=k,
            filter=filter,
            result_ids=result_ids,
            scores=scores,
        )

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
        """Attach feedback to a trace; every id must be in the store (``UnknownIdError``).

        ``id_key`` (or the state's ``parent_id_key`` for ids the store does not hold): the ids
        are parent ids, each standing for the chunks whose metadata ``id_key`` carries it.
        """
        for name, given in (("relevant_ids", relevant_ids), ("irrelevant_ids", irrelevant_ids)):
            if isinstance(given, (str, bytes)):
                msg = (
                    f"{name}: found a single string {given!r}, expected a list of ids; pass "
                    f"{name}=[{given!r}]."
                )
                raise NudgeError(msg)
        rel = [str(i) for i in relevant_ids]
        irr = [str(i) for i in irrelevant_ids]
        asked = list(dict.fromkeys(rel + irr))
        if asked:
            key = id_key or self.parent_id_key
            held = present_ids(self.adapter, asked) if id_key is None else set()
            children = self.children(missing_ids(asked, held), key) if key else {}
            rel = _expand(rel, held, children)
            irr = _expand(irr, held, children)
            raise_unknown(
                [i for i in asked if i not in held and not children.get(i)],
                "record_feedback: the store"
                + (f" (nor any chunk with metadata {key!r} equal to it)" if key else ""),
            )
        self.trace_log.record_feedback(
            trace_id, relevant_ids=rel, irrelevant_ids=irr, rating=rating, text=text
        )

    def record_citations(self, trace_id: str, answer: Any) -> Citations:
        """Turn the ``[id]`` citations of an answer into relevant ids of ``trace_id``.

        Only what that search showed counts: a cited id among its results, or a parent id
        (``parent_id_key``) whose chunks are among them. Every other cited id (another search's,
        or one the model made up) is returned in ``unknown_ids`` and not recorded.
        """
        found = list(self.trace_log.iter_traces(ids=[str(trace_id)], with_embeddings=False))
        if not found:
            msg = (
                f"trace_id: no trace {trace_id!r} (purged, or not this store's); pass the "
                "trace id the search's tool artifact carries."
            )
            raise UnknownIdError(msg)
        shown = found[0].result_ids
        cited = cited_ids(answer, whole=set(shown))
        relevant = [i for i in cited if i in shown]
        others = [i for i in cited if i not in shown]
        if others and self.parent_id_key is not None:
            children = self.children(others, self.parent_id_key)
            relevant += [c for i in others for c in children.get(i, []) if c in shown]
            others = [i for i in others if not any(c in shown for c in children.get(i, []))]
        relevant = list(dict.fromkeys(relevant))
        if relevant:
            self.record_feedback(trace_id, relevant_ids=relevant)
        return Citations(relevant, others)

    def trace_scope(self) -> Any:
        """A context manager collecting every search of this store made inside it.

        .. code-block:: python

            with store.trace_scope() as scope:
                answer = chain.invoke("how do refunds work?")
            store.record_feedback(scope.last, relevant_ids=["refund"])
        """
        return self.last_trace.scope()

    def known_ids(self, ids: Sequence[str]) -> set[str]:
        """The ids of ``ids`` the store holds."""
        return present_ids(self.adapter, [str(i) for i in ids]) if ids else set()

    def children(self, parent_ids: Sequence[str], id_key: str) -> dict[str, list[str]]:
        """The chunk ids whose metadata ``id_key`` equals each parent id (face callback)."""
        if not parent_ids:
            return {}
        if self._children_of is None:
            msg = (
                f"id_key: found {id_key!r}, but this store cannot look chunks up by metadata; "
                "pass the chunk ids instead."
            )
            raise NudgeError(msg)
        return self._children_of(list(parent_ids), id_key)

    def traces(self, **kw: Any) -> list[Trace]:
        """Every recorded trace (``since=`` a time to get only newer ones)."""
        return self.trace_log.traces(**kw)

    def iter_traces(self, **kw: Any) -> Iterator[Trace]:
        """Traces page by page (``with_embeddings=False`` skips vectors; ``since``, ``ids``)."""
        return self.trace_log.iter_traces(**kw)

    def delete_traces(self, ids: Iterable[str]) -> int:
        """Delete traces (and their feedback) by id, securely; return how many were deleted."""
        return self.trace_log.delete_traces(ids)

    def feedback(self, trace_id: str | None = None) -> list[Feedback]:
        """Every feedback row, or those of one trace."""
        return self.trace_log.feedback(trace_id)

    # -- vectors and versions ------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Every id the store holds."""
        return self.adapter.ids()

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """What the store holds now for ``ids`` (float32, in order)."""
        return self.adapter.get(list(ids))

    def base_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Base (version 0) vectors of ``ids``, float32."""
        return self.version_log.base_vectors(list(ids))

    def apply_vectors(
        self,
        vectors: Mapping[str, np.ndarray],
        *,
        note: str | None = None,
        method: str | None = None,
        gamma: float | None = None,
        report: dict | None = None,
        from_base: bool = False,
    ) -> int:
        """Write ``{id: vector}`` into the store as a new version; return the version number.

        ``from_base``: rows nudged now but not named go back to their exact base vectors.
        """
        check_metric(method, self.metric)
        return self.version_log.apply(
            vectors, method=method, gamma=gamma, note=note, report=report, from_base=from_base
        )

    def rollback(self, version: int | None = None) -> int:
        """Move to ``version`` (None: the previous one, 0: the base); return it."""
        return self.version_log.rollback(version)

    def versions(self) -> list[VersionInfo]:
        """Every recorded version, oldest first."""
        return self.version_log.versions()

    @property
    def current_version(self) -> int:
        """The version the store is at."""
        return self.version_log.current

    # -- callbacks from the face ---------------------------------------------------------------
    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed query texts with the face's embedding function, float32 ``(n, d)``."""
        if self._embed_queries is None:
            msg = (
                "embed_queries: this store was wrapped without an embedding function; pass "
                "embed_queries=... to NudgeState (the faces pass the store's embeddings)."
            )
            raise NudgeError(msg)
        out = np.asarray(self._embed_queries(list(texts)), dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != len(texts):
            msg = (
                f"embed_queries: expected a ({len(texts)}, d) matrix from the embedding "
                f"function, found shape {out.shape}."
            )
            raise NudgeError(msg)
        return out

    def texts(self, ids: Sequence[str]) -> list[str | None]:
        """The document texts of ``ids`` (None where unknown or no text reader was given)."""
        if self._get_texts is None:
            return [None] * len(ids)
        return list(self._get_texts(list(ids)))

    def on_upsert(self, ids: Sequence[str], vectors: np.ndarray | None = None) -> None:
        """Documents ``ids`` are (re)written: drop their nudges and base records.

        Call it before the write (a crash then leaves at worst an untracked nudge on the old
        document, never an old base on a new one); after the write, call it again with
        ``vectors``, the embeddings as given to the store, which are kept as the new base when the
        store does not read back exactly what it was given (cosine Chroma or Qdrant).
        """
        ids = [str(i) for i in ids]
        self.version_log.forget(ids)
        if vectors is not None and not exact_readback(self.adapter):
            self.version_log.record_base(ids, vectors)

    def on_delete(self, ids: Sequence[str]) -> None:
        """Call BEFORE deleting documents ``ids``: drops their nudges and base records."""
        self.version_log.forget([str(i) for i in ids])

    def close(self) -> None:
        """Close both logs, and the adapter's own connections (the wrapped store stays open)."""
        self.trace_log.close()
        self.version_log.close()
        if callable(getattr(type(self.adapter), "close", None)):
            self.adapter.close()  # type: ignore[attr-defined]

    # -- log and store agreement ---------------------------------------------------------------
    def check_fresh(self) -> None:
        """Raise unless the store serves the version the log is at (a few µs; call per search).

        ``StaleStoreError`` when another process moved the version and this process's store
        cannot see it (embedded Chroma, FAISS, in-memory: restart, or use a server);
        ``StoreDriftError`` / ``VersionLogError`` for a problem found on open (``repair()``).
        """
        self.version_log.check_fresh()

    def verify(self, *, rows: int | None = None) -> VerifyReport:
        """Check the version log and read every nudged row back (``rows``: at most that many).

        Example: ``print(store.nudge_state.verify())`` → ``ok: the store is at version 2; ...``.
        """
        return self.version_log.verify(rows=rows)

    def repair(self, *, adopt_store: bool = False) -> VerifyReport:
        """Make the log and the store agree again; returns what was done and a new verify().

        By default the log is trusted (the store's nudged rows are rewritten to the log's
        version); ``adopt_store=True`` makes the log follow what the store holds.
        """
        return self.version_log.repair(adopt_store=adopt_store)
