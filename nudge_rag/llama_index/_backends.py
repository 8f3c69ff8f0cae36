"""Per-store knowledge the LlamaIndex face needs beyond the adapter protocol.

One small class per wrapped LlamaIndex store: which core adapter reads and writes its vectors,
which node ids a delete is about to remove (so the version log forgets them), the stored
dimension (to refuse bad input before anything is written), the chunk texts (for labelling),
and whether its async methods work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    MetadataFilters,
)

from nudge_rag.core.errors import NudgeError
from nudge_rag.core.stores.base import Metric, StoreAdapter, present_ids

_MILVUS_PAGE = 16384  # Milvus's largest query window; beyond it, page with an iterator
SUPPORTED = "ChromaVectorStore, SimpleVectorStore, QdrantVectorStore, MilvusVectorStore"


class Backend:
    """What the face asks of one wrapped store; subclasses fill in the store-specific parts."""

    def __init__(self, store: BasePydanticVectorStore) -> None:
        self.store = store
        self._presence: StoreAdapter | None = None  # built once: Chroma's asks the server

    def adapter(self) -> StoreAdapter:
        """The core adapter over the store's native client."""
        raise NotImplementedError

    def metric(self) -> Metric:
        """How the store compares vectors."""
        return Metric(self.adapter().metric)

    def dim(self) -> int | None:
        """The dimension of the stored vectors, or None while the store holds none."""
        raise NotImplementedError

    def existing(self, ids: Sequence[str]) -> set[str]:
        """The ids of ``ids`` the store holds."""
        if not ids:
            return set()
        if self._presence is None:
            self._presence = self.adapter()
        return present_ids(self._presence, ids)

    def matching(self, filters: MetadataFilters) -> list[str]:
        """The ids whose metadata match ``filters``."""
        raise NotImplementedError

    def ref_doc_filters(self, ref_doc_id: str) -> MetadataFilters:
        """Filters selecting the nodes that ``delete(ref_doc_id)`` removes."""
        from llama_index.core.vector_stores.types import MetadataFilter

        return MetadataFilters(filters=[MetadataFilter(key="ref_doc_id", value=ref_doc_id)])

    def ref_doc_ids(self, ref_doc_id: str) -> list[str]:
        """A superset of the node ids that ``delete(ref_doc_id)`` removes."""
        return self.matching(self.ref_doc_filters(ref_doc_id))

    def all_ids(self) -> list[str]:
        """Every id the store holds."""
        return self.adapter().ids()

    def texts(self, ids: Sequence[str]) -> list[str | None]:
        """The stored text of each id (None for ids the store does not hold)."""
        if not ids:
            return []
        nodes = self.store.get_nodes(list(ids))
        by_id = {n.node_id: n.get_content() for n in nodes}
        return [by_id.get(i) for i in ids]

    def has_async(self) -> bool:
        """Whether the store has async methods of its own that can run.

        The base class's async methods just call the sync ones inside the event loop (Chroma,
        Simple), so for those stores the face runs the sync method in a thread instead.
        """
        return type(self.store).aquery is not BasePydanticVectorStore.aquery


class SimpleBackend(Backend):
    """``SimpleVectorStore``: a dict of embeddings and a dict of flat metadata."""

    def adapter(self) -> StoreAdapter:
        from nudge_rag.core.stores.llama_simple import LlamaSimpleAdapter

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


class ChromaBackend(Backend):
    """``ChromaVectorStore``: ``store.client`` is the chromadb Collection."""

    def adapter(self) -> StoreAdapter:
        from nudge_rag.core.stores.chroma import ChromaAdapter

        return ChromaAdapter(self.store.client)

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


class QdrantBackend(Backend):
    """``QdrantVectorStore``: node ids are the point ids; the dense vector is named."""

    def _vector_name(self) -> str:
        legacy = getattr(self.store, "_legacy_vector_format", None)
        return "" if legacy else self.store.dense_vector_name

    def _exists(self) -> bool:
        return bool(self.store.client.collection_exists(self.store.collection_name))

    def adapter(self) -> StoreAdapter:
        from nudge_rag.core.stores.qdrant import QdrantAdapter

        return QdrantAdapter(
            self.store.client,
            self.store.collection_name,
            id_to_point=str,  # LlamaIndex uses node ids (UUIDs) as point ids
            vector_name=self._vector_name(),
        )

    def metric(self) -> Metric:
        if self._exists():
            return Metric(self.adapter().metric)
        # the collection is created on the first add, with dense_config or cosine
        config = getattr(self.store, "_dense_config", None)
        distance = str(getattr(getattr(config, "distance", None), "value", "Cosine")).lower()
        found = {"cosine": Metric.COSINE, "dot": Metric.IP, "euclid": Metric.L2}.get(distance)
        if found is None:
            msg = (
                f"vector_store: dense_config distance {distance!r} is not one NUDGE can use; "
                "pass Distance.COSINE, Distance.DOT or Distance.EUCLID."
            )
            raise NudgeError(msg)
        return found

    def dim(self) -> int | None:
        if not self._exists():
            return None
        vectors = self.store.client.get_collection(self.store.collection_name).config.params
        params = vectors.vectors
        if isinstance(params, dict):
            params = params.get(self._vector_name()) or next(iter(params.values()))
        return int(params.size)

    def existing(self, ids: Sequence[str]) -> set[str]:
        if not ids or not self._exists():
            return set()
        got = self.store.client.retrieve(
            self.store.collection_name, ids=list(ids), with_payload=False, with_vectors=False
        )
        return {str(p.id) for p in got}

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


class MilvusBackend(Backend):
    """``MilvusVectorStore``: ``store.client`` is a MilvusClient; ``id`` is the primary key."""

    def _exists(self) -> bool:
        return bool(self.store.client.has_collection(self.store.collection_name))

    def adapter(self) -> StoreAdapter:
        from nudge_rag.core.stores.milvus import MilvusAdapter

        return MilvusAdapter(
            self.store.client,
            self.store.collection_name,
            vector_field=self.store.embedding_field,
        )

    def dim(self) -> int | None:
        return self.store.dim

    def existing(self, ids: Sequence[str]) -> set[str]:
        if not ids or not self._exists():
            return set()
        rows = self.store.client.query(
            self.store.collection_name, ids=list(ids), output_fields=["id"]
        )
        return {str(r["id"]) for r in rows}

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


def _class_names(store: object) -> Iterable[str]:
    return (cls.__name__ for cls in type(store).__mro__)


def backend_for(store: BasePydanticVectorStore) -> Backend:
    """Pick the backend of a LlamaIndex store by its class (subclasses included)."""
    names = set(_class_names(store))
    if "FaissVectorStore" in names or "FaissMapVectorStore" in names:
        msg = (
            f"vector_store: found {type(store).__name__}; LlamaIndex's FAISS stores cannot look "
            "up or overwrite vectors by node id, so NUDGE cannot edit them. Use "
            "NudgedVectorStore.from_defaults(...) (persistent Chroma) or a Simple, Qdrant or "
            "Milvus store instead."
        )
        raise NudgeError(msg)
    for name, backend in (
        ("SimpleVectorStore", SimpleBackend),
        ("ChromaVectorStore", ChromaBackend),
        ("QdrantVectorStore", QdrantBackend),
        ("MilvusVectorStore", MilvusBackend),
    ):
        if name in names:
            return backend(store)
    msg = (
        f"vector_store: found {type(store).__name__}, expected one of {SUPPORTED}; "
        "wrap one of those, or pass adapter= with a StoreAdapter for your store's native client."
    )
    raise NudgeError(msg)
