"""Moving the store between versions, crash-safe and fenced against other processes.

Every move first commits an *intent* row together with all the vectors it needs, then writes the
store (idempotent writes), then commits the new current version and clears the intent. Opening
the log completes an unfinished move (:func:`recover`), so the store is always exactly at one
version. The database's lock serialises moves between processes (a file lock next to a SQLite
log, an advisory lock in Postgres: ``nudge_rag.state.db``). A lock can be lost mid-move (its
Postgres connection dropped), so moves are fenced too: a move begins only if the log is still at
the moves and version it read (:func:`claim_move`), and writes the store and commits only while
the intent row holds its token (a process completing someone's interrupted move claims it with a
new token first); a move that lost raises ``ConcurrentMoveError`` after putting back what it
wrote.

Each function takes the :class:`~nudge_rag.state.versions.log.VersionLog` that moves, holding
its lock (``log._moving()``).
"""

from __future__ import annotations

import time as _time
import uuid
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from nudge_rag.errors import BadInputError, ConcurrentMoveError, UnknownIdError, VersionLogError
from nudge_rag.state.versions.integrity import (
    advance_parts,
    fingerprint,
    require_store,
    row_hash,
    shown,
    store_label,
    structure_problem,
    write_marker,
)
from nudge_rag.state.versions.schema import (
    COUNT_MOVE,
    blob,
    chain,
    ids_between,
    ids_in,
    moves_and_current,
    vectors_at,
)
from nudge_rag.stores.base import present_ids, read_exact

if TYPE_CHECKING:
    from nudge_rag.state.versions.log import VersionLog

__all__ = [
    "apply",
    "claim_intent",
    "claim_move",
    "fence",
    "finish_move",
    "insert_intent",
    "recover",
    "rollback",
    "write",
]

_LOST_LOCK = (
    "The lock that serialises moves was lost meanwhile (its Postgres connection dropped: "
    "idle_session_timeout, a transaction-mode pooler, a network reset)."
)


def apply(
    log: VersionLog,
    ids: list[str],
    mat: np.ndarray,
    *,
    method: str | None,
    gamma: float | None,
    note: str | None,
    report_json: str | None,
    from_base: bool,
) -> int:
    """Record ``mat`` (the vectors of ``ids``) as a new version on top of the current one and
    move the store to it (an interrupted move is completed first); its number. ``from_base``:
    rows the current version holds changed and ``ids`` does not name go back to their base."""
    conn = log._conn_()
    recover(log)
    current_now = read_exact(log._store(), ids)  # validates every id before anything is written
    if current_now.shape[1] != mat.shape[1]:
        msg = (
            f"vectors: found {mat.shape[1]}-d vectors, the store holds "
            f"{current_now.shape[1]}-d ones; pass vectors from the same embedding model."
        )
        raise BadInputError(msg)
    known = ids_in(log._conn_(), "base", ids)
    new_base = [(i, blob(current_now[n]), 0) for n, i in enumerate(ids) if i not in known]
    at = moves_and_current(conn)
    cur = at[1]
    new_rows = [(i, blob(mat[n])) for n, i in enumerate(ids)]
    if from_base:
        new_rows += _back_to_base(log, conn, cur, set(ids))
    xor = 0
    for i, b in new_rows:
        xor ^= row_hash(i, b)
    with log._tx():
        claim_move(log, conn, "apply", at)
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
                fingerprint(len(new_rows), xor),
            ),
        )
        conn.executemany("INSERT INTO rows VALUES (?, ?, ?)", [(ver, i, b) for i, b in new_rows])
        token = insert_intent(conn, "apply", cur, ver)
    finish_move(log, cur, ver, token=token, created=True)
    return ver


def _back_to_base(log: VersionLog, conn: Any, cur: int, named: set[str]) -> list[tuple[str, bytes]]:
    """Rows that take the ids changed up to version ``cur`` and not ``named`` back to base."""
    stale = [i for i in ids_between(log._conn_(), 0, cur, log.where) if i not in named]
    base_of_stale = vectors_at(log._conn_(), 0, stale, log.where) if stale else np.zeros((0, 0))
    return [(i, blob(v)) for i, v in zip(stale, base_of_stale, strict=True)]


def rollback(log: VersionLog, version: int | None) -> int:
    """Move the store to ``version`` (None: the current version's parent; an interrupted move
    is completed first); the version."""
    conn = log._conn_()
    recover(log)
    at = moves_and_current(conn)
    cur = at[1]
    if version is None:
        if cur == 0:
            msg = (
                "rollback(version=None): the store is at version 0 (the base), which has "
                "no previous version; pass a version from versions() to move forward."
            )
            raise BadInputError(msg)
        versions = chain(log._conn_(), cur, log.where)
        version = versions[1] if len(versions) > 1 else 0
    if conn.execute("SELECT 1 FROM versions WHERE version = ?", (version,)).fetchone() is None:
        known = [v.version for v in log.versions()]
        msg = f"version: no version {version} in this store's log; known versions: {known}."
        raise BadInputError(msg)
    if version == cur:
        return cur
    with log._tx():
        claim_move(log, conn, "rollback", at)
        token = insert_intent(conn, "rollback", cur, version)
    finish_move(log, cur, version, token=token)
    return version


def recover(log: VersionLog) -> None:
    """Complete a move that a crash interrupted (its intent row holds everything it needs).

    The move is first claimed (its token replaced by ours), so that the process that began it,
    should it still run after losing the lock, cannot commit it too."""
    conn = log._conn_()
    for _ in range(8):  # each turn: another process finished the move we were to claim
        row = conn.execute("SELECT from_version, to_version FROM intent").fetchone()
        if row is None:
            return
        problem = structure_problem(log)
        if problem is not None:
            log._broken = VersionLogError(problem)
            raise log._broken
        require_store(log)  # the move is finished in its own store, never another
        claimed = claim_intent(log)
        if claimed is not None:
            finish_move(log, claimed[0], claimed[1], token=claimed[2])
            return


# -- fencing: a move commits only while it owns the log's intent row -------------------------------
def claim_move(log: VersionLog, conn: Any, op: str, seen: tuple[int, int]) -> None:
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
        now_moves, now_cur = moves_and_current(conn)
        msg = (
            f"{log.where}: another process moved this store's version while this {op} was "
            f"being prepared (it started at version {cur} after {moves} move(s); the log is "
            f"now at version {now_cur} after {now_moves}"
            f"{', with a move unfinished' if pending else ''}). {_LOST_LOCK} Nothing was "
            f"written; check versions() and retry the {op}."
        )
        raise ConcurrentMoveError(msg)


def insert_intent(conn: Any, op: str, frm: int, to: int) -> str:
    """Record the move about to be made; its token (the right to commit it)."""
    token = uuid.uuid4().hex
    conn.execute(
        "INSERT INTO intent (one, op, from_version, to_version, token) VALUES (1, ?, ?, ?, ?)",
        (op, frm, to, token),
    )
    return token


def claim_intent(log: VersionLog) -> tuple[int, int, str] | None:
    """Make the unfinished move ours (a new token); its versions and token, or None if
    another process finished or claimed it first."""
    conn = log._conn_()
    row = conn.execute("SELECT from_version, to_version, token FROM intent").fetchone()
    if row is None:
        return None
    token = uuid.uuid4().hex
    with log._tx():
        n = conn.execute("UPDATE intent SET token = ? WHERE token = ?", (token, row[2])).rowcount
    return (int(row[0]), int(row[1]), token) if n == 1 else None


def fence(log: VersionLog, token: str) -> None:
    """Before writing the store: take the lock again if it was lost, then check that the
    move is still ours (no other process claimed it meanwhile)."""
    log._database.regain_lock()
    row = log._conn_().execute("SELECT token, to_version FROM intent").fetchone()
    if row is None or row[0] != token:
        msg = (
            f"{log.where}: another process took this move over before it wrote the store, "
            f"and the log is now at version {log.current}. {_LOST_LOCK} This process wrote "
            "nothing; check versions() and retry if needed."
        )
        raise ConcurrentMoveError(msg)


def _lost(log: VersionLog, ids: list[str], frm: int, to: int) -> None:
    """A move whose writes reached the store lost its token: put ``ids`` back as the log's
    current version holds them (under the lock, taken again), then raise."""
    log._database.regain_lock()
    recover(log)
    cur = log.current
    restored = "no row needed rewriting"
    if ids:
        try:
            write(log, ids, vectors_at(log._conn_(), cur, ids, log.where))
            restored = f"the {len(ids)} row(s) it wrote now hold version {cur}'s vectors again"
        except Exception as e:
            restored = (
                f"putting back the {len(ids)} row(s) it wrote failed ({e}); run repair() "
                f"(nudge-rag repair) to write version {cur}'s vectors into the store"
            )
    log._known = moves_and_current(log._conn_())
    msg = (
        f"{log.where}: another process moved this store's version while this move from "
        f"version {frm} to {to} wrote the store; the move did not commit and the log is at "
        f"version {cur}: {restored}. {_LOST_LOCK} Check versions() and retry if needed."
    )
    raise ConcurrentMoveError(msg)


# -- the move itself -------------------------------------------------------------------------------
def finish_move(
    log: VersionLog, frm: int, to: int, *, token: str | None = None, created: bool = False
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
        claimed = claim_intent(log)
        if claimed is None:  # finished by another process meanwhile
            return
        frm, to, token = claimed
    ids = ids_between(log._conn_(), frm, to, log.where)
    fence(log, token)
    if ids:
        try:
            write(log, ids, vectors_at(log._conn_(), to, ids, log.where))
        except Exception:
            _undo_move(log, frm, to, ids, token=token, created=created)
            raise
    conn = log._conn_()
    with log._tx():
        ours = conn.execute("DELETE FROM intent WHERE token = ?", (token,)).rowcount == 1
        if ours:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'current'", (str(to),))
            conn.execute(COUNT_MOVE)
            advance_parts(log, conn)
    if not ours:
        _lost(log, ids, frm, to)
    log._known = moves_and_current(conn)
    write_marker(log)


def _undo_move(
    log: VersionLog, frm: int, to: int, ids: list[str], *, token: str, created: bool
) -> None:
    """Put ``ids`` back at version ``frm`` after a failed write (best effort)."""
    conn = log._conn_()
    with log._tx():
        # Should the undo fail too, recovery then moves the store back to ``frm``.
        ours = conn.execute(
            "UPDATE intent SET from_version = ?, to_version = ? WHERE token = ?",
            (to, frm, token),
        ).rowcount
    if not ours:
        _lost(log, ids, frm, to)
    try:
        write(log, ids, vectors_at(log._conn_(), frm, ids, log.where))
    except Exception:
        return
    with log._tx():
        ours = conn.execute("DELETE FROM intent WHERE token = ?", (token,)).rowcount
        if ours and created:
            conn.execute("DELETE FROM rows WHERE version = ?", (to,))
            conn.execute("DELETE FROM versions WHERE version = ?", (to,))
    if not ours:
        _lost(log, ids, frm, to)


def write(log: VersionLog, ids: list[str], mat: np.ndarray) -> None:
    """Write ``mat`` as the vectors of ``ids`` into the store; ids deleted from it behind the
    log's back are skipped (and warned about), the log keeps their rows."""
    adapter = log._store()
    try:
        adapter.put(ids, mat)
    except UnknownIdError:
        require_store(log)  # another store: write nothing
        # documents deleted behind our back: write the rest; the log keeps their rows
        # (verify() lists them, repair(forget_missing=True) drops them)
        have = present_ids(adapter, ids)
        keep = [n for n, i in enumerate(ids) if i in have]
        if keep:
            adapter.put([ids[n] for n in keep], mat[keep])
        gone = [i for i in ids if i not in have]
        warnings.warn(
            f"{log.where}: the store ({store_label(adapter)}) no longer holds {len(gone)} "
            f"nudged id(s) ({shown(gone)}), deleted outside nudge-rag; the other rows were "
            "written and the version log keeps theirs. Run repair(forget_missing=True) "
            "(nudge-rag repair --forget-missing) to drop them from the log.",
            RuntimeWarning,
            stacklevel=2,
        )
    if log.after_write is not None:
        log.after_write()
