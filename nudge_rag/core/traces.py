"""The trace log: every search a face served, and the feedback users sent about it.

One SQLite database (WAL mode) in the store's state folder, created owner-only (0600) because it
holds users' queries. Searches are appended by a background writer thread in batches, so a search
pays only for queueing its row. The writer lets rows gather for up to ``LINGER_S`` (or
``BATCH_ROWS`` rows) before one transaction writes them all, so a busy server wakes it a few times
a second, not once per search. Every read (and ``record_feedback``) first waits for the queue to
be written, and ``close`` (also run at interpreter exit) flushes it. A batch that fails to write
(disk full, database locked) stays queued and is retried; ``flush`` raises the error meanwhile. A
process killed outright loses the rows still queued (at most ``LINGER_S`` worth). Rows are only
appended; the one deletion is :meth:`TraceLog.purge` (also run on open and every few thousand
writes when ``retention_days`` is set). Nothing here leaves the machine:
:meth:`TraceLog.export_jsonl` writes a local file.

Tables::

    traces(seq, id, time, query, embedding float32 blob, dim, k, filter json, result_ids json,
           scores json)
    feedback(seq, trace_id, time, relevant_ids json, irrelevant_ids json, rating, text)
    meta(key, value)   -- score_kind: whether the wrapped store's scores are similarities or
                          distances (set by the faces; exported with every trace)
"""

from __future__ import annotations

import atexit
import json
import os
import sqlite3
import struct
import threading
import time as _time
import warnings
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.core.errors import NudgeError, UnknownIdError

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
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
SCORE_KINDS = ("similarity", "distance")  # higher is better / lower is better

_PURGE_EVERY = 5000  # writes between two retention purges
LINGER_S = 0.2  # longest a queued trace waits for others to share its transaction
BATCH_ROWS = 2000  # a queue this long is written at once
_RETRY_S = 1.0  # pause after a failed write before retrying it
_MAX_PENDING = 200_000  # rows kept for retry while writes fail; older ones are dropped
_OPEN_LOGS: weakref.WeakSet[TraceLog] = weakref.WeakSet()


@atexit.register
def _flush_open_logs() -> None:
    for log in list(_OPEN_LOGS):
        log.close()


@dataclass(frozen=True)
class Trace:
    """One search: what was asked, with which embedding, and what came back."""

    id: str
    time: float
    query: str | None
    embedding: np.ndarray
    k: int
    filter: dict | None
    result_ids: list[str]
    scores: list[float]


@dataclass(frozen=True)
class Feedback:
    """A user's judgment of one trace's results (relevant ids need not be among them)."""

    trace_id: str
    time: float
    relevant_ids: list[str]
    irrelevant_ids: list[str]
    rating: float | None
    text: str | None


def create_private_file(path: Path) -> None:
    """Create ``path`` (and its folder) readable by the owner only, if it does not exist."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)


def embedding_blob(embedding: np.ndarray | Sequence[float]) -> tuple[bytes, int]:
    """The embedding as native float32 bytes, and its length.

    A list of floats (what LangChain embedders return) is packed directly: a quarter of the
    time numpy takes to convert it, which matters on the search path.
    """
    if isinstance(embedding, list | tuple):
        try:
            return struct.pack(f"={len(embedding)}f", *embedding), len(embedding)
        except (struct.error, TypeError, OverflowError):  # nested, non-numeric, beyond float32
            pass
    arr = np.ascontiguousarray(embedding, dtype=np.float32).reshape(-1)
    return arr.tobytes(), arr.shape[0]


def filter_as_dict(filter: Any) -> dict | None:
    """A JSON-safe dict for a store's filter (dicts as they are, objects by their dump/repr)."""
    if filter is None:
        return None
    if isinstance(filter, dict):
        try:
            json.dumps(filter)
            return filter
        except (TypeError, ValueError):
            return {"repr": repr(filter)}
    dump = getattr(filter, "model_dump", None)
    if callable(dump):
        try:
            out = dump(mode="json", exclude_none=True)
            json.dumps(out)
            return out
        except (TypeError, ValueError):
            pass
    return {"repr": repr(filter)}


class TraceLog:
    """Append-only SQLite log of searches and feedback, safe to share between threads.

    Example:
        .. code-block:: python

            log = TraceLog("state/traces.sqlite", retention_days=30)
            tid = log.record(query="q", embedding=vec, k=4, result_ids=["a"], scores=[0.9])
            log.record_feedback(tid, relevant_ids=["b"], rating=1.0)
            log.export_jsonl("traces.jsonl")
    """

    def __init__(self, path: str | os.PathLike[str], *, retention_days: float | None = None):
        if retention_days is not None and not retention_days > 0:
            msg = (
                f"retention_days: expected a positive number of days or None (keep all), "
                f"found {retention_days!r}."
            )
            raise NudgeError(msg)
        self.path = Path(path)
        self.retention_days = retention_days
        create_private_file(self.path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._conn.executescript(_SCHEMA)
        self._writes = 0
        self._closed = False
        self._cv = threading.Condition()
        self._queue: list[tuple] = []
        self._inflight = 0
        self._urgent = 0  # flushes waiting: write now, do not linger
        self._dropped = 0  # rows given up on (writes kept failing)
        self._stopping = False
        self._error: BaseException | None = None
        self._writer: threading.Thread | None = None
        _OPEN_LOGS.add(self)
        if retention_days is not None:
            self.purge(retention_days)

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
    ) -> str:
        """Append one search; return its new trace id."""
        if query is not None and not isinstance(query, str):  # SQLite would refuse the batch
            msg = f"query: expected the query text (str) or None, found {type(query).__name__}."
            raise NudgeError(msg)
        blob, dim = embedding_blob(embedding)
        ids = [str(i) for i in result_ids]
        sc = [float(s) for s in scores]
        if len(sc) != len(ids):
            msg = (
                f"scores: expected one score per result id ({len(ids)}), found {len(sc)}; "
                "pass the scores the store returned with the results."
            )
            raise NudgeError(msg)
        trace_id = os.urandom(16).hex()  # as random as uuid4, a third of its cost
        flt = filter_as_dict(filter)
        row = (
            trace_id,
            _time.time(),
            query,
            blob,
            dim,
            int(k),
            None if flt is None else json.dumps(flt),
            ids,
            sc,
        )
        with self._cv:
            self._check_open()
            self._queue.append(row)
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name=f"nudge-traces-{self.path.name}", daemon=True
                )
                self._writer.start()
            elif len(self._queue) == 1 or len(self._queue) == BATCH_ROWS:
                self._cv.notify_all()
        return trace_id

    def _write_loop(self) -> None:
        """Write queued traces in batches, one transaction each; retry a batch that fails."""
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if not self._queue:
                    return
                deadline = _time.monotonic() + LINGER_S
                while not self._stopping and not self._urgent and len(self._queue) < BATCH_ROWS:
                    left = deadline - _time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                batch, self._queue = self._queue, []
                self._inflight = len(batch)
            err = self._insert(batch)
            with self._cv:
                self._inflight = 0
                if err is not None:
                    self._error = err
                    if self._stopping:  # closing: nothing will retry
                        self._dropped += len(batch)
                    else:  # keep the rows (oldest first) for the next try
                        keep = (batch + self._queue)[-_MAX_PENDING:]
                        self._dropped += len(batch) + len(self._queue) - len(keep)
                        self._queue = keep
                self._cv.notify_all()
                if err is not None:
                    self._cv.wait_for(lambda: self._stopping, timeout=_RETRY_S)
                    continue
            before = self._writes
            self._writes += len(batch)
            if self.retention_days is not None and (
                self._writes // _PURGE_EVERY != before // _PURGE_EVERY
            ):
                self._purge(self.retention_days)

    def _insert(self, batch: list[tuple]) -> Exception | None:
        """Write ``batch`` in one transaction; the error if it failed (nothing written)."""
        rows = [(*r[:7], json.dumps(r[7]), json.dumps(r[8])) for r in batch]
        try:
            with self._lock:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.executemany(
                        "INSERT INTO traces (id, time, query, embedding, dim, k, filter,"
                        " result_ids, scores) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        rows,
                    )
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
        except Exception as e:  # surfaced by flush
            return e
        return None

    def flush(self) -> None:
        """Wait until every recorded trace is in the database.

        Raises ``NudgeError`` if a write failed; the rows stay queued and are retried.
        """
        with self._cv:
            self._urgent += 1
            self._cv.notify_all()
            try:
                while (self._queue or self._inflight) and self._error is None:
                    self._cv.wait()
            finally:
                self._urgent -= 1
            err, self._error = self._error, None
            pending = len(self._queue)
        if err is not None:
            msg = (
                f"writing traces to {self.path} failed: {err}; {pending} traces are queued and "
                "will be retried. Check the disk and permissions."
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
    ) -> None:
        """Attach feedback to trace ``trace_id`` (``UnknownIdError`` if there is no such trace)."""
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
        self.flush()
        with self._lock:
            self._check_open()
            hit = self._conn.execute("SELECT 1 FROM traces WHERE id = ?", (trace_id,)).fetchone()
            if hit is None:
                msg = (
                    f"trace_id: no trace {trace_id!r} in {self.path} (it may have been purged "
                    "by the retention setting); pass the 'nudge_trace_id' of a returned document."
                )
                raise UnknownIdError(msg)
            self._conn.execute(
                "INSERT INTO feedback (trace_id, time, relevant_ids, irrelevant_ids, rating, text)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (trace_id, _time.time(), json.dumps(rel), json.dumps(irr), rating, text),
            )

    # -- reading -------------------------------------------------------------------------------
    def traces(self, *, since: float | None = None) -> list[Trace]:
        """Every trace (oldest first), or those recorded at or after time ``since``."""
        sql = "SELECT id, time, query, embedding, k, filter, result_ids, scores FROM traces"
        args: tuple = ()
        if since is not None:
            sql += " WHERE time >= ?"
            args = (float(since),)
        self.flush()
        with self._lock:
            self._check_open()
            rows = self._conn.execute(sql + " ORDER BY seq", args).fetchall()
        return [_trace_from_row(r) for r in rows]

    def feedback(self, trace_id: str | None = None) -> list[Feedback]:
        """Every feedback row (oldest first), or those attached to ``trace_id``."""
        sql = "SELECT trace_id, time, relevant_ids, irrelevant_ids, rating, text FROM feedback"
        args: tuple = ()
        if trace_id is not None:
            sql += " WHERE trace_id = ?"
            args = (trace_id,)
        self.flush()
        with self._lock:
            self._check_open()
            rows = self._conn.execute(sql + " ORDER BY seq", args).fetchall()
        return [
            Feedback(t, tm, json.loads(rel), json.loads(irr), rating, text)
            for t, tm, rel, irr, rating, text in rows
        ]

    def __len__(self) -> int:
        self.flush()
        with self._lock:
            self._check_open()
            return int(self._conn.execute("SELECT count(*) FROM traces").fetchone()[0])

    def export_jsonl(self, path: str | os.PathLike[str]) -> int:
        """Write every trace, with its feedback, as one JSON line each; return the count."""
        out = Path(path)
        create_private_file(out)
        by_trace: dict[str, list[dict]] = {}
        for f in self.feedback():
            by_trace.setdefault(f.trace_id, []).append(
                {
                    "time": f.time,
                    "relevant_ids": f.relevant_ids,
                    "irrelevant_ids": f.irrelevant_ids,
                    "rating": f.rating,
                    "text": f.text,
                }
            )
        n = 0
        kind = self.score_kind
        with out.open("w", encoding="utf-8") as fh:
            for t in self.traces():
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
                    "feedback": by_trace.get(t.id, []),
                }
                fh.write(json.dumps(rec) + "\n")
                n += 1
        return n

    # -- what the scores mean ------------------------------------------------------------------
    @property
    def score_kind(self) -> str | None:
        """``"similarity"`` or ``"distance"``: what the stored ``scores`` are (None: not said)."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'score_kind'").fetchone()
        return None if row is None else str(row[0])

    @score_kind.setter
    def score_kind(self, kind: str) -> None:
        if kind not in SCORE_KINDS:
            msg = f"score_kind: expected one of {SCORE_KINDS}, found {kind!r}."
            raise NudgeError(msg)
        self._check_open()
        with self._lock:
            self._conn.execute(
                "INSERT INTO meta (key, value) VALUES ('score_kind', ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (kind,),
            )

    # -- housekeeping --------------------------------------------------------------------------
    def purge(self, older_than_days: float) -> int:
        """Delete traces (and their feedback) older than ``older_than_days``; return how many."""
        if not older_than_days >= 0:
            msg = f"older_than_days: expected a number of days >= 0, found {older_than_days!r}."
            raise NudgeError(msg)
        self._check_open()
        self.flush()
        return self._purge(older_than_days)

    def _purge(self, older_than_days: float) -> int:
        cutoff = _time.time() - float(older_than_days) * 86400.0
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "DELETE FROM feedback WHERE trace_id IN (SELECT id FROM traces WHERE time < ?)",
                    (cutoff,),
                )
                n = self._conn.execute("DELETE FROM traces WHERE time < ?", (cutoff,)).rowcount
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return int(n)

    def stats(self) -> dict:
        """Counts and time span: traces, feedback rows, traces with feedback, first/last time."""
        self.flush()
        with self._lock:
            self._check_open()
            n, first, last = self._conn.execute(
                "SELECT count(*), min(time), max(time) FROM traces"
            ).fetchone()
            nf, nft = self._conn.execute(
                "SELECT count(*), count(DISTINCT trace_id) FROM feedback"
            ).fetchone()
        return {
            "traces": int(n),
            "feedback": int(nf),
            "traces_with_feedback": int(nft),
            "first_time": first,
            "last_time": last,
            "path": str(self.path),
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
        _OPEN_LOGS.discard(self)
        if self._dropped:
            warnings.warn(
                f"TraceLog({self.path}): {self._dropped} traces could not be written "
                f"({self._error}) and were dropped.",
                RuntimeWarning,
                stacklevel=2,
            )

    def _check_open(self) -> None:
        if self._closed or self._stopping:
            msg = f"TraceLog({self.path}) is closed; open a new TraceLog on the same path."
            raise NudgeError(msg)

    def __enter__(self) -> TraceLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _trace_from_row(r: tuple) -> Trace:
    tid, tm, query, emb, k, flt, rids, scores = r
    return Trace(
        id=tid,
        time=tm,
        query=query,
        embedding=np.frombuffer(emb, dtype=np.float32).copy(),
        k=int(k),
        filter=None if flt is None else json.loads(flt),
        result_ids=json.loads(rids),
        scores=json.loads(scores),
    )
