"""Trace log write rate: traces per second recorded from several threads, until all are committed.

Each trace is what a k=10 search over 384-d embeddings records (query text, embedding, ten ids and
scores). The clock stops after ``flush``: every trace is in SQLite, not just queued. The CPU
time per trace (all threads, the writer's too) is printed as well: on a shared machine it varies
far less than the rate.

    python benchmarks/bench_traces.py                  # 4 threads x 5,000 traces, 3 repeats
    python benchmarks/bench_traces.py --threads 8 --per-thread 20000
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from nudge_rag.core.traces import TraceLog


def measure(threads: int, per_thread: int, folder: Path) -> tuple[float, float]:
    """Traces per second from ``threads`` threads recording ``per_thread`` traces each, and the
    process's CPU microseconds per trace."""
    log = TraceLog(folder / "traces.sqlite")
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
    args = ap.parse_args()
    rates, cpus = [], []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            rate, cpu = measure(args.threads, args.per_thread, Path(tmp))
        rates.append(rate)
        cpus.append(cpu)
        print(f"run {r + 1}: {rate:,.0f} traces/s, {cpu:.1f} µs of CPU per trace")
    print(
        f"{args.threads} threads x {args.per_thread:,} traces: median {np.median(rates):,.0f} "
        f"traces/s (min {min(rates):,.0f}, max {max(rates):,.0f}), median CPU "
        f"{np.median(cpus):.1f} µs/trace; issue 4 target 5,000/s"
    )


if __name__ == "__main__":
    main()
