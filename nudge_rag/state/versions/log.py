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
inserted through a face are taken as given too (:meth:`VersionLog.record_base`); the others are
read from the store before their first change.

This module is the API; the work is done by its neighbours, each taking the log:
:mod:`~nudge_rag.state.versions.moves` (intent, apply, rollback, fencing),
:mod:`~nudge_rag.state.versions.integrity` (marker, fingerprints, drift, verify),
:mod:`~nudge_rag.state.versions.repair` and :mod:`~nudge_rag.state.versions.schema` (tables,
migrations, queries). Drift between the log and the store is detected, never served silently:
problems are raised by every move and by :meth:`VersionLog.check_fresh` until
:meth:`VersionLog.repair` fixes them; :meth:`VersionLog.verify` lists them.
"""

from __future__ import annotations

import functools
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
    BadInputError,
    ConcurrentMoveError,
    MetricMismatchError,
    NudgeError,
    StaleStoreError,
    StoreDriftError,
    VersionLogError,
    WrongStoreError,
)
from nudge_rag.fit.checks import check_vectors
from nudge_rag.fit.nudge import Method
from nudge_rag.state.db import Database
from nudge_rag.state.versions import integrity, moves, repair, schema
from nudge_rag.state.versions.integrity import OPEN_SAMPLE, same_vectors, store_label
from nudge_rag.state.versions.schema import (
    blob,
    chunks,
    moves_and_current,
    unblob,
    version_database,
)
from nudge_rag.stores.base import Metric, StoreAdapter, can_scan, scan, store_count

__all__ = [
    "ConcurrentMoveError",
    "StaleStoreError",
    "StoreDriftError",
    "VerifyReport",
    "VersionInfo",
    "VersionLog",
    "VersionLogError",
    "WrongStoreError",
    "check_metric",
    "is_nudge_m",
    "same_vectors",
    "store_label",
    "version_database",
]

STORE_READ = 8192  # ids per store read in base_vectors
MARKER_SUFFIX = ".marker.json"  # versions.sqlite -> versions.marker.json
FRESH_EVERY_S = 0.02  # check_fresh() asks the log at most this often

F = TypeVar("F", bound=Callable[..., Any])


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
        raise BadInputError(msg) from None


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


def _version_number(version: Any) -> int:
    """``version`` as an int; a bool, a float or a string is refused, not rounded."""
    if isinstance(version, bool | np.bool_):
        msg = f"version: found {version!r} (a bool); pass a version number from versions()."
        raise BadInputError(msg)
    try:
        return operator.index(version)
    except TypeError:
        msg = (
            f"version: found {version!r} ({type(version).__name__}), expected an int version "
            "number; pass one from versions() (0 is the base)."
        )
        raise BadInputError(msg) from None


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
            raise BadInputError(msg)
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
                self._drift = integrity.check_store(self, OPEN_SAMPLE)
            except VersionLogError as e:  # the log cannot say what the store should hold
                self._broken = e
            self._watch = self._database.connect(read_only=self.read_only)
            self._seen_dv = self._data_version()
            self._known = moves_and_current(self._conn_())

    # -- public API --------------------------------------------------------------------------------
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
        ids, mat = _vectors_by_id(vectors)
        report_json = _report_json(report)
        with self._moving():
            self._require_ok(moving=True)
            return moves.apply(
                self,
                ids,
                mat,
                method=method,
                gamma=gamma,
                note=note,
                report_json=report_json,
                from_base=from_base,
            )

    @_sql_errors
    def rollback(self, version: int | None = None) -> int:
        """Move the store to ``version`` (None: the parent of the current one; 0: the base).

        Restores exactly the vectors the store held at that version; returns the version.
        """
        if version is not None:
            version = _version_number(version)
        with self._moving():
            self._require_ok(moving=True)
            return moves.rollback(self, version)

    @_sql_errors
    def base_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Base vectors of ``ids`` (float32); for ids never changed, what the store holds now.

        Filled into one float32 matrix as the rows arrive (``chunks`` of ids a query,
        ``STORE_READ`` a store read), so reading a whole corpus holds the result and one chunk,
        not a float64 copy of every row.
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
            for part in chunks(uniq):
                q = ",".join("?" * len(part))
                for i, b in conn.execute(f"SELECT id, vector FROM base WHERE id IN ({q})", part):
                    v = unblob(b)
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
                [(i, blob(mat[n])) for n, i in enumerate(ids)],
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
            integrity.drop(self, ids)

    @_sql_errors
    def check_store(self) -> None:
        """Raise ``WrongStoreError`` when the store holds none, or only a small share, of the
        ids this log names (another collection, or a new empty one): every move checks it, and
        ``finetune()`` before it reads anything. Nothing is written."""
        if self.read_only and self.adapter is None:
            return
        self._require_ok()
        with self._tlock:
            integrity.require_store(self)

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
                self._stale = integrity.stale_check(self)
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
                checked, version = integrity.verify(self, problems, rows)
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
        with self._moving():
            actions, forgotten = repair.repair(
                self, adopt_store=adopt_store, forget_missing=forget_missing
            )
            self._broken = self._drift = self._stale = None
            integrity.write_marker(self)
            conn = self._conn_()
            if self._watch is None:
                self._watch = self._database.connect(read_only=self.read_only)
            self._seen_dv = self._data_version()
            self._known = moves_and_current(conn)
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

    # -- opening -----------------------------------------------------------------------------------
    def _open(self) -> VersionLogError | None:
        """Open (or create) the log; return the problem that needs ``repair()``, if any."""
        marker, marker_problem = integrity.read_marker(self)
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
        damaged = self._create()
        if damaged is not None:
            return damaged
        problem = integrity.opening_problem(self, self._conn, marker, marker_problem)
        if problem is not None:
            return VersionLogError(problem)
        integrity.write_marker(self, unless=marker)
        try:
            moves.recover(self)
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

    def _create(self) -> VersionLogError | None:
        """Connect, migrate the tables and record version 0 where they are new; the damage
        found, if any (an unwritable log raises)."""
        conn: Any = None
        try:
            conn = self._database.connect()
            self._database.migrate(conn, schema.MIGRATIONS)
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
                        (_time.time(), integrity.fingerprint(0, 0)),
                    )
                    conn.execute("INSERT INTO meta VALUES ('current', '0') ON CONFLICT DO NOTHING")
                conn.execute("INSERT INTO meta VALUES ('moves', '0') ON CONFLICT DO NOTHING")
                conn.execute(
                    "INSERT INTO meta VALUES ('log_id', ?) ON CONFLICT DO NOTHING",
                    (uuid.uuid4().hex,),
                )
                integrity.fill_fingerprints(self._conn_())
        except self._database.Error as e:
            if self._database.damaged(e):
                return self._damaged_error(e)
            raise self._unwritable(e) from e
        return None

    def _open_read_only(self) -> None:
        """Open an existing log for reading only; every problem is raised here."""
        marker, marker_problem = integrity.read_marker(self)
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
            problem = integrity.opening_problem(self, conn, marker, marker_problem)
        except self._database.Error as e:
            if self._database.damaged(e):
                raise self._damaged_error(e) from e
            raise self._unreadable(e) from e
        if problem is not None:
            raise VersionLogError(problem)

    # -- errors ------------------------------------------------------------------------------------
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
            integrity.require_store(self)
        if self.read_only and moving:
            msg = f"{self.where}: opened read_only=True; open it writable to apply or roll back."
            raise NudgeError(msg)

    # -- what the helper modules share: the connection, transactions, the lock, the store ----------
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

    def _data_version(self) -> int:
        assert self._watch is not None
        self._watch = self._database.live(self._watch, read_only=self.read_only)
        counter = self._database.change_counter(self._watch)
        return counter if counter is not None else moves_and_current(self._watch)[0]


def _vectors_by_id(vectors: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """The ids of ``apply``'s ``vectors`` (as strings, each once) and their float64 matrix."""
    if not isinstance(vectors, Mapping) or len(vectors) == 0:
        msg = (
            f"vectors: expected a non-empty mapping {{id: vector}}, found "
            f"{type(vectors).__name__} of length {len(vectors) if vectors is not None else 0}."
        )
        raise BadInputError(msg)
    ids = [str(i) for i in vectors]
    if len(set(ids)) != len(ids):
        seen: dict[str, object] = {}
        for key in vectors:
            if str(key) in seen:
                msg = (
                    f"vectors: keys {seen[str(key)]!r} and {key!r} both name id {str(key)!r} "
                    "(ids are compared as strings); pass one vector per id."
                )
                raise BadInputError(msg)
            seen[str(key)] = key
    return ids, _as_matrix([vectors[i] for i in vectors], "vectors", ids)


def _report_json(report: dict | None) -> str | None:
    """``apply``'s ``report`` as JSON (numpy scalars and arrays as numbers and lists)."""
    if report is None:
        return None
    try:
        return json.dumps(report, default=_json_default)
    except (TypeError, ValueError) as e:
        msg = f"report: expected a JSON-serialisable dict, found one that fails: {e}."
        raise BadInputError(msg) from e


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
