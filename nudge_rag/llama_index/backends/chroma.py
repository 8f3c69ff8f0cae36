"""``ChromaVectorStore``: ``store.client`` is the chromadb Collection."""

from __future__ import annotations

from collections.abc import Sequence

from llama_index.core.vector_stores.types import MetadataFilters

from nudge_rag.llama_index.backends.base import REGISTRY, Backend
from nudge_rag.stores.base import Metric, StoreAdapter

__all__ = ["ChromaBackend"]


@REGISTRY.register
class ChromaBackend(Backend):
    """``ChromaVectorStore``: ``store.client`` is the chromadb Collection."""

    stores = ("llama_index.ChromaVectorStore",)

    def build_adapter(self) -> StoreAdapter:
        from nudge_rag.stores.chroma import ChromaAdapter

        return ChromaAdapter(self.store.client)

    def score_kind(self, metric: Metric) -> str:
        """LlamaIndex's Chroma store turns distances into similarities, l2 included."""
        return "similarity"

    def dim(self) -> int | None:
        got = self.store.client.peek(limit=1)
        emb = got.get("embeddings")
        return None if emb is None or len(emb) == 0 else len(emb[0])

    def matching(self, filters: MetadataFilters) -> list[str]:
        from llama_index.vector_stores.chroma.base import _to_chroma_filter

        return list(self.store.client.get(where=_to_chroma_filter(filters), include=[])["ids"])

    def ref_doc_filters(self, ref_doc_id: str) -> MetadataFilters:
        from llama_index.core.vector_stores.types import MetadataFilter

        return MetadataFilters(filters=[MetadataFilter(key="document_id", value=ref_doc_id)])

    def documents(self, ref_doc_ids: Sequence[str]) -> dict[str, list[str]]:
        """One ``get`` with ``document_id $in [...]`` (what ``delete`` filters by)."""
        wanted = list(dict.fromkeys(ref_doc_ids))
        if not wanted:
            return {}
        got = self.store.client.get(where={"document_id": {"$in": wanted}}, include=["metadatas"])
        out: dict[str, list[str]] = {}
        for i, meta in zip(got["ids"], got["metadatas"] or [], strict=True):
            out.setdefault(str((meta or {}).get("document_id")), []).append(i)
        return out
