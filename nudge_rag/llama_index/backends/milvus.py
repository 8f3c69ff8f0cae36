"""``MilvusVectorStore``: ``store.client`` is a MilvusClient; ``id`` is the primary key."""

from __future__ import annotations

from llama_index.core.vector_stores.types import BasePydanticVectorStore, MetadataFilters

from nudge_rag.llama_index.backends.base import REGISTRY, Backend
from nudge_rag.stores.base import Metric, StoreAdapter

__all__ = ["MilvusBackend"]

_METRICS = {"COSINE": Metric.COSINE, "IP": Metric.IP, "L2": Metric.L2}
_MILVUS_PAGE = 16384  # Milvus's largest query window; beyond it, page with an iterator


@REGISTRY.register
class MilvusBackend(Backend):
    """``MilvusVectorStore``: ``store.client`` is a MilvusClient; ``id`` is the primary key."""

    stores = ("llama_index.MilvusVectorStore",)

    def __init__(self, store: BasePydanticVectorStore) -> None:
        super().__init__(store)
        # a collection reopened from disk (Milvus Lite) comes back released: searches fail
        # until it is loaded, which the bare store does not do
        if self._exists():
            state = str(self.store.client.get_load_state(self.store.collection_name)["state"])
            if not state.endswith("Loaded"):
                self.store.client.load_collection(self.store.collection_name)

    def _exists(self) -> bool:
        return bool(self.store.client.has_collection(self.store.collection_name))

    def build_adapter(self) -> StoreAdapter:
        from nudge_rag.stores.milvus import MilvusAdapter

        return MilvusAdapter(
            self.store.client,
            self.store.collection_name,
            vector_field=self.store.embedding_field,
            metric=_METRICS.get(str(self.store.similarity_metric).upper(), Metric.IP),
        )

    def dim(self) -> int | None:
        return self.store.dim

    def _query_ids(self, expr: str) -> list[str]:
        rows = self.store.client.query(
            self.store.collection_name, filter=expr, output_fields=["id"], limit=_MILVUS_PAGE
        )
        if len(rows) < _MILVUS_PAGE:
            return [str(r["id"]) for r in rows]
        it = self.store.client.query_iterator(
            self.store.collection_name, batch_size=1000, filter=expr, output_fields=["id"]
        )
        out: list[str] = []
        try:
            while batch := it.next():
                out.extend(str(r["id"]) for r in batch)
        finally:
            it.close()
        return out

    def matching(self, filters: MetadataFilters) -> list[str]:
        from llama_index.vector_stores.milvus.base import _to_milvus_filter

        return self._query_ids(_to_milvus_filter(filters)) if self._exists() else []

    def all_ids(self) -> list[str]:
        return self._query_ids("") if self._exists() else []

    def ref_doc_filters(self, ref_doc_id: str) -> MetadataFilters:
        from llama_index.core.vector_stores.types import MetadataFilter

        key = self.store.doc_id_field
        return MetadataFilters(filters=[MetadataFilter(key=key, value=ref_doc_id)])

    def has_async(self) -> bool:
        return self.store.aclient is not None
