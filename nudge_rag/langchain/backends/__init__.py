"""One backend per wrapped LangChain store; :func:`backend_for` picks it by class."""

from __future__ import annotations

from langchain_core.vectorstores import VectorStore

from nudge_rag.core.errors import NudgeError
from nudge_rag.core.stores.base import StoreAdapter
from nudge_rag.langchain.backends.base import Backend
from nudge_rag.langchain.backends.chroma import ChromaBackend
from nudge_rag.langchain.backends.faiss import FaissBackend
from nudge_rag.langchain.backends.memory import MemoryBackend
from nudge_rag.langchain.backends.milvus import MilvusBackend
from nudge_rag.langchain.backends.pgvector import PgVectorBackend
from nudge_rag.langchain.backends.qdrant import QdrantBackend

BACKENDS: list[type[Backend]] = [
    ChromaBackend,
    MemoryBackend,
    QdrantBackend,
    FaissBackend,
    PgVectorBackend,
    MilvusBackend,
]
SUPPORTED = (
    "langchain_chroma.Chroma, langchain_core InMemoryVectorStore, "
    "langchain_qdrant.QdrantVectorStore, langchain_community FAISS, langchain_postgres.PGVector, "
    "langchain_milvus.Milvus"
)

__all__ = ["BACKENDS", "SUPPORTED", "Backend", "backend_for"]


def backend_for(store: VectorStore, adapter: StoreAdapter | None = None) -> Backend:
    """The backend of ``store`` (``adapter`` given: any store, through that adapter)."""
    for cls in BACKENDS:
        if cls.matches(store):
            return cls(store, adapter)
    if adapter is not None:
        return Backend(store, adapter)
    msg = (
        f"store: found {type(store).__module__}.{type(store).__name__}, which NudgedVectorStore "
        f"cannot reach inside; supported: {SUPPORTED}. Pass adapter=... (a "
        "nudge_rag.core.stores adapter over its native client) to wrap another store."
    )
    raise NudgeError(msg)
