"""``langchain_core`` ``InMemoryVectorStore``: a dict of records (cosine)."""

from __future__ import annotations

from collections.abc import Sequence

from nudge_rag.langchain.backends.base import REGISTRY, Backend, group_children
from nudge_rag.stores.base import Metric, StoreAdapter

__all__ = ["MemoryBackend"]


@REGISTRY.register
class MemoryBackend(Backend):
    """LangChain's in-memory store."""

    embeddings_attr = "embedding"

    stores = ("langchain_core.InMemoryVectorStore",)

    def build_adapter(self) -> StoreAdapter:
        from nudge_rag.stores.memory import MemoryAdapter

        return MemoryAdapter(self.store.store, metric=Metric.COSINE)  # type: ignore[attr-defined]

    def children_of(self, parent_ids: Sequence[str], key: str) -> dict[str, list[str]]:
        records = self.store.store  # type: ignore[attr-defined]
        pairs = [(i, (r.get("metadata") or {}).get(key)) for i, r in records.items()]
        return group_children(pairs, parent_ids)
