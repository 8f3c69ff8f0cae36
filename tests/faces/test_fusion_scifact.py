"""Hybrid fusion on SciFact fuses exactly as with the bare store, on both faces (issue 10).

A reduced run of ``benchmarks/bench_fusion.py``: the first 60 SciFact test queries over a
2,000-chunk slice of the corpus (every positive of those queries plus a seeded sample), with the
precomputed all-MiniLM-L6-v2 vectors, so nothing is encoded. Each wrapped store runs the default
configuration (tracing on) and is compared with the same pipeline over the bare store: the fused
top 10, ids in order, query by query. The stores search exactly (Qdrant local mode, FAISS flat),
so "equal" means equal, with no HNSW noise to allow for.

- LlamaIndex: ``QueryFusionRetriever`` (reciprocal rerank, one query) over the index's vector
  retriever and ``BM25Retriever``. It merges the legs' nodes by ``node.hash``, which covers the
  metadata: a trace id written into the nodes would split a chunk both legs found in two.
- LangChain: ``EnsembleRetriever`` over ``BM25Retriever`` and ``store.as_retriever()``.
"""

from __future__ import annotations

import uuid
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nudge_rag.eval.data import BeirDataset, load_beir, shared_data_dir

pytestmark = pytest.mark.integration

K = 10
N_QUERIES = 60
N_CHUNKS = 2_000


@cache
def _scifact() -> BeirDataset | None:
    root = shared_data_dir()
    if root is None or not (root / "scifact" / "emb").is_dir():
        return None
    return load_beir(root / "scifact")


@pytest.fixture(scope="module")
def scifact() -> dict[str, Any]:
    """The slice: chunk ids, texts and vectors; query ids, texts and vectors."""
    ds = _scifact()
    if ds is None:
        pytest.skip("../shared/data/scifact with its embeddings not found (set NUDGE_RAG_DATA)")
    assert ds.corpus_embeddings is not None and ds.query_embeddings is not None
    qrels = ds.qrels["test"]
    qids = sorted(qrels, key=int)[:N_QUERIES]
    positives = {d for q in qids for d in qrels[q]}
    others = [d for d in ds.corpus_ids if d not in positives]
    rng = np.random.default_rng(0)
    picked = positives | set(rng.choice(others, N_CHUNKS - len(positives), replace=False))
    rows = [n for n, d in enumerate(ds.corpus_ids) if d in picked]
    qrow = {q: n for n, q in enumerate(ds.query_ids)}
    return {
        "ids": [ds.corpus_ids[n] for n in rows],
        "texts": [ds.text_of(ds.corpus_ids[n]) for n in rows],
        "vectors": ds.corpus_embeddings[rows],
        "queries": [ds.query_text[q] for q in qids],
        "query_vectors": ds.query_embeddings[[qrow[q] for q in qids]],
    }


# -- LlamaIndex: QueryFusionRetriever -----------------------------------------------------------
def _node_id(doc_id: str) -> str:
    """Qdrant point ids are UUIDs: one per SciFact id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"scifact/{doc_id}"))


def _llama_index(data: dict[str, Any], store: Any) -> Any:
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.schema import TextNode

    nodes = [
        TextNode(id_=_node_id(d), text=t, embedding=v.tolist())
        for d, t, v in zip(data["ids"], data["texts"], data["vectors"], strict=True)
    ]
    return VectorStoreIndex(
        nodes,
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=MockEmbedding(embed_dim=384),  # never called: nodes and queries bring vectors
    )


def _qdrant() -> Any:
    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient

    return QdrantVectorStore(client=QdrantClient(":memory:"), collection_name="scifact")


@pytest.fixture(scope="module")
def llama(scifact, tmp_path_factory) -> dict[str, Any]:
    """BM25 over the slice, and an index over the bare and over the wrapped Qdrant store."""
    from llama_index.core.schema import TextNode
    from llama_index.retrievers.bm25 import BM25Retriever

    from nudge_rag.llama_index import NudgedVectorStore

    nodes = [
        TextNode(id_=_node_id(d), text=t)
        for d, t in zip(scifact["ids"], scifact["texts"], strict=True)
    ]
    wrapped = NudgedVectorStore(_qdrant(), state_dir=tmp_path_factory.mktemp("llama-state"))
    out = {
        "bm25": BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=K),
        "bare": _llama_index(scifact, _qdrant()),
        "wrapped": _llama_index(scifact, wrapped),
        "store": wrapped,
    }
    yield out
    wrapped.close()


def _fusion(index: Any, bm25: Any, *, use_async: bool) -> Any:
    from llama_index.core.llms import MockLLM
    from llama_index.core.retrievers import QueryFusionRetriever

    return QueryFusionRetriever(
        [index.as_retriever(similarity_top_k=K), bm25],
        llm=MockLLM(),  # num_queries=1: no query is generated
        mode="reciprocal_rerank",
        num_queries=1,
        similarity_top_k=K,
        use_async=use_async,
    )


def _fused_ids(retriever: Any, data: dict[str, Any]) -> list[list[str]]:
    from llama_index.core.schema import QueryBundle

    return [
        [hit.node.node_id for hit in retriever.retrieve(QueryBundle(q, embedding=v.tolist()))]
        for q, v in zip(data["queries"], data["query_vectors"], strict=True)
    ]


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "use_async"])
def test_query_fusion_over_a_wrapped_store_equals_the_bare_store(llama, scifact, use_async):
    store = llama["store"]
    before = len(store.traces())
    # the bare QdrantVectorStore has no async client (its aquery raises): the bare pipeline runs
    # sync, and fusion computes the same either way; the wrapper runs a sync store's aquery in a
    # thread
    bare = _fused_ids(_fusion(llama["bare"], llama["bm25"], use_async=False), scifact)
    got = _fused_ids(_fusion(llama["wrapped"], llama["bm25"], use_async=use_async), scifact)
    differ = [q for q, a, b in zip(scifact["queries"], bare, got, strict=True) if a != b]
    assert not differ, f"{len(differ)}/{N_QUERIES} fused top-10 changed, e.g. {differ[0]!r}"
    # the wrapped pipeline was traced: one trace per query, in order
    traces = store.traces()[before:]
    assert [t.query for t in traces] == scifact["queries"]


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "use_async"])
def test_a_trace_scope_names_the_fusions_vector_search(llama, scifact, use_async):
    store = llama["store"]
    fusion = _fusion(llama["wrapped"], llama["bm25"], use_async=use_async)
    from llama_index.core.schema import QueryBundle

    question, vector = scifact["queries"][0], scifact["query_vectors"][0].tolist()
    with store.trace_scope() as scope:
        hits = fusion.retrieve(QueryBundle(question, embedding=vector))
    last = store.traces()[-1]
    assert scope.trace_ids == [last.id] and scope.last == last.id
    assert last.query == question
    fused = {h.node.node_id for h in hits}
    assert fused & set(last.result_ids)  # the vector leg's results are in the trace
    store.record_feedback(scope.last, relevant_ids=[hits[0].node.node_id])
    assert store.feedback(scope.last)[0].relevant_ids == [hits[0].node.node_id]


def test_stamping_the_trace_id_into_node_metadata_would_change_the_fusion(llama, scifact, tmp_path):
    """Why the LlamaIndex face leaves node metadata alone unless asked (``trace_metadata_key``)."""
    from nudge_rag.llama_index import TRACE_ID_KEY, NudgedVectorStore

    stamped = NudgedVectorStore(_qdrant(), state_dir=tmp_path, trace_metadata_key=TRACE_ID_KEY)
    bare = _fused_ids(_fusion(llama["bare"], llama["bm25"], use_async=False), scifact)
    got = _fused_ids(
        _fusion(_llama_index(scifact, stamped), llama["bm25"], use_async=False), scifact
    )
    changed = sum(a != b for a, b in zip(bare, got, strict=True))
    assert changed > N_QUERIES // 2, changed
    stamped.close()


# -- LangChain: EnsembleRetriever ---------------------------------------------------------------
@pytest.fixture(scope="module")
def langchain(scifact, tmp_path_factory) -> dict[str, Any]:
    """BM25 over the slice, and a bare and a wrapped FAISS store holding it."""
    from langchain_community.retrievers import BM25Retriever
    from langchain_core.documents import Document

    from nudge_rag.langchain import NudgedVectorStore
    from nudge_rag.langchain.embeddings import LookupEmbeddings
    from nudge_rag.testing.langchain_stores import bare_store

    table = dict(zip(scifact["texts"], scifact["vectors"], strict=True))
    table.update(zip(scifact["queries"], scifact["query_vectors"], strict=True))
    emb = LookupEmbeddings(table)  # no fallback: any other text raises
    docs = [
        Document(t, id=d, metadata={"doc_id": d})
        for d, t in zip(scifact["ids"], scifact["texts"], strict=True)
    ]
    folder: Path = tmp_path_factory.mktemp("langchain")
    bare = bare_store("faiss", emb, 384, folder / "bare")
    bare.add_documents(docs, ids=scifact["ids"])
    wrapped = NudgedVectorStore(bare_store("faiss", emb, 384, folder), state_dir=folder / "state")
    wrapped.add_documents(docs, ids=scifact["ids"])
    yield {"bm25": BM25Retriever.from_documents(docs, k=K), "bare": bare, "wrapped": wrapped}
    wrapped.close()


def _ensemble(store: Any, bm25: Any) -> Any:
    from langchain_classic.retrievers import EnsembleRetriever

    return EnsembleRetriever(retrievers=[bm25, store.as_retriever(search_kwargs={"k": K})])


def _top(docs: list[Any]) -> list[tuple[str, str]]:
    return [(d.metadata["doc_id"], d.page_content) for d in docs[:K]]


async def test_ensemble_over_a_wrapped_store_equals_the_bare_store(langchain, scifact):
    store = langchain["wrapped"]
    before = len(store.traces())
    bare = _ensemble(langchain["bare"], langchain["bm25"])
    wrapped = _ensemble(store, langchain["bm25"])
    for q in scifact["queries"]:
        want = _top(bare.invoke(q))
        assert _top(wrapped.invoke(q)) == want, q
        assert _top(await wrapped.ainvoke(q)) == want, q
    traces = store.traces()[before:]
    assert [t.query for t in traces] == [q for q in scifact["queries"] for _ in range(2)]
