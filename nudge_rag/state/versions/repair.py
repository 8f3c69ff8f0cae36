"""Bringing the version log and the store back into agreement (``VersionLog.repair``).

By default the log is trusted and the store is rewritten; ``adopt_store`` trusts the store and
moves the log; ``forget_missing`` drops the ids the store no longer holds. Each function takes
the :class:`~nudge_rag.state.versions.log.VersionLog` it repairs, holding its lock.
"""

from __future__ import annotations

import time as _time
from typing import TYPE_CHECKING

import numpy as np

from nudge_rag.errors import VersionLogError
from nudge_rag.state.versions.integrity import (
    advance_parts,
    compare,
    drop,
    held,
    mark_parts,
    marker_mismatch,
    parts_check,
    read_marker,
    require_store,
    same_vectors,
    shown,
    store_label,
    structure_problem,
    write_marker,
)
from nudge_rag.state.versions.moves import finish_move, write
from nudge_rag.state.versions.schema import COUNT_MOVE, chunks, meta, vectors_at
from nudge_rag.stores.base import present_ids

if TYPE_CHECKING:
    from nudge_rag.state.versions.log import VersionLog

__all__ = ["repair"]


def repair(
    log: VersionLog, *, adopt_store: bool, forget_missing: bool
) -> tuple[list[str], list[str]]:
    """Repair ``log`` as :meth:`VersionLog.repair` describes; what was done, and the ids
    forgotten."""
    actions: list[str] = []
    forgotten: list[str] = []
    problem = _tree_problem(log)
    if problem is not None:
        if not adopt_store:
            msg = f"repair() trusts the version log, and there is none to trust: {problem}"
            raise VersionLogError(msg)
        _start_over(log, actions)
        return actions, forgotten
    if forget_missing:
        forgotten = _forget_missing(log, actions)
    else:
        require_store(log)
    _repair_marker(log, actions)
    _repair_intent(log, actions)
    if adopt_store:
        _adopt(log, actions)
    else:
        _sync_store(log, actions)
    return actions, forgotten


def _tree_problem(log: VersionLog) -> str | None:
    """Why this log cannot be repaired in place (missing, damaged, broken tree), or None."""
    if log._conn is None:
        return str(log._broken)
    try:
        check = log._database.integrity(log._conn)
        if check != ["ok"]:
            return str(log._damaged_error(log._database.Error("; ".join(check))))
        return structure_problem(log, tree_only=True)
    except log._database.Error as e:
        if not log._database.damaged(e):
            raise
        return str(log._damaged_error(e))


def _start_over(log: VersionLog, actions: list[str]) -> None:
    """Move a damaged or missing log aside and start a new one from the store's vectors."""
    if log._conn is not None:
        log._conn.close()
        log._conn = None
    if log._watch is not None:
        log._watch.close()
        log._watch = None
    aside = log._database.move_aside(_time.strftime("%Y%m%d-%H%M%S"))
    if aside is not None:
        actions.append(f"moved the unusable version log aside to {aside}")
    if log.marker_path is not None:
        log.marker_path.unlink(missing_ok=True)
    log._broken = log._open()
    if log._broken is not None:  # pragma: no cover - a fresh file has no problem
        raise log._broken
    actions.append(
        "started a new version log: what the store holds now is version 0 (earlier versions "
        "cannot be restored)"
    )


def _forget_missing(log: VersionLog, actions: list[str]) -> list[str]:
    """Drop the rows and base records of every id the log names and the store lacks."""
    conn = log._conn_()
    ids = [r[0] for r in conn.execute("SELECT id FROM rows UNION SELECT id FROM base")]
    ids.sort()
    adapter = log._store()
    missing: list[str] = []
    for part in chunks(ids):
        have = present_ids(adapter, part)
        missing += [i for i in part if i not in have]
    if missing:
        drop(log, missing)
        actions.append(
            f"forgot {len(missing)} id(s) the store ({store_label(adapter)}) does not hold: "
            f"their rows and base vectors are dropped from the version log "
            f"({shown(missing, 20)})"
        )
    return missing


def _repair_marker(log: VersionLog, actions: list[str]) -> None:
    """Accept this log as the folder's (SQLite marker) and its Postgres schemas as they are."""
    marker, problem = read_marker(log)
    mismatch = problem or (marker_mismatch(log, marker) if marker is not None else None)
    if marker is None or mismatch:
        write_marker(log)
        if mismatch:
            actions.append(f"accepted {log.where} as this store's version log")
    part_error, part_notes = parts_check(log, log._conn_())
    if part_error or part_notes:
        with log._tx():
            marked = mark_parts(log, log._conn_(), every=True)
        actions.append(
            f"accepted the schemas {', '.join(marked)} as they are as parts of this state"
        )


def _repair_intent(log: VersionLog, actions: list[str]) -> None:
    """Finish an interrupted move, or drop one that names a version the log does not hold."""
    conn = log._conn_()
    row = conn.execute("SELECT op, from_version, to_version FROM intent").fetchone()
    if row is None:
        return
    op, frm, to = row
    known = {r[0] for r in conn.execute("SELECT version FROM versions")}
    if op in ("apply", "rollback") and frm in known and to in known:
        finish_move(log, int(frm), int(to))
        actions.append(f"finished the interrupted move from version {frm} to {to}")
        return
    cur = int(meta(conn, "current") or 0)
    target = frm if frm in known else cur if cur in known else 0
    with log._tx():
        conn.execute("DELETE FROM intent")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'current'", (str(target),))
    actions.append(
        f"dropped an unfinished {op!r} move to version {to}, which the log does not hold; "
        f"the store is brought back to version {target}"
    )


def _sync_store(log: VersionLog, actions: list[str]) -> None:
    """Rewrite every nudged row the store does not hold as the current version has it."""
    conn = log._conn_()
    problem = structure_problem(log)
    if problem is not None:  # the current version is not in the log: only the store knows
        msg = f"{problem} repair() cannot trust this log's current version."
        raise VersionLogError(msg)
    cur = log.current
    ids = [r[0] for r in conn.execute("SELECT DISTINCT id FROM rows ORDER BY id")]
    bad: list[str] = []
    for part in chunks(ids):
        bad += compare(log, conn, cur, list(part))[1]
    if bad:
        write(log, bad, vectors_at(log._conn_(), cur, bad, log.where))
        actions.append(f"rewrote {len(bad)} row(s) of the store with version {cur}'s vectors")
    _bump_moves(log, cur)


def _adopt(log: VersionLog, actions: list[str]) -> None:
    """Move the log to the version the store's rows match; other rows become base."""
    conn = log._conn_()
    ids = [r[0] for r in conn.execute("SELECT DISTINCT id FROM rows ORDER BY id")]
    holds: dict[str, np.ndarray] = {}
    for part in chunks(ids):
        have, mat = held(log, list(part))
        holds.update(zip(have, mat, strict=True))
    ids = [i for i in ids if i in holds]
    cur = log.current
    best, best_n = cur, -1
    metric = log._store().metric
    if ids:
        mat = np.stack([holds[i] for i in ids])
        for (v,) in conn.execute("SELECT version FROM versions ORDER BY version DESC").fetchall():
            n = int(same_vectors(mat, vectors_at(conn, v, ids, log.where), metric).sum())
            if n > best_n or (n == best_n and v == cur):
                best, best_n = int(v), n
        ok = same_vectors(mat, vectors_at(conn, best, ids, log.where), metric)
        odd = [i for i, g in zip(ids, ok, strict=True) if not g]
    else:
        odd = []
    with log._tx():
        conn.execute("DELETE FROM intent")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'current'", (str(best),))
    if best != cur:
        actions.append(f"the store holds version {best}: the log now says so (was {cur})")
    if odd:
        drop(log, odd)
        actions.append(
            f"{len(odd)} row(s) match no version: their nudges are forgotten and what the "
            f"store holds is their new base ({shown(odd, 20)})"
        )
    _bump_moves(log, best)


def _bump_moves(log: VersionLog, cur: int) -> None:
    """Count the repair as a move to ``cur`` (so a copy of the log from before it is noticed)."""
    conn = log._conn_()
    with log._tx():
        conn.execute("UPDATE meta SET value = ? WHERE key = 'current'", (str(cur),))
        conn.execute(COUNT_MOVE)
        advance_parts(log, conn)
    write_marker(log)
