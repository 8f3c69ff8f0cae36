"""Whether the version log is whole and the store holds what it says: detected, never served.

- a *marker* file next to a SQLite log (``versions.marker.json``, replaced atomically after every
  move) records the log's identity and its number of moves, so a log that was deleted, emptied,
  replaced by another one or restored from an older copy is noticed when it is opened; in
  Postgres the ``<prefix>_traces`` and ``<prefix>_labels`` schemas hold the log's id and moves
  (advanced inside each move's transaction), so one schema restored from an older dump is named;
- every version keeps a *fingerprint* of the rows it wrote (count and XOR of per-row SHA-256),
  checked by :func:`verify`;
- opening the log reads a sample of nudged rows back from the store (:func:`check_store`), and
  :func:`stale_check` notices another process's move that this process's store cannot see;
- every move first asks the store for a sample of the ids the log names (:func:`require_store`):
  a store holding less than half of them is another collection, or a new empty one.

Each function takes the :class:`~nudge_rag.state.versions.log.VersionLog` it checks.
"""

from __future__ import annotations

import hashlib
import json
import time as _time
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from nudge_rag.errors import (
    StaleStoreError,
    StoreDriftError,
    UnknownIdError,
    VersionLogError,
    WrongStoreError,
)
from nudge_rag.state.files import atomic_write
from nudge_rag.state.versions.schema import (
    chain,
    chunks,
    ids_between,
    meta,
    moves_and_current,
    vectors_at,
)
from nudge_rag.stores.base import Metric, describe, present_ids, store_count

if TYPE_CHECKING:
    from nudge_rag.state.versions.log import VersionLog

__all__ = [
    "OPEN_SAMPLE",
    "STORE_SAMPLE",
    "WRONG_STORE_SHARE",
    "advance_parts",
    "check_store",
    "compare",
    "drop",
    "fill_fingerprints",
    "fingerprint",
    "held",
    "mark_parts",
    "marker_mismatch",
    "opening_problem",
    "parts_check",
    "read_marker",
    "require_store",
    "row_hash",
    "same_vectors",
    "shown",
    "stale_check",
    "store_label",
    "structure_problem",
    "verify",
    "which_version",
    "write_marker",
    "wrong_store",
]

OPEN_SAMPLE = 16  # nudged rows read back from the store when the log is opened
STORE_SAMPLE = 64  # ids the log names, asked of the store before a move (and on open)
#: a store holding less than this share of the sampled ids the log names is not the log's store
WRONG_STORE_SHARE = 0.5


# -- messages --------------------------------------------------------------------------------------
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


def shown(ids: Sequence[str], n: int = 5) -> str:
    """Up to ``n`` ids, quoted, and how many more there are."""
    more = f" and {len(ids) - n} more" if len(ids) > n else ""
    return ", ".join(repr(i) for i in list(ids)[:n]) + more


# -- fingerprints ----------------------------------------------------------------------------------
def row_hash(vid: str, blob: bytes) -> int:
    """128 bits of SHA-256 over one recorded row (id and vector bytes)."""
    return int.from_bytes(hashlib.sha256(vid.encode() + b"\0" + blob).digest()[:16], "big")


def fingerprint(count: int, xor: int) -> str:
    """A version's fingerprint: how many rows it holds and the XOR of their row hashes."""
    return f"{count}:{xor:032x}"


def _parse_fingerprint(fp: str) -> tuple[int, int]:
    count, xor = fp.split(":")
    return int(count), int(xor, 16)


def _rows_digest(conn: Any, v: int) -> tuple[int, int]:
    """How many rows version ``v`` holds, and the XOR of their row hashes."""
    count, xor = 0, 0
    for vid, blob in conn.execute("SELECT id, vector FROM rows WHERE version = ?", (v,)):
        count += 1
        xor ^= row_hash(vid, blob)
    return count, xor


def fill_fingerprints(conn: Any) -> None:
    """Compute fingerprints of versions recorded before fingerprints existed."""
    todo = [r[0] for r in conn.execute("SELECT version FROM versions WHERE fingerprint IS NULL")]
    for v in todo:
        fp = fingerprint(*_rows_digest(conn, v))
        conn.execute("UPDATE versions SET fingerprint = ? WHERE version = ?", (fp, v))


def drop(log: VersionLog, ids: list[str]) -> None:
    """Delete the rows and base records of ``ids``, keeping each version's fingerprint."""
    if not ids:
        return
    conn = log._conn_()
    with log._tx():
        gone: dict[int, tuple[int, int]] = {}
        for part in chunks(ids):
            q = ",".join("?" * len(part))
            for v, vid, blob in conn.execute(
                f"SELECT version, id, vector FROM rows WHERE id IN ({q})", part
            ):
                n, x = gone.get(v, (0, 0))
                gone[v] = (n + 1, x ^ row_hash(vid, blob))
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
                    (fingerprint(count - n, xor ^ x), v),
                )


# -- the marker: a SQLite log's identity and moves, in a file next to it ---------------------------
def read_marker(log: VersionLog) -> tuple[dict | None, str | None]:
    """The marker's content, or a description of why it cannot be read."""
    if log.marker_path is None:
        return None, None
    try:
        raw = log.marker_path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"{log.marker_path}: cannot be read ({e}); check its permissions."
    try:
        marker = json.loads(raw)
        if not isinstance(marker, dict):
            raise ValueError
        int(marker["versions"]), int(marker["moves"]), str(marker["log_id"])
    except (ValueError, KeyError, TypeError):
        return None, (
            f"{log.marker_path} is damaged ({len(raw)} bytes that are not a marker); run "
            "repair() (nudge-rag repair) to check the log against the store and rewrite it."
        )
    return marker, None


def marker_mismatch(log: VersionLog, marker: dict) -> str | None:
    """Why the log is not the one ``marker`` describes (another log, or an older copy), or None."""
    assert log.marker_path is not None  # a marker was read from it
    conn = log._conn_()
    log_id = meta(conn, "log_id")
    moves = int(meta(conn, "moves") or 0)
    fix = (
        "Put the right versions.sqlite back, or run repair() (nudge-rag repair) to accept "
        "this log and write its version into the store, or repair(adopt_store=True) "
        "(nudge-rag repair --adopt-store) to make the log follow the store."
    )
    if log_id is not None and marker["log_id"] != log_id:
        return (
            f"{log.where} is not the version log this folder had: {log.marker_path.name} "
            f"names log {marker['log_id'][:12]}…, the file is log {log_id[:12]}… (copied "
            f"from another store, or recreated). {fix}"
        )
    if int(marker["moves"]) > moves:
        return (
            f"{log.where} is older than the store's last version move: it records {moves} "
            f"move(s), {log.marker_path.name} records {marker['moves']} (restored from an "
            f"older copy?). {fix}"
        )
    return None


def write_marker(log: VersionLog, *, unless: dict | None = None) -> None:
    """Record the log's identity and moves next to it (atomically); a no-op read-only.

    ``unless``: the marker as read; nothing is written when it already says the same.
    """
    if log.read_only:
        return
    if log.marker_path is None:  # Postgres: the other schemas hold it, advanced by moves
        _mark_new_parts(log)
        return
    conn = log._conn_()
    data: dict[str, Any] = {
        "format": 1,
        "log_id": meta(conn, "log_id"),
        "moves": int(meta(conn, "moves") or 0),
        "current": int(meta(conn, "current") or 0),
        "versions": int(conn.execute("SELECT count(*) - 1 FROM versions").fetchone()[0]),
    }
    if unless is not None and all(unless.get(k) == v for k, v in data.items()):
        return
    data["time"] = _time.time()
    try:
        atomic_write(log.marker_path, json.dumps(data, indent=1), mode=0o600)
    except OSError as e:
        raise log._unwritable(e) from e


# -- the Postgres state's marker: the log's identity and moves in the other two schemas ------------
def _part_schemas(log: VersionLog) -> dict[str, str]:
    """A Postgres state's other parts and their schemas (none for SQLite, or a schema not
    named ``<prefix>_versions``)."""
    schema = getattr(log._database, "schema", None)
    if log._database.kind != "postgres" or not str(schema).endswith("_versions"):
        return {}
    prefix = str(schema)[: -len("_versions")]
    return {part: f"{prefix}_{part}" for part in ("traces", "labels")}


def _part_marks(
    log: VersionLog, conn: Any, parts: Iterable[str] | None = None
) -> dict[str, tuple[str | None, int | None] | None]:
    """Per other part (``parts``: those only): (log id, moves) its schema's marker holds;
    None if it has no meta table."""
    schemas = _part_schemas(log)
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


def _listed_parts(conn: Any) -> set[str]:
    return {p for p in (meta(conn, "state_parts") or "").split(",") if p}


def _parts_to_mark(log: VersionLog, conn: Any) -> list[str]:
    """Parts whose schema exists, carries no marker and was never marked (created since)."""
    schemas = _part_schemas(log)
    listed = _listed_parts(conn) if schemas else set()
    new = [p for p in schemas if p not in listed]
    marks = _part_marks(log, conn, new) if new else {}
    return [p for p, m in marks.items() if m == (None, None)]


def _mark_new_parts(log: VersionLog) -> None:
    """Mark the parts created since they were last looked for (Postgres: a label cache made
    after the state); a no-op when every part is marked."""
    if _parts_to_mark(log, log._conn_()):
        with log._tx():
            mark_parts(log, log._conn_(), every=False)


def mark_parts(log: VersionLog, conn: Any, *, every: bool) -> list[str]:
    """In a transaction: write the log's identity and moves into the other parts' schemas
    (``every``: all that exist; else only those never marked); the schemas marked."""
    schemas = _part_schemas(log)
    todo = (
        [p for p, m in _part_marks(log, conn).items() if m is not None]
        if every
        else _parts_to_mark(log, conn)
    )
    log_id, moves = meta(conn, "log_id"), meta(conn, "moves") or "0"
    for part in todo:
        conn.execute(
            f"INSERT INTO \"{schemas[part]}\".meta (key, value) VALUES ('state_log_id', ?), "
            "('state_moves', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (log_id, moves),
        )
    listed = ",".join(sorted(_listed_parts(conn) | set(todo)))
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('state_parts', ?) ON CONFLICT (key) "
        "DO UPDATE SET value = excluded.value",
        (listed,),
    )
    return [schemas[p] for p in todo]


def advance_parts(log: VersionLog, conn: Any) -> None:
    """In a move's committing transaction (after its moves count): advance the marker of
    every part that agreed with the log, so a restore can never pass for a crash."""
    schemas = _part_schemas(log)
    if not schemas:
        return
    moves = int(meta(conn, "moves") or 0)
    for part in _listed_parts(conn):
        schema = schemas.get(part)
        if schema is None:
            continue
        found = conn.execute("SELECT to_regclass(?)", (f'"{schema}".meta',)).fetchone()[0]
        if found is not None:
            conn.execute(
                f"UPDATE \"{schema}\".meta SET value = ? WHERE key = 'state_moves' AND value = ?",
                (str(moves), str(moves - 1)),
            )


def parts_check(log: VersionLog, conn: Any) -> tuple[str | None, list[str]]:
    """Whether the three schemas of a Postgres state belong together: an error (the version
    log is behind, or the traces belong to another state), and notes (another part is
    behind: what was written to it since its dump is lost, but the store is safe)."""
    schemas = _part_schemas(log)
    if not schemas:
        return None, []
    log_id, moves = meta(conn, "log_id"), int(meta(conn, "moves") or 0)
    listed = _listed_parts(conn)
    errors: list[str] = []
    notes: list[str] = []
    ahead: list[tuple[str, int]] = []
    for part, mark in _part_marks(log, conn).items():
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
    return _parts_error(log, moves, ahead, errors, notes)


def _parts_error(
    log: VersionLog, moves: int, ahead: list[tuple[str, int]], errors: list[str], notes: list[str]
) -> tuple[str | None, list[str]]:
    """The messages of :func:`parts_check`, each with its fix."""
    prefix = log._database.schema[: -len("_versions")]  # type: ignore[attr-defined]
    together = (
        f"Restore the three schemas {prefix}_traces, {prefix}_versions and {prefix}_labels "
        f"from one dump (pg_dump -n '{prefix}_*'), or run repair() (nudge-rag repair) to "
        "accept them as they are"
    )
    error = None
    if ahead:
        listed = ", ".join(f"{s} (move {m})" for s, m in ahead)
        error = (
            f"the versions schema {log.where} is behind: it records {moves} version "
            f"move(s), but {listed} saw more (restored from an older dump?): the store may hold "
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


# -- the log itself --------------------------------------------------------------------------------
def structure_problem(log: VersionLog, *, tree_only: bool = False) -> str | None:
    """What makes moves go wrong: a version whose parent is not an older version (the
    tree), a current version or an unfinished move naming a version the log does not hold."""
    conn = log._conn_()
    parents = dict(conn.execute("SELECT version, parent FROM versions").fetchall())
    fix = (
        "Put a backup of the log back, or run repair(adopt_store=True) (nudge-rag repair "
        "--adopt-store) to start a new log from what the store holds."
    )
    if 0 not in parents:
        return f"{log.where}: version 0 (the base) is missing from the log. {fix}"
    bad = [
        (v, p)
        for v, p in sorted(parents.items())
        if v != 0 and (p is None or p not in parents or not 0 <= p < v)
    ]
    if bad:
        listed = ", ".join(f"{v} → {p}" for v, p in bad[:5])
        return (
            f"{log.where}: {len(bad)} version(s) name a parent that is not an older version "
            f"of the log (version → parent: {listed}); the version tree is damaged. {fix}"
        )
    if tree_only:
        return None
    cur = meta(conn, "current")
    if cur is None or not cur.lstrip("-").isdigit() or int(cur) not in parents:
        return (
            f"{log.where}: the log says the store is at version {cur!r}, which it does not "
            "hold. Run repair(adopt_store=True) (nudge-rag repair --adopt-store) to find the "
            "version the store holds."
        )
    row = conn.execute("SELECT op, from_version, to_version FROM intent").fetchone()
    if row is not None:
        op, frm, to = row
        if op not in ("apply", "rollback") or frm not in parents or to not in parents:
            return (
                f"{log.where}: an unfinished {op!r} move from version {frm} to version {to} "
                "names a version the log does not hold; it cannot be completed. Run repair() "
                "(nudge-rag repair) to undo it and rewrite the store at a recorded version."
            )
    return None


def opening_problem(
    log: VersionLog, conn: Any, marker: dict | None, marker_problem: str | None
) -> str | None:
    """The first problem found on opening the log: its marker, its Postgres parts (whose notes
    are warned), its tree."""
    if marker_problem is not None:
        return marker_problem
    if marker is not None:
        mismatch = marker_mismatch(log, marker)
        if mismatch is not None:
            return mismatch
    part_error, part_notes = parts_check(log, conn)
    for note in part_notes:
        warnings.warn(note, RuntimeWarning, stacklevel=4)
    return part_error or structure_problem(log)


# -- the store against the log ---------------------------------------------------------------------
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


def _sample_ids(conn: Any, cur: int, n: int, where: str) -> list[str]:
    """Up to ``n`` nudged ids: first rows of the versions on ``cur``'s chain, then others."""
    out: list[str] = []
    on_chain = [v for v in chain(conn, cur, where) if v != 0]
    for v in on_chain:
        out += [
            r[0]
            for r in conn.execute(
                "SELECT id FROM rows WHERE version = ? ORDER BY id LIMIT ?", (v, n)
            )
        ]
        if len(set(out)) >= n // 2:
            break
    out = list(dict.fromkeys(out))[: n // 2]
    q = ",".join("?" * len(on_chain))
    off_chain = f"WHERE version NOT IN ({q})" if on_chain else ""
    out += [
        r[0]
        for r in conn.execute(
            f"SELECT id FROM rows {off_chain} ORDER BY id LIMIT ?", [*on_chain, n]
        )
    ]
    return list(dict.fromkeys(out))[:n]


def _logged_sample(log: VersionLog, conn: Any) -> list[str]:
    """Up to ``2 * STORE_SAMPLE`` ids the log names: nudged rows (the current version's
    chain first) and base records."""
    ids = _sample_ids(conn, log.current, STORE_SAMPLE, log.where)
    ids += [r[0] for r in conn.execute("SELECT id FROM base ORDER BY id LIMIT ?", (STORE_SAMPLE,))]
    return list(dict.fromkeys(ids))


def wrong_store(log: VersionLog, conn: Any) -> WrongStoreError | None:
    """A ``WrongStoreError`` when the store holds less than ``WRONG_STORE_SHARE`` of a
    sample of the ids the log names (it is another collection, or a new empty one)."""
    ids = _logged_sample(log, conn)
    if not ids:
        return None
    adapter = log._store()
    have = present_ids(adapter, ids)
    if len(have) >= WRONG_STORE_SHARE * len(ids):
        return None
    try:
        holds = f"{store_count(adapter)} id(s)"
    except Exception:  # a count is only for the message
        holds = "an unknown number of ids"
    missing = [i for i in ids if i not in have]
    msg = (
        f"the store ({store_label(adapter)}) is not the one its version log {log.where} "
        f"describes: it holds {len(have)} of {len(ids)} ids the log names (checked a "
        f"sample; missing e.g. {shown(missing)}), and {holds} in all. Nothing was written "
        "and nothing is dropped from the log. Open the store this state belongs to (e.g. "
        "the right collection: nudge-rag --collection NAME), or give this store a state of "
        "its own; if those documents were deleted on purpose, run "
        "repair(forget_missing=True) (nudge-rag repair --forget-missing) to drop them from "
        "the log."
    )
    return WrongStoreError(msg)


def require_store(log: VersionLog) -> None:
    """Before a move: refuse a store that is not the log's (see :func:`wrong_store`)."""
    wrong = wrong_store(log, log._conn_())
    if wrong is not None:
        raise wrong


def held(log: VersionLog, ids: list[str]) -> tuple[list[str], np.ndarray]:
    """What the store holds for those of ``ids`` it still has (deleted ones are skipped)."""
    adapter = log._store()
    try:
        return ids, np.asarray(adapter.get(ids), dtype=np.float64)
    except UnknownIdError:
        have = present_ids(adapter, ids)
        ids = [i for i in ids if i in have]
        if not ids:
            return [], np.zeros((0, 0))
        return ids, np.asarray(adapter.get(ids), dtype=np.float64)


def compare(
    log: VersionLog, conn: Any, version: int, ids: list[str], missing: list[str] | None = None
) -> tuple[list[str], list[str]]:
    """Of ``ids``, those the store holds as at ``version`` and those it holds otherwise
    (ids it does not hold are added to ``missing``, when given)."""
    asked = ids
    ids, got = held(log, ids)
    if missing is not None and len(ids) < len(asked):
        have = set(ids)
        missing += [i for i in asked if i not in have]
    if not ids:
        return [], []
    ok = same_vectors(got, vectors_at(conn, version, ids, log.where), log._store().metric)
    return [i for i, g in zip(ids, ok, strict=True) if g], [
        i for i, g in zip(ids, ok, strict=True) if not g
    ]


def which_version(log: VersionLog, conn: Any, ids: list[str]) -> int | None:
    """The version (newest first) whose vectors the store holds for all of ``ids``."""
    ids, got = held(log, ids)
    if not ids:
        return None
    newest = conn.execute("SELECT version FROM versions ORDER BY version DESC LIMIT 200")
    for (v,) in newest.fetchall():
        at_v = vectors_at(conn, v, ids, log.where)
        if same_vectors(got, at_v, log._store().metric).all():
            return int(v)
    return None


def check_store(log: VersionLog, n: int) -> StoreDriftError | None:
    """Read ``n`` nudged rows back; a ``StoreDriftError`` if the store is not at ``current``."""
    conn = log._conn_()
    cur = log.current
    ids = _sample_ids(conn, cur, n, log.where)
    try:
        wrong = wrong_store(log, conn)
        if wrong is not None:  # every move refuses it; searches and adds go on
            warnings.warn(str(wrong), RuntimeWarning, stacklevel=4)
            return None
        if not ids:
            return None
        good, bad = compare(log, conn, cur, ids)
        held_as = which_version(log, conn, bad) if bad else None
    except VersionLogError:
        raise
    except Exception as e:  # the store is unreachable now; verify() checks it later
        warnings.warn(
            f"{log.where}: could not read nudged rows back from the store to check it ({e}).",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    if not bad:
        return None
    return StoreDriftError(drift_message(log, cur, good, bad, held_as))


def drift_message(
    log: VersionLog, cur: int, good: list[str], bad: list[str], held_as: int | None
) -> str:
    """Why the store is not at version ``cur`` (``bad`` rows differ; ``held_as``: the version
    they hold, if any), and the two fixes."""
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
        f"{log.where} says it is at: {len(bad)} of {len(good) + len(bad)} nudged rows read "
        f"back differ (e.g. id {bad[0]!r}); {what}.{why} Run repair() (nudge-rag repair) to "
        f"write version {cur}'s vectors back into the store, or repair(adopt_store=True) "
        "(nudge-rag repair --adopt-store) to make the log follow the store."
    )


def stale_check(log: VersionLog) -> StaleStoreError | None:
    """After the log changed: whether another process moved the version out of our sight."""
    assert log._watch is not None
    conn = log._watch
    moves, cur = moves_and_current(conn)
    known_moves, known_cur = log._known
    if moves == known_moves:
        return None
    ids = ids_between(conn, known_cur, cur, log.where)
    if ids:
        step = max(1, len(ids) // OPEN_SAMPLE)
        sample = list(ids[::step][:OPEN_SAMPLE])
        _, bad = compare(log, conn, cur, sample)
        if bad:
            store = describe(log.adapter)
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
    log._known = (moves, cur)
    return None


# -- verify ----------------------------------------------------------------------------------------
def verify(log: VersionLog, problems: list[str], rows: int | None) -> tuple[int, int | None]:
    """Add to ``problems`` what is wrong with the log and the store (nothing is written); the
    number of nudged rows read back, and the version the log is at (None if it cannot say)."""
    conn = log._conn_()
    if log._broken is not None:
        problems.append(str(log._broken))
    check = log._database.integrity(conn)
    if check != ["ok"]:
        problems.append(
            f"{log.where}: the database's integrity check reports damage "
            f"({'; '.join(check)}). Put a backup back, or run repair(adopt_store=True)."
        )
        return 0, None
    problems += _marker_problems(log)
    part_error, part_notes = parts_check(log, conn)
    problems += ([part_error] if part_error else []) + part_notes
    structure = structure_problem(log)
    if structure:
        problems.append(structure)
        return 0, None
    for v, fp in conn.execute("SELECT version, fingerprint FROM versions ORDER BY version"):
        if fp is None or _rows_digest(conn, v) != _parse_fingerprint(fp):
            problems.append(
                f"{log.where}: the rows of version {v} are not those it recorded (their "
                "fingerprint differs): the log was altered outside nudge-rag. Put a backup "
                "back, or run repair(adopt_store=True)."
            )
    cur = log.current
    if log.adapter is None:
        return 0, cur
    wrong = wrong_store(log, conn)
    if wrong is not None:
        problems.append(str(wrong))
        return 0, cur
    return _read_back(log, conn, cur, problems, rows), cur


def _marker_problems(log: VersionLog) -> list[str]:
    """What is wrong with the marker file (SQLite): unreadable, missing, or another log's."""
    marker, marker_problem = read_marker(log)
    if marker_problem:
        return [marker_problem]
    if marker is None and log.marker_path is not None:
        return [f"{log.marker_path} is missing; run repair() (nudge-rag repair) to write it."]
    if marker is not None:
        mismatch = marker_mismatch(log, marker)
        if mismatch:
            return [mismatch]
    return []


def _read_back(log: VersionLog, conn: Any, cur: int, problems: list[str], rows: int | None) -> int:
    """Read every nudged row (``rows``: at most that many, evenly spread) back from the store;
    add the rows it lacks and the rows it holds wrong to ``problems``; how many were read."""
    assert log.adapter is not None
    ids = [r[0] for r in conn.execute("SELECT DISTINCT id FROM rows ORDER BY id")]
    if rows is not None and len(ids) > rows:
        step = len(ids) / max(rows, 1)
        ids = [ids[int(k * step)] for k in range(rows)]
    good: list[str] = []
    bad: list[str] = []
    missing: list[str] = []
    for part in chunks(ids):
        g, b = compare(log, conn, cur, list(part), missing)
        good += g
        bad += b
    if missing:
        problems.append(
            f"the store ({store_label(log.adapter)}) does not hold {len(missing)} of the "
            f"{len(ids)} nudged ids its version log {log.where} names ({shown(missing)}): "
            "deleted outside nudge-rag, or this is not the log's store. The log keeps their "
            "versions; run repair(forget_missing=True) (nudge-rag repair --forget-missing) "
            "to drop them from the log, or open the right store."
        )
    if bad:
        held_as = which_version(log, conn, bad[:OPEN_SAMPLE])
        problems.append(drift_message(log, cur, good, bad, held_as))
    return len(good) + len(bad)
