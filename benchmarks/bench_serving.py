"""Serving cost of NudgedVectorStore (LangChain face): search latency wrapper vs bare, tracing on
and off, and the cost of apply / rollback, per store.

Corpora: SciFact (5,183 docs, precomputed all-MiniLM-L6-v2 embeddings, its 300 test queries) and a
synthetic corpus of random unit vectors (default 100,000 x 384). Bare, wrapped-tracing-off and
wrapped-tracing-on searches run in rotated blocks on the same store object, so drift hits all
three alike; the background trace writer's work lands in the traced block or in the timed flush
that ends it. Embeddings are a lookup table (text -> stored vector), so the figures are
the store's and the wrapper's own cost.

    python benchmarks/bench_serving.py                      # writes benchmarks/RESULTS_SERVING.md
    python benchmarks/bench_serving.py --synthetic 20000 --stores chroma,faiss --out /tmp/r.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nudge_rag.langchain import NudgedVectorStore
from nudge_rag.langchain.embeddings import LookupEmbeddings
from nudge_rag.testing.langchain_stores import bare_store

ROOT = Path(__file__).resolve().parents[1]

DATA = Path(os.environ.get("NUDGE_RAG_DATA", ROOT / ".." / "shared" / "data"))


def scifact() -> tuple[list[str], np.ndarray, np.ndarray]:
    emb = DATA / "scifact" / "emb" / "all-MiniLM-L6-v2"
    ids = (emb / "corpus_ids.txt").read_text(encoding="utf-8").splitlines()
    qids = (emb / "query_ids.txt").read_text(encoding="utf-8").splitlines()
    test = {
        line.split("\t")[0]
        for line in (DATA / "scifact" / "qrels" / "test.tsv").read_text().splitlines()[1:]
    }
    rows = [n for n, q in enumerate(qids) if q in test]
    return ids, np.load(emb / "corpus.npy"), np.load(emb / "queries.npy")[rows]


def synthetic(
    n: int, d: int = 384, n_queries: int = 200
) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal((n_queries, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return [f"s{i}" for i in range(n)], x, q


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p)) * 1000.0


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_store(
    kind: str, ids: list[str], x: np.ndarray, q: np.ndarray, n_queries: int, k: int, rounds: int
) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench_{kind}_"))
    table = {f"d {i}": v for i, v in zip(ids, x, strict=True)}
    qtexts = [f"q {j}" for j in range(len(q))][:n_queries]
    table.update({t: q[j] for j, t in enumerate(qtexts)})
    table["dummy_text"] = x[0]
    emb = LookupEmbeddings(table)
    inner = bare_store(kind, emb, x.shape[1], tmp, "bench")
    store = NudgedVectorStore(inner, state_dir=tmp / "state")
    t0 = time.perf_counter()
    batch = 5000
    for s in range(0, len(ids), batch):
        part = ids[s : s + batch]
        store.add_texts([f"d {i}" for i in part], ids=part)
    load_s = time.perf_counter() - t0
    for t in qtexts[:10]:  # warm-up
        inner.similarity_search(t, k=k)
        store.similarity_search(t, k=k)
    lat: dict[str, list[float]] = {"bare": [], "off": [], "on": []}
    order = ["bare", "off", "on"]
    writer_s = 0.0  # trace writes still queued when a traced block ends, written by flush
    for r in range(rounds):  # blocks of all queries per mode, block order rotated each round
        for mode in order[r % 3 :] + order[: r % 3]:
            store.tracing = mode == "on"
            search = inner.similarity_search if mode == "bare" else store.similarity_search
            for t in qtexts:
                lat[mode].append(timed(lambda t=t, search=search: search(t, k=k)))
            if mode == "on":
                writer_s += timed(store.nudge_state.trace_log.flush)
    store.tracing = True
    res: dict = {
        "store": kind,
        "n": len(ids),
        "queries": len(qtexts),
        "load_s": load_s,
        "writer_ms": writer_s * 1000.0 / (rounds * len(qtexts)),
    }
    for mode, xs in lat.items():
        res[f"p50_{mode}"] = pct(xs, 50)
        res[f"p95_{mode}"] = pct(xs, 95)
    rng = np.random.default_rng(1)
    for frac in (0.01, 0.10):
        m = max(1, round(frac * len(ids)))
        rows = rng.choice(len(ids), m, replace=False)
        new = x[rows] + 0.05 * rng.standard_normal((m, x.shape[1])).astype(np.float32)
        new /= np.linalg.norm(new, axis=1, keepdims=True)
        vecs = {ids[r]: new[n] for n, r in enumerate(rows)}
        res[f"apply_{int(frac * 100)}pct_s"] = timed(lambda v=vecs: store.apply_vectors(v))
        res[f"rollback_{int(frac * 100)}pct_s"] = timed(lambda: store.rollback(0))
        res[f"rows_{int(frac * 100)}pct"] = m
    store.close()
    client = getattr(inner, "client", None)
    if kind == "qdrant" and client is not None:
        client.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return res


def table(results: list[dict]) -> str:
    lines = [
        "| corpus | store | docs | queries | bare p50 / p95 ms | wrapped, tracing off p50 / p95 |"
        " wrapped, tracing on p50 / p95 | off/bare p50 | on/bare p50 | writer ms/search |"
        " (on + writer)/bare | apply 1% (rows) | rollback 1% | apply 10% (rows) | rollback 10% |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        " ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['corpus']} | {r['store']} | {r['n']:,} | {r['queries']} "
            f"| {r['p50_bare']:.3f} / {r['p95_bare']:.3f} "
            f"| {r['p50_off']:.3f} / {r['p95_off']:.3f} "
            f"| {r['p50_on']:.3f} / {r['p95_on']:.3f} "
            f"| {r['p50_off'] / r['p50_bare']:.3f} | {r['p50_on'] / r['p50_bare']:.3f} "
            f"| {r['writer_ms']:.4f} | {(r['p50_on'] + r['writer_ms']) / r['p50_bare']:.3f} "
            f"| {r['apply_1pct_s'] * 1000:.0f} ms ({r['rows_1pct']:,}) "
            f"| {r['rollback_1pct_s'] * 1000:.0f} ms "
            f"| {r['apply_10pct_s'] * 1000:.0f} ms ({r['rows_10pct']:,}) "
            f"| {r['rollback_10pct_s'] * 1000:.0f} ms |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stores", default="chroma,memory,qdrant,faiss")
    ap.add_argument("--synthetic", type=int, default=100_000, help="0 to skip")
    ap.add_argument("--synthetic-stores", default="chroma,qdrant,faiss")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--memory-queries", type=int, default=60)
    ap.add_argument("--synthetic-queries", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3, help="blocks per mode, order rotated")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS_SERVING.md"))
    args = ap.parse_args()
    results = []
    ids, x, q = scifact()
    for kind in args.stores.split(","):
        nq = args.memory_queries if kind == "memory" else args.queries
        r = bench_store(kind, ids, x, q, nq, args.k, args.rounds)
        r["corpus"] = "SciFact"
        print(r, flush=True)
        results.append(r)
    if args.synthetic:
        ids, x, q = synthetic(args.synthetic)
        for kind in args.synthetic_stores.split(","):
            nq = min(args.synthetic_queries, len(q))
            r = bench_store(kind, ids, x, q, nq, args.k, args.rounds)
            r["corpus"] = f"synthetic {args.synthetic // 1000}k"
            print(r, flush=True)
            results.append(r)
    cmd = "python benchmarks/bench_serving.py " + " ".join(sys.argv[1:])
    body = [
        "## Serving: NudgedVectorStore (LangChain) vs the bare store",
        "",
        f"Command: `{cmd.strip()}`; {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}.",
        f"similarity_search(k={args.k}); latencies in ms over {args.rounds} rounds of the queries "
        "listed: in each round one block of all queries per mode (bare / wrapped with tracing off "
        "/ wrapped with tracing on), block order rotated, all on the same store object. "
        "Apply writes the given rows as a new version; rollback returns to version 0. "
        "The trace writer batches rows on its own thread; what it still holds when a traced "
        "block ends is written by a timed flush, spread over the block's searches as "
        "'writer ms/search' (an upper bound: writes during the block are already in its "
        "latencies).",
        "Targets: wrapper/bare p50 <= 1.05 with tracing off, <= 1.15 with tracing on; apply cost "
        "proportional to the changed rows.",
        "",
        table(results),
        "",
    ]
    Path(args.out).write_text("\n".join(body), encoding="utf-8")
    print("\n".join(body))


if __name__ == "__main__":
    main()
