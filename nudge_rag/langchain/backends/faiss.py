"""``langchain_community`` ``FAISS``: a faiss index, an id map and a docstore."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from langchain_core.vectorstores import VectorStore

from nudge_rag.langchain.backends.base import REGISTRY, Backend, group_children
from nudge_rag.state.files import save_faiss_atomic
from nudge_rag.stores.base import StoreAdapter
from nudge_rag.stores.faiss import FaissAdapter

__all__ = ["FaissBackend"]


@REGISTRY.register
class FaissBackend(Backend):
    """LangChain's FAISS store (flat indexes: l2 or inner product, optionally normalised)."""

    embeddings_attr = "embedding_function"
    fresh_docs = False  # searches return the docstore's own Document objects

    stores = ("langchain_community.FAISS",)

    def __init__(self, store: VectorStore, adapter: StoreAdapter | None = None) -> None:
        super().__init__(store, adapter)
        self._saved_to: tuple[Path, str] | None = None

    def build_adapter(self) -> StoreAdapter:
        return FaissAdapter.for_holder(
            self.store, normalize=bool(getattr(self.store, "_normalize_L2", False))
        )

    def save_local(self, folder: str | os.PathLike[str], index_name: str = "index") -> None:
        """Save atomically (never a cut or mixed pair); later writes re-save there."""
        save_faiss_atomic(self.store, folder, index_name)
        self._saved_to = (Path(folder), index_name)

    def after_write(self) -> None:
        """Re-save where :meth:`save_local` saved, inside each version move."""
        if self._saved_to is not None:
            save_faiss_atomic(self.store, *self._saved_to)

    def before_overwrite(self, present: set[str], ids: list[str]) -> None:
        # FAISS refuses existing ids: an overwrite is a delete and an add
        self.store.delete([i for i in ids if i in present])

    def children_of(self, parent_ids: Sequence[str], key: str) -> dict[str, list[str]]:
        docs = self.store.docstore._dict  # type: ignore[attr-defined]
        pairs = [(i, (d.metadata or {}).get(key)) for i, d in docs.items()]
        return group_children(pairs, parent_ids)
