"""The version log's tables, their migrations, and the queries that read them.

Each version row names its parent, so versions form a tree: the vector of an id at version ``v``
is the row of the nearest ancestor of ``v`` that changed it (:func:`vectors_at`), else its base.
Vectors are stored as given (:func:`blob`), never as read back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.errors import VersionLogError
from nudge_rag.state.db import Database, SQLiteDatabase

__all__ = [
    "COUNT_MOVE",
    "MIGRATIONS",
    "SCHEMA",
    "blob",
    "chain",
    "chunks",
    "ids_between",
    "ids_in",
    "load",
    "meta",
    "moves_and_current",
    "unblob",
    "vectors_at",
    "version_database",
]

SCHEMA = """
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
MIGRATIONS: list[Any] = [[SCHEMA], _add_fingerprints, _add_move_tokens]

#: counts one move (in the transaction that commits it)
COUNT_MOVE = "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'moves'"
_CHUNK = 900  # ids per SQL "IN (...)" list


def version_database(path: Path) -> SQLiteDatabase:
    """The SQLite version database at ``path`` (a move's commit must survive a power cut)."""
    return SQLiteDatabase(path, busy_timeout=30000, journal_mode="WAL", synchronous="FULL")


def blob(v: np.ndarray) -> bytes:
    """A vector as bytes: float32 when that is exact (tag 4), else float64 (tag 8)."""
    v64 = np.asarray(v, dtype=np.float64)
    v32 = v64.astype(np.float32)
    if np.array_equal(v32.astype(np.float64), v64):
        return b"\x04" + v32.tobytes()
    return b"\x08" + v64.tobytes()


def unblob(b: bytes) -> np.ndarray:
    """The float64 vector of a :func:`blob`."""
    dtype = np.float32 if b[0] == 4 else np.float64
    return np.frombuffer(b, dtype=dtype, offset=1).astype(np.float64)


def chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    """``items`` in slices short enough for one SQL ``IN (...)`` list."""
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def meta(conn: Any, key: str) -> str | None:
    """The value of ``key`` in the ``meta`` table, or None."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def moves_and_current(conn: Any) -> tuple[int, int]:
    """How many moves the log has made, and the version the store is at."""
    rows = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('moves', 'current')"))
    return int(rows.get("moves", 0)), int(rows.get("current", 0))


def chain(conn: Any, v: int, where: str) -> list[int]:
    """``v`` and its ancestors down to 0 (each parent is older, so the walk ends); ``where``
    names the log in the error a damaged tree raises."""
    parents = dict(conn.execute("SELECT version, parent FROM versions").fetchall())
    out = [v]
    while out[-1] != 0:
        p = parents.get(out[-1], -1)
        if p is None or p not in parents or not 0 <= p < out[-1]:
            msg = (
                f"{where}: version {out[-1]} names parent {p!r}, which is not an older "
                "version of the log; the version tree is damaged. Put a backup back, or run "
                "repair(adopt_store=True)."
            )
            raise VersionLogError(msg)
        out.append(int(p))
    return out


def ids_between(conn: Any, a: int, b: int, where: str) -> list[str]:
    """Ids changed on the tree path between versions ``a`` and ``b``."""
    ca, cb = chain(conn, a, where), chain(conn, b, where)
    path = sorted(set(ca) ^ set(cb))
    if not path:
        return []
    q = ",".join("?" * len(path))
    rows = conn.execute(
        f"SELECT DISTINCT id FROM rows WHERE version IN ({q}) ORDER BY id", path
    ).fetchall()
    return [r[0] for r in rows]


def vectors_at(conn: Any, v: int, ids: list[str], where: str) -> np.ndarray:
    """The given vectors of ``ids`` at version ``v`` (nearest ancestor's row, else base)."""
    versions = chain(conn, v, where)
    qv = ",".join("?" * len(versions))
    found: dict[str, tuple[int, bytes]] = {}
    for part in chunks(ids):
        qi = ",".join("?" * len(part))
        for vid, ver, b in conn.execute(
            f"SELECT id, version, vector FROM rows WHERE version IN ({qv}) AND id IN ({qi})",
            [*versions, *part],
        ):
            if vid not in found or ver > found[vid][0]:
                found[vid] = (ver, b)
    base_ids = [i for i in ids if i not in found]
    base = load(conn, "base", base_ids)
    lost = [i for i in base_ids if i not in base]
    if lost:
        msg = (
            f"{where} has no base vector for nudged id(s) {lost[:10]}: the log was "
            "altered outside nudge-rag. Put a backup back, or run repair(adopt_store=True)."
        )
        raise VersionLogError(msg)
    return np.stack([unblob(found[i][1]) if i in found else base[i] for i in ids])


def ids_in(conn: Any, table: str, ids: Sequence[str]) -> set[str]:
    """Those of ``ids`` that ``table`` (``base`` or ``rows``) holds."""
    out: set[str] = set()
    for part in chunks(list(ids)):
        q = ",".join("?" * len(part))
        out.update(r[0] for r in conn.execute(f"SELECT id FROM {table} WHERE id IN ({q})", part))
    return out


def load(conn: Any, table: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
    """The vectors ``table`` holds for ``ids``, by id."""
    out: dict[str, np.ndarray] = {}
    for part in chunks(list(ids)):
        q = ",".join("?" * len(part))
        for i, b in conn.execute(f"SELECT id, vector FROM {table} WHERE id IN ({q})", part):
            out[i] = unblob(b)
    return out
