"""Bare LlamaIndex vector stores of each supported kind, built alike for tests and benchmarks."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from llama_index.core.vector_stores.types import BasePydanticVectorStore

from nudge_rag.errors import BadInputError

__all__ = ["KINDS", "bare_store"]

#: the LlamaIndex stores every store-table test runs on (one row per store)
KINDS = ("chroma", "simple", "qdrant", "milvus", "lancedb")


def bare_store(
    kind: str,
    dim: int,
    folder: Path,
    name: str = "docs",
    *,
    metric: str = "cosine",
    server: tuple[str, int] | None = None,
) -> BasePydanticVectorStore:
    """A fresh, empty store of ``kind`` named ``name`` in ``folder``, searching by ``metric``
    (``cosine`` or ``ip``; ``ValueError`` for a kind that cannot).

    ``chroma``: persistent Chroma (a new collection per call); ``simple``: ``SimpleVectorStore``
    (cosine only); ``qdrant``: Qdrant local mode in ``folder/qdrant-<name>``; ``milvus``: a
    Milvus Lite collection; ``lancedb``: an embedded LanceDB table (it searches by its vector
    index's metric, l2 without one: "cosine" gives l2, which ranks unit vectors as cosine does;
    no ``ip``); ``chroma-server`` (not in :data:`KINDS`: it needs a server): a collection on the
    Chroma server at ``server`` (host, port).
    """
    folder = Path(folder)
    if metric not in ("cosine", "ip"):
        msg = f"metric: found {metric!r}, expected 'cosine' or 'ip'."
        raise BadInputError(msg)
    if kind in ("chroma", "chroma-server"):
        import chromadb
        from llama_index.vector_stores.chroma import ChromaVectorStore

        if kind == "chroma":
            client: Any = chromadb.PersistentClient(path=str(folder / "chroma"))
        elif server is None:
            msg = "server: found None for kind 'chroma-server'; pass the server's (host, port)."
            raise BadInputError(msg)
        else:
            client = chromadb.HttpClient(host=server[0], port=server[1])
        col = client.get_or_create_collection(
            f"{name}-{uuid.uuid4().hex[:8]}",
            configuration={"hnsw": {"space": metric}},
            embedding_function=None,
        )
        return ChromaVectorStore(chroma_collection=col)
    if kind == "simple":
        from llama_index.core.vector_stores import SimpleVectorStore

        if metric != "cosine":
            msg = "metric: SimpleVectorStore searches by cosine only."
            raise BadInputError(msg)
        return SimpleVectorStore()
    if kind == "qdrant":
        from llama_index.vector_stores.qdrant import QdrantVectorStore
        from qdrant_client import QdrantClient
        from qdrant_client.http import models as rest

        qdrant = QdrantClient(path=str(folder / f"qdrant-{name}"))
        dense = None
        if metric == "ip":
            dense = rest.VectorParams(size=dim, distance=rest.Distance.DOT)
        return QdrantVectorStore(collection_name="c", client=qdrant, dense_config=dense)
    if kind == "milvus":
        from llama_index.vector_stores.milvus import MilvusVectorStore

        return MilvusVectorStore(
            uri=str(folder / "milvus.db"),
            dim=dim,
            collection_name=f"c_{name.replace('-', '_')}",
            similarity_metric="COSINE" if metric == "cosine" else "IP",
        )
    if kind == "lancedb":
        from llama_index.vector_stores.lancedb import LanceDBVectorStore

        if metric != "cosine":
            msg = "metric: LanceDBVectorStore searches by its vector index's metric (l2 without)."
            raise BadInputError(msg)
        return LanceDBVectorStore(uri=str(folder / "lancedb"), table_name=name)
    msg = f"kind: found {kind!r}, expected one of {(*KINDS, 'chroma-server')}."
    raise BadInputError(msg)
