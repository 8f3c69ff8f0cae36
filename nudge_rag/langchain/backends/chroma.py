"""``langchain_chroma.Chroma``: the native client is its chromadb Collection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.documents import Document

from nudge_rag.langchain.backends.base import (
    REGISTRY,
    Backend,
    ScoredDocs,
    group_children,
    parent_values,
)
from nudge_rag.stores.base import Metric, StoreAdapter

__all__ = ["ChromaBackend"]


@REGISTRY.register
class ChromaBackend(Backend):
    """Chroma (embedded, persistent, or a ``chroma run`` server)."""

    embeddings_attr = "_embedding_function"

    stores = ("langchain_chroma.Chroma",)

    def build_adapter(self) -> StoreAdapter:
        from nudge_rag.stores.chroma import ChromaAdapter

        return ChromaAdapter(self.store._collection)  # type: ignore[attr-defined]

    def score_kind(self, metric: Metric) -> str:
        return "distance"  # langchain-chroma returns the collection's distances

    def max_batch(self) -> int | None:
        return int(self.adapter().batch_size)  # type: ignore[attr-defined]

    def vector_search(self) -> Callable[..., ScoredDocs] | None:
        return self.store.similarity_search_by_vector_with_relevance_scores  # type: ignore[attr-defined]

    def get_by_ids(self, ids: Sequence[str]) -> list[Document]:
        # langchain-chroma builds Document(metadata=None) for documents added without metadata,
        # which pydantic rejects: read the collection directly instead.
        got = self.store._collection.get(ids=list(ids), include=["documents", "metadatas"])  # type: ignore[attr-defined]
        return [
            Document(id=i, page_content=text or "", metadata=meta or {})
            for i, text, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True)
        ]

    def children_of(self, parent_ids: Sequence[str], key: str) -> dict[str, list[str]]:
        strs, ints = parent_values(parent_ids)
        where: dict[str, Any] = {key: {"$in": strs}}
        if ints:
            where = {"$or": [where, {key: {"$in": ints}}]}
        got = self.store._collection.get(where=where, include=["metadatas"])  # type: ignore[attr-defined]
        pairs = [(i, (m or {}).get(key)) for i, m in zip(got["ids"], got["metadatas"], strict=True)]
        return group_children(pairs, parent_ids)
