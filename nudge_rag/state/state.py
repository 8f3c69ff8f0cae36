"""NudgeState: the one object both faces hold; it implements the version API once.

It owns a store adapter, the trace log (``traces.sqlite``) and the version log
(``versions.sqlite``) in one state folder, or in Postgres schemas (``state="postgresql://..."``),
and the callbacks a face provides: how to embed
queries and how to read document texts. The engine talks to a store only through this object.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.errors import BadInputError, UnknownIdError
from nudge_rag.state.citations import Citations, answer_text, cited_ids
from nudge_rag.state.citations import cited_ids as _cited  # an argument of the same name below
from nudge_rag.state.db import Database, StateLocation, state_part
from nudge_rag.state.last_trace import LastTrace
from nudge_rag.state.records import (
    MAX_FUTURE_S,
    FutureTimes,
    ImportReport,
    TraceRecord,
    current_external_id,
    import_records,
)
from nudge_rag.state.traces.log import Feedback, Trace, TraceLog
from nudge_rag.state.versions.log import VerifyReport, VersionInfo, VersionLog, check_metric
from nudge_rag.stores.base import (
    Metric,
    StoreAdapter,
    approximate_search,
    can_search,
    exact_readback,
    missing_ids,
    present_ids,
    raise_unknown,
    store_count,
)

__all__ = ["POSITIVE_RATING", "NudgeState"]

POSITIVE_RATING = 0.5
"""An answer rating at or above this (on the 0..1 scale) is positive; below, negative."""


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
        state: str | os.PathLike[str] | StateLocation,
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
                    "nudge_rag.stores."
                )
                raise BadInputError(msg)
        self.adapter = adapter
        self.metric: Metric = Metric(adapter.metric)
        #: where the state lives: a folder, or a Postgres URL and schema
        self.location = StateLocation.parse(state)
        #: the state folder (None when the state is in Postgres)
        self.state_dir = self.location.folder
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.tracing = bool(tracing)
        self._embed_queries = embed_queries
        self._get_texts = get_texts
        self._children_of = children_of
        self.parent_id_key = parent_id_key
        self.last_trace = LastTrace(f"nudge_last_trace_{id(self)}")
        self.trace_log = TraceLog(self.part("traces"), retention_days=retention_days)
        self.version_log = VersionLog(self.part("versions"), adapter)
        self.version_log.after_write = after_write

    def part(self, name: str) -> Path | Database:
        """Where one part of the state lives: ``traces``, ``versions`` or ``labels``."""
        return state_part(self.location, name)

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
            external=current_external_id(),
        )

    def import_traces(
        self,
        records: Iterable[TraceRecord],
        *,
        source: str | None = None,
        strict: bool = False,
        max_future_s: float | None = MAX_FUTURE_S,
        future_times: FutureTimes | str = FutureTimes.CLAMP,
        progress: bool | None = None,
    ) -> ImportReport:
        """Add past retrievals (from LangSmith, Langfuse, Phoenix, JSONL) to the trace log.

        ``records``: :class:`~nudge_rag.state.records.TraceRecord` items, e.g. from
        ``nudge_rag.importers.langsmith.read(runs, feedback)`` (read lazily and imported in
        batches: memory does not grow with the export); ``source`` overrides each record's id
        space. Original times are kept; queries without an embedding are embedded with the
        store's embedding function, in batches. Idempotent on (source, external id): importing
        the same export twice adds nothing, and feedback that arrived since joins the trace it
        names (also a live search that ran in that run or span). Chunk ids the store does not
        hold are dropped and counted. Each record is checked and converted before its batch is
        written: a bad one (no query, a bad embedding, time, score, ``k``, id or filter, an item
        the reader could not read, a row the database refuses) is reported with its reason in
        ``bad`` and never costs the others; with ``strict=True`` it raises a ``NudgeError``
        naming it, and nothing is stored (every row is then held until all are checked).

        A time (of a record or its feedback) more than ``max_future_s`` seconds ahead of this
        machine's clock (None: no limit) is kept at the import's time and counted in
        ``future_times``, with one ``RuntimeWarning``; ``future_times="refuse"`` makes such a
        record bad instead. ``progress``: a progress bar (tqdm, if installed; None: on a
        terminal, after 2 s).

        Example: ``print(store.import_traces(langsmith.read(runs, feedback)))`` →
        ``imported 812 traces, 0 already there, 809 feedback rows; ...``.
        """
        return import_records(
            self,
            records,
            source=source,
            strict=strict,
            max_future_s=max_future_s,
            future_times=future_times,
            progress=progress,
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
        text_is_answer: bool = False,
        provenance: str = "human",
    ) -> None:
        """Attach feedback to a trace; every id must be in the store (``UnknownIdError``).

        ``provenance``: ``"human"`` (a person's verdict, the default) or ``"model"`` (an
        agent's citations, an LLM evaluator): the engine audits its judge against human labels
        only, and grades its proof with them.

        ``id_key`` (or the state's ``parent_id_key`` for ids the store does not hold): the ids
        are parent ids, each standing for the chunks whose metadata ``id_key`` carries it.
        """
        for name, given in (("relevant_ids", relevant_ids), ("irrelevant_ids", irrelevant_ids)):
            if isinstance(given, (str, bytes)):
                msg = (
                    f"{name}: found a single string {given!r}, expected a list of ids; pass "
                    f"{name}=[{given!r}]."
                )
                raise BadInputError(msg)
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
            trace_id,
            relevant_ids=rel,
            irrelevant_ids=irr,
            rating=rating,
            text=text,
            text_is_answer=text_is_answer,
            provenance=provenance,
        )

    def record_citations(self, trace_id: str, answer: Any) -> Citations:
        """Turn the ``[id]`` citations of an answer into relevant ids of ``trace_id``.

        Only what that search showed counts: a cited id among its results, or a parent id
        (``parent_id_key``) whose chunks are among them. The other cited ids are not recorded:
        those the store does not hold (made up, deleted) are returned in ``unknown_ids``, those
        it holds but this search did not show (another search's) in ``not_shown_ids``. The
        citations are recorded as model-made feedback (``provenance="model"``): no person
        vouched for them.
        """
        shown = self._shown_ids(trace_id)
        relevant, others = self._shown_only(shown, cited_ids(answer, whole=set(shown)))
        if relevant:
            self.record_feedback(trace_id, relevant_ids=relevant, provenance="model")
        return self._citations(relevant, others)

    def record_answer_feedback(
        self,
        trace_id: str,
        rating: float,
        *,
        answer: Any = None,
        cited_ids: Iterable[str] | None = None,
    ) -> Citations:
        """Record a user's rating of the answer built on search ``trace_id``.

        ``rating`` is on a 0..1 scale (``True``/``False`` for a thumbs up/down); at least 0.5 is
        positive. A positive rating makes the chunks the answer cites relevant: ``cited_ids``,
        or the ``[id]`` marks in ``answer`` when it is None; only ids the search showed count,
        as in :meth:`record_citations`. A positive rating without such citations marks the
        trace for the LLM judge, which decides which of the shown chunks the answer rests on
        at the next ``finetune()``. A negative rating is kept and counted, never a positive.
        The answer text (a string or a message's ``.content``) is stored with the rating. It is
        human feedback: a person rated the answer those chunks made.
        """
        number = isinstance(rating, int | float | np.integer | np.floating)
        if not number or not 0.0 <= float(rating) <= 1.0:
            msg = (
                f"rating: found {rating!r}, expected a number in [0, 1] or a bool (True = "
                "helpful); map your scale onto it, e.g. thumbs down 0 / up 1, stars (s - 1) / 4."
            )
            raise BadInputError(msg)
        if isinstance(cited_ids, str | bytes):
            msg = f"cited_ids: found a single string {cited_ids!r}; pass cited_ids=[{cited_ids!r}]."
            raise BadInputError(msg)
        text = None if answer is None else answer_text(answer)
        shown = self._shown_ids(trace_id)
        relevant: list[str] = []
        others: list[str] = []
        if float(rating) >= POSITIVE_RATING:
            if cited_ids is None:
                cited = _cited(text, whole=set(shown)) if text else []
            else:
                cited = [str(i) for i in cited_ids]
            relevant, others = self._shown_only(shown, cited)
        self.record_feedback(
            trace_id, relevant_ids=relevant, rating=float(rating), text=text, text_is_answer=True
        )
        return self._citations(relevant, others)

    def _citations(self, relevant: list[str], others: list[str]) -> Citations:
        """``others`` (cited, not shown) split into ids the store does not hold and ids it
        holds (a parent id through ``parent_id_key``: one with chunks in the store)."""
        held = self.known_ids(others) if others else set()
        rest = [i for i in others if i not in held]
        if rest and self.parent_id_key is not None:
            children = self.children(rest, self.parent_id_key)
            held |= {i for i in rest if children.get(i)}
        return Citations(
            relevant,
            [i for i in others if i not in held],
            [i for i in others if i in held],
        )

    def _shown_ids(self, trace_id: str) -> list[str]:
        """The chunk ids search ``trace_id`` returned (``UnknownIdError`` without such a trace)."""
        found = list(self.trace_log.iter_traces(ids=[str(trace_id)], with_embeddings=False))
        if not found:
            msg = (
                f"trace_id: no trace {trace_id!r} (purged, or not this store's); pass the "
                "trace id the search's tool artifact carries."
            )
            raise UnknownIdError(msg)
        return found[0].result_ids

    def _shown_only(self, shown: list[str], cited: list[str]) -> tuple[list[str], list[str]]:
        """``(relevant, others)``: the cited ids the search showed (parent ids through
        ``parent_id_key`` to their shown chunks), and the rest."""
        relevant = [i for i in cited if i in shown]
        others = [i for i in cited if i not in shown]
        if others and self.parent_id_key is not None:
            children = self.children(others, self.parent_id_key)
            relevant += [c for i in others for c in children.get(i, []) if c in shown]
            others = [i for i in others if not any(c in shown for c in children.get(i, []))]
        return list(dict.fromkeys(relevant)), others

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
            raise BadInputError(msg)
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

    def iter_feedback(self, **kw: Any) -> Iterator[tuple[int, Feedback]]:
        """``(seq, feedback)`` in insertion order (``after_seq=`` the last one already seen)."""
        return self.trace_log.iter_feedback(**kw)

    def last_feedback_seq(self) -> int:
        """The insertion number of the newest feedback row (0: none)."""
        return self.trace_log.last_feedback_seq()

    # -- vectors and versions ------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Every id the store holds."""
        return self.adapter.ids()

    def count(self) -> int:
        """How many ids the store holds (its ``count()``, else ``len(ids())``)."""
        return store_count(self.adapter)

    @property
    def can_search(self) -> bool:
        """Whether the store offers its own batched ``search(queries, k)``."""
        return can_search(self.adapter)

    @property
    def approximate_search(self) -> bool:
        """Whether the store's ``search`` answers from an index with less than full recall."""
        return approximate_search(self.adapter)

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """What the store holds now for ``ids`` (float32, in order)."""
        return self.adapter.get(list(ids))

    def base_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Base (version 0) vectors of ``ids``, float32."""
        return self.version_log.base_vectors(list(ids))

    def base_matrix(self) -> tuple[list[str], np.ndarray]:
        """Every id the store holds and its base vector (one float32 matrix, one pass)."""
        return self.version_log.base_matrix()

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
            raise BadInputError(msg)
        out = np.asarray(self._embed_queries(list(texts)), dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != len(texts):
            msg = (
                f"embed_queries: expected a ({len(texts)}, d) matrix from the embedding "
                f"function, found shape {out.shape}."
            )
            raise BadInputError(msg)
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

    def check_store(self) -> None:
        """Raise ``WrongStoreError`` unless the store holds the ids the version log names (a
        store holding none or a small share of them is another collection, or a new one)."""
        self.version_log.check_store()

    def repair(self, *, adopt_store: bool = False, forget_missing: bool = False) -> VerifyReport:
        """Make the log and the store agree again; returns what was done and a new verify().

        By default the log is trusted (the store's nudged rows are rewritten to the log's
        version); ``adopt_store=True`` makes the log follow what the store holds.
        ``forget_missing=True`` drops from the log the ids the store does not hold (the
        report's ``forgotten`` lists them): the only way rows ever leave the log.
        """
        return self.version_log.repair(adopt_store=adopt_store, forget_missing=forget_missing)
