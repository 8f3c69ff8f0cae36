"""LlamaIndex feedback on documents and parent nodes lands on their chunks.

Real ``VectorStoreIndex`` code over a wrapped ``SimpleVectorStore`` and an embedded Chroma
store; documents split by ``SentenceSplitter`` (chunk ``ref_doc_id`` = the document) and by
``HierarchicalNodeParser`` (leaf chunks with a PARENT node, merged back by
``AutoMergingRetriever``). The embedding is a fixed bag of hashed words (no model download).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.node_parser import (
    HierarchicalNodeParser,
    SentenceSplitter,
    get_leaf_nodes,
)
from llama_index.core.schema import NodeRelationship
from llama_index.core.vector_stores import SimpleVectorStore

from nudge_rag.errors import UnknownIdError
from nudge_rag.llama_index import NudgedVectorStore

TOPICS = {
    "doc-fruit": "bananas apples pears grapes plums cherries mangoes",
    "doc-music": "violins cellos flutes drums pianos trumpets harps",
    "doc-earth": "volcanoes lava tides oceans glaciers deserts canyons",
}


class WordEmbedding(BaseEmbedding):
    """Each word hashed to one of 64 axes; the vector of a text is its normalised word count."""

    def _vec(self, text: str) -> list[float]:
        v = np.zeros(64)
        for w in text.lower().split():
            v[int(hashlib.md5(w.strip(".,").encode()).hexdigest(), 16) % 64] += 1.0
        return (v / (np.linalg.norm(v) or 1.0)).tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vec(text)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vec(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vec(query)


def _documents() -> list[Document]:
    """Three documents of many sentences each (several chunks apiece)."""
    return [
        Document(
            id_=doc_id, text=" ".join(f"{w} are item {n}." for n, w in enumerate(words.split()))
        )
        for doc_id, words in TOPICS.items()
    ]


def _wrapped(kind: str, tmp_path: Path) -> NudgedVectorStore:
    if kind == "simple":
        return NudgedVectorStore(SimpleVectorStore(), state_dir=tmp_path / "state")
    if kind == "qdrant":  # the per-document lookup every other backend inherits
        from llama_index.vector_stores.qdrant import QdrantVectorStore
        from qdrant_client import QdrantClient

        inner = QdrantVectorStore(client=QdrantClient(location=":memory:"), collection_name="docs")
        return NudgedVectorStore(inner, state_dir=tmp_path / "state")
    import chromadb
    from llama_index.vector_stores.chroma import ChromaVectorStore

    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    collection = client.get_or_create_collection("docs", embedding_function=None)
    return NudgedVectorStore(
        ChromaVectorStore(chroma_collection=collection), state_dir=tmp_path / "state"
    )


def _feedback(store: NudgedVectorStore, trace_id: str) -> tuple[list[str], list[str]]:
    (fb,) = store.feedback(trace_id)
    return list(fb.relevant_ids), list(fb.irrelevant_ids)


@pytest.mark.parametrize("kind", ["simple", "chroma", "qdrant"])
def test_feedback_on_a_document_lands_on_its_chunks(kind, tmp_path):
    store = _wrapped(kind, tmp_path)
    nodes = SentenceSplitter(chunk_size=24, chunk_overlap=0).get_nodes_from_documents(_documents())
    chunks = {d: [n.node_id for n in nodes if n.ref_doc_id == d] for d in TOPICS}
    assert all(len(c) >= 3 for c in chunks.values())  # each document is several chunks
    # a chunk whose id is also a document's id: the chunk wins (Qdrant ids are UUIDs)
    collide = kind != "qdrant"
    if collide:
        nodes[0].id_ = "doc-earth"
        chunks["doc-fruit"][0] = "doc-earth"
    index = VectorStoreIndex(
        nodes, storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=WordEmbedding(),
    )  # fmt: skip
    index.as_retriever(similarity_top_k=3).retrieve("bananas and violins")
    tid = store.last_trace_id
    assert tid is not None

    store.record_feedback(tid, relevant_ids=["doc-music"], irrelevant_ids=["doc-fruit"])
    rel, irr = _feedback(store, tid)
    assert sorted(rel) == sorted(chunks["doc-music"])  # every chunk, shown or not
    assert sorted(irr) == sorted(chunks["doc-fruit"])

    index.as_retriever(similarity_top_k=3).retrieve("volcanoes")
    tid2 = store.last_trace_id
    assert tid2 is not None
    store.record_feedback(tid2, relevant_ids=["doc-earth", chunks["doc-music"][1]])
    earth = ["doc-earth"] if collide else chunks["doc-earth"]  # the chunk, or the document's
    assert sorted(_feedback(store, tid2)[0]) == sorted([*earth, chunks["doc-music"][1]])

    with pytest.raises(UnknownIdError, match="'doc-nope'"):
        store.record_feedback(tid2, relevant_ids=["doc-nope"])
    # deleting the document: its chunks go, and so does the mapping
    index.delete_ref_doc("doc-music", delete_from_docstore=True)
    with pytest.raises(UnknownIdError, match="'doc-music'"):
        store.record_feedback(tid2, relevant_ids=["doc-music"])


def test_feedback_on_a_merged_parent_node_lands_on_the_chunks_shown(tmp_path):
    """``HierarchicalNodeParser`` leaves in the store, every level in the docstore,
    ``AutoMergingRetriever`` answers with parent nodes: feedback on a parent names the leaves
    of it that the search returned."""
    from llama_index.core.retrievers import AutoMergingRetriever

    store = _wrapped("chroma", tmp_path)
    parser = HierarchicalNodeParser.from_defaults(chunk_sizes=[96, 24], chunk_overlap=0)
    nodes = parser.get_nodes_from_documents(_documents())
    leaves = get_leaf_nodes(nodes)
    storage = StorageContext.from_defaults(vector_store=store)
    storage.docstore.add_documents(nodes)
    index = VectorStoreIndex(leaves, storage_context=storage, embed_model=WordEmbedding())
    retriever = AutoMergingRetriever(
        index.as_retriever(similarity_top_k=2), storage, simple_ratio_thresh=0.0
    )
    merged = retriever.retrieve("violins cellos flutes")
    tid = store.last_trace_id
    assert tid is not None
    (shown,) = [t.result_ids for t in store.traces() if t.id == tid]
    parent_of = {n.node_id: n.relationships[NodeRelationship.PARENT].node_id for n in leaves}
    parents = [h.node.node_id for h in merged if h.node.node_id not in parent_of]
    assert parents, "AutoMergingRetriever merged nothing"
    store.record_feedback(tid, relevant_ids=[parents[0]])
    want = [c for c in shown if parent_of[c] == parents[0]]
    assert want and _feedback(store, tid)[0] == want

    # a parent of no chunk this search returned (2 chunks shown, 3 parents) is unknown to it
    other = next(p for p in {*parent_of.values()} if p not in {parent_of[c] for c in shown})
    with pytest.raises(UnknownIdError, match=repr(other)):
        store.record_feedback(tid, relevant_ids=[other])


def test_id_key_still_means_a_metadata_key(tmp_path):
    store = _wrapped("chroma", tmp_path)
    docs = [
        Document(text=t, metadata={"source": s}) for s, t in (("a.md", "bananas"), ("b.md", "lava"))
    ]
    index = VectorStoreIndex.from_documents(
        docs, storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=WordEmbedding(),
    )  # fmt: skip
    index.as_retriever(similarity_top_k=1).retrieve("bananas")
    tid: Any = store.last_trace_id
    store.record_feedback(tid, relevant_ids=["b.md"], id_key="source")
    (node,) = store.get_nodes(_feedback(store, tid)[0])
    assert node.metadata["source"] == "b.md"


@pytest.mark.integration
def test_feedback_on_a_document_in_a_pgvectorstore(pg, db):
    """``PGVectorStore`` looks the chunks of every named document up in one query."""
    pytest.importorskip("llama_index.vector_stores.postgres")
    from llama_index.vector_stores.postgres import PGVectorStore

    sync_url, async_url = pg.llama_index_urls(db)
    inner = PGVectorStore.from_params(
        connection_string=sync_url,
        async_connection_string=async_url,
        table_name="docs",
        embed_dim=64,
    )
    store = NudgedVectorStore(inner, state=pg.url(db) + "&schema=nudge_pf")
    nodes = SentenceSplitter(chunk_size=24, chunk_overlap=0).get_nodes_from_documents(_documents())
    index = VectorStoreIndex(
        nodes, storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=WordEmbedding(),
    )  # fmt: skip
    index.as_retriever(similarity_top_k=2).retrieve("lava")
    tid = store.last_trace_id
    assert tid is not None
    store.record_feedback(tid, relevant_ids=["doc-earth", "doc-fruit"])
    want = [n.node_id for d in ("doc-earth", "doc-fruit") for n in nodes if n.ref_doc_id == d]
    assert sorted(_feedback(store, tid)[0]) == sorted(want)
    store.close()
    inner.client.dispose()
