"""The trace log: every search a face served, and the feedback users sent about it.

One SQLite database (WAL mode) in the store's state folder, created owner-only (0600) because it
holds users' queries, or a schema in Postgres shared by every worker (``nudge_rag.state.db``: the
SQL here is the same for both). Searches are appended by a background writer thread in batches,
so a search pays only for queueing its row. The writer lets rows gather for up to ``LINGER_S`` (or
``BATCH_ROWS`` rows) before one transaction writes them all, so a busy server wakes it a few times
a second, not once per search. Every read (and ``record_feedback``) first waits for the queue to
be written, and ``close`` (also run at interpreter exit) flushes it. A batch that fails to write
(disk full, database locked) stays queued and is retried; ``flush`` raises the error meanwhile. A
process killed outright loses the rows still queued (at most ``LINGER_S`` worth).

Bad rows never cost other rows. ``record`` normalises what it can (each lone surrogate in a text,
as broken client JSON decodes, becomes U+FFFD) and never raises for what the search produced: a
trace it cannot store faithfully (an embedding that is empty or not finite in float32, ``k`` not
an integer in 1..2**63-1) is not written, goes to the ``quarantine`` table with the reason, is
counted in :meth:`TraceLog.stats` and warned about once; ``record`` then returns None, as for an
untraced search. A row SQLite still refuses inside a batch is retried alone, quarantined the same
way, and the rest of the batch is written.

Rows are only appended; deletions are :meth:`TraceLog.purge` (also run on open and every few
thousand writes when ``retention_days`` is set) and :meth:`TraceLog.delete_traces`. Both run with
SQLite's ``secure_delete`` on and truncate the WAL afterwards, so deleted text is overwritten in
the file. Nothing here leaves the machine: :meth:`TraceLog.export_jsonl` writes a local file
(strict JSON, replaced atomically, owner-only). ``TraceLog(path, read_only=True)`` opens an
existing log without ever writing or creating anything (for read-only commands on a read-only
folder). A damaged or foreign file is reported as one ``NudgeError`` naming the file and the fix.

The tables and migrations are in :mod:`~nudge_rag.state.traces.schema`, the writer thread in
:mod:`~nudge_rag.state.traces.writer`, the export in :mod:`~nudge_rag.state.traces.export`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
import time as _time
import warnings
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.errors import BadInputError, NudgeError, UnknownIdError
from nudge_rag.state.db import Database
from nudge_rag.state.traces import export
from nudge_rag.state.traces.schema import (
    _FEEDBACK_COLUMNS,
    _IN_CHUNK,
    _INSERT,
    _INSERT_QUARANTINE,
    _MIGRATIONS,
    FEEDBACK_PROVENANCES,
    SCORE_KINDS,
    Feedback,
    Trace,
    _db_row,
    _describe,
    _feedback_columns,
    _feedback_from_row,
    _in,
    _k_or_none,
    _trace_from_row,
    check_provenance,
    clean_text,
    embedding_blob,
    embedding_problem,
    filter_as_dict,
    trace_database,
)
from nudge_rag.state.traces.writer import BATCH_ROWS, LINGER_S, BatchWriter

__all__ = [
    "BATCH_ROWS",
    "FEEDBACK_PROVENANCES",
    "LINGER_S",
    "PAGE_ROWS",
    "SCORE_KINDS",
    "Feedback",
    "Trace",
    "TraceLog",
    "check_provenance",
    "clean_text",
    "embedding_blob",
    "embedding_problem",
    "filter_as_dict",
    "trace_database",
]

_PURGE_EVERY = 5000  # writes between two retention purges
PAGE_ROWS = 1000  # traces read per query by iter_traces (what a reader holds at once)
_OPEN_LOGS: weakref.WeakSet[TraceLog] = weakref.WeakSet()

# a row-level failure (this row cannot be bound or violates a constraint); anything else, an
# OperationalError (disk full, locked, read-only) or a damaged file, fails the whole batch
_VALUE_ERRORS = (ValueError, TypeError, OverflowError)
_IMPORT_ROWS = 500  # imported traces per transaction


@atexit.register
def _flush_open_logs() -> None:
    for log in list(_OPEN_LOGS):
        log.close()


class _TraceIds:
    """128-bit random trace ids (as random as uuid4), drawn from ``os.urandom`` 256 at a time:
    one system call per 256 searches instead of one per search (~7 µs on a busy VM)."""

    _BATCH = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: list[str] = []
        self._pid = os.getpid()

    def __call__(self) -> str:
        with self._lock:
            if not self._pool or self._pid != os.getpid():  # a forked child draws its own
                raw = os.urandom(16 * self._BATCH).hex()
                self._pool = [raw[i : i + 32] for i in range(0, len(raw), 32)]
                self._pid = os.getpid()
            return self._pool.pop()


_new_trace_id = _TraceIds()


class TraceLog:
    """Append-only SQLite log of searches and feedback, safe to share between threads.

    Key init args:
        path: the database file (created owner-only with its folder, unless ``read_only``).
        retention_days: purge traces older than this on open and every few thousand writes.
        read_only: open an existing log with SQLite's ``mode=ro``; it never writes or creates
            anything (no retention purge); recording, feedback and deletions raise. A log that
            no process has open (no ``-wal`` file) is read as ``immutable``, so SQLite needs no
            ``-shm`` file either (a read-only folder); a writer that opens it meanwhile may then
            make a long read fail, never the file.

    Example:
        .. code-block:: python

            log = TraceLog("state/traces.sqlite", retention_days=30)
            tid = log.record(query="q", embedding=vec, k=4, result_ids=["a"], scores=[0.9])
            log.record_feedback(tid, relevant_ids=["b"], rating=1.0)
            for t in log.iter_traces(with_embeddings=False):   # pages, not the whole log
                ...
            log.export_jsonl("traces.jsonl")
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | Database,
        *,
        retention_days: float | None = None,
        read_only: bool = False,
    ):
        if retention_days is not None and not retention_days > 0:
            msg = (
                f"retention_days: expected a positive number of days or None (keep all), "
                f"found {retention_days!r}."
            )
            raise BadInputError(msg)
        self._database = path if isinstance(path, Database) else trace_database(Path(path))
        self.path = self._database.path  # None in Postgres
        self.where = self._database.label
        self._row_errors: tuple[type[BaseException], ...] = (
            *self._database.row_errors,
            *_VALUE_ERRORS,
        )
        self.retention_days = retention_days
        self.read_only = bool(read_only)
        self._lock = threading.Lock()
        self._conn = self._open()
        self._writes = 0
        self._closed = False
        self._warned = False
        self._writer = BatchWriter(
            where=self.where,
            name=f"nudge-traces-{Path(self.where).name}",
            transaction=self._transaction,
            row_errors=self._row_errors,
            product=self._database.product,
            written=self._written,
        )
        _OPEN_LOGS.add(self)
        if retention_days is not None and not self.read_only:
            self.purge(retention_days)

    def _open(self) -> Any:
        """Connect and bring the schema up to date; a bad database is one clear NudgeError."""
        conn: Any = None
        try:
            conn = self._database.connect(read_only=self.read_only)
            if not self.read_only:
                self._database.migrate(conn, _MIGRATIONS)
            self._tables = self._database.tables(conn)
            if "traces" not in self._tables:
                msg = f"{self.where}: no traces table (not a nudge-rag trace log)"
                raise NudgeError(msg)
            self._external_ids = "external_id" in self._database.columns(conn, "traces")
            self._feedback_cols = _feedback_columns(set(self._database.columns(conn, "feedback")))
            conn.execute("SELECT seq, id, embedding FROM traces ORDER BY seq DESC LIMIT 1")
        except (self._database.Error, OSError, NudgeError) as e:
            if conn is not None:
                conn.close()
            raise self._db_error(e) from None
        return conn

    def _db_error(self, err: BaseException) -> NudgeError:
        """One line naming the file, what SQLite said and the fix."""
        if isinstance(err, NudgeError):
            return err
        if isinstance(err, self._database.value_errors):
            msg = (
                f"{self.where}: {self._database.product} refused a value ({err}); nothing was "
                "written. Remove what it names (Postgres text holds no NUL characters) and retry."
            )
        elif isinstance(err, self._database.OperationalError | OSError):
            msg = (
                f"{self.where}: cannot use the trace database ({err}); check that it is "
                "readable (and writable, or open it with read_only=True), that the disk is not "
                "full and, for Postgres, that the server is reachable."
            )
        elif self.path is None:
            msg = (
                f"{self.where}: not a usable trace log ({err}); drop or rename the schema and a "
                "new, empty log is created on the next open, or restore it from a backup."
            )
        else:
            msg = (
                f"{self.path}: not a readable trace database ({err}); it is damaged or not a "
                f"nudge-rag trace log. Move it aside (mv '{self.path}' '{self.path}.bad') and a "
                "new, empty log is created on the next open, or restore it from a backup."
            )
        return NudgeError(msg)

    @contextlib.contextmanager
    def _db(self) -> Iterator[Any]:
        """The connection under the lock; the database's errors become one-line NudgeErrors."""
        with self._lock:
            self._check_open()
            try:
                yield self._live_conn()
            except self._database.Error as e:
                raise self._db_error(e) from e

    def _live_conn(self) -> Any:
        """The connection, replaced first if its server went away (lock held)."""
        self._conn = self._database.live(self._conn, read_only=self.read_only)
        return self._conn

    # -- writing -------------------------------------------------------------------------------
    def record(
        self,
        *,
        query: str | None,
        embedding: np.ndarray | Sequence[float],
        k: int,
        filter: Any = None,
        result_ids: Sequence[str],
        scores: Sequence[float],
        external: tuple[str, str] | None = None,
    ) -> str | None:
        """Append one search; return its new trace id, or None if it could not be stored.

        ``external``: (source, id) of the run or span the search ran in, kept as external_id
        ``"<source>:<id>"`` (see :func:`nudge_rag.state.records.current_external_id`).

        Lone surrogates in ``query`` become U+FFFD. A trace whose embedding is empty or not
        finite in float32, or whose ``k`` is not an integer in 1..2**63-1, is quarantined and
        counted (warned about once), never raised: the search already happened. Raises only for
        a caller's mistake (``query`` not text, one score per result id) or a closed log.
        """
        if query is not None:
            if not isinstance(query, str):  # SQLite would refuse the batch
                msg = f"query: expected the query text (str) or None, found {type(query).__name__}."
                raise BadInputError(msg)
            query = clean_text(query)
        blob, dim = embedding_blob(embedding)
        ids = [str(i) for i in result_ids]
        try:
            sc = [float(s) for s in scores]
        except TypeError:  # a store that gives no score for some results
            sc = [float("nan") if s is None else float(s) for s in scores]
        if len(sc) != len(ids):
            msg = (
                f"scores: expected one score per result id ({len(ids)}), found {len(sc)}; "
                "pass the scores the store returned with the results."
            )
            raise BadInputError(msg)
        trace_id = _new_trace_id()
        flt = filter_as_dict(filter)
        kk = _k_or_none(k)
        row = (
            trace_id,
            _time.time(),
            query,
            blob,
            dim,
            k if kk is None else kk,
            None if flt is None else json.dumps(flt),
            ids,
            sc,
            None if external is None else f"{external[0]}:{external[1]}",
            None,
        )
        problem = embedding_problem(np.frombuffer(blob, dtype=np.float32))
        if kk is None:
            problem = f"k: expected an integer in 1..2**63-1, found {k!r}"
        if problem is not None:
            self._write_row((trace_id, row[1], problem, _describe(row)), quarantine=True)
            self._warn_once(problem)
            return None
        self._write_row(row)
        return trace_id

    def _write_row(self, row: tuple, *, quarantine: bool = False) -> None:
        """Queue a trace row (or a quarantine row) for the writer thread."""
        if self.read_only:
            msg = f"TraceLog({self.where}) was opened read_only; open it without read_only=True."
            raise NudgeError(msg)
        if not self._writer.put(row, quarantine=quarantine):
            self._check_open()  # the writer stops only when the log closes: this raises

    def _warn_once(self, reason: str) -> None:
        if self._warned:
            return
        self._warned = True
        warnings.warn(
            f"TraceLog({self.where}): a trace could not be stored ({reason}); it is in the "
            "quarantine table and counted in stats()['quarantined'] (further ones are counted "
            "without a warning).",
            RuntimeWarning,
            stacklevel=3,
        )

    @property
    def max_pending(self) -> int:
        """Traces kept queued while writes fail (the newest; older ones are dropped, counted)."""
        return self._writer.max_pending

    @max_pending.setter
    def max_pending(self, rows: int) -> None:
        self._writer.max_pending = rows

    def _written(self, n: int) -> None:
        """The writer wrote ``n`` traces: purge by retention every ``_PURGE_EVERY`` writes."""
        before = self._writes
        self._writes += n
        if self.retention_days is not None and (
            self._writes // _PURGE_EVERY != before // _PURGE_EVERY
        ):
            with contextlib.suppress(self._database.Error):  # the next purge tries again
                self._purge(self.retention_days)

    def _transaction(self, write: Any, *quarantine: list[tuple]) -> None:
        """Run ``write(conn)`` and insert the ``quarantine`` rows in one transaction."""
        with self._lock, self._database.transaction(self._live_conn()) as conn:
            write(conn)
            for rows in quarantine:
                if rows:
                    conn.executemany(_INSERT_QUARANTINE, rows)

    def flush(self) -> None:
        """Wait until every recorded trace is in the database.

        Raises ``NudgeError`` if a write failed; the rows stay queued and are retried.
        """
        err, pending, unwarned = self._writer.drain()
        if unwarned is not None:
            self._warn_once(unwarned)
        if err is not None:
            msg = (
                f"writing traces to {self.where} failed: {err}; {pending} traces are queued and "
                "will be retried. Check the disk and permissions (Postgres: that the server is "
                "reachable)."
            )
            raise NudgeError(msg) from err

    def record_feedback(
        self,
        trace_id: str,
        *,
        relevant_ids: Iterable[str] = (),
        irrelevant_ids: Iterable[str] = (),
        rating: float | None = None,
        text: str | None = None,
        text_is_answer: bool = False,
        provenance: str = "human",
    ) -> None:
        """Attach feedback to trace ``trace_id`` (``UnknownIdError`` if there is no such trace).

        ``text`` must be a str (lone surrogates become U+FFFD) or None; ``text_is_answer``: it is
        the answer the rating judges (the support judge reads it), not a comment. ``provenance``:
        who made it, ``"human"`` (a person) or ``"model"`` (an agent's citations, an LLM
        evaluator).
        """
        provenance = check_provenance(provenance)
        for name, value in (("relevant_ids", relevant_ids), ("irrelevant_ids", irrelevant_ids)):
            if isinstance(value, str | bytes):
                msg = f"{name}: expected a list of chunk ids, found the one {value!r}; pass [id]."
                raise BadInputError(msg)
        if text is not None:
            if not isinstance(text, str):
                msg = (
                    f"text: expected the feedback text (str) or None, found "
                    f"{type(text).__name__}; decode it first (e.g. text.decode('utf-8'))."
                )
                raise BadInputError(msg)
            text = clean_text(text)
        rel = [str(i) for i in relevant_ids]
        irr = [str(i) for i in irrelevant_ids]
        if rating is not None:
            rating = float(rating)
            if not np.isfinite(rating):
                msg = f"rating: expected a finite number or None, found {rating!r}."
                raise BadInputError(msg)
        if not rel and not irr and rating is None and text is None:
            msg = (
                "record_feedback: found no relevant_ids, irrelevant_ids, rating or text; "
                "pass at least one of them."
            )
            raise BadInputError(msg)
        both = sorted(set(rel) & set(irr))
        if both:
            msg = (
                f"relevant_ids and irrelevant_ids both hold {both[:10]}; an id is either "
                "relevant or irrelevant to a query, remove it from one list."
            )
            raise BadInputError(msg)
        self._check_writable()
        self.flush()
        with self._db() as conn:
            hit = conn.execute("SELECT 1 FROM traces WHERE id = ?", (trace_id,)).fetchone()
            if hit is None:
                msg = (
                    f"trace_id: no trace {trace_id!r} in {self.where} (it may have been purged "
                    "by the retention setting); pass the 'nudge_trace_id' of a returned document."
                )
                raise UnknownIdError(msg)
            conn.execute(
                f"INSERT INTO feedback ({_FEEDBACK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    trace_id,
                    _time.time(),
                    json.dumps(rel),
                    json.dumps(irr),
                    rating,
                    text,
                    1 if text_is_answer and text is not None else None,
                    provenance,
                ),
            )

    def import_rows(
        self, rows: Sequence[tuple], *, batch_rows: int = _IMPORT_ROWS
    ) -> list[tuple[str, str, int]]:
        """Write imported traces now, ``batch_rows`` per transaction, keeping their times.

        Each row: ``(source, external_id, time, query, embedding float32 bytes, dim, k, filter
        json or None, result_ids, scores, feedback)``, feedback a list of ``(time, relevant_ids,
        irrelevant_ids, rating, text[, provenance])``. A row whose (source, external_id) is in
        the log already adds no trace (``INSERT ... ON CONFLICT DO NOTHING``), nor does one whose
        run or span a live trace with the same query ran in (external_id ``"<source>:<id>"``):
        its feedback rows not yet there join that trace. Returns per row (trace id, ``"new"`` /
        ``"duplicate"`` / ``"live"``, feedback rows added), or (the reason, ``"refused"``, 0) for
        a row the database refuses: it alone is left out, the others are written.
        """
        if batch_rows < 1:
            msg = f"batch_rows: expected a positive number of rows, found {batch_rows!r}."
            raise BadInputError(msg)
        self._check_writable()
        self.flush()
        out: list[tuple[str, str, int]] = []
        for start in range(0, len(rows), batch_rows):
            chunk = rows[start : start + batch_rows]
            with self._db() as conn:
                try:
                    with self._database.transaction(conn):
                        done = [_import_row(conn, r) for r in chunk]
                except self._row_errors:  # some row is refused: write them one by one
                    with self._database.transaction(conn):
                        done = [self._import_one(conn, r) for r in chunk]
            out.extend(done)
        return out

    def _import_one(self, conn: Any, r: tuple) -> tuple[str, str, int]:
        """:func:`_import_row` under a savepoint: a refused row is rolled back and named."""
        conn.execute("SAVEPOINT one_row")
        try:
            done = _import_row(conn, r)
        except self._row_errors as e:
            conn.execute("ROLLBACK TO SAVEPOINT one_row")
            reason = f"{self._database.product} refused the row: {type(e).__name__}: {e}"
            return reason.encode("ascii", "backslashreplace").decode(), "refused", 0
        conn.execute("RELEASE SAVEPOINT one_row")
        return done

    # -- reading -------------------------------------------------------------------------------
    def iter_traces(
        self,
        *,
        since: float | None = None,
        ids: Iterable[str] | None = None,
        with_embeddings: bool = True,
        page_rows: int = PAGE_ROWS,
    ) -> Iterator[Trace]:
        """The traces (oldest first), read ``page_rows`` at a time: memory stays flat.

        ``since``: only those recorded at or after this time. ``ids``: only these traces
        (unknown ids are skipped; oldest first within each page of ids).
        ``with_embeddings=False`` leaves every ``embedding`` empty and never reads them.
        """
        if page_rows < 1:
            msg = f"page_rows: expected a positive number of rows, found {page_rows!r}."
            raise BadInputError(msg)
        cols = "seq, id, time, query, " + ("embedding" if with_embeddings else "NULL")
        cols += ", k, filter, result_ids, scores"
        cols += ", external_id, source" if self._external_ids else ", NULL, NULL"
        self.flush()
        if ids is not None:
            if isinstance(ids, str | bytes):
                msg = f"ids: expected a list of trace ids, found the single {ids!r}; pass [id]."
                raise BadInputError(msg)
            wanted = list(dict.fromkeys(str(i) for i in ids))
            step = min(page_rows, _IN_CHUNK)
            for start in range(0, len(wanted), step):
                chunk = wanted[start : start + step]
                sql = f"SELECT {cols} FROM traces WHERE id IN ({_in(len(chunk))})"
                args: tuple = tuple(chunk)
                if since is not None:
                    sql += " AND time >= ?"
                    args += (float(since),)
                with self._db() as conn:
                    rows = conn.execute(sql + " ORDER BY seq", args).fetchall()
                yield from (_trace_from_row(r) for r in rows)
            return
        last = 0
        while True:
            sql = f"SELECT {cols} FROM traces WHERE seq > ?"
            args = (last,)
            if since is not None:
                sql += " AND time >= ?"
                args += (float(since),)
            with self._db() as conn:
                rows = conn.execute(sql + " ORDER BY seq LIMIT ?", (*args, page_rows)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield from (_trace_from_row(r) for r in rows)

    def traces(self, *, since: float | None = None) -> list[Trace]:
        """Every trace (oldest first), or those recorded at or after time ``since``.

        Holds them all in memory; :meth:`iter_traces` reads them in pages.
        """
        return list(self.iter_traces(since=since))

    def feedback(self, trace_id: str | None = None) -> list[Feedback]:
        """Every feedback row (oldest first), or those attached to ``trace_id``."""
        sql = f"SELECT {self._feedback_cols} FROM feedback"
        args: tuple = ()
        if trace_id is not None:
            sql += " WHERE trace_id = ?"
            args = (trace_id,)
        self.flush()
        with self._db() as conn:
            rows = conn.execute(sql + " ORDER BY seq", args).fetchall()
        return [_feedback_from_row(r) for r in rows]

    def iter_feedback(
        self, *, after_seq: int = 0, page_rows: int = PAGE_ROWS
    ) -> Iterator[tuple[int, Feedback]]:
        """``(seq, feedback)`` in insertion order, from the row after ``after_seq`` on, read
        ``page_rows`` at a time.

        ``seq`` is the number the log gave the row when it was written (increasing, never
        reused): unlike the row's ``time``, which an import keeps from its tool and a worker
        takes from its own clock, it says what arrived after what. On Postgres two workers'
        rows get their numbers when written and become visible when committed, so a row may
        appear a moment after one with a higher number.
        """
        if page_rows < 1:
            msg = f"page_rows: expected a positive number of rows, found {page_rows!r}."
            raise BadInputError(msg)
        self.flush()
        last = int(after_seq)
        while True:
            with self._db() as conn:
                rows = conn.execute(
                    f"SELECT seq, {self._feedback_cols} FROM feedback WHERE seq > ? ORDER BY seq"
                    " LIMIT ?",
                    (last, page_rows),
                ).fetchall()
            if not rows:
                return
            last = int(rows[-1][0])
            yield from ((int(r[0]), _feedback_from_row(r[1:])) for r in rows)

    def last_feedback_seq(self) -> int:
        """The insertion number of the newest feedback row (0: none yet); see
        :meth:`iter_feedback`."""
        self.flush()
        with self._db() as conn:
            row = conn.execute("SELECT max(seq) FROM feedback").fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def quarantined(self) -> list[dict[str, Any]]:
        """The traces that could not be stored (oldest first): id, time, reason, row (ASCII)."""
        self.flush()
        if "quarantine" not in self._tables:
            return []
        with self._db() as conn:
            rows = conn.execute(
                "SELECT trace_id, time, reason, row FROM quarantine ORDER BY seq"
            ).fetchall()
        return [{"trace_id": t, "time": tm, "reason": r, "row": row} for t, tm, r, row in rows]

    def __len__(self) -> int:
        self.flush()
        with self._db() as conn:
            return int(conn.execute("SELECT count(*) FROM traces").fetchone()[0])

    def export_jsonl(self, path: str | os.PathLike[str]) -> int:
        """Write every trace, with its feedback, as one strict-JSON line each; return the count.

        The file is written next to ``path`` and renamed over it, owner-only (0600) even when
        ``path`` existed with other permissions; NaN scores (MMR) are ``null``.
        """
        return export.export_jsonl(self, path)

    def _feedback_of(self, trace_ids: list[str]) -> list[Feedback]:
        """The feedback rows of these traces (at most ``_IN_CHUNK``), oldest first."""
        with self._db() as conn:
            rows = conn.execute(
                f"SELECT {self._feedback_cols} FROM feedback"
                f" WHERE trace_id IN ({_in(len(trace_ids))}) ORDER BY seq",
                trace_ids,
            ).fetchall()
        return [_feedback_from_row(r) for r in rows]

    # -- what the scores mean ------------------------------------------------------------------
    @property
    def score_kind(self) -> str | None:
        """``"similarity"`` or ``"distance"``: what the stored ``scores`` are (None: not said)."""
        if "meta" not in self._tables:
            return None
        with self._db() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'score_kind'").fetchone()
        return None if row is None else str(row[0])

    @score_kind.setter
    def score_kind(self, kind: str) -> None:
        if kind not in SCORE_KINDS:
            msg = f"score_kind: expected one of {SCORE_KINDS}, found {kind!r}."
            raise BadInputError(msg)
        if self.score_kind == kind:  # nothing to write (a read-only log opens through here)
            return
        self._check_writable()
        with self._db() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('score_kind', ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (kind,),
            )

    # -- housekeeping --------------------------------------------------------------------------
    def purge(self, older_than_days: float) -> int:
        """Delete traces (and their feedback) older than ``older_than_days``; return how many.

        The deleted rows are overwritten in the file (``secure_delete``, WAL truncated).
        """
        if not older_than_days >= 0:
            msg = f"older_than_days: expected a number of days >= 0, found {older_than_days!r}."
            raise BadInputError(msg)
        self._check_writable()
        self.flush()
        try:
            return self._purge(older_than_days)
        except self._database.Error as e:
            raise self._db_error(e) from e

    def _purge(self, older_than_days: float) -> int:
        cutoff = _time.time() - float(older_than_days) * 86400.0
        with self._lock:
            conn = self._live_conn()
            with self._database.transaction(conn):
                conn.execute(
                    "DELETE FROM feedback WHERE trace_id IN (SELECT id FROM traces WHERE time < ?)",
                    (cutoff,),
                )
                n = conn.execute("DELETE FROM traces WHERE time < ?", (cutoff,)).rowcount
                n_q = conn.execute("DELETE FROM quarantine WHERE time < ?", (cutoff,)).rowcount
            if n or n_q:
                self._database.after_delete(conn)
        return int(n)

    def delete_traces(self, ids: Iterable[str]) -> int:
        """Delete the traces ``ids`` with their feedback; return how many traces were deleted.

        Ids not in the log are ignored. For cleanup, e.g. of the bad traces a fine-tune report
        names; the rows are overwritten in the file like :meth:`purge`'s.
        """
        if isinstance(ids, str | bytes):
            msg = f"ids: expected a list of trace ids, found the single {ids!r}; pass [id]."
            raise BadInputError(msg)
        wanted = list(dict.fromkeys(str(i) for i in ids))
        self._check_writable()
        self.flush()
        n = 0
        with self._db() as conn:
            with self._database.transaction(conn):
                for start in range(0, len(wanted), _IN_CHUNK):
                    chunk = wanted[start : start + _IN_CHUNK]
                    marks = _in(len(chunk))
                    conn.execute(f"DELETE FROM feedback WHERE trace_id IN ({marks})", chunk)
                    conn.execute(f"DELETE FROM quarantine WHERE trace_id IN ({marks})", chunk)
                    n += conn.execute(f"DELETE FROM traces WHERE id IN ({marks})", chunk).rowcount
            if n:
                self._database.after_delete(conn)
        return n

    def stats(self) -> dict:
        """Counts and time span: traces, feedback rows, traces with feedback, quarantined
        traces (could not be stored; see :meth:`quarantined`), first/last time."""
        self.flush()
        with self._db() as conn:
            n, first, last = conn.execute(
                "SELECT count(*), min(time), max(time) FROM traces"
            ).fetchone()
            nf, nft = conn.execute(
                "SELECT count(*), count(DISTINCT trace_id) FROM feedback"
            ).fetchone()
            nq = (
                conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
                if "quarantine" in self._tables
                else 0
            )
        return {
            "traces": int(n),
            "feedback": int(nf),
            "traces_with_feedback": int(nft),
            "quarantined": int(nq),
            "dropped": self._writer.dropped,
            "first_time": first,
            "last_time": last,
            "path": self.where,
            "retention_days": self.retention_days,
        }

    def close(self) -> None:
        """Write what is queued and close the database (idempotent)."""
        if self._closed:
            return
        self._writer.stop()
        with self._lock:
            self._closed = True
            self._conn.close()
            self._database.close()
        _OPEN_LOGS.discard(self)
        if self._writer.unwarned is not None:
            self._warn_once(self._writer.unwarned)
        if self._writer.dropped:
            warnings.warn(
                f"TraceLog({self.where}): {self._writer.dropped} traces could not be written "
                f"({self._writer.error}) and were dropped.",
                RuntimeWarning,
                stacklevel=2,
            )

    def _check_open(self) -> None:
        if self._closed or self._writer.stopping:
            msg = f"TraceLog({self.where}) is closed; open a new TraceLog on the same path."
            raise NudgeError(msg)

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            msg = f"TraceLog({self.where}) was opened read_only; open it without read_only=True."
            raise NudgeError(msg)

    def __enter__(self) -> TraceLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _import_row(conn: Any, r: tuple) -> tuple[str, str, int]:
    """One imported trace (see :meth:`TraceLog.import_rows`), inside the caller's transaction."""
    source, ext, tm, query, blob, dim, k, flt, ids, scores, feedback = r
    find = "SELECT id FROM traces WHERE source = ? AND external_id = ?"
    hit = conn.execute(find, (source, ext)).fetchone()
    status = "duplicate"
    if hit is None:
        hit = conn.execute(
            "SELECT id FROM traces WHERE source IS NULL AND external_id = ? AND query = ?"
            " ORDER BY seq LIMIT 1",
            (f"{source}:{ext}", query),
        ).fetchone()
        status = "live"
    if hit is None:
        row = (_new_trace_id(), tm, query, blob, dim, k, flt, ids, scores, ext, source)
        cur = conn.execute(_INSERT + " ON CONFLICT DO NOTHING", _db_row(row))
        if cur.rowcount == 1:
            status, tid = "new", row[0]
        else:  # written meanwhile by another importer
            status, tid = "duplicate", conn.execute(find, (source, ext)).fetchone()[0]
    else:
        tid = hit[0]
    have: set[tuple] = set()
    if status != "new" and feedback:
        have = {
            (*row[:5], row[5] or "human")
            for row in conn.execute(
                "SELECT time, relevant_ids, irrelevant_ids, rating, text, provenance FROM feedback"
                " WHERE trace_id = ?",
                (tid,),
            ).fetchall()
        }
    added = 0
    untimed = {h[1:] for h in have}
    for f_time, rel, irr, rating, text, *more in feedback:
        prov = check_provenance(more[0] if more else None)
        body = (json.dumps(list(rel)), json.dumps(list(irr)), rating, text, prov)
        # feedback without a time (None) is already there when the same body is
        if (f_time, *body) in have or (f_time is None and body in untimed):
            continue
        key = (_time.time() if f_time is None else f_time, *body)
        have.add(key)
        untimed.add(body)
        conn.execute(
            "INSERT INTO feedback (trace_id, time, relevant_ids, irrelevant_ids, rating, text,"
            " provenance) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (tid, *key),
        )
        added += 1
    return tid, status, added
