"""``langchain_postgres.PGVector``: one collection's rows of ``langchain_pg_embedding``.

The native client is the store's SQLAlchemy engine; vectors are read and overwritten by id
through :class:`~nudge_rag.stores.pgvector.PgVectorAdapter` (one transaction per write).
Searches return pgvector distances (cosine distance, l2, or the negated inner product), lower
is nearer, whatever the distance strategy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nudge_rag.errors import BadInputError
from nudge_rag.langchain.backends.base import REGISTRY, Backend, group_children
from nudge_rag.stores.base import Metric, StoreAdapter

__all__ = ["PgVectorBackend"]


@REGISTRY.register
class PgVectorBackend(Backend):
    """``langchain_postgres.PGVector`` (sync or async engine; jsonb metadata)."""

    embeddings_attr = "embedding_function"

    stores = ("langchain_postgres.PGVector",)

    def _connection(self) -> Any:
        """The store's engine (sync, else async): the adapter reads its URL."""
        s: Any = self.store
        engine = s._engine if s._engine is not None else s._async_engine
        if engine is None:
            msg = (
                "inner_store: the PGVector store has no engine; build it with "
                "connection=<postgresql+psycopg:// URL or engine>."
            )
            raise BadInputError(msg)
        return engine

    def build_adapter(self) -> StoreAdapter:
        from nudge_rag.stores.pgvector import PgVectorAdapter

        s: Any = self.store
        return PgVectorAdapter.for_langchain(
            self._connection(), s.collection_name, distance_strategy=s._distance_strategy
        )

    def score_kind(self, metric: Metric) -> str:
        return "distance"  # PGVector returns the pgvector operator's value: lower is nearer

    def children_of(self, parent_ids: Sequence[str], key: str) -> dict[str, list[str]]:
        from psycopg import sql

        from nudge_rag.stores.pgvector import connect_masked, conninfo_from

        ad: Any = self.adapter()
        wanted = [str(p) for p in parent_ids]
        if not wanted:
            return {}
        q = sql.SQL(
            "SELECT {id}::text, cmetadata->>%s FROM {table} "
            "WHERE collection_id = %s AND cmetadata->>%s = ANY(%s)"
        ).format(id=sql.Identifier(ad.id_column), table=sql.Identifier(ad.schema, ad.table))
        args = [key, ad.scope["collection_id"], key, wanted]
        with connect_masked(conninfo_from(self._connection()), autocommit=False) as conn:
            pairs = conn.execute(q, args).fetchall()
        return group_children(pairs, parent_ids)
