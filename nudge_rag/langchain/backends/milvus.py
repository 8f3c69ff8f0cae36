"""``langchain_milvus.Milvus``: one dense vector field of a Milvus collection (Lite or a server).

The document's own id is the VARCHAR primary key (``auto_id=False``, the store's default), so ids
pass through unchanged. langchain-milvus creates its collection on the first add (the schema
follows the first embedding), so the adapter is built once the collection exists. Scores are
the metric's own values: COSINE and IP similarities (higher is nearer), L2 squared distances
(lower is nearer).

langchain-milvus 0.3.3 reaches the collection through pymilvus's ORM under the alias of its
``MilvusClient``, which pymilvus >= 2.6.10 no longer registers (langchain-milvus issue #130,
"should create connection first"); :func:`register_orm_alias` registers it, and the backend does
so for every store it wraps.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.vectorstores import VectorStore

from nudge_rag.errors import BadInputError
from nudge_rag.langchain.backends.base import REGISTRY, Backend, ScoredDocs, group_children
from nudge_rag.stores.base import Metric, StoreAdapter

__all__ = ["MilvusBackend", "register_orm_alias"]

_METRICS = {"COSINE": Metric.COSINE, "IP": Metric.IP, "L2": Metric.L2}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PAGE = 1000  # rows per query page
_OR_CHUNK = 100  # parent ids per filter expression


def register_orm_alias(client: Any) -> None:
    """Register ``client``'s connection under its alias in pymilvus's ORM ``connections``.

    langchain-milvus 0.3.3 opens ``Collection(name, using=client._using)``; pymilvus >= 2.6.10
    names that alias but no longer registers it. Call this before ``Milvus(...)`` opens an
    existing collection: ``register_orm_alias(MilvusClient(uri))`` (connections to one uri are
    shared, so the store's client gets the same alias).
    """
    from pymilvus import connections

    alias = getattr(client, "_using", None)
    handler = getattr(client, "_handler", None)
    if alias is None or handler is None:  # an older pymilvus registers it itself
        return
    connections._alias_handlers.setdefault(alias, handler)


@REGISTRY.register
class MilvusBackend(Backend):
    """``langchain_milvus.Milvus`` with one dense embedding field (``Zilliz`` too)."""

    embeddings_attr = "embedding_func"

    def __init__(self, store: VectorStore, adapter: StoreAdapter | None = None) -> None:
        super().__init__(store, adapter)
        s: Any = store
        if isinstance(s._vector_field, list) or s.builtin_func:
            msg = (
                f"inner_store: found a Milvus store with vector fields {s.vector_fields} and "
                f"built-in functions {s.builtin_func!r}; NudgedVectorStore wraps a store with "
                "one dense vector field filled by one embedding function (no BM25/hybrid)."
            )
            raise BadInputError(msg)
        register_orm_alias(s.client)

    stores = ("langchain_milvus.Milvus",)
    subclasses = True

    # -- vectors ---------------------------------------------------------------------------------
    def build_adapter(self) -> StoreAdapter:
        from nudge_rag.stores.milvus import MilvusAdapter

        s: Any = self.store
        return MilvusAdapter(
            s.client, s.collection_name, vector_field=s._vector_field, metric=self._planned_metric()
        )

    def _planned_metric(self) -> Metric:
        """The metric the store indexes with when it creates its collection (default L2)."""
        s: Any = self.store
        params = s._index_param_map.get(s._vector_field) or s.index_params or {}
        found = str(params.get("metric_type", "L2")).upper() if isinstance(params, dict) else "L2"
        if found not in _METRICS:
            msg = (
                f"index_params: found metric_type {found!r}, expected one of {sorted(_METRICS)}; "
                "NUDGE needs a dense float metric."
            )
            raise BadInputError(msg)
        return _METRICS[found]

    def _exists(self) -> bool:
        s: Any = self.store
        return bool(s.client.has_collection(s.collection_name))

    # -- searches --------------------------------------------------------------------------------
    def vector_search(self) -> Callable[..., ScoredDocs]:
        """The store's own search by vector, with each document's id set from its primary key."""
        s: Any = self.store

        def search(embedding: list[float], k: int = 4, **kwargs: Any) -> ScoredDocs:
            res = s._collection_search(embedding_or_text=embedding, k=k, **kwargs)
            if not res:
                return []
            out: ScoredDocs = []
            pk = s._primary_field
            for hit in res[0]:
                key = hit[pk] if pk in hit else hit["id"]
                doc = s._parse_document(hit["entity"])
                doc.id = str(key)
                out.append((doc, hit["distance"]))
            return out

        return search

    # -- ids and documents -----------------------------------------------------------------------
    def own(self, doc: Document) -> tuple[str | None, dict[str, Any] | None]:
        s: Any = self.store
        if s._primary_field not in doc.metadata:
            return doc.id, None
        meta = dict(doc.metadata)
        pk = meta.pop(s._primary_field)
        return (doc.id if doc.id is not None else str(pk)), meta

    def prepare_add(
        self, ids: list[str], metadatas: list[dict] | None, n: int
    ) -> list[dict] | None:
        if self._auto_id():
            msg = (
                "inner_store: the Milvus collection generates its own integer keys (auto_id=True) "
                "and ignores the ids given, so documents could not keep their ids; build "
                "Milvus(..., auto_id=False) (the default) for a store you add to through "
                "NudgedVectorStore."
            )
            raise BadInputError(msg)
        return metadatas

    def _auto_id(self) -> bool:
        s: Any = self.store
        if not self._exists():
            return bool(s.auto_id)
        info = s.client.describe_collection(s.collection_name)
        return any(f.get("is_primary") and f.get("auto_id") for f in info["fields"])

    def before_overwrite(self, present: set[str], ids: list[str]) -> None:
        # Milvus's insert keeps an old row of the same key: delete it first
        s: Any = self.store
        ad: Any = self.adapter()
        gone = [i for i in ids if i in present]
        for start in range(0, len(gone), _PAGE):
            expr = ad.ids_filter(gone[start : start + _PAGE])
            if expr is not None:
                s.client.delete(s.collection_name, filter=expr)

    def get_by_ids(self, ids: Sequence[str]) -> list[Document]:
        s: Any = self.store
        ids = [str(i) for i in ids]
        if not ids or not self._exists():
            return []
        ad: Any = self.adapter()
        fields = (
            ["*"] if s.enable_dynamic_field else [f for f in s.fields if f not in s.vector_fields]
        )
        rows: dict[str, dict] = {}
        for start in range(0, len(ids), _PAGE):
            expr = ad.ids_filter(ids[start : start + _PAGE])
            if expr is None:
                continue
            for row in s.client.query(s.collection_name, filter=expr, output_fields=fields):
                rows[str(row[s._primary_field])] = row
        out = []
        for i in dict.fromkeys(ids):
            if i in rows:
                doc = s._parse_document(dict(rows[i]))
                doc.metadata.pop(s._primary_field, None)
                doc.id = i
                out.append(doc)
        return out

    def children_of(self, parent_ids: Sequence[str], key: str) -> dict[str, list[str]]:
        s: Any = self.store
        wanted = list(dict.fromkeys(str(p) for p in parent_ids))
        if not wanted or not self._exists():
            return {}
        ref = self._field_ref(key)
        pk = s._primary_field
        pairs: list[tuple[str, Any]] = []
        for start in range(0, len(wanted), _OR_CHUNK):
            chunk = wanted[start : start + _OR_CHUNK]
            values = ", ".join(_literal(v) for v in chunk)
            expr = (
                f"{ref} in [{values}]"
                if _IDENT.fullmatch(ref)
                else " or ".join(f"{ref} == {_literal(v)}" for v in chunk)
            )
            fields = [pk, "*"] if s.enable_dynamic_field else [pk, ref.split("[", 1)[0]]
            it = s.client.query_iterator(
                s.collection_name, batch_size=_PAGE, filter=expr, output_fields=fields
            )
            try:
                while batch := it.next():
                    pairs.extend((str(r[pk]), _value(r, key, s._metadata_field)) for r in batch)
            finally:
                it.close()
        return group_children(pairs, wanted)

    def _field_ref(self, key: str) -> str:
        """How a filter expression names metadata ``key`` in this store's schema."""
        s: Any = self.store
        if key in s.fields and key not in (s._primary_field, s._text_field, *s.vector_fields):
            return key
        if s.enable_dynamic_field:
            return key if _IDENT.fullmatch(key) else f"$meta[{_literal(key)}]"
        if s._metadata_field:
            return f"{s._metadata_field}[{_literal(key)}]"
        msg = (
            f"id_key: found {key!r}, which the Milvus collection does not store (fields: "
            f"{sorted(s.fields)}; no dynamic field). Pass a metadata key of the collection, or "
            "build Milvus(..., enable_dynamic_field=True)."
        )
        raise BadInputError(msg)


def _literal(value: str) -> str:
    """``value`` as a Milvus filter string literal."""
    return json.dumps(str(value), ensure_ascii=False)


def _value(row: dict, key: str, metadata_field: str | None) -> Any:
    if key in row:
        return row[key]
    if metadata_field and isinstance(row.get(metadata_field), dict):
        return row[metadata_field].get(key)
    return None
