"""Bare LangChain vector stores of each supported kind, built alike for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore, VectorStore

from nudge_rag.errors import BadInputError

__all__ = ["KINDS", "bare_store"]

#: the LangChain stores every store-table test runs on (one row per store)
KINDS = ("chroma", "memory", "qdrant", "faiss", "lancedb")


def bare_store(
    kind: str,
    embedding: Embeddings,
    dim: int,
    folder: Path,
    name: str = "docs",
    *,
    connection: str | None = None,
) -> VectorStore:
    """A fresh, empty cosine (FAISS: inner product; LanceDB: l2) store of ``kind`` in ``folder``.

    ``chroma``: persistent Chroma; ``qdrant``: Qdrant local mode in memory; ``faiss``: a flat
    inner-product index; ``memory``: LangChain's ``InMemoryVectorStore``; ``lancedb``: an
    embedded LanceDB table (``mode="append"``; it searches by l2); ``pgvector`` (not in
    :data:`KINDS`: it needs a server): ``langchain_postgres.PGVector``, collection ``name``, at
    ``connection`` (a ``postgresql+psycopg://`` URL, e.g.
    :meth:`~nudge_rag.testing.pgserver.PgServer.langchain_url`). Its ``embedding_length`` is
    left unset: LangChain fixes the table once per process from the first store's value.
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
    if kind == "lancedb":
        from langchain_community.vectorstores import LanceDB

        return LanceDB(
            uri=str(Path(folder) / "lancedb"), embedding=embedding, table_name=name, mode="append"
        )
    if kind == "pgvector":
        if connection is None:
            msg = (
                "connection: found None for kind 'pgvector'; pass the server's URL, e.g. "
                "start_pgserver().langchain_url()."
            )
            raise BadInputError(msg)
        from langchain_postgres import PGVector

        return PGVector(embedding, connection=connection, collection_name=name, use_jsonb=True)
    msg = f"kind: found {kind!r}, expected one of {(*KINDS, 'pgvector')}."
    raise BadInputError(msg)
