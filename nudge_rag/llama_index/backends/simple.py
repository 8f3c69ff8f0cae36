"""``SimpleVectorStore``: a dict of embeddings and a dict of flat metadata."""

from __future__ import annotations

from collections.abc import Sequence

from llama_index.core.vector_stores.types import MetadataFilters

from nudge_rag.llama_index.backends.base import REGISTRY, Backend
from nudge_rag.stores.base import StoreAdapter

__all__ = ["SimpleBackend"]


@REGISTRY.register
class SimpleBackend(Backend):
    """``SimpleVectorStore``: a dict of embeddings and a dict of flat metadata."""

    stores = ("llama_index.SimpleVectorStore",)

    def build_adapter(self) -> StoreAdapter:
        from nudge_rag.stores.llama_simple import LlamaSimpleAdapter

        return LlamaSimpleAdapter(self.store)

    def dim(self) -> int | None:
        return self.adapter().dim  # type: ignore[attr-defined]

    def matching(self, filters: MetadataFilters) -> list[str]:
        from llama_index.core.vector_stores.utils import build_metadata_filter_fn

        meta = self.store.data.metadata_dict
        keep = build_metadata_filter_fn(lambda i: meta[i], filters)
        return [i for i in self.store.data.embedding_dict if keep(i)]

    def ref_doc_ids(self, ref_doc_id: str) -> list[str]:
        """The node ids that ``delete(ref_doc_id)`` removes."""
        table = self.store.data.text_id_to_ref_doc_id
        return [i for i, ref in table.items() if ref == ref_doc_id]

    def documents(self, ref_doc_ids: Sequence[str]) -> dict[str, list[str]]:
        """One pass over the store's node → document table."""
        wanted = set(ref_doc_ids)
        out: dict[str, list[str]] = {}
        for i, ref in self.store.data.text_id_to_ref_doc_id.items():
            if ref in wanted:
                out.setdefault(ref, []).append(i)
        return out
