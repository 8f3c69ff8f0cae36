"""``PGVectorStore`` (``llama-index-vector-stores-postgres``): table ``data_<table_name>``.

Node ids live in the ``node_id`` column (not unique: re-adding a node adds a row), metadata in
``metadata_``; every query ranks by cosine distance, so the metric is cosine. Ids and filters
are read through the store's own SQLAlchemy session and filter translation, so they select
exactly what its deletes remove; vectors go through
:class:`~nudge_rag.stores.pgvector.PgVectorAdapter` (one transaction per write).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.vector_stores.types import MetadataFilters

from nudge_rag.llama_index.backends.base import REGISTRY, Backend
from nudge_rag.stores.base import Metric, StoreAdapter

__all__ = ["PgVectorBackend"]


@REGISTRY.register
class PgVectorBackend(Backend):
    """``PGVectorStore``: node ids in ``node_id``, cosine distance, tables made on first use."""

    stores = ("llama_index.PGVectorStore",)

    def build_adapter(self) -> StoreAdapter:
        """The adapter over the store's table (built once by ``adapter()``: ``clear`` keeps it)."""
        from nudge_rag.stores.pgvector import PgVectorAdapter

        self.store._initialize()  # the store's own setup: engine, schema, table
        return PgVectorAdapter.for_llama_index(
            self.store.client, self.store.table_name, schema=self.store.schema_name
        )

    def metric(self) -> Metric:
        return Metric.COSINE  # PGVectorStore ranks by cosine distance, whatever its index

    def dim(self) -> int | None:
        return int(self.store.embed_dim)

    def _node_ids(self, where: Any = None) -> list[str]:
        from sqlalchemy import select

        self.store._initialize()
        table = self.store._table_class
        stmt = select(table.node_id)
        if where is not None:
            stmt = stmt.where(where)
        with self.store._session() as session:
            return list(dict.fromkeys(str(r[0]) for r in session.execute(stmt)))

    def existing(self, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        return set(self._node_ids(self.store._table_class.node_id.in_([str(i) for i in ids])))

    def matching(self, filters: MetadataFilters) -> list[str]:
        return self._node_ids(self.store._recursively_apply_filters(filters))

    def ref_doc_ids(self, ref_doc_id: str) -> list[str]:
        """The node ids that ``delete(ref_doc_id)`` removes (``metadata_->>'ref_doc_id'``)."""
        table = self.store._table_class
        return self._node_ids(table.metadata_["ref_doc_id"].astext == ref_doc_id)

    def documents(self, ref_doc_ids: Sequence[str]) -> dict[str, list[str]]:
        """One query: ``metadata_->>'ref_doc_id' IN (...)``."""
        from sqlalchemy import select

        if not ref_doc_ids:
            return {}
        self.store._initialize()
        table = self.store._table_class
        ref = table.metadata_["ref_doc_id"].astext
        stmt = select(table.node_id, ref).where(ref.in_(list(dict.fromkeys(ref_doc_ids))))
        out: dict[str, list[str]] = {}
        with self.store._session() as session:
            for node_id, doc in session.execute(stmt):
                ids = out.setdefault(str(doc), [])
                if str(node_id) not in ids:
                    ids.append(str(node_id))
        return out

    def all_ids(self) -> list[str]:
        return self._node_ids()

    def has_async(self) -> bool:
        return True  # asyncpg, through the store's async_connection_string
