"""Fencing: a move that lost the lock serialising moves never commits over another process's move.

Process A starts an apply; at one step of it its lock is lost (Postgres: its lock connection is
terminated with ``pg_terminate_backend``; SQLite: its lock file handle is closed, or, to test the
compare-and-set alone, the second log ignores the lock) and a second log B on the same state and
the same store applies at once. Whoever loses raises ``ConcurrentMoveError``; afterwards the store
holds exactly what the log says (every row, bit for bit), B's apply is never silently undone, and
``verify()`` is ok. Kill points: before the intent is recorded, before the store write, during it
(the write then lands after B's move), after it, and inside the committing transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nudge_rag.state.db import Database
from nudge_rag.state.versions.log import ConcurrentMoveError, VersionLog, version_database
from nudge_rag.stores.memory import MemoryAdapter

IDS = [f"c{i}" for i in range(10)]
DIM = 4
RNG = np.random.default_rng(11)
BASE = {i: RNG.standard_normal(DIM) for i in IDS}
VEC_A = {i: RNG.standard_normal(DIM) for i in IDS[0:4]}
VEC_B_SAME = {i: RNG.standard_normal(DIM) for i in IDS[0:4]}
VEC_B_OTHER = {i: RNG.standard_normal(DIM) for i in IDS[5:9]}
POINTS = ["before-intent", "before-write", "during-write", "after-write", "in-commit"]


class _AfterStatement:
    """A log's connection that calls ``then`` once, right after a statement starting ``sql``."""

    def __init__(self, conn: Any, sql: str, then: Callable[[], None]) -> None:
        self._conn, self._sql, self._then = conn, sql, then

    def execute(self, sql: str, *args: Any) -> Any:
        cur = self._conn.execute(sql, *args)
        if self._then is not None and sql.startswith(self._sql):
            then, self._then = self._then, None
            then()
        return cur

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._conn, attr)


class _Put:
    """A's store adapter: calls ``before`` / ``after`` around its first write."""

    def __init__(self, inner: MemoryAdapter) -> None:
        self._inner = inner
        self.before: Callable[[], None] | None = None
        self.after: Callable[[], None] | None = None

    def put(self, ids: Any, vectors: Any) -> None:
        before, self.before = self.before, None
        if before is not None:
            before()
        self._inner.put(ids, vectors)
        after, self.after = self.after, None
        if after is not None:
            after()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)


def race(
    make_db: Callable[[], Database],
    point: str,
    same_ids: bool,
    lose_lock: Callable[[VersionLog, VersionLog], None],
    op: str = "apply",
) -> dict[str, Any]:
    """A applies (``op="rollback"``: applies, then rolls back to 0); at ``point`` of that move
    its lock is lost and B applies; what each got and what is left."""
    records: dict[str, Any] = {i: {"id": i, "vector": v.tolist()} for i, v in BASE.items()}
    put = _Put(MemoryAdapter(records, metric="ip"))
    a = VersionLog(make_db(), put)  # type: ignore[arg-type]
    b = VersionLog(make_db(), MemoryAdapter(records, metric="ip"))
    vec_b = VEC_B_SAME if same_ids else VEC_B_OTHER
    got: dict[str, Any] = {}
    if op == "rollback":
        assert a.apply(VEC_A, note="a") == 1

    def apply_b() -> None:
        try:
            got["b"] = b.apply(vec_b, note="b")
        except Exception as e:  # reported by the test
            got["b"] = e

    thread = threading.Thread(target=apply_b)

    def lose_and_move(wait: bool = True) -> None:
        lose_lock(a, b)
        thread.start()
        if wait:
            thread.join(60)
            assert not thread.is_alive(), "B's apply did not finish"

    def wrap(obj: Any, name: str) -> None:
        original = getattr(obj, name)

        def hooked(*args: Any, **kw: Any) -> Any:
            setattr(obj, name, original)  # once
            lose_and_move()
            return original(*args, **kw)

        setattr(obj, name, hooked)

    if point == "before-intent":  # A's first transaction of the move records its intent
        wrap(a, "_tx")
    elif point == "before-write":  # the fence, before the store is written, first regains it
        wrap(a._database, "regain_lock")
    elif point == "during-write":
        put.before = lose_and_move
    elif point == "after-write":
        put.after = lose_and_move
    else:  # in-commit: B starts while A's committing transaction is open; A does not wait
        a._conn = _AfterStatement(a._conn, "DELETE FROM intent", lambda: lose_and_move(wait=False))
    try:
        got["a"] = a.apply(VEC_A, note="a") if op == "apply" else a.rollback(0)
    except Exception as e:  # reported by the test
        got["a"] = e
    thread.join(60)
    assert not thread.is_alive()
    a.close()
    b.close()
    check = VersionLog(make_db(), MemoryAdapter(records, metric="ip"))
    try:
        got["current"] = check.current
        got["versions"] = [(v.version, v.parent, v.note) for v in check.versions()]
        got["verify"] = check.verify()
        got["store"] = {i: np.asarray(r["vector"]) for i, r in records.items()}
    finally:
        check.close()
    return got


def expect(got: dict[str, Any], point: str, same_ids: bool, op: str = "apply") -> None:
    """B always wins; A's move is completed by B (from its intent) or commits before B's."""
    vec_b = VEC_B_SAME if same_ids else VEC_B_OTHER
    assert not isinstance(got["b"], Exception), got["b"]
    expected = dict(BASE)
    if point == "before-intent":  # A's move never began: only B's is in the log
        assert isinstance(got["a"], ConcurrentMoveError), got["a"]
        assert "Nothing was written" in str(got["a"])
        if op == "apply":
            assert got["b"] == 1 and got["versions"][1:] == [(1, 0, "b")]
        else:  # B applies on top of A's version 1, which A failed to leave
            expected.update(VEC_A)
            assert got["b"] == 2 and got["versions"][1:] == [(1, 0, "a"), (2, 1, "b")]
    else:  # A's move (completed by B, or committed by A), then B's version 2 on top
        parent = 1 if op == "apply" else 0
        if op == "apply":
            expected.update(VEC_A)
        assert got["b"] == 2 and got["versions"][1:] == [(1, 0, "a"), (2, parent, "b")]
        if point == "in-commit":
            assert got["a"] == parent
        else:
            assert isinstance(got["a"], ConcurrentMoveError), got["a"]
            assert "another process" in str(got["a"])
    expected.update(vec_b)
    assert got["current"] == got["b"]
    for i in IDS:  # every row holds the log's current version, bit for bit
        np.testing.assert_array_equal(got["store"][i], expected[i], err_msg=i)
    assert got["verify"].ok, got["verify"]


# == SQLite: the same compare-and-set ==============================================================
def _close_lock_file(a: VersionLog, b: VersionLog) -> None:
    """A's lock lost in a way it can notice: its lock file handle is closed."""
    a._database._fh.close()  # type: ignore[attr-defined]


def _b_ignores_the_lock(a: VersionLog, b: VersionLog) -> None:
    """A still holds its lock and believes it; B moves anyway: only the compare-and-set fences."""
    b._database._acquire = lambda: None  # type: ignore[method-assign]
    b._database._release = lambda: None  # type: ignore[method-assign]


@pytest.mark.parametrize("same_ids", [True, False], ids=["same-ids", "other-ids"])
@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("how", ["lock-file-closed", "lock-ignored"])
def test_sqlite_a_move_that_lost_the_lock_never_commits_over_another(
    tmp_path: Path, how: str, point: str, same_ids: bool
) -> None:
    lose = _close_lock_file if how == "lock-file-closed" else _b_ignores_the_lock
    got = race(lambda: version_database(tmp_path / "versions.sqlite"), point, same_ids, lose)
    expect(got, point, same_ids)


@pytest.mark.parametrize("point", POINTS)
def test_sqlite_a_rollback_that_lost_the_lock_never_commits_over_another(
    tmp_path: Path, point: str
) -> None:
    db = lambda: version_database(tmp_path / "versions.sqlite")  # noqa: E731
    got = race(db, point, True, _close_lock_file, op="rollback")
    expect(got, point, True, op="rollback")


# == Postgres: the lock's connection terminated ================================================
@pytest.mark.integration
@pytest.mark.parametrize("same_ids", [True, False], ids=["same-ids", "other-ids"])
@pytest.mark.parametrize("point", POINTS)
def test_postgres_a_move_whose_lock_connection_died_never_commits_over_another(
    pg: Any, db: str, point: str, same_ids: bool
) -> None:
    import psycopg

    from nudge_rag.state.db import StateLocation

    where = StateLocation.parse(f"{pg.url(db)}&schema=nudge_fence")

    def terminate(a: VersionLog, b: VersionLog) -> None:
        pid = a._database._lock_conn.info.backend_pid  # type: ignore[attr-defined]
        with psycopg.connect(pg.url(db), autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)

    got = race(lambda: where.database("versions", "versions.sqlite"), point, same_ids, terminate)
    expect(got, point, same_ids)
    if same_ids:  # and A rolling back (version 1 to 0) instead of applying
        where = StateLocation.parse(f"{pg.url(db)}&schema=nudge_fence_back")
        got = race(
            lambda: where.database("versions", "versions.sqlite"),
            point,
            True,
            terminate,
            op="rollback",
        )
        expect(got, point, True, op="rollback")
