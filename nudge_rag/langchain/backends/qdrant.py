"""``langchain_qdrant.QdrantVectorStore``: point ids are UUIDs, so each document keeps its own id
in its payload metadata (``_nudge_id``); the face shows the app its own ids and metadata."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.documents import Document

from nudge_rag.langchain.backends.base import REGISTRY, Backend, parent_values
from nudge_rag.stores.base import StoreAdapter
from nudge_rag.stores.qdrant import ORIGINAL_ID_KEY, default_point_id

__all__ = ["QdrantBackend"]

_ADDED = ("_id", "_collection_name")  # what langchain-qdrant adds to every result's metadata


@REGISTRY.register
class QdrantBackend(Backend):
    """Qdrant (local mode or a server)."""

    embeddings_attr = "_embeddings"

    stores = ("langchain_qdrant.QdrantVectorStore",)

    def build_adapter(self) -> StoreAdapter:
        from nudge_rag.stores.qdrant import QdrantAdapter

        s: Any = self.store
        return QdrantAdapter(s.client, s.collection_name, vector_name=s.vector_name)

    def to_store_ids(self, ids: Sequence[str]) -> list[str]:
        return [default_point_id(i) for i in ids]

    def own(self, doc: Document) -> tuple[str | None, dict[str, Any] | None]:
        meta = dict(doc.metadata)
        doc_id = meta.pop(ORIGINAL_ID_KEY, doc.id)
        for key in _ADDED:
            meta.pop(key, None)
        return doc_id, meta

    def prepare_add(
        self, ids: list[str], metadatas: list[dict] | None, n: int
    ) -> list[dict] | None:
        metas = metadatas or [{} for _ in range(n)]
        return [{**(m or {}), ORIGINAL_ID_KEY: i} for m, i in zip(metas, ids, strict=True)]

    def get_by_ids(self, ids: Sequence[str]) -> list[Document]:
        docs = self.store.get_by_ids(self.to_store_ids(ids))
        out = []
        for d in docs:
            doc_id, meta = self.own(d)
            out.append(Document(id=doc_id, page_content=d.page_content, metadata=meta or {}))
        return out

    def children_of(self, parent_ids: Sequence[str], key: str) -> dict[str, list[str]]:
        from qdrant_client import models

        s: Any = self.store
        field = f"{s.metadata_payload_key}.{key}"
        strs, ints = parent_values(parent_ids)
        flt = models.Filter(
            should=[
                models.FieldCondition(key=field, match=models.MatchAny(any=values))
                for values in (strs, ints)
                if values
            ]
        )
        out: dict[str, list[str]] = {}
        offset = None
        while True:
            points, offset = s.client.scroll(
                s.collection_name, scroll_filter=flt, limit=1000, offset=offset, with_payload=True
            )
            for p in points:
                meta = (p.payload or {}).get(s.metadata_payload_key) or {}
                out.setdefault(str(meta.get(key)), []).append(str(meta.get(ORIGINAL_ID_KEY, p.id)))
            if offset is None:
                return out
