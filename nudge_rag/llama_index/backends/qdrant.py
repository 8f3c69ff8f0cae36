"""``QdrantVectorStore``: node ids are the point ids; the dense vector is named."""

from __future__ import annotations

from typing import Any

from llama_index.core.vector_stores.types import MetadataFilters

from nudge_rag.errors import BadInputError
from nudge_rag.llama_index.backends.base import REGISTRY, Backend
from nudge_rag.stores.base import Metric, StoreAdapter

__all__ = ["QdrantBackend"]


@REGISTRY.register
class QdrantBackend(Backend):
    """``QdrantVectorStore``: node ids are the point ids; the dense vector is named."""

    stores = ("llama_index.QdrantVectorStore",)

    def _vector_name(self) -> str:
        legacy = getattr(self.store, "_legacy_vector_format", None)
        return "" if legacy else self.store.dense_vector_name

    def _exists(self) -> bool:
        return bool(self.store.client.collection_exists(self.store.collection_name))

    def build_adapter(self) -> StoreAdapter:
        from nudge_rag.stores.qdrant import QdrantAdapter

        return QdrantAdapter(
            self.store.client,
            self.store.collection_name,
            id_to_point=str,  # LlamaIndex uses node ids (UUIDs) as point ids
            point_to_id=lambda record: str(record.id),
            vector_name=self._vector_name,
            metric=self._planned_metric(),
        )

    def _planned_metric(self) -> Metric:
        """The metric the store creates its collection with on the first add."""
        config = getattr(self.store, "_dense_config", None)
        distance = str(getattr(getattr(config, "distance", None), "value", "Cosine")).lower()
        found = {"cosine": Metric.COSINE, "dot": Metric.IP, "euclid": Metric.L2}.get(distance)
        if found is None:
            msg = (
                f"vector_store: dense_config distance {distance!r} is not one NUDGE can use; "
                "pass Distance.COSINE, Distance.DOT or Distance.EUCLID."
            )
            raise BadInputError(msg)
        return found

    def dim(self) -> int | None:
        return self.adapter().dim  # type: ignore[attr-defined]

    def _scroll(self, flt: Any) -> list[str]:
        out: list[str] = []
        offset = None
        while True:
            points, offset = self.store.client.scroll(
                self.store.collection_name,
                scroll_filter=flt,
                limit=1000,
                offset=offset,
                with_payload=False,
                with_vectors=False,
            )
            out.extend(str(p.id) for p in points)
            if offset is None:
                return out

    def matching(self, filters: MetadataFilters) -> list[str]:
        if not self._exists():
            return []
        return self._scroll(self.store._build_subfilter(filters))

    def all_ids(self) -> list[str]:
        return self._scroll(None) if self._exists() else []

    def ref_doc_filters(self, ref_doc_id: str) -> MetadataFilters:
        from llama_index.core.vector_stores.types import MetadataFilter

        return MetadataFilters(filters=[MetadataFilter(key="doc_id", value=ref_doc_id)])

    def has_async(self) -> bool:
        return getattr(self.store, "_aclient", None) is not None
