"""The version log: which vectors the store held at each version, and crash-safe moves between them.

Version 0 is the base: the embeddings as inserted. :meth:`VersionLog.apply` writes only the given
rows into the store and records them as a new version whose parent is the current one;
:meth:`VersionLog.rollback` moves the store to any recorded version. Versions form a tree (an apply
after a rollback branches), so the vector of an id at version ``v`` is the one recorded by the
nearest ancestor of ``v`` that changed it, or its base vector.

Vectors are kept *as given* (float32 blobs, or float64 where float32 would round), never as read
back: stores such as a Chroma cosine collection or a Qdrant cosine collection read back vectors
up to 1 ulp off, and writing a read-back again is not always a fixed point. Writing the same given
vector reproduces the same stored bits, which makes rollback bitwise exact. Base vectors of ids
inserted through a face are taken as given too (:meth:`record_base`); the others are read from the
store before their first change.

Crash safety: every move first commits an *intent* row together with all the vectors it needs,
then writes the store (idempotent writes), then commits the new current version and clears the
intent. Opening the log completes an unfinished move, so the store is always exactly at one
version. The database's lock serialises moves between processes (a file lock next to a SQLite
log, an advisory lock in Postgres: ``nudge_rag.state.db``). A lock can be lost mid-move (its
Postgres connection dropped), so moves are fenced too: a move begins only if the log is still at
the moves and version it read, and writes the store and commits only while the intent row holds
its token (a process completing someone's interrupted move claims it with a new token first); a
move that lost raises ``ConcurrentMoveError`` after putting back what it wrote.

Drift between the log and the store is detected, never served silently:

- a *marker* file next to a SQLite log (``versions.marker.json``, replaced atomically after every
  move) records the log's identity and its number of moves, so a log that was deleted, emptied,
  replaced by another one or restored from an older copy is noticed when it is opened; in
  Postgres the ``<prefix>_traces`` and ``<prefix>_labels`` schemas hold the log's id and moves
  (advanced inside each move's transaction), so one schema restored from an older dump is named;
- every version keeps a *fingerprint* of the rows it wrote (count and XOR of per-row SHA-256),
  checked by :meth:`VersionLog.verify`;
- opening the log reads a sample of nudged rows back from the store and compares them with the
  version the log says the store is at (a FAISS index or an in-memory store reloaded from a save
  older than the last apply is caught here);
- :meth:`VersionLog.check_fresh` (a few µs: SQLite's ``PRAGMA data_version``) notices that
  another process moved the version, and refuses when this process's store cannot see it;
- every move (and ``finetune()``, ``repair()``, ``verify()``) first asks the store for a sample
  of the ids the log names: a store holding less than half of them is another collection, or a
  new empty one, and is refused (``WrongStoreError``) before anything is written. Ids the store
  lacks are never dropped from the log by a move: only ``repair(forget_missing=True)`` does
  that, naming them.

Problems are raised by every move and by ``check_fresh`` until :meth:`VersionLog.repair` fixes
them; :meth:`VersionLog.verify` lists them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
import os
import threading
import time as _time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from nudge_rag.errors import (
    ConcurrentMoveError,
    MetricMismatchError,
    NudgeError,
    StaleStoreError,
    StoreDriftError,
    UnknownIdError,
    VersionLogError,
    WrongStoreError,
)
from nudge_rag.fit.checks import check_vectors
from nudge_rag.fit.nudge import Method
from nudge_rag.state.db import Database, SQLiteDatabase
from nudge_rag.state.files import atomic_write
from nudge_rag.stores.base import (
    Metric,
    StoreAdapter,
    can_scan,
    describe,
    present_ids,
    read_exact,
    scan,
    store_count,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY,
    parent INTEGER,
    time REAL NOT NULL,
    method TEXT,
    gamma REAL,
    rows_changed INTEGER NOT NULL,
    note TEXT,
    report TEXT
);
CREATE TABLE IF NOT EXISTS rows (
    version INTEGER NOT NULL,
    id TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (version, id)
);
CREATE INDEX IF NOT EXISTS rows_id ON rows(id);
CREATE TABLE IF NOT EXISTS base (id TEXT PRIMARY KEY, vector BLOB NOT NULL, given INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS intent (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    op TEXT NOT NULL,
    from_version INTEGER NOT NULL,
    to_version INTEGER NOT NULL
);
"""


def _add_fingerprints(db: Database, conn: Any) -> None:
    """Migration 2: each version's fingerprint (logs made before fingerprints lack it)."""
    if "fingerprint" not in db.columns(conn, "versions"):
        conn.execute("ALTER TABLE versions ADD COLUMN fingerprint TEXT")


def _add_move_tokens(db: Database, conn: Any) -> None:
    """Migration 3: the token of the process that owns an unfinished move (its fence)."""
    if "token" not in db.columns(conn, "intent"):
        conn.execute("ALTER TABLE intent ADD COLUMN token TEXT NOT NULL DEFAULT ''")


#: the version log's schema versions (see :meth:`Database.migrate`)
_MIGRATIONS: list[Any] = [[_SCHEMA], _add_fingerprints, _add_move_tokens]


def version_database(path: Path) -> SQLiteDatabase:
    """The SQLite version database at ``path`` (a move's commit must survive a power cut)."""
    return SQLiteDatabase(path, busy_timeout=30000, journal_mode="WAL", synchronous="FULL")


_COUNT_MOVE = "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'moves'"
_CHUNK = 900  # ids per SQL "IN (...)" list
STORE_READ = 8192  # ids per store read in base_vectors
MARKER_SUFFIX = ".marker.json"  # versions.sqlite -> versions.marker.json
OPEN_SAMPLE = 16  # nudged rows read back from the store when the log is opened
STORE_SAMPLE = 64  # ids the log names, asked of the store before a move (and on open)
#: a store holding less than this share of the sampled ids the log names is not the log's store
WRONG_STORE_SHARE = 0.5
FRESH_EVERY_S = 0.02  # check_fresh() asks the log at most this often

F = TypeVar("F", bound=Callable[..., Any])
_LOST_LOCK = (
    "The lock that serialises moves was lost meanwhile (its Postgres connection dropped: "
    "idle_session_timeout, a transaction-mode pooler, a network reset)."
)


@dataclass(frozen=True)
class VersionInfo:
    """One recorded version: when, how it was computed, how many rows, and why it was applied."""

    version: int
    time: float
    method: str | None
    gamma: float | None
    rows_changed: int
    note: str | None
    report: dict | None
    parent: int | None = None
    current: bool = False


@dataclass(frozen=True)
class VerifyReport:
    """What :meth:`VersionLog.verify` found (and, from :meth:`VersionLog.repair`, what it did)."""

    ok: bool
    version: int | None
    rows_checked: int
    problems: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    #: ids whose rows and base records ``repair(forget_missing=True)`` dropped from the log
    forgotten: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [f"done: {a}" for a in self.actions]
        if self.ok:
            lines.append(
                f"ok: the store is at version {self.version}; {self.rows_checked} nudged rows "
                "read back match the version log."
            )
        else:
            lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)


def is_nudge_m(method: str | None) -> bool:
    """Whether ``method`` names NUDGE-M (unnormalised vectors), however it is spelled."""
    if method is None:
        return False
    try:
        return Method(method) is Method.NUDGE_M
    except ValueError:
        msg = (
            f"method: found {method!r}, expected one of {[m.value for m in Method]} (or None "
            "for vectors made some other way)."
        )
        raise NudgeError(msg) from None


def check_metric(method: str | None, metric: Metric) -> None:
    """Raise ``MetricMismatchError`` when NUDGE-M vectors are sent to a non inner-product store."""
    if is_nudge_m(method) and Metric(metric) is not Metric.IP:
        msg = (
            f"method={method!r}: NUDGE-M vectors are unnormalised and only mean something under "
            f"inner-product search, but this store compares vectors by {Metric(metric).value!r}. "
            "Use NUDGE-N (method='nudge-n', unit-norm vectors) for this store, or wrap a store "
            "that searches by inner product (e.g. a Chroma collection with hnsw:space='ip')."
        )
        raise MetricMismatchError(msg)


def store_label(adapter: Any) -> str:
    """How messages name a store: its kind and, where the adapter knows it, its collection."""
    inner = getattr(adapter, "_adapter", None) or adapter
    kind = describe(inner).kind
    if type(inner).__name__ == "PgVectorAdapter":
        kind = "pgvector table" if inner.collection_name is None else "PGVector"
    chroma = type(inner).__name__ == "ChromaAdapter"  # its ``name`` is the collection's
    for attr in ("collection_name", "name") if chroma else ("collection_name",):
        name = getattr(inner, attr, None)
        if isinstance(name, str) and name:
            return f"{kind.split(' (')[0]}, collection {name!r}"
    table = getattr(inner, "table", None)
    if isinstance(table, str):
        return f"{kind}, table {getattr(inner, 'schema', 'public')}.{table}"
    return kind


def _shown(ids: Sequence[str], n: int = 5) -> str:
    """Up to ``n`` ids, quoted, and how many more there are."""
    more = f" and {len(ids) - n} more" if len(ids) > n else ""
    return ", ".join(repr(i) for i in list(ids)[:n]) + more


def _blob(v: np.ndarray) -> bytes:
    """A vector as bytes: float32 when that is exact (tag 4), else float64 (tag 8)."""
    v64 = np.asarray(v, dtype=np.float64)
    v32 = v64.astype(np.float32)
    if np.array_equal(v32.astype(np.float64), v64):
        return b"\x04" + v32.tobytes()
    return b"\x08" + v64.tobytes()


def _unblob(b: bytes) -> np.ndarray:
    """The float64 vector of a :func:`_blob`."""
    dtype = np.float32 if b[0] == 4 else np.float64
    return np.frombuffer(b, dtype=dtype, offset=1).astype(np.float64)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _row_hash(vid: str, blob: bytes) -> int:
    """128 bits of SHA-256 over one recorded row (id and vector bytes)."""
    return int.from_bytes(hashlib.sha256(vid.encode() + b"\0" + blob).digest()[:16], "big")


def _fingerprint(count: int, xor: int) -> str:
    """A version's fingerprint: how many rows it holds and the XOR of their row hashes."""
    return f"{count}:{xor:032x}"


def _parse_fingerprint(fp: str) -> tuple[int, int]:
    count, xor = fp.split(":")
    return int(count), int(xor, 16)


def same_vectors(held: np.ndarray, expected: np.ndarray, metric: Metric) -> np.ndarray:
    """Per row: whether a vector read back from the store is the one that was written.

    Stores keep float32 and cosine stores normalise what they are given, so rows are compared
    up to 1e-5 of their scale (directions, for a cosine store).
    """
    a = np.asarray(held, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        return np.zeros(len(b), dtype=bool)
    if Metric(metric) is Metric.COSINE:
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-30)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-30)
    scale = np.maximum(np.abs(b).max(axis=1, initial=0.0), 1.0)
    return np.abs(a - b).max(axis=1, initial=0.0) <= 1e-5 * scale


def _version_number(version: Any) -> int:
    """``version`` as an int; a bool, a float or a string is refused, not rounded."""
    if isinstance(version, bool | np.bool_):
        msg = f"version: found {version!r} (a bool); pass a version number from versions()."
        raise NudgeError(msg)
    try:
        return operator.index(version)
    except TypeError:
        msg = (
            f"version: found {version!r} ({type(version).__name__}), expected an int version "
            "number; pass one from versions() (0 is the base)."
        )
        raise NudgeError(msg) from None


def _sql_errors(fn: F) -> F:
    """Turn "damaged database" errors into a ``VersionLogError`` naming the log and the fix."""

    @functools.wraps(fn)
    def run(self: VersionLog, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except self._database.Error as e:
            if not self._database.damaged(e):
                raise
            raise self._damaged_error(e) from e

    return run  # type: ignore[return-value]


class VersionLog:
    """Base vectors, version records and crash-safe apply / rollback for one store adapter.

    ``read_only=True`` opens an existing log without writing anything (no adapter needed): for
    listing versions from a folder that is not writable.

    Example:
        .. code-block:: python

            log = VersionLog("state/versions.sqlite", ChromaAdapter(collection))
            v = log.apply({"doc-1": new_vec}, method="nudge-n", gamma=0.3)
            log.rollback(0)          # every changed row back to its base, bitwise
            log.versions()           # [VersionInfo(version=0, ...), VersionInfo(version=1, ...)]
            log.verify()             # VerifyReport(ok=True, ...): log and store agree
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | Database,
        adapter: StoreAdapter | None,
        *,
        read_only: bool = False,
    ):
        self._database = path if isinstance(path, Database) else version_database(Path(path))
        self.path = self._database.path  # None in Postgres
        self.where = self._database.label
        self.adapter = adapter
        self.read_only = bool(read_only)
        #: called after every write into the store, inside the move (before it commits): a
        #: face whose store lives in a file (FAISS, LlamaIndex Simple) saves it there
        self.after_write: Callable[[], None] | None = None
        #: a file next to a SQLite log (a Postgres log is checked by its server)
        self.marker_path = (
            None if self.path is None else self.path.with_name(self.path.stem + MARKER_SUFFIX)
        )
        self._tlock = threading.RLock()
        self._wlock = threading.Lock()
        self._conn: Any = None
        self._watch: Any = None
        self._broken: VersionLogError | None = None
        self._drift: StoreDriftError | None = None
        self._stale: StaleStoreError | None = None
        self._seen_dv = -1
        self._known = (0, 0)  # (moves, current) the store is known to be at in this process
        self.fresh_every_s = FRESH_EVERY_S
        self._next_fresh = 0.0
        if self.read_only:
            self._open_read_only()
            return
        if adapter is None:
            msg = "adapter: found None; pass the store's adapter (None only with read_only=True)."
            raise NudgeError(msg)
        try:
            with self._moving():
                self._open_checked()
        except OSError as e:  # the lock file cannot be made: the folder is not writable
            raise self._unwritable(e) from e

    def _open_checked(self) -> None:
        """Open the log, check the store against it, and start watching it (lock held)."""
        self._broken = self._open()
        if self._broken is None:
            try:
                self._drift = self._check_store(OPEN_SAMPLE)
            except VersionLogError as e:  # the log cannot say what the store should hold
                self._broken = e
            self._watch = self._database.connect(read_only=self.read_only)
            self._seen_dv = self._data_version()
            self._known = self._moves_and_current(self._conn_())

    # -- public API ----------------------------------------------------------------------------
    @property
    def problem(self) -> NudgeError | None:
        """What stops this log from being used now (``repair()`` fixes it), or None."""
        return self._broken or self._drift or self._stale

    @property
    @_sql_errors
    def current(self) -> int:
        """The version the store is at."""
        with self._tlock:
            conn = self._conn_()
            row = conn.execute("SELECT value FROM meta WHERE key = 'current'").fetchone()
        return int(row[0])

    @_sql_errors
    def versions(self) -> list[VersionInfo]:
        """Every recorded version, oldest first (``current`` marks the one the store is at)."""
        with self._tlock:
            conn = self._conn_()
            cur = self.current
            rows = conn.execute(
                "SELECT version, time, method, gamma, rows_changed, note, report, parent"
                " FROM versions ORDER BY version"
            ).fetchall()
        return [
            VersionInfo(
                version=v,
                time=t,
                method=m,
                gamma=g,
                rows_changed=n,
                note=note,
                report=None if rep is None else json.loads(rep),
                parent=p,
                current=v == cur,
            )
            for v, t, m, g, n, note, rep, p in rows
        ]

    @_sql_errors
    def apply(
        self,
        vectors: Mapping[str, np.ndarray],
        *,
        method: str | None = None,
        gamma: float | None = None,
        note: str | None = None,
        report: dict | None = None,
        from_base: bool = False,
    ) -> int:
        """Write ``vectors`` ({id: vector}) into the store as a new version; return its number.

        Only these rows are written; every other row keeps what it holds, unless ``from_base``:
        then rows the current version holds changed and ``vectors`` does not name go back to
        their exact base, so the new version is the base plus ``vectors``. Raises
        ``MetricMismatchError`` for NUDGE-M vectors on a cosine or l2 store, ``UnknownIdError``
        for ids the store does not hold (before anything is written).
        """
        adapter = self._store()
        check_metric(method, adapter.metric)
        if not isinstance(vectors, Mapping) or len(vectors) == 0:
            msg = (
                f"vectors: expected a non-empty mapping {{id: vector}}, found "
                f"{type(vectors).__name__} of length {len(vectors) if vectors is not None else 0}."
            )
            raise NudgeError(msg)
        ids = [str(i) for i in vectors]
        if len(set(ids)) != len(ids):
            seen: dict[str, object] = {}
            for key in vectors:
                if str(key) in seen:
                    msg = (
                        f"vectors: keys {seen[str(key)]!r} and {key!r} both name id {str(key)!r} "
                        "(ids are compared as strings); pass one vector per id."
                    )
                    raise NudgeError(msg)
                seen[str(key)] = key
        mat = _as_matrix([vectors[i] for i in vectors], "vectors", ids)
        report_json = None
        if report is not None:
            try:
                report_json = json.dumps(report, default=_json_default)
            except (TypeError, ValueError) as e:
                msg = f"report: expected a JSON-serialisable dict, found one that fails: {e}."
                raise NudgeError(msg) from e
        with self._moving():
            self._require_ok(moving=True)
            conn = self._conn_()
            self._recover()
            current_now = self._read_exact(ids)  # validates every id before anything is written
            if current_now.shape[1] != mat.shape[1]:
                msg = (
                    f"vectors: found {mat.shape[1]}-d vectors, the store holds "
                    f"{current_now.shape[1]}-d ones; pass vectors from the same embedding model."
                )
                raise NudgeError(msg)
            known = self._ids_in("base", ids)
            new_base = [(i, _blob(current_now[n]), 0) for n, i in enumerate(ids) if i not in known]
            at = self._moves_and_current(conn)
            cur = at[1]
            named = set(ids)
            stale = [i for i in self._ids_between(0, cur) if i not in named] if from_base else []
            base_of_stale = self._vectors_at(0, stale) if stale else np.zeros((0, 0))
            back = [(i, _blob(v)) for i, v in zip(stale, base_of_stale, strict=True)]
            new_rows = [(i, _blob(mat[n])) for n, i in enumerate(ids)] + back
            xor = 0
            for i, blob in new_rows:
                xor ^= _row_hash(i, blob)
            with self._tx():
                self._claim_move(conn, "apply", at)
                ver = int(conn.execute("SELECT max(version) FROM versions").fetchone()[0]) + 1
                conn.executemany("INSERT INTO base VALUES (?, ?, ?)", new_base)
                conn.execute(
                    "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        ver,
                        cur,
                        _time.time(),
                        method,
                        None if gamma is None else float(gamma),
                        len(new_rows),
                        note,
                        report_json,
                        _fingerprint(len(new_rows), xor),
                    ),
                )
                conn.executemany(
                    "INSERT INTO rows VALUES (?, ?, ?)", [(ver, i, b) for i, b in new_rows]
                )
                token = self._insert_intent(conn, "apply", cur, ver)
            self._finish_move(cur, ver, token=token, created=True)
        return ver

    @_sql_errors
    def rollback(self, version: int | None = None) -> int:
        """Move the store to ``version`` (None: the parent of the current one; 0: the base).

        Restores exactly the vectors the store held at that version; returns the version.
        """
        if version is not None:
            version = _version_number(version)
        with self._moving():
            self._require_ok(moving=True)
            conn = self._conn_()
            self._recover()
            at = self._moves_and_current(conn)
            cur = at[1]
            if version is None:
                if cur == 0:
                    msg = (
                        "rollback(version=None): the store is at version 0 (the base), which has "
                        "no previous version; pass a version from versions() to move forward."
                    )
                    raise NudgeError(msg)
                version = self._parent(cur)
            if (
                conn.execute("SELECT 1 FROM versions WHERE version = ?", (version,)).fetchone()
                is None
            ):
                known = [v.version for v in self.versions()]
                msg = f"version: no version {version} in this store's log; known versions: {known}."
                raise NudgeError(msg)
            if version == cur:
                return cur
            with self._tx():
                self._claim_move(conn, "rollback", at)
                token = self._insert_intent(conn, "rollback", cur, version)
            self._finish_move(cur, version, token=token)
        return version

    @_sql_errors
    def base_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Base vectors of ``ids`` (float32); for ids never changed, what the store holds now.

        Filled into one float32 matrix as the rows arrive (``_CHUNK`` ids a query, ``STORE_READ``
        a store read), so reading a whole corpus holds the result and one chunk, not a float64
        copy of every row.
        """
        ids = [str(i) for i in ids]
        self._require_ok()
        if not ids:
            return np.zeros((0, 0), dtype=np.float32)
        uniq = list(dict.fromkeys(ids))
        row = {i: n for n, i in enumerate(uniq)}
        have = np.zeros(len(uniq), dtype=bool)
        out: np.ndarray | None = None
        with self._tlock:
            conn = self._conn_()
            for part in _chunks(uniq):
                q = ",".join("?" * len(part))
                for i, blob in conn.execute(f"SELECT id, vector FROM base WHERE id IN ({q})", part):
                    v = _unblob(blob)
                    if out is None:
                        out = np.empty((len(uniq), v.shape[0]), dtype=np.float32)
                    out[row[i]] = v
                    have[row[i]] = True
        missing = [uniq[n] for n in np.flatnonzero(~have)]
        for start in range(0, len(missing), STORE_READ):
            part = missing[start : start + STORE_READ]
            got = np.asarray(self._store().get(part), dtype=np.float32)
            if out is None:
                out = np.empty((len(uniq), got.shape[1]), dtype=np.float32)
            out[[row[i] for i in part]] = got
        assert out is not None
        return out if len(uniq) == len(ids) else out[[row[i] for i in ids]]

    @_sql_errors
    def base_matrix(self) -> tuple[list[str], np.ndarray]:
        """Every id the store holds, each once, and its base vector: one float32 matrix.

        A store with ``scan()`` (pages of ids and vectors) is read in one pass, each page
        copied into the matrix as it arrives; any other store by its ids, then
        :meth:`base_vectors`. Every id the log holds a base vector for (rows a version changed,
        rows recorded as given to a store that does not read back exactly) holds that one.
        """
        store = self._store()
        if not can_scan(store):
            every = list(dict.fromkeys(store.ids()))
            return every, self.base_vectors(every) if every else np.zeros((0, 0), np.float32)
        self._require_ok()
        ids: list[str] = []
        row: dict[str, int] = {}
        out = np.zeros((0, 0), np.float32)
        for page_ids, page in scan(store):
            new: list[int] = []  # positions in the page of ids not seen before
            for n, i in enumerate(page_ids):
                if i not in row:
                    row[i] = len(ids) + len(new)
                    new.append(n)
            if len(ids) + len(new) > len(out):  # first page, or the store grew since counted
                need = len(ids) + len(new)
                size = max(store_count(store), need, int(len(out) * 1.1) + len(page))
                grown = np.empty((size, page.shape[1]), np.float32)
                if ids:
                    grown[: len(ids)] = out[: len(ids)]
                out = grown
            out[len(ids) : len(ids) + len(new)] = page[new]
            ids.extend(page_ids[n] for n in new)
        out = out[: len(ids)] if len(out) == len(ids) else out[: len(ids)].copy()
        with self._tlock:
            logged = [r[0] for r in self._conn_().execute("SELECT id FROM base")]
        logged = [i for i in logged if i in row]
        if logged:
            out[[row[i] for i in logged]] = self.base_vectors(logged)
        return ids, out

    @_sql_errors
    def changed_ids(self) -> list[str]:
        """Ids changed by any recorded version (whatever the current version)."""
        self._require_ok()
        with self._tlock:
            rows = self._conn_().execute("SELECT DISTINCT id FROM rows ORDER BY id").fetchall()
        return [r[0] for r in rows]

    @_sql_errors
    def record_base(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Keep ``vectors`` as the base of ``ids`` exactly as given to the store (on insert)."""
        ids = [str(i) for i in ids]
        mat = _as_matrix(vectors, "vectors", ids)
        self._require_ok()
        with self._tlock, self._tx():
            self._conn_().executemany(
                "INSERT INTO base VALUES (?, ?, 1) ON CONFLICT (id)"
                " DO UPDATE SET vector = excluded.vector, given = excluded.given",
                [(i, _blob(mat[n])) for n, i in enumerate(ids)],
            )

    @_sql_errors
    def forget(self, ids: Iterable[str]) -> None:
        """Drop the nudges and base records of ``ids`` (their documents were replaced or deleted).

        Recorded versions keep their row counts; moving between versions no longer touches them.
        """
        ids = [str(i) for i in ids]
        if not ids:
            return
        self._require_ok()
        with self._moving():
            self._drop(ids)

    @_sql_errors
    def check_store(self) -> None:
        """Raise ``WrongStoreError`` when the store holds none, or only a small share, of the
        ids this log names (another collection, or a new empty one): every move checks it, and
        ``finetune()`` before it reads anything. Nothing is written."""
        if self.read_only and self.adapter is None:
            return
        self._require_ok()
        with self._tlock:
            self._require_store()

    @_sql_errors
    def check_fresh(self) -> None:
        """Raise if the store may not serve the version the log is at; about 1 µs when it does.

        Call it before a search. It raises the problem found when the log was opened
        (``StoreDriftError``, ``VersionLogError``) and ``StaleStoreError`` when another process
        moved the version and this process's store still serves the old vectors (embedded Chroma,
        FAISS, in-memory stores: each process holds its own copy). A store read from a shared
        server sees the move, and nothing is raised. Thread-safe.

        The log is asked (SQLite's ``PRAGMA data_version``, a file-lock round trip) at most once
        every ``fresh_every_s`` seconds (20 ms by default; 0: on every call); in between, the
        last answer stands.
        """
        if self._broken is not None:
            raise self._broken
        if self._drift is not None:
            raise self._drift
        if self._watch is None:  # read-only, or closed
            return
        now = _time.monotonic()
        if now < self._next_fresh:
            if self._stale is not None:
                raise self._stale
            return
        with self._wlock:
            self._next_fresh = now + self.fresh_every_s
            if self._watch is None:
                return
            dv = self._data_version()
            if dv != self._seen_dv or self._stale is not None:  # a stale read may be transient
                self._seen_dv = dv
                self._stale = self._stale_check()
            if self._stale is not None:
                raise self._stale

    def verify(self, *, rows: int | None = None) -> VerifyReport:
        """Check that the log is whole and that the store holds the version the log is at.

        Checks SQLite's ``quick_check``, the marker, the parent of every version, an unfinished
        move, each version's fingerprint, and reads back every nudged row (``rows``: at most that
        many) from the store. Nothing is written.
        """
        problems: list[str] = []
        if self._broken is not None and self._conn is None:
            return VerifyReport(False, None, 0, (str(self._broken),))
        with self._moving():
            try:
                checked, version = self._verify(problems, rows)
            except self._database.Error as e:
                damaged = self._database.damaged(e)
                problems.append(str(self._damaged_error(e)) if damaged else str(e))
                checked, version = 0, None
        return VerifyReport(not problems, version, checked, tuple(dict.fromkeys(problems)))

    def repair(self, *, adopt_store: bool = False, forget_missing: bool = False) -> VerifyReport:
        """Bring the log and the store back into agreement; return a verification afterwards.

        By default the log is trusted: an unfinished move that points at a missing version is
        undone, a log that does not match the marker is accepted as the log of this folder, and
        every nudged row the store holds wrong is rewritten with the vector of the log's current
        version. ``adopt_store=True`` trusts the store instead: the log moves to the version the
        store's rows match (rows that match no version keep what the store holds as their new
        base); a log that is missing, damaged or whose versions do not chain is moved aside and a
        new log starts from the store's vectors as version 0 (earlier versions are then lost).

        Ids the store does not hold keep their rows in the log (so a wrong store costs no
        version; a store holding few of the log's ids raises ``WrongStoreError``) unless
        ``forget_missing=True``: their rows and base records are then dropped, and the report's
        ``forgotten`` lists them. Nothing else ever drops a row from the log.
        """
        if self.read_only:
            msg = f"{self.where}: opened read_only=True; open it writable to repair it."
            raise NudgeError(msg)
        actions: list[str] = []
        forgotten: list[str] = []
        with self._moving():
            problem = self._tree_problem()
            if problem is not None:
                if not adopt_store:
                    msg = f"repair() trusts the version log, and there is none to trust: {problem}"
                    raise VersionLogError(msg)
                self._start_over(actions)
            else:
                if forget_missing:
                    forgotten = self._forget_missing(actions)
                else:
                    self._require_store()
                self._repair_marker(actions)
                self._repair_intent(actions)
                if adopt_store:
                    self._adopt(actions)
                else:
                    self._sync_store(actions)
            self._broken = self._drift = self._stale = None
            self._write_marker()
            conn = self._conn_()
            if self._watch is None:
                self._watch = self._database.connect(read_only=self.read_only)
            self._seen_dv = self._data_version()
            self._known = self._moves_and_current(conn)
        report = self.verify()
        return replace(report, actions=tuple(actions), forgotten=tuple(forgotten))

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._tlock:
            if self._conn is not None:
                self._conn.close()
        with self._wlock:
            if self._watch is not None:
                self._watch.close()
                self._watch = None
        self._database.close()

    # -- opening -------------------------------------------------------------------------------
    def _open(self) -> VersionLogError | None:
        """Open (or create) the log; return the problem that needs ``repair()``, if any."""
        marker, marker_problem = self._read_marker()
        if marker is not None and not self._database.exists():
            assert self.path is not None and self.marker_path is not None
            if int(marker.get("versions", 0)) > 0:
                state = "missing" if not self.path.exists() else "empty (0 bytes)"
                msg = (
                    f"{self.path} is {state}, but {self.marker_path.name} records a version log "
                    f"with {marker['versions']} version(s), at version {marker.get('current')} "
                    "when last used: the store may hold nudged vectors that no log describes. "
                    f"Put a backup of {self.path.name} back, or run repair(adopt_store=True) "
                    "(nudge-rag repair --adopt-store) to start a new log from what the store "
                    "holds now."
                )
                return VersionLogError(msg)
            marker = None  # a log that never moved: nothing is lost by starting afresh
        conn: Any = None
        try:
            conn = self._database.connect()
            self._database.migrate(conn, _MIGRATIONS)
        except (self._database.Error, OSError) as e:
            if conn is not None:
                conn.close()
            if self._database.damaged(e):
                return self._damaged_error(e)
            raise self._unwritable(e) from e
        self._conn = conn
        try:
            with self._tx():
                if conn.execute("SELECT 1 FROM versions WHERE version = 0").fetchone() is None:
                    conn.execute(
                        "INSERT INTO versions VALUES (0, NULL, ?, NULL, NULL, 0, 'base', NULL, ?)",
                        (_time.time(), _fingerprint(0, 0)),
                    )
                    conn.execute("INSERT INTO meta VALUES ('current', '0') ON CONFLICT DO NOTHING")
                conn.execute("INSERT INTO meta VALUES ('moves', '0') ON CONFLICT DO NOTHING")
                conn.execute(
                    "INSERT INTO meta VALUES ('log_id', ?) ON CONFLICT DO NOTHING",
                    (uuid.uuid4().hex,),
                )
                self._fill_fingerprints()
        except self._database.Error as e:
            if self._database.damaged(e):
                return self._damaged_error(e)
            raise self._unwritable(e) from e
        if marker_problem is not None:
            return VersionLogError(marker_problem)
        if marker is not None:
            problem = self._marker_mismatch(marker)
            if problem is not None:
                return VersionLogError(problem)
        part_error, part_notes = self._parts_check(conn)
        for note in part_notes:
            warnings.warn(note, RuntimeWarning, stacklevel=3)
        if part_error is not None:
            return VersionLogError(part_error)
        problem = self._structure_problem()
        if problem is not None:
            return VersionLogError(problem)
        self._write_marker(unless=marker)
        try:
            self._recover()
        except VersionLogError as e:
            return e
        except Exception as e:  # the store is unreachable now: the next move retries
            warnings.warn(
                f"{self.where}: an interrupted version move could not be finished now ({e}); "
                "it is retried by the next apply or rollback.",
                RuntimeWarning,
                stacklevel=3,
            )
        return None

    def _open_read_only(self) -> None:
        """Open an existing log for reading only; every problem is raised here."""
        marker, marker_problem = self._read_marker()
        if not self._database.exists():
            if marker is not None and int(marker.get("versions", 0)) > 0:
                assert self.marker_path is not None
                msg = (
                    f"{self.where} is missing or empty, but {self.marker_path.name} records a "
                    f"version log with {marker['versions']} version(s); put a backup of it back, "
                    "or run nudge-rag repair --adopt-store on a writable folder."
                )
            else:
                msg = f"{self.where}: no version log there; open the store once to create it."
            raise VersionLogError(msg)
        try:
            conn = self._database.connect(read_only=True)
            self._conn = conn
            conn.execute("SELECT value FROM meta WHERE key = 'current'").fetchone()
            problem = marker_problem or (
                self._marker_mismatch(marker) if marker is not None else None
            )
            part_error, part_notes = self._parts_check(conn)
            for note in part_notes:
                warnings.warn(note, RuntimeWarning, stacklevel=3)
            problem = problem or part_error or self._structure_problem()
        except self._database.Error as e:
            if self._database.damaged(e):
                raise self._damaged_error(e) from e
            raise self._unreadable(e) from e
        if problem is not None:
            raise VersionLogError(problem)

    def _read_marker(self) -> tuple[dict | None, str | None]:
        """The marker's content, or a description of why it cannot be read."""
        if self.marker_path is None:
            return None, None
        try:
            raw = self.marker_path.read_bytes()
        except FileNotFoundError:
            return None, None
        except OSError as e:
            return None, f"{self.marker_path}: cannot be read ({e}); check its permissions."
        try:
            marker = json.loads(raw)
            if not isinstance(marker, dict):
                raise ValueError
            int(marker["versions"]), int(marker["moves"]), str(marker["log_id"])
        except (ValueError, KeyError, TypeError):
            return None, (
                f"{self.marker_path} is damaged ({len(raw)} bytes that are not a marker); run "
                "repair() (nudge-rag repair) to check the log against the store and rewrite it."
            )
        return marker, None

    def _marker_mismatch(self, marker: dict) -> str | None:
        assert self.marker_path is not None  # a marker was read from it
        conn = self._conn_()
        log_id = self._meta(conn, "log_id")
        moves = int(self._meta(conn, "moves") or 0)
        fix = (
            "Put the right versions.sqlite back, or run repair() (nudge-rag repair) to accept "
            "this log and write its version into the store, or repair(adopt_store=True) "
            "(nudge-rag repair --adopt-store) to make the log follow the store."
        )
        if log_id is not None and marker["log_id"] != log_id:
            return (
                f"{self.where} is not the version log this folder had: {self.marker_path.name} "
                f"names log {marker['log_id'][:12]}…, the file is log {log_id[:12]}… (copied "
                f"from another store, or recreated). {fix}"
            )
        if int(marker["moves"]) > moves:
            return (
                f"{self.where} is older than the store's last version move: it records {moves} "
                f"move(s), {self.marker_path.name} records {marker['moves']} (restored from an "
                f"older copy?). {fix}"
            )
        return None

    def _write_marker(self, *, unless: dict | None = None) -> None:
        """Record the log's identity and moves next to it (atomically); a no-op read-only.

        ``unless``: the marker as read; nothing is written when it already says the same.
        """
        if self.read_only:
            return
        if self.marker_path is None:  # Postgres: the other schemas hold it, advanced by moves
            self._mark_new_parts()
            return
        conn = self._conn_()
        data: dict[str, Any] = {
            "format": 1,
            "log_id": self._meta(conn, "log_id"),
            "moves": int(self._meta(conn, "moves") or 0),
            "current": int(self._meta(conn, "current") or 0),
            "versions": int(conn.execute("SELECT count(*) - 1 FROM versions").fetchone()[0]),
        }
        if unless is not None and all(unless.get(k) == v for k, v in data.items()):
            return
        data["time"] = _time.time()
        try:
            atomic_write(self.marker_path, json.dumps(data, indent=1), mode=0o600)
        except OSError as e:
            raise self._unwritable(e) from e

    # -- the Postgres state's marker: the log's identity and moves in the other two schemas ------
    def _part_schemas(self) -> dict[str, str]:
        """A Postgres state's other parts and their schemas (none for SQLite, or a schema not
        named ``<prefix>_versions``)."""
        schema = getattr(self._database, "schema", None)
        if self._database.kind != "postgres" or not str(schema).endswith("_versions"):
            return {}
        prefix = str(schema)[: -len("_versions")]
        return {part: f"{prefix}_{part}" for part in ("traces", "labels")}

    def _part_marks(
        self, conn: Any, parts: Iterable[str] | None = None
    ) -> dict[str, tuple[str | None, int | None] | None]:
        """Per other part (``parts``: those only): (log id, moves) its schema's marker holds;
        None if it has no meta table."""
        schemas = self._part_schemas()
        out: dict[str, tuple[str | None, int | None] | None] = {}
        for part, schema in schemas.items():
            if parts is not None and part not in parts:
                continue
            found = conn.execute("SELECT to_regclass(?)", (f'"{schema}".meta',)).fetchone()[0]
            if found is None:
                out[part] = None
                continue
            rows = dict(
                conn.execute(
                    f'SELECT key, value FROM "{schema}".meta WHERE key IN '
                    "('state_log_id', 'state_moves')"
                ).fetchall()
            )
            moves = rows.get("state_moves")
            out[part] = (rows.get("state_log_id"), None if moves is None else int(moves))
        return out

    def _listed_parts(self, conn: Any) -> set[str]:
        return {p for p in (self._meta(conn, "state_parts") or "").split(",") if p}

    def _parts_to_mark(self, conn: Any) -> list[str]:
        """Parts whose schema exists, carries no marker and was never marked (created since)."""
        schemas = self._part_schemas()
        listed = self._listed_parts(conn) if schemas else set()
        new = [p for p in schemas if p not in listed]
        marks = self._part_marks(conn, new) if new else {}
        return [p for p, m in marks.items() if m == (None, None)]

    def _mark_new_parts(self) -> None:
        """Mark the parts created since they were last looked for (Postgres: a label cache made
        after the state); a no-op when every part is marked."""
        if self._parts_to_mark(self._conn_()):
            with self._tx():
                self._mark_parts(self._conn_(), every=False)

    def _mark_parts(self, conn: Any, *, every: bool) -> list[str]:
        """In a transaction: write the log's identity and moves into the other parts' schemas
        (``every``: all that exist; else only those never marked); the schemas marked."""
        schemas = self._part_schemas()
        todo = (
            [p for p, m in self._part_marks(conn).items() if m is not None]
            if every
            else self._parts_to_mark(conn)
        )
        log_id, moves = self._meta(conn, "log_id"), self._meta(conn, "moves") or "0"
        for part in todo:
            conn.execute(
                f"INSERT INTO \"{schemas[part]}\".meta (key, value) VALUES ('state_log_id', ?), "
                "('state_moves', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (log_id, moves),
            )
        listed = ",".join(sorted(self._listed_parts(conn) | set(todo)))
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('state_parts', ?) ON CONFLICT (key) "
            "DO UPDATE SET value = excluded.value",
            (listed,),
        )
        return [schemas[p] for p in todo]

    def _advance_parts(self, conn: Any) -> None:
        """In a move's committing transaction (after its moves count): advance the marker of
        every part that agreed with the log, so a restore can never pass for a crash."""
        schemas = self._part_schemas()
        if not schemas:
            return
        moves = int(self._meta(conn, "moves") or 0)
        for part in self._listed_parts(conn):
            schema = schemas.get(part)
            if schema is None:
                continue
            found = conn.execute("SELECT to_regclass(?)", (f'"{schema}".meta',)).fetchone()[0]
            if found is not None:
                conn.execute(
                    f"UPDATE \"{schema}\".meta SET value = ? WHERE key = 'state_moves' AND "
                    "value = ?",
                    (str(moves), str(moves - 1)),
                )

    def _parts_check(self, conn: Any) -> tuple[str | None, list[str]]:
        """Whether the three schemas of a Postgres state belong together: an error (the version
        log is behind, or the traces belong to another state), and notes (another part is
        behind: what was written to it since its dump is lost, but the store is safe)."""
        schemas = self._part_schemas()
        if not schemas:
            return None, []
        log_id, moves = self._meta(conn, "log_id"), int(self._meta(conn, "moves") or 0)
        listed = self._listed_parts(conn)
        errors: list[str] = []
        notes: list[str] = []
        ahead: list[tuple[str, int]] = []
        for part, mark in self._part_marks(conn).items():
            schema = schemas[part]
            if mark is None or mark == (None, None):
                if part in listed and part == "traces":
                    what = "is missing" if mark is None else "carries no state marker"
                    notes.append(
                        f"schema {schema} {what}, though it was marked as part of this state "
                        "(dropped and recreated, or restored from a dump made before it was "
                        "marked): the traces recorded before are lost."
                    )
                continue
            mark_id, mark_moves = mark
            if mark_id != log_id:
                (errors if part == "traces" else notes).append(
                    f"schema {schema} belongs to another state: its marker names version log "
                    f"{str(mark_id)[:12]}…, the versions schema holds log {str(log_id)[:12]}… "
                    "(restored from another state's dump?)."
                )
            elif mark_moves is not None and mark_moves > moves:
                ahead.append((schema, mark_moves))
            elif mark_moves is not None and mark_moves < moves:
                notes.append(
                    f"schema {schema} is behind the versions schema: it was last marked at "
                    f"version move {mark_moves}, the version log has made {moves} (restored from "
                    f"an older dump?); the {part} written to it since that dump are lost."
                )
        prefix = self._database.schema[: -len("_versions")]  # type: ignore[attr-defined]
        together = (
            f"Restore the three schemas {prefix}_traces, {prefix}_versions and {prefix}_labels "
            f"from one dump (pg_dump -n '{prefix}_*'), or run repair() (nudge-rag repair) to "
            "accept them as they are"
        )
        error = None
        if ahead:
            shown = ", ".join(f"{s} (move {m})" for s, m in ahead)
            error = (
                f"the versions schema {self.where} is behind: it records {moves} version "
                f"move(s), but {shown} saw more (restored from an older dump?): the store may hold "
                "vectors that no version of this log describes. Put back a dump of "
                f"{prefix}_versions made after the last move, or run repair() (nudge-rag repair) "
                "to accept the schemas as they are and write the log's current version into the "
                "store (rows changed only by the moves it lost keep what the store holds), or "
                "repair(adopt_store=True) (nudge-rag repair --adopt-store) to make the log follow "
                "the store."
            )
        if errors:
            error = (
                (error + " " if error else "")
                + " ".join(errors)
                + f" {together} and write the log's current version into the store."
            )
        return error, [f"{n} {together}." for n in notes]

    def _structure_problem(self, *, tree_only: bool = False) -> str | None:
        """What makes moves go wrong: a version whose parent is not an older version (the
        tree), a current version or an unfinished move naming a version the log does not hold."""
        conn = self._conn_()
        parents = dict(conn.execute("SELECT version, parent FROM versions").fetchall())
        fix = (
            "Put a backup of the log back, or run repair(adopt_store=True) (nudge-rag repair "
            "--adopt-store) to start a new log from what the store holds."
        )
        if 0 not in parents:
            return f"{self.where}: version 0 (the base) is missing from the log. {fix}"
        bad = [
            (v, p)
            for v, p in sorted(parents.items())
            if v != 0 and (p is None or p not in parents or not 0 <= p < v)
        ]
        if bad:
            shown = ", ".join(f"{v} → {p}" for v, p in bad[:5])
            return (
                f"{self.where}: {len(bad)} version(s) name a parent that is not an older version "
                f"of the log (version → parent: {shown}); the version tree is damaged. {fix}"
            )
        if tree_only:
            return None
        cur = self._meta(conn, "current")
        if cur is None or not cur.lstrip("-").isdigit() or int(cur) not in parents:
            return (
                f"{self.where}: the log says the store is at version {cur!r}, which it does not "
                "hold. Run repair(adopt_store=True) (nudge-rag repair --adopt-store) to find the "
                "version the store holds."
            )
        row = conn.execute("SELECT op, from_version, to_version FROM intent").fetchone()
        if row is not None:
            op, frm, to = row
            if op not in ("apply", "rollback") or frm not in parents or to not in parents:
                return (
                    f"{self.where}: an unfinished {op!r} move from version {frm} to version {to} "
                    "names a version the log does not hold; it cannot be completed. Run repair() "
                    "(nudge-rag repair) to undo it and rewrite the store at a recorded version."
                )
        return None

    def _fill_fingerprints(self) -> None:
        """Compute fingerprints of versions recorded before fingerprints existed."""
        conn = self._conn_()
        todo = [
            r[0] for r in conn.execute("SELECT version FROM versions WHERE fingerprint IS NULL")
        ]
        for v in todo:
            fp = _fingerprint(*self._rows_digest(conn, v))
            conn.execute("UPDATE versions SET fingerprint = ? WHERE version = ?", (fp, v))

    @staticmethod
    def _rows_digest(conn: Any, v: int) -> tuple[int, int]:
        count, xor = 0, 0
        for vid, blob in conn.execute("SELECT id, vector FROM rows WHERE version = ?", (v,)):
            count += 1
            xor ^= _row_hash(vid, blob)
        return count, xor

    # -- errors --------------------------------------------------------------------------------
    def _damaged_error(self, e: BaseException) -> VersionLogError:
        msg = (
            f"{self.where} is damaged or not a version log ({self._database.product}: {e}). "
            "Put a backup of it back, or run repair(adopt_store=True) (nudge-rag repair "
            "--adopt-store) to move it aside and start a new log from what the store holds now."
        )
        return VersionLogError(msg)

    def _unreadable(self, e: BaseException) -> VersionLogError:
        msg = (
            f"{self.where}: the version log cannot be read ({e}); check that the file, its -wal "
            "and -shm files and their folder are readable by this user."
        )
        return VersionLogError(msg)

    def _unwritable(self, e: BaseException) -> VersionLogError:
        msg = (
            f"{self.where}: the version log cannot be opened for writing ({e}); make "
            f"{self.path.parent if self.path else 'its schema'} writable by this user, or use a "
            "read-only command "
            "(nudge-rag versions, nudge-rag traces stats)."
        )
        return VersionLogError(msg)

    def _require_ok(self, *, moving: bool = False) -> None:
        if self._broken is not None:
            raise self._broken
        if moving and self._drift is not None:
            raise self._drift
        if moving and not self.read_only:
            self._require_store()
        if self.read_only and moving:
            msg = f"{self.where}: opened read_only=True; open it writable to apply or roll back."
            raise NudgeError(msg)

    def _conn_(self) -> Any:
        if self._conn is not None:
            self._conn = self._database.live(self._conn, read_only=self.read_only)
        if self._conn is None:
            if self._broken is not None:
                raise self._broken
            msg = f"{self.where}: the version log is not open."  # pragma: no cover
            raise VersionLogError(msg)
        return self._conn

    def _store(self) -> StoreAdapter:
        if self.adapter is None:
            msg = f"{self.where}: opened without a store (read_only=True); pass the adapter."
            raise NudgeError(msg)
        return self.adapter

    @staticmethod
    def _meta(conn: Any, key: str) -> str | None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _moves_and_current(self, conn: Any) -> tuple[int, int]:
        rows = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('moves', 'current')"))
        return int(rows.get("moves", 0)), int(rows.get("current", 0))

    # -- checking the store --------------------------------------------------------------------
    def _data_version(self) -> int:
        assert self._watch is not None
        self._watch = self._database.live(self._watch, read_only=self.read_only)
        counter = self._database.change_counter(self._watch)
        return counter if counter is not None else self._moves_and_current(self._watch)[0]

    def _sample_ids(self, conn: Any, cur: int, n: int) -> list[str]:
        """Up to ``n`` nudged ids: first rows of the versions on ``cur``'s chain, then others."""
        out: list[str] = []
        chain = [v for v in self._chain(cur, conn) if v != 0]
        for v in chain:
            out += [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM rows WHERE version = ? ORDER BY id LIMIT ?", (v, n)
                )
            ]
            if len(set(out)) >= n // 2:
                break
        out = list(dict.fromkeys(out))[: n // 2]
        q = ",".join("?" * len(chain))
        off_chain = f"WHERE version NOT IN ({q})" if chain else ""
        out += [
            r[0]
            for r in conn.execute(
                f"SELECT id FROM rows {off_chain} ORDER BY id LIMIT ?", [*chain, n]
            )
        ]
        return list(dict.fromkeys(out))[:n]

    def _logged_sample(self, conn: Any) -> list[str]:
        """Up to ``2 * STORE_SAMPLE`` ids the log names: nudged rows (the current version's
        chain first) and base records."""
        ids = self._sample_ids(conn, self.current, STORE_SAMPLE)
        ids += [
            r[0] for r in conn.execute("SELECT id FROM base ORDER BY id LIMIT ?", (STORE_SAMPLE,))
        ]
        return list(dict.fromkeys(ids))

    def _wrong_store(self, conn: Any) -> WrongStoreError | None:
        """A ``WrongStoreError`` when the store holds less than ``WRONG_STORE_SHARE`` of a
        sample of the ids the log names (it is another collection, or a new empty one)."""
        ids = self._logged_sample(conn)
        if not ids:
            return None
        adapter = self._store()
        have = present_ids(adapter, ids)
        if len(have) >= WRONG_STORE_SHARE * len(ids):
            return None
        try:
            holds = f"{store_count(adapter)} id(s)"
        except Exception:  # a count is only for the message
            holds = "an unknown number of ids"
        missing = [i for i in ids if i not in have]
        msg = (
            f"the store ({store_label(adapter)}) is not the one its version log {self.where} "
            f"describes: it holds {len(have)} of {len(ids)} ids the log names (checked a "
            f"sample; missing e.g. {_shown(missing)}), and {holds} in all. Nothing was written "
            "and nothing is dropped from the log. Open the store this state belongs to (e.g. "
            "the right collection: nudge-rag --collection NAME), or give this store a state of "
            "its own; if those documents were deleted on purpose, run "
            "repair(forget_missing=True) (nudge-rag repair --forget-missing) to drop them from "
            "the log."
        )
        return WrongStoreError(msg)

    def _require_store(self) -> None:
        """Before a move: refuse a store that is not the log's (see :meth:`_wrong_store`)."""
        wrong = self._wrong_store(self._conn_())
        if wrong is not None:
            raise wrong

    def _held(self, ids: list[str]) -> tuple[list[str], np.ndarray]:
        """What the store holds for those of ``ids`` it still has (deleted ones are skipped)."""
        adapter = self._store()
        try:
            return ids, np.asarray(adapter.get(ids), dtype=np.float64)
        except UnknownIdError:
            have = present_ids(adapter, ids)
            ids = [i for i in ids if i in have]
            if not ids:
                return [], np.zeros((0, 0))
            return ids, np.asarray(adapter.get(ids), dtype=np.float64)

    def _compare(
        self, conn: Any, version: int, ids: list[str], missing: list[str] | None = None
    ) -> tuple[list[str], list[str]]:
        """Of ``ids``, those the store holds as at ``version`` and those it holds otherwise
        (ids it does not hold are added to ``missing``, when given)."""
        asked = ids
        ids, held = self._held(ids)
        if missing is not None and len(ids) < len(asked):
            have = set(ids)
            missing += [i for i in asked if i not in have]
        if not ids:
            return [], []
        ok = same_vectors(held, self._vectors_at(version, ids, conn), self._store().metric)
        return [i for i, g in zip(ids, ok, strict=True) if g], [
            i for i, g in zip(ids, ok, strict=True) if not g
        ]

    def _which_version(self, conn: Any, ids: list[str]) -> int | None:
        """The version (newest first) whose vectors the store holds for all of ``ids``."""
        ids, held = self._held(ids)
        if not ids:
            return None
        newest = conn.execute("SELECT version FROM versions ORDER BY version DESC LIMIT 200")
        for (v,) in newest.fetchall():
            if same_vectors(held, self._vectors_at(v, ids, conn), self._store().metric).all():
                return int(v)
        return None

    def _check_store(self, n: int) -> StoreDriftError | None:
        """Read ``n`` nudged rows back; a ``StoreDriftError`` if the store is not at ``current``."""
        conn = self._conn_()
        cur = self.current
        ids = self._sample_ids(conn, cur, n)
        try:
            wrong = self._wrong_store(conn)
            if wrong is not None:  # every move refuses it; searches and adds go on
                warnings.warn(str(wrong), RuntimeWarning, stacklevel=4)
                return None
            if not ids:
                return None
            good, bad = self._compare(conn, cur, ids)
            held_as = self._which_version(conn, bad) if bad else None
        except VersionLogError:
            raise
        except Exception as e:  # the store is unreachable now; verify() checks it later
            warnings.warn(
                f"{self.where}: could not read nudged rows back from the store to check it ({e}).",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        if not bad:
            return None
        return StoreDriftError(self._drift_message(cur, good, bad, held_as))

    def _drift_message(self, cur: int, good: list[str], bad: list[str], held_as: int | None) -> str:
        what = (
            f"they hold version {held_as}'s vectors"
            if held_as is not None
            else "they hold vectors of no recorded version (changed outside nudge-rag?)"
        )
        why = (
            " Was the store reloaded from a save made before the last apply or rollback (FAISS "
            "save_local, an in-memory store's dump, a copied folder)?"
            if held_as is not None
            else ""
        )
        return (
            f"the store does not hold the vectors of version {cur}, the version its log "
            f"{self.where} says it is at: {len(bad)} of {len(good) + len(bad)} nudged rows read "
            f"back differ (e.g. id {bad[0]!r}); {what}.{why} Run repair() (nudge-rag repair) to "
            f"write version {cur}'s vectors back into the store, or repair(adopt_store=True) "
            "(nudge-rag repair --adopt-store) to make the log follow the store."
        )

    def _stale_check(self) -> StaleStoreError | None:
        """After the log changed: whether another process moved the version out of our sight."""
        assert self._watch is not None
        conn = self._watch
        moves, cur = self._moves_and_current(conn)
        known_moves, known_cur = self._known
        if moves == known_moves:
            return None
        ids = self._ids_between(known_cur, cur, conn)
        if ids:
            step = max(1, len(ids) // OPEN_SAMPLE)
            sample = list(ids[::step][:OPEN_SAMPLE])
            _, bad = self._compare(conn, cur, sample)
            if bad:
                store = describe(self.adapter)
                kind, shared = store.kind, store.shared
                why = (
                    "its client keeps the vectors it serves in this process and does not see "
                    "another process's writes"
                    if not shared
                    else "it does not return what the other process wrote"
                )
                msg = (
                    f"another process moved this store's version log to version {cur}, but the "
                    f"{kind} in this process still serves other vectors ({len(bad)} of "
                    f"{len(sample)} rows read back are not version {cur}'s, e.g. id {bad[0]!r}): "
                    f"{why}. Restart this process to serve version {cur}; for an app with "
                    "several processes, use a store served by a server (a Chroma server through "
                    "chromadb.HttpClient, a Qdrant or Milvus server, Postgres with pgvector)."
                )
                return StaleStoreError(msg)
        self._known = (moves, cur)
        return None

    def _verify(self, problems: list[str], rows: int | None) -> tuple[int, int | None]:
        conn = self._conn_()
        if self._broken is not None:
            problems.append(str(self._broken))
        check = self._database.integrity(conn)
        if check != ["ok"]:
            problems.append(
                f"{self.where}: the database's integrity check reports damage "
                f"({'; '.join(check)}). Put a backup back, or run repair(adopt_store=True)."
            )
            return 0, None
        marker, marker_problem = self._read_marker()
        if marker_problem:
            problems.append(marker_problem)
        elif marker is None and self.marker_path is not None:
            problems.append(
                f"{self.marker_path} is missing; run repair() (nudge-rag repair) to write it."
            )
        elif marker is not None:
            mismatch = self._marker_mismatch(marker)
            if mismatch:
                problems.append(mismatch)
        part_error, part_notes = self._parts_check(conn)
        problems += ([part_error] if part_error else []) + part_notes
        structure = self._structure_problem()
        if structure:
            problems.append(structure)
            return 0, None
        for v, fp in conn.execute("SELECT version, fingerprint FROM versions ORDER BY version"):
            if fp is None or self._rows_digest(conn, v) != _parse_fingerprint(fp):
                problems.append(
                    f"{self.where}: the rows of version {v} are not those it recorded (their "
                    "fingerprint differs): the log was altered outside nudge-rag. Put a backup "
                    "back, or run repair(adopt_store=True)."
                )
        cur = self.current
        if self.adapter is None:
            return 0, cur
        wrong = self._wrong_store(conn)
        if wrong is not None:
            problems.append(str(wrong))
            return 0, cur
        ids = [r[0] for r in conn.execute("SELECT DISTINCT id FROM rows ORDER BY id")]
        if rows is not None and len(ids) > rows:
            step = len(ids) / max(rows, 1)
            ids = [ids[int(k * step)] for k in range(rows)]
        good: list[str] = []
        bad: list[str] = []
        missing: list[str] = []
        for part in _chunks(ids):
            g, b = self._compare(conn, cur, list(part), missing)
            good += g
            bad += b
        if missing:
            problems.append(
                f"the store ({store_label(self.adapter)}) does not hold {len(missing)} of the "
                f"{len(ids)} nudged ids its version log {self.where} names ({_shown(missing)}): "
                "deleted outside nudge-rag, or this is not the log's store. The log keeps their "
                "versions; run repair(forget_missing=True) (nudge-rag repair --forget-missing) "
                "to drop them from the log, or open the right store."
            )
        if bad:
            problems.append(
                self._drift_message(cur, good, bad, self._which_version(conn, bad[:OPEN_SAMPLE]))
            )
        return len(good) + len(bad), cur

    # -- repairing -----------------------------------------------------------------------------
    def _start_over(self, actions: list[str]) -> None:
        """Move a damaged or missing log aside and start a new one from the store's vectors."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        aside = self._database.move_aside(_time.strftime("%Y%m%d-%H%M%S"))
        if aside is not None:
            actions.append(f"moved the unusable version log aside to {aside}")
        if self.marker_path is not None:
            self.marker_path.unlink(missing_ok=True)
        self._broken = self._open()
        if self._broken is not None:  # pragma: no cover - a fresh file has no problem
            raise self._broken
        actions.append(
            "started a new version log: what the store holds now is version 0 (earlier versions "
            "cannot be restored)"
        )

    def _forget_missing(self, actions: list[str]) -> list[str]:
        """Drop the rows and base records of every id the log names and the store lacks."""
        conn = self._conn_()
        ids = [r[0] for r in conn.execute("SELECT id FROM rows UNION SELECT id FROM base")]
        ids.sort()
        adapter = self._store()
        missing: list[str] = []
        for part in _chunks(ids):
            have = present_ids(adapter, part)
            missing += [i for i in part if i not in have]
        if missing:
            self._drop(missing)
            actions.append(
                f"forgot {len(missing)} id(s) the store ({store_label(adapter)}) does not hold: "
                f"their rows and base vectors are dropped from the version log "
                f"({_shown(missing, 20)})"
            )
        return missing

    def _tree_problem(self) -> str | None:
        """Why this log cannot be repaired in place (missing, damaged, broken tree), or None."""
        if self._conn is None:
            return str(self._broken)
        try:
            check = self._database.integrity(self._conn)
            if check != ["ok"]:
                return str(self._damaged_error(self._database.Error("; ".join(check))))
            return self._structure_problem(tree_only=True)
        except self._database.Error as e:
            if not self._database.damaged(e):
                raise
            return str(self._damaged_error(e))

    def _repair_marker(self, actions: list[str]) -> None:
        marker, problem = self._read_marker()
        mismatch = problem or (self._marker_mismatch(marker) if marker is not None else None)
        if marker is None or mismatch:
            self._write_marker()
            if mismatch:
                actions.append(f"accepted {self.where} as this store's version log")
        part_error, part_notes = self._parts_check(self._conn_())
        if part_error or part_notes:
            with self._tx():
                marked = self._mark_parts(self._conn_(), every=True)
            actions.append(
                f"accepted the schemas {', '.join(marked)} as they are as parts of this state"
            )

    def _repair_intent(self, actions: list[str]) -> None:
        conn = self._conn_()
        row = conn.execute("SELECT op, from_version, to_version FROM intent").fetchone()
        if row is None:
            return
        op, frm, to = row
        known = {r[0] for r in conn.execute("SELECT version FROM versions")}
        if op in ("apply", "rollback") and frm in known and to in known:
            self._finish_move(int(frm), int(to))
            actions.append(f"finished the interrupted move from version {frm} to {to}")
            return
        cur = int(self._meta(conn, "current") or 0)
        target = frm if frm in known else cur if cur in known else 0
        with self._tx():
            conn.execute("DELETE FROM intent")
            conn.execute("UPDATE meta SET value = ? WHERE key = 'current'", (str(target),))
        actions.append(
            f"dropped an unfinished {op!r} move to version {to}, which the log does not hold; "
            f"the store is brought back to version {target}"
        )

    def _sync_store(self, actions: list[str]) -> None:
        """Rewrite every nudged row the store does not hold as the current version has it."""
        conn = self._conn_()
        problem = self._structure_problem()
        if problem is not None:  # the current version is not in the log: only the store knows
            msg = f"{problem} repair() cannot trust this log's current version."
            raise VersionLogError(msg)
        cur = self.current
        ids = [r[0] for r in conn.execute("SELECT DISTINCT id FROM rows ORDER BY id")]
        bad: list[str] = []
        for part in _chunks(ids):
            bad += self._compare(conn, cur, list(part))[1]
        if bad:
            self._write(bad, self._vectors_at(cur, bad))
            actions.append(f"rewrote {len(bad)} row(s) of the store with version {cur}'s vectors")
        self._bump_moves(cur)

    def _adopt(self, actions: list[str]) -> None:
        """Move the log to the version the store's rows match; other rows become base."""
        conn = self._conn_()
        ids = [r[0] for r in conn.execute("SELECT DISTINCT id FROM rows ORDER BY id")]
        held: dict[str, np.ndarray] = {}
        for part in _chunks(ids):
            have, mat = self._held(list(part))
            held.update(zip(have, mat, strict=True))
        ids = [i for i in ids if i in held]
        cur = self.current
        best, best_n = cur, -1
        metric = self._store().metric
        if ids:
            mat = np.stack([held[i] for i in ids])
            for (v,) in conn.execute(
                "SELECT version FROM versions ORDER BY version DESC"
            ).fetchall():
                n = int(same_vectors(mat, self._vectors_at(v, ids, conn), metric).sum())
                if n > best_n or (n == best_n and v == cur):
                    best, best_n = int(v), n
            ok = same_vectors(mat, self._vectors_at(best, ids, conn), metric)
            odd = [i for i, g in zip(ids, ok, strict=True) if not g]
        else:
            odd = []
        with self._tx():
            conn.execute("DELETE FROM intent")
            conn.execute("UPDATE meta SET value = ? WHERE key = 'current'", (str(best),))
        if best != cur:
            actions.append(f"the store holds version {best}: the log now says so (was {cur})")
        if odd:
            self._drop(odd)
            actions.append(
                f"{len(odd)} row(s) match no version: their nudges are forgotten and what the "
                f"store holds is their new base ({_shown(odd, 20)})"
            )
        self._bump_moves(best)

    def _bump_moves(self, cur: int) -> None:
        conn = self._conn_()
        with self._tx():
            conn.execute("UPDATE meta SET value = ? WHERE key = 'current'", (str(cur),))
            conn.execute(_COUNT_MOVE)
            self._advance_parts(conn)
        self._write_marker()

    # -- moving --------------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[None]:
        with self._tlock, self._database.transaction(self._conn_()):
            yield

    @contextmanager
    def _moving(self) -> Iterator[None]:
        """Hold the thread lock and the inter-process lock for one move (re-entrant)."""
        with self._tlock:
            if self.read_only:
                yield
                return
            with self._database.lock():
                yield

    def _recover(self) -> None:
        """Complete a move that a crash interrupted (its intent row holds everything it needs).

        The move is first claimed (its token replaced by ours), so that the process that began it,
        should it still run after losing the lock, cannot commit it too."""
        conn = self._conn_()
        for _ in range(8):  # each turn: another process finished the move we were to claim
            row = conn.execute("SELECT from_version, to_version FROM intent").fetchone()
            if row is None:
                return
            problem = self._structure_problem()
            if problem is not None:
                self._broken = VersionLogError(problem)
                raise self._broken
            self._require_store()  # the move is finished in its own store, never another
            claimed = self._claim_intent()
            if claimed is not None:
                self._finish_move(claimed[0], claimed[1], token=claimed[2])
                return

    # -- fencing: a move commits only while it owns the log's intent row ------------------------
    def _claim_move(self, conn: Any, op: str, seen: tuple[int, int]) -> None:
        """In the transaction that begins a move: the log must still be at ``seen`` (moves,
        current) with no unfinished move, or another process moved while this one held no lock.

        The no-op update locks both rows until the transaction ends (Postgres; SQLite's write
        lock does the same), so two processes that both believe they hold the lock begin one
        at a time and the second sees the first's intent.
        """
        moves, cur = seen
        locked = conn.execute(
            "UPDATE meta SET value = value WHERE (key = 'moves' AND value = ?) OR "
            "(key = 'current' AND value = ?)",
            (str(moves), str(cur)),
        ).rowcount
        pending = conn.execute("SELECT 1 FROM intent").fetchone() is not None
        if locked != 2 or pending:
            now_moves, now_cur = self._moves_and_current(conn)
            msg = (
                f"{self.where}: another process moved this store's version while this {op} was "
                f"being prepared (it started at version {cur} after {moves} move(s); the log is "
                f"now at version {now_cur} after {now_moves}"
                f"{', with a move unfinished' if pending else ''}). {_LOST_LOCK} Nothing was "
                f"written; check versions() and retry the {op}."
            )
            raise ConcurrentMoveError(msg)

    def _insert_intent(self, conn: Any, op: str, frm: int, to: int) -> str:
        """Record the move about to be made; its token (the right to commit it)."""
        token = uuid.uuid4().hex
        conn.execute(
            "INSERT INTO intent (one, op, from_version, to_version, token) VALUES (1, ?, ?, ?, ?)",
            (op, frm, to, token),
        )
        return token

    def _claim_intent(self) -> tuple[int, int, str] | None:
        """Make the unfinished move ours (a new token); its versions and token, or None if
        another process finished or claimed it first."""
        conn = self._conn_()
        row = conn.execute("SELECT from_version, to_version, token FROM intent").fetchone()
        if row is None:
            return None
        token = uuid.uuid4().hex
        with self._tx():
            n = conn.execute(
                "UPDATE intent SET token = ? WHERE token = ?", (token, row[2])
            ).rowcount
        return (int(row[0]), int(row[1]), token) if n == 1 else None

    def _fence(self, token: str) -> None:
        """Before writing the store: take the lock again if it was lost, then check that the
        move is still ours (no other process claimed it meanwhile)."""
        self._database.regain_lock()
        row = self._conn_().execute("SELECT token, to_version FROM intent").fetchone()
        if row is None or row[0] != token:
            msg = (
                f"{self.where}: another process took this move over before it wrote the store, "
                f"and the log is now at version {self.current}. {_LOST_LOCK} This process wrote "
                "nothing; check versions() and retry if needed."
            )
            raise ConcurrentMoveError(msg)

    def _lost(self, ids: list[str], frm: int, to: int) -> None:
        """A move whose writes reached the store lost its token: put ``ids`` back as the log's
        current version holds them (under the lock, taken again), then raise."""
        self._database.regain_lock()
        self._recover()
        cur = self.current
        restored = "no row needed rewriting"
        if ids:
            try:
                self._write(ids, self._vectors_at(cur, ids))
                restored = f"the {len(ids)} row(s) it wrote now hold version {cur}'s vectors again"
            except Exception as e:
                restored = (
                    f"putting back the {len(ids)} row(s) it wrote failed ({e}); run repair() "
                    f"(nudge-rag repair) to write version {cur}'s vectors into the store"
                )
        self._known = self._moves_and_current(self._conn_())
        msg = (
            f"{self.where}: another process moved this store's version while this move from "
            f"version {frm} to {to} wrote the store; the move did not commit and the log is at "
            f"version {cur}: {restored}. {_LOST_LOCK} Check versions() and retry if needed."
        )
        raise ConcurrentMoveError(msg)

    def _finish_move(
        self, frm: int, to: int, *, token: str | None = None, created: bool = False
    ) -> None:
        """Write the rows that differ between versions ``frm`` and ``to``; make ``to`` current.

        The move must own the intent row (``token``; None: claim it now) when it writes the
        store and when it commits: a process that lost the lock to another one raises
        ``ConcurrentMoveError`` and puts back what it wrote. If the store fails a write (not a
        crash: an error raised to us), the rows go back to ``frm`` and the move is forgotten
        before the error is re-raised, so the store never stays between versions; ``created``
        marks a version made by this apply, dropped then.
        """
        if token is None:
            claimed = self._claim_intent()
            if claimed is None:  # finished by another process meanwhile
                return
            frm, to, token = claimed
        ids = self._ids_between(frm, to)
        self._fence(token)
        if ids:
            try:
                self._write(ids, self._vectors_at(to, ids))
            except Exception:
                self._undo_move(frm, to, ids, token=token, created=created)
                raise
        conn = self._conn_()
        with self._tx():
            ours = conn.execute("DELETE FROM intent WHERE token = ?", (token,)).rowcount == 1
            if ours:
                conn.execute("UPDATE meta SET value = ? WHERE key = 'current'", (str(to),))
                conn.execute(_COUNT_MOVE)
                self._advance_parts(conn)
        if not ours:
            self._lost(ids, frm, to)
        self._known = self._moves_and_current(conn)
        self._write_marker()

    def _undo_move(self, frm: int, to: int, ids: list[str], *, token: str, created: bool) -> None:
        """Put ``ids`` back at version ``frm`` after a failed write (best effort)."""
        conn = self._conn_()
        with self._tx():
            # Should the undo fail too, recovery then moves the store back to ``frm``.
            ours = conn.execute(
                "UPDATE intent SET from_version = ?, to_version = ? WHERE token = ?",
                (to, frm, token),
            ).rowcount
        if not ours:
            self._lost(ids, frm, to)
        try:
            self._write(ids, self._vectors_at(frm, ids))
        except Exception:
            return
        with self._tx():
            ours = conn.execute("DELETE FROM intent WHERE token = ?", (token,)).rowcount
            if ours and created:
                conn.execute("DELETE FROM rows WHERE version = ?", (to,))
                conn.execute("DELETE FROM versions WHERE version = ?", (to,))
        if not ours:
            self._lost(ids, frm, to)

    def _write(self, ids: list[str], mat: np.ndarray) -> None:
        adapter = self._store()
        try:
            adapter.put(ids, mat)
        except UnknownIdError:
            self._require_store()  # another store: write nothing
            # documents deleted behind our back: write the rest; the log keeps their rows
            # (verify() lists them, repair(forget_missing=True) drops them)
            have = present_ids(adapter, ids)
            keep = [n for n, i in enumerate(ids) if i in have]
            if keep:
                adapter.put([ids[n] for n in keep], mat[keep])
            gone = [i for i in ids if i not in have]
            warnings.warn(
                f"{self.where}: the store ({store_label(adapter)}) no longer holds {len(gone)} "
                f"nudged id(s) ({_shown(gone)}), deleted outside nudge-rag; the other rows were "
                "written and the version log keeps theirs. Run repair(forget_missing=True) "
                "(nudge-rag repair --forget-missing) to drop them from the log.",
                RuntimeWarning,
                stacklevel=2,
            )
        if self.after_write is not None:
            self.after_write()

    def _drop(self, ids: list[str]) -> None:
        """Delete the rows and base records of ``ids``, keeping each version's fingerprint."""
        if not ids:
            return
        conn = self._conn_()
        with self._tx():
            gone: dict[int, tuple[int, int]] = {}
            for part in _chunks(ids):
                q = ",".join("?" * len(part))
                for v, vid, blob in conn.execute(
                    f"SELECT version, id, vector FROM rows WHERE id IN ({q})", part
                ):
                    n, x = gone.get(v, (0, 0))
                    gone[v] = (n + 1, x ^ _row_hash(vid, blob))
                conn.execute(f"DELETE FROM rows WHERE id IN ({q})", part)
                conn.execute(f"DELETE FROM base WHERE id IN ({q})", part)
            for v, (n, x) in gone.items():
                row = conn.execute(
                    "SELECT fingerprint FROM versions WHERE version = ?", (v,)
                ).fetchone()
                if row is not None and row[0] is not None:
                    count, xor = _parse_fingerprint(row[0])
                    conn.execute(
                        "UPDATE versions SET fingerprint = ? WHERE version = ?",
                        (_fingerprint(count - n, xor ^ x), v),
                    )

    def _parent(self, v: int) -> int:
        chain = self._chain(v)
        return chain[1] if len(chain) > 1 else 0

    def _chain(self, v: int, conn: Any = None) -> list[int]:
        """``v`` and its ancestors down to 0 (each parent is older, so the walk ends)."""
        conn = conn or self._conn_()
        parents = dict(conn.execute("SELECT version, parent FROM versions").fetchall())
        out = [v]
        while out[-1] != 0:
            p = parents.get(out[-1], -1)
            if p is None or p not in parents or not 0 <= p < out[-1]:
                msg = (
                    f"{self.where}: version {out[-1]} names parent {p!r}, which is not an older "
                    "version of the log; the version tree is damaged. Put a backup back, or run "
                    "repair(adopt_store=True)."
                )
                raise VersionLogError(msg)
            out.append(int(p))
        return out

    def _ids_between(self, a: int, b: int, conn: Any = None) -> list[str]:
        """Ids changed on the tree path between versions ``a`` and ``b``."""
        conn = conn or self._conn_()
        ca, cb = self._chain(a, conn), self._chain(b, conn)
        path = sorted(set(ca) ^ set(cb))
        if not path:
            return []
        q = ",".join("?" * len(path))
        rows = conn.execute(
            f"SELECT DISTINCT id FROM rows WHERE version IN ({q}) ORDER BY id", path
        ).fetchall()
        return [r[0] for r in rows]

    def _vectors_at(self, v: int, ids: list[str], conn: Any = None) -> np.ndarray:
        """The given vectors of ``ids`` at version ``v`` (nearest ancestor's row, else base)."""
        conn = conn or self._conn_()
        chain = self._chain(v, conn)
        qv = ",".join("?" * len(chain))
        found: dict[str, tuple[int, bytes]] = {}
        for part in _chunks(ids):
            qi = ",".join("?" * len(part))
            for vid, ver, blob in conn.execute(
                f"SELECT id, version, vector FROM rows WHERE version IN ({qv}) AND id IN ({qi})",
                [*chain, *part],
            ):
                if vid not in found or ver > found[vid][0]:
                    found[vid] = (ver, blob)
        base_ids = [i for i in ids if i not in found]
        base = self._load("base", base_ids, conn)
        lost = [i for i in base_ids if i not in base]
        if lost:
            msg = (
                f"{self.where} has no base vector for nudged id(s) {lost[:10]}: the log was "
                "altered outside nudge-rag. Put a backup back, or run repair(adopt_store=True)."
            )
            raise VersionLogError(msg)
        return np.stack([_unblob(found[i][1]) if i in found else base[i] for i in ids])

    def _ids_in(self, table: str, ids: Sequence[str]) -> set[str]:
        conn = self._conn_()
        out: set[str] = set()
        for part in _chunks(list(ids)):
            q = ",".join("?" * len(part))
            out.update(
                r[0] for r in conn.execute(f"SELECT id FROM {table} WHERE id IN ({q})", part)
            )
        return out

    def _load(self, table: str, ids: Sequence[str], conn: Any = None) -> dict[str, np.ndarray]:
        conn = conn or self._conn_()
        out: dict[str, np.ndarray] = {}
        for part in _chunks(list(ids)):
            q = ",".join("?" * len(part))
            for i, blob in conn.execute(f"SELECT id, vector FROM {table} WHERE id IN ({q})", part):
                out[i] = _unblob(blob)
        return out

    def _read_exact(self, ids: list[str]) -> np.ndarray:
        return read_exact(self._store(), ids)


def _as_matrix(
    rows: Sequence[np.ndarray] | np.ndarray, what: str, ids: Sequence[str] | None = None
) -> np.ndarray:
    """``rows`` as a float64 matrix (exact for float32 and float64 input), by ``check_vectors``."""
    return check_vectors(rows, what=what, dtype=np.float64, integers=True, row_names=ids)


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
