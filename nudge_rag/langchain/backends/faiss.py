"""``langchain_community`` ``FAISS``: a faiss index, an id map and a docstore."""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.vectorstores import VectorStore

from nudge_rag.core.stores.base import StoreAdapter
from nudge_rag.langchain.backends.base import Backend, group_children


class FaissBackend(Backend):
    """LangChain's FAISS store (flat indexes: l2 or inner product, optionally normalised)."""

    embeddings_attr = "embedding_function"
    fresh_docs = False  # searches return the docstore's own Document objects

    @classmethod
    def matches(cls, store: VectorStore) -> bool:
        t = type(store)
        return t.__name__ == "FAISS" and t.__module__.startswith("langchain_community")

    def build_adapter(self) -> StoreAdapter:
        from nudge_rag.core.stores.faiss import FaissAdapter

        return FaissAdapter.for_holder(
            self.store, normalize=bool(getattr(self.store, "_normalize_L2", False))
        )

    def before_overwrite(self, present: set[str], ids: list[str]) -> None:
        # FAISS refuses existing ids: an overwrite is a delete and an add
        self.store.delete([i for i in ids if i in present])

    def children_of(self, parent_ids: Sequence[str], key: str) -> dict[str, list[str]]:
        docs = self.store.docstore._dict  # type: ignore[attr-defined]
        pairs = [(i, (d.metadata or {}).get(key)) for i, d in docs.items()]
        return group_children(pairs, parent_ids)
