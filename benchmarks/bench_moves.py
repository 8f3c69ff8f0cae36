"""Time one version move (apply, then rollback) on a SQLite and a Postgres version log.

Prints the median milliseconds per apply and per rollback of ``--rows`` nudged rows on an
in-memory store of ``--ids`` rows, ``--moves`` of each. Run it on two checkouts to compare:
``PYTHONPATH=. python benchmarks/bench_moves.py``. Postgres needs ``nudge-rag[postgres]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.state.db import Database, StateLocation
from nudge_rag.state.versions.log import VersionLog, version_database
from nudge_rag.stores.memory import MemoryAdapter


class _Counting:
    """A log connection that counts the statements sent through it."""

    def __init__(self, conn: Any) -> None:
        self._conn, self.n = conn, 0

    def execute(self, *args: Any) -> Any:
        self.n += 1
        return self._conn.execute(*args)

    def executemany(self, *args: Any) -> Any:
        self.n += 1
        return self._conn.executemany(*args)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._conn, attr)


def run(database: Database, n_ids: int, rows: int, moves: int) -> tuple[float, float, float]:
    """Median ms of an apply and of a rollback to its parent; statements per apply + rollback."""
    rng = np.random.default_rng(0)
    records = {
        f"c{i}": {"id": f"c{i}", "vector": rng.standard_normal(64).tolist()} for i in range(n_ids)
    }
    log = VersionLog(database, MemoryAdapter(records, metric="ip"))
    ids = list(records)
    applies, rollbacks = [], []
    counting = log._conn = _Counting(log._conn)
    try:
        for m in range(moves):
            pick = ids[(m * rows) % n_ids :][:rows]
            vecs = {i: rng.standard_normal(64) for i in pick}
            t = time.perf_counter()
            log.apply(vecs)
            applies.append(time.perf_counter() - t)
            t = time.perf_counter()
            log.rollback()
            rollbacks.append(time.perf_counter() - t)
    finally:
        log.close()
    ms = 1000 * statistics.median(applies), 1000 * statistics.median(rollbacks)
    return ms[0], ms[1], counting.n / moves


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ids", type=int, default=2000)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--moves", type=int, default=30)
    args = ap.parse_args()

    def show(name: str, db: Database) -> None:
        a, r, n = run(db, args.ids, args.rows, args.moves)
        print(
            f"{name}: apply {a:.1f} ms, rollback {r:.1f} ms (median of {args.moves}, "
            f"{args.rows} rows); {n:.0f} log statements per apply + rollback"
        )

    with tempfile.TemporaryDirectory() as folder:
        show("sqlite  ", version_database(Path(folder) / "versions.sqlite"))
    try:
        from nudge_rag.state.traces.log import TraceLog
        from nudge_rag.testing.pgserver import start_pgserver
    except ImportError:
        return
    pg = start_pgserver()
    try:
        pg.create_database("bench")
        where = StateLocation.parse(f"{pg.url('bench')}&schema=nudge_bench")
        TraceLog(where.database("traces", "traces.sqlite")).close()  # a state, as in an app
        show("postgres", where.database("versions", "versions.sqlite"))
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
