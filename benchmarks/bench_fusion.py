"""Hybrid fusion on SciFact: a wrapped store fuses exactly as the bare store, on both faces.

    python benchmarks/bench_fusion.py                        # 300 test queries, every store
    python benchmarks/bench_fusion.py --queries 60 --faces llama_index

The pipelines apps build for hybrid search, vector leg + BM25, reciprocal-rank fusion, top 10:

- LlamaIndex: ``QueryFusionRetriever(mode="reciprocal_rerank", num_queries=1)`` over
  ``index.as_retriever(similarity_top_k=10)`` and ``BM25Retriever`` (llama-index-retrievers-bm25),
  run with ``use_async=False``, ``use_async=True`` and ``await aretrieve``. Stores: Chroma (the
  wrapped one made by ``NudgedVectorStore.from_defaults``) and ``SimpleVectorStore``.
- LangChain: ``EnsembleRetriever`` (langchain_classic) over langchain_community's
  ``BM25Retriever`` and ``store.as_retriever(search_kwargs={"k": 10})``, ``invoke`` and
  ``ainvoke``. Stores: Chroma (wrapped: ``NudgedVectorStore.from_documents``), FAISS, Qdrant
  local mode, ``InMemoryVectorStore``.

Every wrapped store runs the default configuration (tracing on). Chunks and queries use the
precomputed all-MiniLM-L6-v2 vectors (``../shared/data/scifact/emb``): nothing is encoded.
For each store the fused top 10 (ids, in order) of the wrapped pipeline is compared with the bare
one, query by query, and both are scored with pytrec_eval (NDCG@10, SciFact test qrels).
Chroma's HNSW index is approximate, so a second bare Chroma built alike measures the noise floor.
For contrast, the LlamaIndex Chroma pipeline runs once more with ``trace_metadata_key=
"nudge_trace_id"`` (the trace id stamped into node metadata, the old default), which changes
``node.hash`` and so what ``QueryFusionRetriever`` merges.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytrec_eval

from nudge_rag.eval.data import BeirDataset, load_beir, shared_data_dir

K = 10
FACES = ("llama_index", "langchain")
LC_KINDS = ("chroma", "faiss", "qdrant", "memory")
LLAMA_KINDS = ("chroma", "simple")
IdsOf = Callable[[Any], list[str]]


@dataclass
class Run:
    """The fused top-``K`` ids per query of one pipeline, and how many searches it traced."""

    label: str
    ranked: list[list[str]]
    traced: int | None  # queries whose trace scope caught exactly one search (None: bare)
    seconds: float


@dataclass
class Row:
    """One comparison of a pipeline against the bare one."""

    face: str
    store: str
    call: str
    against: str
    identical: int
    n: int
    ndcg_bare: float
    ndcg_other: float
    traced: int | None
    seconds: float


def ndcg10(ranked: list[list[str]], qids: Sequence[str], qrels: dict) -> float:
    """Mean NDCG@10 (pytrec_eval, as BEIR reports it) of ranked ids, one list per query."""
    run = {
        q: {d: float(K - r) for r, d in enumerate(ids)} for q, ids in zip(qids, ranked, strict=True)
    }
    ev = pytrec_eval.RelevanceEvaluator({q: qrels[q] for q in qids}, {"ndcg_cut.10"})
    return float(np.mean([m["ndcg_cut_10"] for m in ev.evaluate(run).values()]))


def identical(a: list[list[str]], b: list[list[str]]) -> int:
    """Queries whose fused top-K is the same ids in the same order."""
    return sum(x == y for x, y in zip(a, b, strict=True))


# -- LlamaIndex ---------------------------------------------------------------------------------
def llama_nodes(ds: BeirDataset) -> list[Any]:
    """SciFact chunks as TextNodes with their precomputed vectors (fresh objects each call)."""
    from llama_index.core.schema import TextNode

    assert ds.corpus_embeddings is not None
    return [
        TextNode(id_=d, text=ds.text_of(d), embedding=ds.corpus_embeddings[n].tolist())
        for n, d in enumerate(ds.corpus_ids)
    ]


def llama_chroma(path: Path) -> Any:
    """A bare LlamaIndex ChromaVectorStore over a new persistent cosine collection."""
    import chromadb
    from llama_index.vector_stores.chroma import ChromaVectorStore

    col = chromadb.PersistentClient(path=str(path)).get_or_create_collection(
        "scifact", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
    )
    return ChromaVectorStore(chroma_collection=col)


def llama_stores(kind: str, work: Path) -> dict[str, Any]:
    """The stores compared for ``kind``: bare, wrapped (default config) and the controls."""
    from llama_index.core.vector_stores import SimpleVectorStore

    from nudge_rag.llama_index import TRACE_ID_KEY, NudgedVectorStore

    if kind == "simple":
        return {
            "bare": SimpleVectorStore(),
            "wrapped": NudgedVectorStore(SimpleVectorStore(), state_dir=work / "simple-state"),
        }
    return {
        "bare": llama_chroma(work / "chroma-bare"),
        "bare again": llama_chroma(work / "chroma-bare-again"),
        "wrapped": NudgedVectorStore.from_defaults(
            persist_dir=work / "chroma-wrapped", collection_name="scifact"
        ),
        "wrapped, trace_metadata_key": NudgedVectorStore(
            llama_chroma(work / "chroma-stamped"),
            state_dir=work / "chroma-stamped-state",
            trace_metadata_key=TRACE_ID_KEY,
        ),
    }


def llama_runs(ds: BeirDataset, qids: list[str], kind: str, work: Path) -> dict[str, list[Run]]:
    """Every LlamaIndex pipeline over ``kind``: {store label: [one Run per call style]}."""
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.llms import MockLLM
    from llama_index.core.retrievers import QueryFusionRetriever
    from llama_index.core.schema import QueryBundle
    from llama_index.retrievers.bm25 import BM25Retriever

    assert ds.query_embeddings is not None
    row = {q: n for n, q in enumerate(ds.query_ids)}
    # the precomputed query vector rides in the bundle: the embed model is never called
    bundles = [
        QueryBundle(ds.query_text[q], embedding=ds.query_embeddings[row[q]].tolist()) for q in qids
    ]
    bm25 = BM25Retriever.from_defaults(nodes=llama_nodes(ds), similarity_top_k=K)
    embed_model = MockEmbedding(embed_dim=384)  # never called: nodes and queries bring vectors
    indexes = {
        label: (
            store,
            VectorStoreIndex(
                llama_nodes(ds),
                embed_model=embed_model,
                storage_context=StorageContext.from_defaults(vector_store=store),
            ),
        )
        for label, store in llama_stores(kind, work).items()
    }
    if kind == "chroma":  # the bare collection itself, wrapped: the same HNSW graph, no noise
        from nudge_rag.llama_index import NudgedVectorStore

        over = NudgedVectorStore(indexes["bare"][0], state_dir=work / "chroma-over-bare-state")
        index = VectorStoreIndex.from_vector_store(over, embed_model=embed_model)
        indexes["wrapped over the bare collection"] = (over, index)
    out: dict[str, list[Run]] = {}
    for label, (store, index) in indexes.items():

        def fusion(use_async: bool, index: Any = index) -> Any:
            return QueryFusionRetriever(
                [index.as_retriever(similarity_top_k=K), bm25],
                llm=MockLLM(),
                mode="reciprocal_rerank",
                num_queries=1,
                similarity_top_k=K,
                use_async=use_async,
            )

        def ids_of(hits: list[Any]) -> list[str]:
            return [h.node.node_id for h in hits]

        sync, in_tasks, run_async = fusion(False), fusion(True), fusion(True)
        out[label] = [
            _run_sync("retrieve, use_async=False", sync.retrieve, bundles, store, ids_of),
            _run_sync("retrieve, use_async=True", in_tasks.retrieve, bundles, store, ids_of),
            _run_async("await aretrieve", run_async.aretrieve, bundles, store, ids_of),
        ]
    return out


# -- LangChain ----------------------------------------------------------------------------------
def lc_runs(ds: BeirDataset, qids: list[str], kind: str, work: Path) -> dict[str, list[Run]]:
    """Every LangChain pipeline over ``kind``: {store label: [one Run per call style]}."""
    from langchain_classic.retrievers import EnsembleRetriever
    from langchain_community.retrievers import BM25Retriever
    from langchain_core.documents import Document

    from nudge_rag.langchain import NudgedVectorStore
    from nudge_rag.langchain.embeddings import LookupEmbeddings
    from nudge_rag.stores.qdrant import default_point_id
    from nudge_rag.testing.langchain_stores import bare_store

    assert ds.corpus_embeddings is not None and ds.query_embeddings is not None
    table = {ds.text_of(d): ds.corpus_embeddings[n] for n, d in enumerate(ds.corpus_ids)}
    table.update({ds.query_text[q]: ds.query_embeddings[n] for n, q in enumerate(ds.query_ids)})
    probes: list[str] = []

    def probe(texts: list[str]) -> np.ndarray:  # langchain-qdrant embeds "dummy_text" once
        probes.extend(texts)
        return np.full((len(texts), 384), 384**-0.5, dtype=np.float32)

    emb = LookupEmbeddings(table, fallback=probe)
    docs = [Document(ds.text_of(d), id=d, metadata={"doc_id": d}) for d in ds.corpus_ids]
    ids = list(ds.corpus_ids)
    bm25 = BM25Retriever.from_documents(docs, k=K)

    def bare(name: str) -> Any:
        store = bare_store(kind, emb, 384, work / name, "scifact")
        # Qdrant takes UUID point ids: the ones the wrapper derives from the same doc ids
        store.add_documents(
            docs, ids=[default_point_id(i) for i in ids] if kind == "qdrant" else ids
        )
        return store

    stores: dict[str, Any] = {"bare": bare("lc-bare")}
    if kind == "chroma":
        stores["bare again"] = bare("lc-bare-again")
        stores["wrapped"] = NudgedVectorStore.from_documents(
            docs, emb, persist_directory=work / "lc-wrapped", collection_name="scifact"
        )
        # the bare collection itself, wrapped: the same HNSW graph, no noise
        stores["wrapped over the bare collection"] = NudgedVectorStore(
            stores["bare"], state_dir=work / "lc-over-bare-state"
        )
    else:
        wrapped = NudgedVectorStore(
            bare_store(kind, emb, 384, work / "lc-wrapped", "scifact"),
            state_dir=work / "lc-wrapped-state",
        )
        wrapped.add_documents(docs, ids=ids)
        stores["wrapped"] = wrapped

    if set(probes) - {"dummy_text"}:
        msg = f"texts outside SciFact were embedded: {sorted(set(probes))[:3]}"
        raise RuntimeError(msg)
    out: dict[str, list[Run]] = {}
    for label, store in stores.items():
        ens = EnsembleRetriever(retrievers=[bm25, store.as_retriever(search_kwargs={"k": K})])
        texts = [ds.query_text[q] for q in qids]

        def top(found: list[Any]) -> list[str]:
            return [d.metadata["doc_id"] for d in found[:K]]

        out[label] = [
            _run_sync("invoke", ens.invoke, texts, store, top),
            _run_async("await ainvoke", ens.ainvoke, texts, store, top),
        ]
    return out


# -- running ------------------------------------------------------------------------------------
def _scope(store: Any) -> Any:
    """The wrapped store's trace scope (the searches of one call); nothing for a bare store."""
    return store.trace_scope() if hasattr(store, "trace_scope") else nullcontext()


def _run_sync(
    label: str, call: Callable[[Any], Any], inputs: list[Any], store: Any, ids_of: IdsOf
) -> Run:
    t0 = time.perf_counter()
    ranked, traced = [], 0
    for x in inputs:
        with _scope(store) as scope:
            ranked.append(ids_of(call(x)))
        traced += scope is not None and len(scope.trace_ids) == 1
    wrapped = hasattr(store, "trace_scope")
    return Run(label, ranked, traced if wrapped else None, time.perf_counter() - t0)


def _run_async(
    label: str, call: Callable[[Any], Any], inputs: list[Any], store: Any, ids_of: IdsOf
) -> Run:
    async def main() -> Run:
        t0 = time.perf_counter()
        ranked, traced = [], 0
        for x in inputs:
            with _scope(store) as scope:
                ranked.append(ids_of(await call(x)))
            traced += scope is not None and len(scope.trace_ids) == 1
        wrapped = hasattr(store, "trace_scope")
        return Run(label, ranked, traced if wrapped else None, time.perf_counter() - t0)

    return asyncio.run(main())


def compare(
    face: str, kind: str, runs: dict[str, list[Run]], qids: list[str], qrels: dict
) -> list[Row]:
    """Each non-bare pipeline against the bare one, call style by call style."""
    rows = []
    for label, own in runs.items():
        if label == "bare":
            continue
        for base, run in zip(runs["bare"], own, strict=True):
            rows.append(
                Row(
                    face,
                    kind,
                    run.label,
                    label,
                    identical(base.ranked, run.ranked),
                    len(qids),
                    ndcg10(base.ranked, qids, qrels),
                    ndcg10(run.ranked, qids, qrels),
                    run.traced,
                    run.seconds,
                )
            )
    return rows


def table(rows: list[Row]) -> str:
    """The rows as a markdown table."""
    head = (
        "| face | store | call | pipeline vs bare | fused top-10 identical | NDCG@10 bare | NDCG@10 pipeline | queries traced | s |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    lines = [
        f"| {r.face} | {r.store} | {r.call} | {r.against} | {r.identical}/{r.n} | {r.ndcg_bare:.4f} | "
        f"{r.ndcg_other:.4f} | {'—' if r.traced is None else f'{r.traced}/{r.n}'} | {r.seconds:.1f} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def main(argv: list[str] | None = None) -> int:
    """Build every pipeline, run the SciFact test queries, print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="BEIR data folder (../shared/data)")
    parser.add_argument("--queries", type=int, default=300, help="first N test queries (300: all)")
    parser.add_argument("--faces", nargs="+", choices=FACES, default=list(FACES))
    parser.add_argument("--lc-stores", nargs="+", choices=LC_KINDS, default=list(LC_KINDS))
    parser.add_argument("--llama-stores", nargs="+", choices=LLAMA_KINDS, default=list(LLAMA_KINDS))
    args = parser.parse_args(argv)
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    root = args.data or shared_data_dir()
    if root is None or not (root / "scifact").is_dir():
        print("SciFact not found: pass --data or set NUDGE_RAG_DATA", file=sys.stderr)
        return 2
    ds = load_beir(root / "scifact")
    qrels = ds.qrels["test"]
    qids = sorted(qrels, key=int)[: args.queries]
    print(
        f"SciFact: {len(ds.corpus_ids):,} chunks, {len(qids)} test queries; {platform.python_version()}, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench_fusion_") as tmp:
        work = Path(tmp)
        if "llama_index" in args.faces:
            for kind in args.llama_stores:
                t0 = time.perf_counter()
                runs = llama_runs(ds, qids, kind, work / f"llama-{kind}")
                new = compare("LlamaIndex", kind, runs, qids, qrels)
                print(table(new), f"\n({time.perf_counter() - t0:.0f} s)\n", flush=True)
                rows += new
        if "langchain" in args.faces:
            for kind in args.lc_stores:
                t0 = time.perf_counter()
                runs = lc_runs(ds, qids, kind, work / f"lc-{kind}")
                new = compare("LangChain", kind, runs, qids, qrels)
                print(table(new), f"\n({time.perf_counter() - t0:.0f} s)\n", flush=True)
                rows += new
    print("## All pipelines\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
