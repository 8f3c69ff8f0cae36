"""Serving cost of NudgedVectorStore (LangChain face): search latency wrapper vs bare, tracing on
and off, and the cost of apply / rollback, per store.

Corpora: SciFact (5,183 docs, precomputed all-MiniLM-L6-v2 embeddings, its 300 test queries) and a
synthetic corpus of random unit vectors (default 100,000 x 384). Bare, wrapped-tracing-off and
wrapped-tracing-on searches run in rotated blocks on the same store object, so drift hits all
three alike; the background trace writer's work lands in the traced block or in the timed flush
that ends it. Embeddings are a lookup table (text -> stored vector), so the figures are
the store's and the wrapper's own cost.

pgvector (``langchain_postgres.PGVector``) runs on a real Postgres 18 + pgvector server that the
script starts (``nudge_rag.testing.pgserver``, fsync off) when a pgvector store is listed, one
database per store, and stops at the end. Its rows are loaded with ``PGVector.add_embeddings``
(precomputed vectors, 5,000 rows a statement) before the store is wrapped. ``pgvector`` is
PGVector's default: no vector index, every search an exact scan; ``pgvector-hnsw`` types the
column ``vector(d)`` and builds an HNSW index (cosine, pgvector's defaults m=16,
ef_construction=64, ef_search=40) after the load. An HNSW apply re-inserts every changed row
into the graph, so an apply of 10% is skipped when 10x the 1% apply + rollback would exceed
``--max-apply-s``.

    python benchmarks/bench_serving.py                      # writes benchmarks/RESULTS_SERVING.md
    python benchmarks/bench_serving.py --synthetic 20000 --stores chroma,faiss --out /tmp/r.md
    python benchmarks/bench_serving.py --stores pgvector,pgvector-hnsw --synthetic-stores pgvector
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.langchain import NudgedVectorStore
from nudge_rag.langchain.embeddings import LookupEmbeddings
from nudge_rag.testing.langchain_stores import bare_store

PG_KINDS = ("pgvector", "pgvector-hnsw")
_databases = itertools.count()

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


def pg_load(
    pg: Any, kind: str, emb: LookupEmbeddings, ids: list[str], x: np.ndarray, folder: Path
) -> tuple[Any, float, float]:
    """A PGVector in a fresh database of ``pg``, filled with ``add_embeddings`` (and, for
    ``pgvector-hnsw``, an HNSW index built after the load); (store, load s, index s)."""
    import psycopg

    db = f"bench{next(_databases)}"
    pg.create_database(db)
    inner: Any = bare_store(
        "pgvector", emb, x.shape[1], folder, "bench", connection=pg.langchain_url(db)
    )
    hnsw = kind == "pgvector-hnsw"
    with psycopg.connect(pg.conninfo(db), autocommit=True) as conn:
        if hnsw:  # an HNSW index needs a typed column; PGVector's is untyped (length unset)
            conn.execute(
                f"ALTER TABLE langchain_pg_embedding ALTER COLUMN embedding TYPE vector({x.shape[1]})"
            )
        t0 = time.perf_counter()
        batch = 5000
        for s in range(0, len(ids), batch):
            part = ids[s : s + batch]
            inner.add_embeddings([f"d {i}" for i in part], x[s : s + batch].tolist(), ids=part)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if hnsw:
            conn.execute("SET maintenance_work_mem = '1GB'")
            conn.execute(
                "CREATE INDEX ON langchain_pg_embedding USING hnsw (embedding vector_cosine_ops)"
            )
        conn.execute("VACUUM ANALYZE langchain_pg_embedding")
        index_s = time.perf_counter() - t0 if hnsw else 0.0
    return inner, load_s, index_s


def bench_store(
    kind: str,
    ids: list[str],
    x: np.ndarray,
    q: np.ndarray,
    n_queries: int,
    k: int,
    rounds: int,
    *,
    pg: Any = None,
    max_apply_s: float = 600.0,
) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench_{kind}_"))
    table = {f"d {i}": v for i, v in zip(ids, x, strict=True)}
    qtexts = [f"q {j}" for j in range(len(q))][:n_queries]
    table.update({t: q[j] for j, t in enumerate(qtexts)})
    table["dummy_text"] = x[0]
    emb = LookupEmbeddings(table)
    index_s = 0.0
    if kind in PG_KINDS:
        inner, load_s, index_s = pg_load(pg, kind, emb, ids, x, tmp)
        store = NudgedVectorStore(inner, state_dir=tmp / "state")
    else:
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
                lat[mode].append(timed(partial(search, t, k=k)))
            if mode == "on":
                writer_s += timed(store.nudge_state.trace_log.flush)
    store.tracing = True
    res: dict = {
        "store": kind,
        "n": len(ids),
        "queries": len(qtexts),
        "load_s": load_s,
        "index_s": index_s,
        "writer_ms": writer_s * 1000.0 / (rounds * len(qtexts)),
    }
    for mode, xs in lat.items():
        res[f"p50_{mode}"] = pct(xs, 50)
        res[f"p95_{mode}"] = pct(xs, 95)
    rng = np.random.default_rng(1)
    for frac in (0.01, 0.10):
        m = max(1, round(frac * len(ids)))
        if frac > 0.01 and 10 * (res["apply_1pct_s"] + res["rollback_1pct_s"]) > max_apply_s:
            res["skipped_10pct"] = True  # extrapolated past --max-apply-s: not run
            continue
        rows = rng.choice(len(ids), m, replace=False)
        new = x[rows] + 0.05 * rng.standard_normal((m, x.shape[1])).astype(np.float32)
        new /= np.linalg.norm(new, axis=1, keepdims=True)
        vecs = {ids[r]: new[n] for n, r in enumerate(rows)}
        res[f"apply_{int(frac * 100)}pct_s"] = timed(partial(store.apply_vectors, vecs))
        res[f"rollback_{int(frac * 100)}pct_s"] = timed(partial(store.rollback, 0))
        res[f"rows_{int(frac * 100)}pct"] = m
    store.close()
    client = getattr(inner, "client", None)
    if kind == "qdrant" and client is not None:
        client.close()
    if kind in PG_KINDS:
        store.adapter.close()  # type: ignore[attr-defined]
        inner._engine.dispose()
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
            + (
                "| not run | not run |"
                if r.get("skipped_10pct")
                else f"| {r['apply_10pct_s'] * 1000:.0f} ms ({r['rows_10pct']:,}) "
                f"| {r['rollback_10pct_s'] * 1000:.0f} ms |"
            )
        )
    return "\n".join(lines)


def pg_notes(results: list[dict]) -> list[str]:
    """The header lines on the pgvector rows: how they were built, load and index times."""
    pg = [r for r in results if r["store"] in PG_KINDS]
    if not pg:
        return []
    times = "; ".join(
        f"{r['corpus']} {r['store']}: load {r['load_s']:.1f} s"
        + (f", HNSW build {r['index_s']:.1f} s" if r["store"] == "pgvector-hnsw" else "")
        for r in pg
    )
    return [
        "pgvector: `langchain_postgres.PGVector` on a local Postgres 18 + pgvector 0.8 server "
        "(Unix socket, fsync off), one database per row, rows loaded with `add_embeddings` "
        "before wrapping. `pgvector`: no vector index (PGVector's default; exact scan); "
        "`pgvector-hnsw`: column typed `vector(d)`, HNSW cosine index (m=16, "
        f"ef_construction=64, ef_search=40) built after the load. {times}.",
    ]


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (temp file in the same folder, fsync, os.replace)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stores", default="chroma,memory,qdrant,faiss,pgvector,pgvector-hnsw")
    ap.add_argument("--synthetic", type=int, default=100_000, help="0 to skip")
    ap.add_argument("--synthetic-stores", default="chroma,qdrant,faiss,pgvector,pgvector-hnsw")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--memory-queries", type=int, default=60)
    ap.add_argument("--synthetic-queries", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3, help="blocks per mode, order rotated")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument(
        "--max-apply-s",
        type=float,
        default=600.0,
        help="skip the 10%% apply when 10x the 1%% apply + rollback would take longer",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS_SERVING.md"))
    args = ap.parse_args()
    stores = [s for s in args.stores.split(",") if s]
    synthetic_stores = [s for s in args.synthetic_stores.split(",") if s] if args.synthetic else []
    pg = None
    if set(PG_KINDS) & {*stores, *synthetic_stores}:
        from nudge_rag.testing.pgserver import start_pgserver

        pg = start_pgserver()
    results = []
    try:
        ids, x, q = scifact()
        for kind in stores:
            nq = args.memory_queries if kind == "memory" else args.queries
            r = bench_store(
                kind, ids, x, q, nq, args.k, args.rounds, pg=pg, max_apply_s=args.max_apply_s
            )
            r["corpus"] = "SciFact"
            print(r, flush=True)
            results.append(r)
        if synthetic_stores:
            ids, x, q = synthetic(args.synthetic)
            for kind in synthetic_stores:
                nq = min(args.synthetic_queries, len(q))
                r = bench_store(
                    kind, ids, x, q, nq, args.k, args.rounds, pg=pg, max_apply_s=args.max_apply_s
                )
                r["corpus"] = f"synthetic {args.synthetic // 1000}k"
                print(r, flush=True)
                results.append(r)
    finally:
        if pg is not None:
            pg.stop()
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
        *pg_notes(results),
        "",
        table(results),
        "",
    ]
    write_atomic(Path(args.out), "\n".join(body))
    print("\n".join(body))


if __name__ == "__main__":
    main()
