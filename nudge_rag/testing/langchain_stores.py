"""Bare LangChain vector stores of each supported kind, built alike for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore, VectorStore

KINDS = ("chroma", "memory", "qdrant", "faiss")


def bare_store(
    kind: str, embedding: Embeddings, dim: int, folder: Path, name: str = "docs"
) -> VectorStore:
    """A fresh, empty cosine (FAISS: inner product) store of ``kind`` in ``folder``.

    ``chroma``: persistent Chroma; ``qdrant``: Qdrant local mode in memory; ``faiss``: a flat
    inner-product index; ``memory``: LangChain's ``InMemoryVectorStore``.
    """
    if kind == "chroma":
        from langchain_chroma import Chroma

        return Chroma(
            name,
            embedding_function=embedding,
            persist_directory=str(Path(folder) / "chroma"),
            collection_metadata={"hnsw:space": "cosine"},
        )
    if kind == "qdrant":
        from langchain_qdrant import QdrantVectorStore
        from qdrant_client import QdrantClient, models

        client = QdrantClient(":memory:")
        client.create_collection(
            name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE)
        )
        return QdrantVectorStore(client=client, collection_name=name, embedding=embedding)
    if kind == "faiss":
        import faiss
        from langchain_community.docstore.in_memory import InMemoryDocstore
        from langchain_community.vectorstores import FAISS
        from langchain_community.vectorstores.utils import DistanceStrategy

        return FAISS(
            embedding,
            faiss.IndexFlatIP(dim),
            InMemoryDocstore(),
            {},
            distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT,
        )
    if kind == "memory":
        return InMemoryVectorStore(embedding)
    msg = f"kind: found {kind!r}, expected one of {KINDS}."
    raise ValueError(msg)
