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
version. A file lock serialises moves between processes.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time as _time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nudge_rag.core.checks import require_finite_rows, require_float_dtype
from nudge_rag.core.errors import MetricMismatchError, NudgeError, UnknownIdError
from nudge_rag.core.stores.base import Metric, StoreAdapter, present_ids
from nudge_rag.core.traces import create_private_file

try:  # POSIX only; elsewhere moves are serialised within one process
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

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

_CHUNK = 900  # ids per SQL "IN (...)" list


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


def is_nudge_m(method: str | None) -> bool:
    """Whether ``method`` names NUDGE-M (unnormalised vectors), however it is spelled."""
    return method is not None and re.sub(r"[^a-z0-9]", "", method.lower()) in {"nudgem", "m"}


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


class VersionLog:
    """Base vectors, version records and crash-safe apply / rollback for one store adapter.

    Example:
        .. code-block:: python

            log = VersionLog("state/versions.sqlite", ChromaAdapter(collection))
            v = log.apply({"doc-1": new_vec}, method="nudge-n", gamma=0.3)
            log.rollback(0)          # every changed row back to its base, bitwise
            log.versions()           # [VersionInfo(version=0, ...), VersionInfo(version=1, ...)]
    """

    def __init__(self, path: str | os.PathLike[str], adapter: StoreAdapter):
        self.path = Path(path)
        self.adapter = adapter
        create_private_file(self.path)
        self._lockfile = self.path.with_name(self.path.name + ".lock")
        create_private_file(self._lockfile)
        self._tlock = threading.RLock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        with self._moving():
            self._conn.executescript(_SCHEMA)
            with self._tx():
                if (
                    self._conn.execute("SELECT 1 FROM versions WHERE version = 0").fetchone()
                    is None
                ):
                    self._conn.execute(
                        "INSERT INTO versions VALUES (0, NULL, ?, NULL, NULL, 0, 'base', NULL)",
                        (_time.time(),),
                    )
                    self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('current', '0')")
            try:
                self._recover()
            except Exception as e:  # the store is unreachable now: the next move retries
                warnings.warn(
                    f"{self.path}: an interrupted version move could not be finished now ({e}); "
                    "it is retried by the next apply or rollback.",
                    RuntimeWarning,
                    stacklevel=2,
                )

    # -- public API ----------------------------------------------------------------------------
    @property
    def current(self) -> int:
        """The version the store is at."""
        with self._tlock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'current'").fetchone()
        return int(row[0])

    def versions(self) -> list[VersionInfo]:
        """Every recorded version, oldest first (``current`` marks the one the store is at)."""
        with self._tlock:
            cur = self.current
            rows = self._conn.execute(
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
        check_metric(method, self.adapter.metric)
        if not isinstance(vectors, Mapping) or len(vectors) == 0:
            msg = (
                f"vectors: expected a non-empty mapping {{id: vector}}, found "
                f"{type(vectors).__name__} of length {len(vectors) if vectors is not None else 0}."
            )
            raise NudgeError(msg)
        ids = [str(i) for i in vectors]
        mat = _as_matrix([vectors[i] for i in vectors], "vectors")
        report_json = None
        if report is not None:
            try:
                report_json = json.dumps(report, default=_json_default)
            except (TypeError, ValueError) as e:
                msg = f"report: expected a JSON-serialisable dict, found one that fails: {e}."
                raise NudgeError(msg) from e
        with self._moving():
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
            cur = self.current
            named = set(ids)
            stale = [i for i in self._ids_between(0, cur) if i not in named] if from_base else []
            base_of_stale = self._vectors_at(0, stale) if stale else []
            back = [(i, _blob(v)) for i, v in zip(stale, base_of_stale, strict=True)]
            with self._tx():
                ver = int(self._conn.execute("SELECT max(version) FROM versions").fetchone()[0]) + 1
                self._conn.executemany("INSERT INTO base VALUES (?, ?, ?)", new_base)
                self._conn.execute(
                    "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        ver,
                        cur,
                        _time.time(),
                        method,
                        None if gamma is None else float(gamma),
                        len(ids) + len(back),
                        note,
                        report_json,
                    ),
                )
                self._conn.executemany(
                    "INSERT INTO rows VALUES (?, ?, ?)",
                    [(ver, i, _blob(mat[n])) for n, i in enumerate(ids)]
                    + [(ver, i, blob) for i, blob in back],
                )
                self._conn.execute("INSERT INTO intent VALUES (1, 'apply', ?, ?)", (cur, ver))
            self._finish_move(cur, ver, created=True)
        return ver

    def rollback(self, version: int | None = None) -> int:
        """Move the store to ``version`` (None: the parent of the current one; 0: the base).

        Restores exactly the vectors the store held at that version; returns the version.
        """
        with self._moving():
            self._recover()
            cur = self.current
            if version is None:
                if cur == 0:
                    msg = (
                        "rollback(version=None): the store is at version 0 (the base), which has "
                        "no previous version; pass a version from versions() to move forward."
                    )
                    raise NudgeError(msg)
                version = self._parent(cur)
            version = int(version)
            if (
                self._conn.execute(
                    "SELECT 1 FROM versions WHERE version = ?", (version,)
                ).fetchone()
                is None
            ):
                known = [v.version for v in self.versions()]
                msg = f"version: no version {version} in this store's log; known versions: {known}."
                raise NudgeError(msg)
            if version == cur:
                return cur
            with self._tx():
                self._conn.execute(
                    "INSERT INTO intent VALUES (1, 'rollback', ?, ?)", (cur, version)
                )
            self._finish_move(cur, version)
        return version

    def base_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Base vectors of ``ids`` (float32); for ids never changed, what the store holds now."""
        ids = [str(i) for i in ids]
        with self._tlock:
            base = self._load("base", ids)
        missing = [i for i in ids if i not in base]
        out_store = self.adapter.get(missing) if missing else None
        if out_store is not None:
            for n, i in enumerate(missing):
                base[i] = np.asarray(out_store[n], dtype=np.float64)
        if not ids:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([base[i] for i in ids]).astype(np.float32)

    def changed_ids(self) -> list[str]:
        """Ids changed by any recorded version (whatever the current version)."""
        with self._tlock:
            rows = self._conn.execute("SELECT DISTINCT id FROM rows ORDER BY id").fetchall()
        return [r[0] for r in rows]

    def record_base(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Keep ``vectors`` as the base of ``ids`` exactly as given to the store (on insert)."""
        ids = [str(i) for i in ids]
        mat = _as_matrix(vectors, "vectors")
        with self._tlock, self._tx():
            self._conn.executemany(
                "INSERT OR REPLACE INTO base VALUES (?, ?, 1)",
                [(i, _blob(mat[n])) for n, i in enumerate(ids)],
            )

    def forget(self, ids: Iterable[str]) -> None:
        """Drop the nudges and base records of ``ids`` (their documents were replaced or deleted).

        Recorded versions keep their row counts; moving between versions no longer touches them.
        """
        ids = [str(i) for i in ids]
        if not ids:
            return
        with self._moving(), self._tx():
            for part in _chunks(ids):
                q = ",".join("?" * len(part))
                self._conn.execute(f"DELETE FROM rows WHERE id IN ({q})", part)
                self._conn.execute(f"DELETE FROM base WHERE id IN ({q})", part)

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._tlock:
            self._conn.close()

    # -- internals -----------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[None]:
        with self._tlock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def _moving(self) -> Iterator[None]:
        """Hold the thread lock and the inter-process file lock for one move."""
        with self._tlock:
            if fcntl is None:  # pragma: no cover
                yield
                return
            with open(self._lockfile, "a+b") as fh:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _recover(self) -> None:
        """Complete a move that a crash interrupted (its intent row holds everything it needs)."""
        row = self._conn.execute("SELECT from_version, to_version FROM intent").fetchone()
        if row is not None:
            self._finish_move(int(row[0]), int(row[1]))

    def _finish_move(self, frm: int, to: int, *, created: bool = False) -> None:
        """Write the rows that differ between versions ``frm`` and ``to``; make ``to`` current.

        If the store fails a write (not a crash: an error raised to us), the rows go back to
        ``frm`` and the move is forgotten before the error is re-raised, so the store never
        stays between versions; ``created`` marks a version made by this apply, dropped then.
        """
        ids = self._ids_between(frm, to)
        if ids:
            try:
                self._write(ids, self._vectors_at(to, ids))
            except Exception:
                self._undo_move(frm, to, ids, created=created)
                raise
        with self._tx():
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'current'", (str(to),))
            self._conn.execute("DELETE FROM intent")

    def _undo_move(self, frm: int, to: int, ids: list[str], *, created: bool) -> None:
        """Put ``ids`` back at version ``frm`` after a failed write (best effort)."""
        with self._tx():
            # Should the undo fail too, recovery then moves the store back to ``frm``.
            self._conn.execute("UPDATE intent SET from_version = ?, to_version = ?", (to, frm))
        try:
            self._write(ids, self._vectors_at(frm, ids))
        except Exception:
            return
        with self._tx():
            self._conn.execute("DELETE FROM intent")
            if created:
                self._conn.execute("DELETE FROM rows WHERE version = ?", (to,))
                self._conn.execute("DELETE FROM versions WHERE version = ?", (to,))

    def _write(self, ids: list[str], mat: np.ndarray) -> None:
        try:
            self.adapter.put(ids, mat)
        except UnknownIdError:
            # documents deleted behind our back: forget them, write the rest
            have = present_ids(self.adapter, ids)
            gone = [i for i in ids if i not in have]
            with self._tx():
                for part in _chunks(gone):
                    q = ",".join("?" * len(part))
                    self._conn.execute(f"DELETE FROM rows WHERE id IN ({q})", part)
                    self._conn.execute(f"DELETE FROM base WHERE id IN ({q})", part)
            keep = [n for n, i in enumerate(ids) if i in have]
            if keep:
                self.adapter.put([ids[n] for n in keep], mat[keep])

    def _parent(self, v: int) -> int:
        row = self._conn.execute("SELECT parent FROM versions WHERE version = ?", (v,)).fetchone()
        return int(row[0]) if row is not None and row[0] is not None else 0

    def _chain(self, v: int) -> list[int]:
        """``v`` and its ancestors down to 0."""
        parents = dict(self._conn.execute("SELECT version, parent FROM versions").fetchall())
        out = [v]
        while out[-1] != 0:
            out.append(int(parents.get(out[-1]) or 0))
        return out

    def _ids_between(self, a: int, b: int) -> list[str]:
        """Ids changed on the tree path between versions ``a`` and ``b``."""
        ca, cb = self._chain(a), self._chain(b)
        path = sorted(set(ca) ^ set(cb))
        if not path:
            return []
        q = ",".join("?" * len(path))
        rows = self._conn.execute(
            f"SELECT DISTINCT id FROM rows WHERE version IN ({q}) ORDER BY id", path
        ).fetchall()
        return [r[0] for r in rows]

    def _vectors_at(self, v: int, ids: list[str]) -> np.ndarray:
        """The given vectors of ``ids`` at version ``v`` (nearest ancestor's row, else base)."""
        chain = self._chain(v)
        qv = ",".join("?" * len(chain))
        found: dict[str, tuple[int, bytes]] = {}
        for part in _chunks(ids):
            qi = ",".join("?" * len(part))
            for vid, ver, blob in self._conn.execute(
                f"SELECT id, version, vector FROM rows WHERE version IN ({qv}) AND id IN ({qi})",
                [*chain, *part],
            ):
                if vid not in found or ver > found[vid][0]:
                    found[vid] = (ver, blob)
        base_ids = [i for i in ids if i not in found]
        base = self._load("base", base_ids)
        lost = [i for i in base_ids if i not in base]
        if lost:  # pragma: no cover - the schema keeps a base row for every changed id
            msg = f"version log {self.path} has no base vector for ids {lost[:10]}."
            raise NudgeError(msg)
        return np.stack([_unblob(found[i][1]) if i in found else base[i] for i in ids])

    def _ids_in(self, table: str, ids: Sequence[str]) -> set[str]:
        out: set[str] = set()
        for part in _chunks(list(ids)):
            q = ",".join("?" * len(part))
            out.update(
                r[0] for r in self._conn.execute(f"SELECT id FROM {table} WHERE id IN ({q})", part)
            )
        return out

    def _load(self, table: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for part in _chunks(list(ids)):
            q = ",".join("?" * len(part))
            for i, blob in self._conn.execute(
                f"SELECT id, vector FROM {table} WHERE id IN ({q})", part
            ):
                out[i] = _unblob(blob)
        return out

    def _read_exact(self, ids: list[str]) -> np.ndarray:
        getter = getattr(self.adapter, "get_exact", None) or self.adapter.get
        return np.asarray(getter(ids), dtype=np.float64)


def _as_matrix(rows: Sequence[np.ndarray] | np.ndarray, what: str) -> np.ndarray:
    """Stack ``rows`` into a finite float64 matrix (exact for float32 and float64 input)."""
    try:
        mat = np.asarray(rows)
        if mat.dtype == object or mat.ndim != 2:
            raise ValueError
    except ValueError:
        shapes = sorted({np.shape(r) for r in rows})[:5]
        msg = f"{what}: expected vectors of one length, found shapes {shapes}."
        raise NudgeError(msg) from None
    require_float_dtype(mat, what, integers=True)
    mat = mat.astype(np.float64)
    require_finite_rows(mat, what)
    return mat


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
