"""Search latency of a wrapped PGVector store with its state in a folder (SQLite) or in Postgres.

The trace writer runs off the search path either way; this measures whether the Postgres state
(its queue, its writer connection, ``check_fresh`` asking the version log at most every 20 ms)
costs a search anything more than the SQLite state. A real Postgres 18 + pgvector server is
started (``nudge_rag.testing.pgserver``) and stopped at the end. Random 384-d vectors, a lookup
table as the embedding function (no model cost); the three stores are timed in rotated rounds.

    python benchmarks/bench_state_serving.py [--docs 2000] [--queries 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
from langchain_postgres import PGVector

from nudge_rag.langchain import NudgedVectorStore
from nudge_rag.langchain.embeddings import LookupEmbeddings
from nudge_rag.testing.pgserver import start_pgserver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dim", type=int, default=384)
    args = ap.parse_args()
    server = start_pgserver()
    try:
        server.create_database("app")
        rng = np.random.default_rng(0)
        texts = [f"t{i}" for i in range(args.docs)]
        queries = [f"q{i}" for i in range(args.queries)]
        table = dict(zip(texts, rng.normal(size=(args.docs, args.dim)), strict=True))
        table.update(zip(queries, rng.normal(size=(args.queries, args.dim)), strict=True))
        inner = PGVector(
            LookupEmbeddings(table),
            connection=server.langchain_url("app"),
            collection_name="docs",
            use_jsonb=True,
        )
        inner.add_texts(texts, ids=texts)
        folder = tempfile.mkdtemp()
        stores = {
            "bare PGVector": inner,
            "wrapped, state in a folder": NudgedVectorStore(inner, state_dir=f"{folder}/state"),
            "wrapped, state in Postgres": NudgedVectorStore(
                inner, state=server.url("app") + "&schema=nudge_docs"
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in stores}
        for _ in range(args.rounds):
            for name, store in stores.items():
                for q in queries:
                    t0 = time.perf_counter()
                    store.similarity_search(q, k=10)
                    times[name].append(time.perf_counter() - t0)
        bare = statistics.median(times["bare PGVector"])
        print(f"{args.docs} docs x {args.dim}, {args.queries} queries x {args.rounds} rounds, k=10")
        for name, ts in times.items():
            p50 = statistics.median(ts)
            p95 = float(np.percentile(ts, 95))
            print(
                f"{name:28s} p50 {p50 * 1e3:.3f} ms  p95 {p95 * 1e3:.3f} ms  /bare {p50 / bare:.3f}"
            )
        for name, store in stores.items():
            if isinstance(store, NudgedVectorStore):
                store.nudge_state.trace_log.flush()
                print(f"{name}: {len(store.nudge_state.trace_log)} traces written")
                store.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
