"""Serving cost of the LlamaIndex face: NudgedVectorStore.query vs the bare store, and apply/rollback.

    python benchmarks/bench_serving_llama.py              # writes benchmarks/RESULTS_SERVING_LLAMA.md
    python benchmarks/bench_serving_llama.py --stores chroma milvus --queries 100 --out /tmp/r.md

Each store holds the SciFact corpus (5,183 chunks with text and metadata, precomputed
all-MiniLM-L6-v2 vectors, 384-d); ``--synthetic N`` adds a corpus of N random unit vectors.
Bare, wrapped-tracing-off and wrapped-tracing-on queries (``VectorStoreQuery``, k=10, SciFact
test queries) run interleaved, query by query, in a rotating order, on the *same* store object,
so the difference is the wrapper's own work. Then 1% and 10% of the rows are written as a new
version and rolled back to version 0.

Targets (those of benchmarks/bench_serving.py, the LangChain face): wrapper/bare p50 <= 1.05
with tracing off, <= 1.15 with tracing on; apply cost proportional to the changed rows.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import BasePydanticVectorStore, VectorStoreQuery

from nudge_rag.eval.data import load_beir, shared_data_dir
from nudge_rag.llama_index import NudgedVectorStore

HERE = Path(__file__).resolve().parent
TARGET_OFF = 1.05  # wrapped (tracing off) / bare p50
TARGET_ON = 1.15  # wrapped (tracing on) / bare p50
K = 10
WARMUP = 20
STORES = ("chroma", "simple", "qdrant", "milvus")
MODES = ("bare", "off", "on")


def make_store(kind: str, tmp: Path, dim: int) -> BasePydanticVectorStore:
    """An empty LlamaIndex store of ``kind`` (cosine), on disk under ``tmp``."""
    if kind == "chroma":
        import chromadb
        from llama_index.vector_stores.chroma import ChromaVectorStore

        col = chromadb.PersistentClient(path=str(tmp / "chroma")).get_or_create_collection(
            "bench", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
        )
        return ChromaVectorStore(chroma_collection=col)
    if kind == "simple":
        from llama_index.core.vector_stores import SimpleVectorStore

        return SimpleVectorStore()
    if kind == "qdrant":
        from llama_index.vector_stores.qdrant import QdrantVectorStore
        from qdrant_client import QdrantClient

        return QdrantVectorStore(collection_name="bench", client=QdrantClient(path=str(tmp / "q")))
    if kind == "milvus":
        from llama_index.vector_stores.milvus import MilvusVectorStore

        return MilvusVectorStore(
            uri=str(tmp / "milvus.db"), dim=dim, collection_name="bench", similarity_metric="COSINE"
        )
    raise SystemExit(f"--stores: unknown store {kind!r}; choose from {STORES}")


def node_id(corpus: str, doc_id: str) -> str:
    """uuid5 ids: Qdrant needs UUID point ids."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{corpus}/{doc_id}"))


def scifact_corpus() -> tuple[str, list[TextNode], np.ndarray]:
    """SciFact as nodes (text, metadata, vector) and its test queries."""
    root = shared_data_dir()
    if root is None:
        raise SystemExit("shared data not found: set NUDGE_RAG_DATA to the BEIR data folder")
    ds = load_beir(root / "scifact")
    emb = ds.corpus_embeddings
    nodes = [
        TextNode(
            id_=node_id("scifact", doc_id),
            text=ds.text_of(doc_id),
            embedding=emb[i].tolist(),
            metadata={"beir_id": doc_id, "dataset": "scifact"},
        )
        for i, doc_id in enumerate(ds.corpus_ids)
    ]
    return "scifact", nodes, ds.task("test").queries


def synthetic_corpus(
    n: int, n_queries: int, dim: int = 384
) -> tuple[str, list[TextNode], np.ndarray]:
    """``n`` random unit vectors with short texts, and random unit queries."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    qs = rng.normal(size=(n_queries + WARMUP, dim)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    nodes = [
        TextNode(id_=node_id("synthetic", str(i)), text=f"doc {i}", embedding=x[i].tolist())
        for i in range(n)
    ]
    return f"synthetic {n:,}", nodes, qs


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


def bench_store(kind: str, nodes: list[TextNode], queries: np.ndarray, tmp: Path) -> dict:
    """Latencies (ms) of bare / tracing off / tracing on queries; apply and rollback seconds."""
    dim = len(nodes[0].embedding or [])
    bare = make_store(kind, tmp, dim)
    t0 = time.perf_counter()
    on = NudgedVectorStore(bare, state_dir=tmp / "state-on")
    for start in range(0, len(nodes), 1000):
        on.add(nodes[start : start + 1000])
    load_s = time.perf_counter() - t0
    off = NudgedVectorStore(bare, state_dir=tmp / "state-off", tracing=False)
    runs: dict[str, Callable[[VectorStoreQuery], Any]] = {
        "bare": bare.query,
        "off": off.query,
        "on": on.query,
    }
    lat: dict[str, list[float]] = {m: [] for m in MODES}
    same = True
    for i, vec in enumerate(queries):
        query = VectorStoreQuery(
            query_embedding=vec.tolist(), similarity_top_k=K, query_str=f"q{i}"
        )
        ids = {}
        for mode in MODES[i % 3 :] + MODES[: i % 3]:  # rotate who goes first
            t = time.perf_counter()
            ids[mode] = runs[mode](query).ids
            if i >= WARMUP:
                lat[mode].append((time.perf_counter() - t) * 1000)
        same &= ids["bare"] == ids["off"] == ids["on"]
    out: dict[str, Any] = {
        "store": kind,
        "docs": len(nodes),
        "queries": len(queries) - WARMUP,
        "load_s": load_s,
        "same_results": same,
        "traces": len(on.traces()),
    }
    for mode in MODES:
        out[mode] = (pct(lat[mode], 50), pct(lat[mode], 95))
    rng = np.random.default_rng(1)
    for share in (1, 10):
        rows = max(1, len(nodes) * share // 100)
        picked = rng.choice(len(nodes), size=rows, replace=False)
        new = rng.normal(size=(rows, dim))
        new /= np.linalg.norm(new, axis=1, keepdims=True)
        vectors = {nodes[j].node_id: new[n] for n, j in enumerate(picked)}
        t = time.perf_counter()
        on.apply_vectors(vectors, method="nudge-n")
        out[f"apply_{share}"] = (time.perf_counter() - t, rows)
        t = time.perf_counter()
        on.rollback(0)
        out[f"rollback_{share}"] = time.perf_counter() - t
    on.close()
    off.close()
    if kind in ("qdrant", "milvus"):
        bare.client.close()
    return out


def ratios(r: dict) -> tuple[float, float]:
    return r["off"][0] / r["bare"][0], r["on"][0] / r["bare"][0]


def report(rows: list[dict], cmd: str) -> str:
    lines = [
        "## Serving: NudgedVectorStore (LlamaIndex) vs the bare store",
        "",
        f"Command: `{cmd}`; {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}.",
        f"`store.query(VectorStoreQuery(k={K}))`; latencies in ms, bare / wrapped (tracing off) "
        "/ wrapped (tracing on) interleaved query by query on the same store object, "
        f"{WARMUP} warm-up queries dropped. Apply writes the given rows as a new version; "
        "rollback returns to version 0.",
        f"Targets: wrapper/bare p50 <= {TARGET_OFF} with tracing off, <= {TARGET_ON} with "
        "tracing on; apply cost proportional to the changed rows.",
        "",
        "| corpus | store | docs | queries | bare p50 / p95 | wrapped, tracing off p50 / p95 |"
        " wrapped, tracing on p50 / p95 | off/bare p50 | on/bare p50 | targets | same ids |"
        " apply 1% (rows) | rollback 1% | apply 10% (rows) | rollback 10% |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        r_off, r_on = ratios(r)
        ok = r_off <= TARGET_OFF and r_on <= TARGET_ON
        lines.append(
            f"| {r['corpus']} | {r['store']} | {r['docs']:,} | {r['queries']} "
            + "".join(f"| {r[m][0]:.2f} / {r[m][1]:.2f} " for m in MODES)
            + f"| {r_off:.3f} | {r_on:.3f} | {'met' if ok else 'MISSED'} "
            f"| {'yes' if r['same_results'] else 'NO'} "
            f"| {r['apply_1'][0] * 1000:.0f} ms ({r['apply_1'][1]:,}) "
            f"| {r['rollback_1'] * 1000:.0f} ms "
            f"| {r['apply_10'][0] * 1000:.0f} ms ({r['apply_10'][1]:,}) "
            f"| {r['rollback_10'] * 1000:.0f} ms |"
        )
    lines += [
        "",
        "Loading through the wrapper (`add` in batches of 1,000): "
        + ", ".join(f"{r['corpus']}/{r['store']} {r['load_s']:.1f} s" for r in rows)
        + ".",
        "",
        "LlamaIndex's FAISS stores are not wrapped: they cannot look up or overwrite vectors "
        "by node id.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", nargs="+", default=list(STORES), choices=STORES)
    parser.add_argument("--queries", type=int, default=300, help="queries timed per store")
    parser.add_argument("--synthetic", type=int, default=0, help="also a random corpus of N")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS_SERVING_LLAMA.md")
    args = parser.parse_args()
    corpora = [scifact_corpus()]
    if args.synthetic:
        corpora.append(synthetic_corpus(args.synthetic, args.queries))
    rows = []
    for corpus, nodes, queries in corpora:
        for kind in args.stores:
            with tempfile.TemporaryDirectory() as tmp:
                row = bench_store(kind, nodes, queries[: args.queries + WARMUP], Path(tmp))
            row["corpus"] = corpus
            r_off, r_on = ratios(row)
            print(
                f"{corpus} {kind}: bare p50 {row['bare'][0]:.2f} ms, off/bare {r_off:.3f}, "
                f"on/bare {r_on:.3f}",
                flush=True,
            )
            rows.append(row)
    cmd = "python benchmarks/bench_serving_llama.py " + " ".join(sys.argv[1:])
    args.out.write_text(report(rows, cmd.strip()), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
