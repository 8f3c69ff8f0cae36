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

Tables::

    traces(seq, id, time, query, embedding float32 blob, dim, k, filter json, result_ids json,
           scores json)   -- a non-finite score (MMR gives none) is stored as null
    feedback(seq, trace_id, time, relevant_ids json, irrelevant_ids json, rating, text,
             provenance)  -- 'human' (NULL: a row from before the column, read as human) or
                          'model' (agent citations, imported LLM-evaluator annotations)
    quarantine(seq, trace_id, time, reason, row)   -- traces that could not be stored; row is an
                          ASCII description without the embedding
    meta(key, value)   -- score_kind: whether the wrapped store's scores are similarities or
                          distances (set by the faces; exported with every trace)
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import operator
import os
import re
import struct
import threading
import time as _time
import warnings
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.errors import NudgeError, UnknownIdError
from nudge_rag.state.db import Database, SQLiteDatabase
from nudge_rag.state.files import atomic_path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS traces (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    time REAL NOT NULL,
    query TEXT,
    embedding BLOB NOT NULL,
    dim INTEGER NOT NULL,
    k INTEGER NOT NULL,
    filter TEXT,
    result_ids TEXT NOT NULL,
    scores TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_time ON traces(time);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    trace_id TEXT NOT NULL,
    time REAL NOT NULL,
    relevant_ids TEXT NOT NULL,
    irrelevant_ids TEXT NOT NULL,
    rating REAL,
    text TEXT
);
CREATE INDEX IF NOT EXISTS feedback_trace ON feedback(trace_id);
CREATE INDEX IF NOT EXISTS feedback_time ON feedback(time);
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    trace_id TEXT NOT NULL,
    time REAL NOT NULL,
    reason TEXT NOT NULL,
    row TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
SCORE_KINDS = ("similarity", "distance")  # higher is better / lower is better

_PURGE_EVERY = 5000  # writes between two retention purges
LINGER_S = 0.2  # longest a queued trace waits for others to share its transaction
BATCH_ROWS = 2000  # a queue this long is written at once
PAGE_ROWS = 1000  # traces read per query by iter_traces (what a reader holds at once)
_IN_CHUNK = 500  # ids per "IN (...)" query (SQLite's variable limit is 999 on old builds)
_RETRY_S = 1.0  # pause after a failed write before retrying it
_MAX_PENDING = 200_000  # rows kept for retry while writes fail; older ones are dropped
_K_MAX = 2**63 - 1  # SQLite's INTEGER range
_ROW_TEXT_MAX = 4000  # characters of a quarantined row's description
_OPEN_LOGS: weakref.WeakSet[TraceLog] = weakref.WeakSet()
_SURROGATE = re.compile("[\ud800-\udfff]")
# strict JSON (no NaN), built once: json.dumps(allow_nan=False) builds an encoder a call
_STRICT = json.JSONEncoder(allow_nan=False)
_NO_EMBEDDING = np.zeros(0, dtype=np.float32)
_NO_EMBEDDING.flags.writeable = False
# a row-level failure (this row cannot be bound or violates a constraint); anything else, an
# OperationalError (disk full, locked, read-only) or a damaged file, fails the whole batch
_VALUE_ERRORS = (ValueError, TypeError, OverflowError)
_INSERT = (
    "INSERT INTO traces (id, time, query, embedding, dim, k, filter, result_ids, scores,"
    " external_id, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Imported traces carry their tool's id: (source, external_id), unique, so an import is
# idempotent. A live search keeps the run/span it ran in as external_id "<source>:<id>" with
# source NULL (several searches may share a span; NULLs never conflict in a unique index).
# Portable SQL (SQLite and Postgres), applied on open when the columns are missing.
_MIGRATION_EXTERNAL_IDS = [
    "ALTER TABLE traces ADD COLUMN external_id TEXT",
    "ALTER TABLE traces ADD COLUMN source TEXT",
    "CREATE UNIQUE INDEX IF NOT EXISTS traces_external ON traces(source, external_id)",
]
#: migration 3: which feedback rows hold, in ``text``, the answer their rating judges (set by
#: record_answer_feedback; a comment, e.g. an imported tool's, is never read as the answer).
#: Rows written before it: a rated text on a live trace was recorded as an answer.
_MIGRATION_ANSWERS = [
    "ALTER TABLE feedback ADD COLUMN is_answer INTEGER",
    "UPDATE feedback SET is_answer = 1 WHERE rating IS NOT NULL AND text IS NOT NULL AND "
    "trace_id IN (SELECT id FROM traces WHERE source IS NULL)",
]
_FEEDBACK_ORDER = (
    "trace_id",
    "time",
    "relevant_ids",
    "irrelevant_ids",
    "rating",
    "text",
    "is_answer",
    "provenance",
)
_LATER = {"is_answer", "provenance"}  # added by migrations 3 and 4
_FEEDBACK_COLUMNS = ", ".join(_FEEDBACK_ORDER)
_IMPORT_ROWS = 500  # imported traces per transaction
_INSERT_QUARANTINE = "INSERT INTO quarantine (trace_id, time, reason, row) VALUES (?, ?, ?, ?)"


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


@dataclass(frozen=True)
class Trace:
    """One search: what was asked, with which embedding, and what came back.

    ``embedding`` is empty when read with ``with_embeddings=False``; a score the store did not
    give (MMR) is NaN.
    """

    id: str
    time: float
    query: str | None
    embedding: np.ndarray
    k: int
    filter: dict | None
    result_ids: list[str]
    scores: list[float]
    external_id: str | None = None  # imported: the tool's id; live: "<source>:<run/span id>"
    source: str | None = None  # imported: the id space (e.g. "langsmith"); live: None


@dataclass(frozen=True)
class Feedback:
    """A user's judgment of one trace's results (relevant ids need not be among them)."""

    trace_id: str
    time: float
    relevant_ids: list[str]
    irrelevant_ids: list[str]
    rating: float | None
    text: str | None
    #: ``text`` is the answer the rating judges (record_answer_feedback), not a comment
    is_answer: bool = False
    provenance: str = "human"  # "human" or "model" (nudge_rag.labeling.provenance)


FEEDBACK_PROVENANCES = ("human", "model")


def clean_text(text: str) -> str:
    """``text`` storable as UTF-8 text in SQLite and Postgres alike: each surrogate code point
    (broken JSON) and each NUL character (Postgres text cannot hold it) becomes U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def embedding_blob(embedding: np.ndarray | Sequence[float]) -> tuple[bytes, int]:
    """The embedding as native float32 bytes, and its length.

    A list of floats (what LangChain embedders return) is packed directly: a quarter of the
    time numpy takes to convert it, which matters on the search path. Values beyond float32
    become ``inf`` (which :func:`embedding_problem` then names).
    """
    if isinstance(embedding, list | tuple):
        try:
            return struct.pack(f"={len(embedding)}f", *embedding), len(embedding)
        except (struct.error, TypeError, OverflowError):  # nested, non-numeric, beyond float32
            pass
    with np.errstate(over="ignore", invalid="ignore"):
        arr = np.ascontiguousarray(embedding, dtype=np.float32).reshape(-1)
    return arr.tobytes(), arr.shape[0]


def embedding_problem(vec: np.ndarray, dim: int | None = None) -> str | None:
    """Why float32 ``vec`` cannot stand for a query (None if it can).

    Empty, a length other than ``dim``, a NaN or infinite value, or (with ``dim`` given, at
    label time) a zero norm. About 1.5 µs for 384 values: it runs on every search.
    """
    if vec.size == 0:
        return "empty embedding"
    if dim is not None and vec.shape[0] != dim:
        return f"wrong dimension ({vec.shape[0]}, the store's vectors have {dim})"
    finite = np.isfinite(vec)
    if not finite.all():
        return f"non-finite embedding ({vec.size - int(finite.sum())} NaN or inf values)"
    if dim is not None and not np.any(vec):
        return "zero-norm embedding"
    return None


def _k_or_none(k: Any) -> int | None:
    """``k`` as an int in SQLite's range and > 0, or None."""
    if isinstance(k, bool):
        return None
    try:
        n = operator.index(k)
    except TypeError:
        if not (isinstance(k, float) and k.is_integer()):
            return None
        n = int(k)
    return n if 0 < n <= _K_MAX else None


def filter_as_dict(filter: Any) -> dict | None:
    """A strict-JSON-safe dict for a store's filter (dicts as they are, objects by dump/repr)."""
    if filter is None:
        return None
    if isinstance(filter, dict):
        try:
            _STRICT.encode(filter)
            return filter
        except (TypeError, ValueError):
            return {"repr": clean_text(repr(filter))}
    dump = getattr(filter, "model_dump", None)
    if callable(dump):
        try:
            out = dump(mode="json", exclude_none=True)
            _STRICT.encode(out)
            return out
        except (TypeError, ValueError):
            pass
    return {"repr": clean_text(repr(filter))}


def _finite_or_none(x: Any) -> Any:
    """``x`` with every NaN or infinite float replaced by None (for strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite_or_none(v) for v in x]
    return x


def _strict_json(obj: Any) -> str:
    """``obj`` as strict JSON: a NaN or infinite number becomes null."""
    try:
        return _STRICT.encode(obj)
    except ValueError:
        return _STRICT.encode(_finite_or_none(obj))


def _db_row(r: tuple) -> tuple:
    """A queued row as SQLite parameters (the lists as JSON)."""
    return (*r[:7], json.dumps(r[7]), _strict_json(r[8]), *r[9:11])


def _describe(r: tuple) -> str:
    """A queued row described in ASCII, without its embedding (what the quarantine keeps)."""
    _, _, query, _, dim, k, flt, ids, scores = r[:9]
    text = ascii(
        {"query": query, "dim": dim, "k": k, "filter": flt, "result_ids": ids, "scores": scores}
    )
    return text[:_ROW_TEXT_MAX]


def _in(n: int) -> str:
    return ",".join("?" * n)


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
            raise NudgeError(msg)
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
        self._cv = threading.Condition()
        self._queue: list[tuple] = []
        self._held: list[tuple] = []  # quarantine rows waiting for the writer
        self._inflight = 0
        self._urgent = 0  # flushes waiting: write now, do not linger
        self._dropped = 0  # rows given up on (writes kept failing)
        #: traces kept queued while writes fail (the newest; older ones are dropped, counted)
        self.max_pending = _MAX_PENDING
        self._overflowing = False
        self._warned = False
        self._unwarned: str | None = None  # a writer-side quarantine to warn about on flush
        self._stopping = False
        self._error: BaseException | None = None
        self._writer: threading.Thread | None = None
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
                raise NudgeError(msg)
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
            raise NudgeError(msg)
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
        with self._cv:
            self._check_open()
            if quarantine:
                self._held.append(row)
                n = 1
            else:
                self._queue.append(row)
                n = len(self._queue)
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop,
                    name=f"nudge-traces-{Path(self.where).name}",
                    daemon=True,
                )
                self._writer.start()
            elif n == 1 or n == BATCH_ROWS:
                self._cv.notify_all()

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

    def _write_loop(self) -> None:
        """Write queued traces in batches, one transaction each; retry a batch that fails."""
        while True:
            with self._cv:
                while not self._queue and not self._held and not self._stopping:
                    self._cv.wait()
                if not self._queue and not self._held:
                    return
                deadline = _time.monotonic() + LINGER_S
                while not self._stopping and not self._urgent and len(self._queue) < BATCH_ROWS:
                    left = deadline - _time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                batch, self._queue = self._queue, []
                held, self._held = self._held, []
                self._inflight = len(batch) + len(held)
            err, bad = self._insert(batch, held)
            with self._cv:
                self._inflight = 0
                if err is not None:
                    self._error = err
                    if self._stopping:  # closing: nothing will retry
                        self._dropped += len(batch)
                    else:  # keep the newest rows (in order) for the next try
                        keep = (batch + self._queue)[-self.max_pending :]
                        lost = len(batch) + len(self._queue) - len(keep)
                        self._dropped += lost
                        self._queue = keep
                        self._held = (held + self._held)[-self.max_pending :]
                        if lost and not self._overflowing:
                            self._overflowing = True
                            warnings.warn(
                                f"TraceLog({self.where}): writes keep failing ({err}) and more "
                                f"than {self.max_pending} traces are queued; the oldest are "
                                f"dropped ({self._dropped} so far, counted in "
                                "stats()['dropped']). Check that the database is reachable.",
                                RuntimeWarning,
                                stacklevel=1,
                            )
                else:
                    self._overflowing = False
                    if bad and self._unwarned is None and not self._warned:
                        self._unwarned = bad[0][2]
                self._cv.notify_all()
                if err is not None:
                    self._cv.wait_for(lambda: self._stopping, timeout=_RETRY_S)
                    continue
            before = self._writes
            self._writes += len(batch) - len(bad)
            if self.retention_days is not None and (
                self._writes // _PURGE_EVERY != before // _PURGE_EVERY
            ):
                with contextlib.suppress(self._database.Error):  # the next purge tries again
                    self._purge(self.retention_days)

    def _insert(self, batch: list[tuple], held: list[tuple]) -> tuple[Exception | None, list]:
        """Write ``batch`` and the quarantine rows ``held`` in one transaction.

        Returns (the error if the write failed and nothing was written, the rows of ``batch``
        quarantined). If a row fails on its own, the rows are written one by one: those SQLite
        refuses are quarantined with the reason, the others written.
        """
        try:
            self._transaction(lambda c: c.executemany(_INSERT, [_db_row(r) for r in batch]), held)
        except self._row_errors:
            pass  # some row is bad: find it below
        except Exception as e:  # surfaced by flush; the batch is retried
            return e, []
        else:
            return None, []
        bad: list[tuple] = []

        def one_by_one(conn: Any) -> None:
            for r in batch:
                conn.execute("SAVEPOINT one_row")  # a refused row must not end the transaction
                try:
                    conn.execute(_INSERT, _db_row(r))
                    conn.execute("RELEASE SAVEPOINT one_row")
                except self._row_errors as e:
                    conn.execute("ROLLBACK TO SAVEPOINT one_row")
                    reason = f"{self._database.product} refused the row: {type(e).__name__}: {e}"
                    bad.append(
                        (
                            r[0],
                            r[1],
                            reason.encode("ascii", "backslashreplace").decode(),
                            _describe(r),
                        )
                    )

        try:
            self._transaction(one_by_one, held, bad)
        except Exception as e:
            return e, []
        return None, bad

    def _transaction(self, write: Any, *quarantine: list[tuple]) -> None:
        with self._lock, self._database.transaction(self._live_conn()) as conn:
            write(conn)
            for rows in quarantine:
                if rows:
                    conn.executemany(_INSERT_QUARANTINE, rows)

    def flush(self) -> None:
        """Wait until every recorded trace is in the database.

        Raises ``NudgeError`` if a write failed; the rows stay queued and are retried.
        """
        with self._cv:
            self._urgent += 1
            self._cv.notify_all()
            try:
                while (self._queue or self._held or self._inflight) and self._error is None:
                    self._cv.wait()
            finally:
                self._urgent -= 1
            err, self._error = self._error, None
            pending = len(self._queue)
            unwarned, self._unwarned = self._unwarned, None
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
                raise NudgeError(msg)
        if text is not None:
            if not isinstance(text, str):
                msg = (
                    f"text: expected the feedback text (str) or None, found "
                    f"{type(text).__name__}; decode it first (e.g. text.decode('utf-8'))."
                )
                raise NudgeError(msg)
            text = clean_text(text)
        rel = [str(i) for i in relevant_ids]
        irr = [str(i) for i in irrelevant_ids]
        if rating is not None:
            rating = float(rating)
            if not np.isfinite(rating):
                msg = f"rating: expected a finite number or None, found {rating!r}."
                raise NudgeError(msg)
        if not rel and not irr and rating is None and text is None:
            msg = (
                "record_feedback: found no relevant_ids, irrelevant_ids, rating or text; "
                "pass at least one of them."
            )
            raise NudgeError(msg)
        both = sorted(set(rel) & set(irr))
        if both:
            msg = (
                f"relevant_ids and irrelevant_ids both hold {both[:10]}; an id is either "
                "relevant or irrelevant to a query, remove it from one list."
            )
            raise NudgeError(msg)
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
            raise NudgeError(msg)
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
            raise NudgeError(msg)
        cols = "seq, id, time, query, " + ("embedding" if with_embeddings else "NULL")
        cols += ", k, filter, result_ids, scores"
        cols += ", external_id, source" if self._external_ids else ", NULL, NULL"
        self.flush()
        if ids is not None:
            if isinstance(ids, str | bytes):
                msg = f"ids: expected a list of trace ids, found the single {ids!r}; pass [id]."
                raise NudgeError(msg)
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
            raise NudgeError(msg)
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
        out = Path(path)
        if not out.parent.exists():
            out.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        kind = self.score_kind
        n = 0
        with atomic_path(out, mode=0o600) as tmp:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                page: list[Trace] = []
                for t in self.iter_traces():
                    page.append(t)
                    if len(page) >= _IN_CHUNK:
                        n += self._export_page(fh, page, kind)
                        page = []
                n += self._export_page(fh, page, kind)
        return n

    def _export_page(self, fh: Any, page: list[Trace], kind: str | None) -> int:
        if not page:
            return 0
        ids = [t.id for t in page]
        with self._db() as conn:
            rows = conn.execute(
                f"SELECT {self._feedback_cols} FROM feedback"
                f" WHERE trace_id IN ({_in(len(ids))}) ORDER BY seq",
                ids,
            ).fetchall()
        by_trace: dict[str, list[dict]] = {}
        for f in map(_feedback_from_row, rows):
            by_trace.setdefault(f.trace_id, []).append(
                {
                    "time": f.time,
                    "relevant_ids": f.relevant_ids,
                    "irrelevant_ids": f.irrelevant_ids,
                    "rating": f.rating,
                    "text": f.text,
                    "provenance": f.provenance,
                }
            )
        for t in page:
            rec = {
                "id": t.id,
                "time": t.time,
                "query": t.query,
                "embedding": t.embedding.tolist(),
                "k": t.k,
                "filter": t.filter,
                "result_ids": t.result_ids,
                "scores": t.scores,
                "score_kind": kind,
                "external_id": t.external_id,
                "source": t.source,
                "feedback": by_trace.get(t.id, []),
            }
            fh.write(_strict_json(rec) + "\n")
        return len(page)

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
            raise NudgeError(msg)
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
            raise NudgeError(msg)
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
            raise NudgeError(msg)
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
            "dropped": self._dropped,
            "first_time": first,
            "last_time": last,
            "path": self.where,
            "retention_days": self.retention_days,
        }

    def close(self) -> None:
        """Write what is queued and close the database (idempotent)."""
        with self._cv:
            if self._closed:
                return
            self._stopping = True
            self._cv.notify_all()
        if self._writer is not None:
            self._writer.join()
        with self._lock:
            self._closed = True
            self._conn.close()
            self._database.close()
        _OPEN_LOGS.discard(self)
        if self._unwarned is not None:
            self._warn_once(self._unwarned)
        if self._dropped:
            warnings.warn(
                f"TraceLog({self.where}): {self._dropped} traces could not be written "
                f"({self._error}) and were dropped.",
                RuntimeWarning,
                stacklevel=2,
            )

    def _check_open(self) -> None:
        if self._closed or self._stopping:
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


def _add_external_ids(db: Database, conn: Any) -> None:
    """Migration 2: the external id columns and their unique index (if not there yet)."""
    if "external_id" not in db.columns(conn, "traces"):
        for statement in _MIGRATION_EXTERNAL_IDS:
            conn.execute(statement)


def _add_feedback_provenance(db: Database, conn: Any) -> None:
    """Migration 4: who made each feedback row (NULL in older rows: read as human)."""
    if "provenance" not in db.columns(conn, "feedback"):
        conn.execute("ALTER TABLE feedback ADD COLUMN provenance TEXT")


#: the trace log's schema versions (see :meth:`Database.migrate`)
def _mark_answers(db: Database, conn: Any) -> None:
    """Migration 3: the ``is_answer`` column of feedback (if not there yet)."""
    if "is_answer" not in db.columns(conn, "feedback"):
        for statement in _MIGRATION_ANSWERS:
            conn.execute(statement)


_MIGRATIONS: list[Any] = [[_SCHEMA], _add_external_ids, _mark_answers, _add_feedback_provenance]


def _feedback_columns(present: set[str]) -> str:
    """The feedback columns to read; one an older (read-only) log lacks reads as NULL."""
    return ", ".join(c if c in present or c not in _LATER else "NULL" for c in _FEEDBACK_ORDER)


def check_provenance(value: Any) -> str:
    """A feedback row's provenance, checked: ``"human"`` or ``"model"`` (None: human)."""
    text = "human" if value is None else str(getattr(value, "value", value)).lower()
    if text not in FEEDBACK_PROVENANCES:
        msg = (
            f"provenance: found {value!r}, expected 'human' (a person's feedback) or 'model' "
            "(an agent's citations, an LLM evaluator's annotation)."
        )
        raise NudgeError(msg)
    return text


def trace_database(path: Path) -> SQLiteDatabase:
    """The SQLite trace database at ``path`` with the trace log's pragmas."""
    # secure_delete: deleted text is overwritten in the file
    return SQLiteDatabase(path, journal_mode="WAL", synchronous="NORMAL", secure_delete="ON")


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


def _trace_from_row(r: tuple) -> Trace:
    _, tid, tm, query, emb, k, flt, rids, scores, ext, source = r
    return Trace(
        id=tid,
        time=tm,
        query=query,
        embedding=_NO_EMBEDDING if emb is None else np.frombuffer(emb, dtype=np.float32).copy(),
        k=int(k),
        filter=None if flt is None else json.loads(flt),
        result_ids=json.loads(rids),
        scores=[float("nan") if s is None else s for s in json.loads(scores)],
        external_id=ext,
        source=source,
    )


def _feedback_from_row(r: tuple) -> Feedback:
    t, tm, rel, irr, rating, text, is_answer, prov = r
    return Feedback(
        t, tm, json.loads(rel), json.loads(irr), rating, text, bool(is_answer), prov or "human"
    )
