"""``langchain_community`` ``LanceDB``: a LanceDB table (id, vector, text, metadata columns).

LangChain's LanceDB returns documents without ids, so each document keeps its id in its
metadata (``_nudge_id``, as on Qdrant); the face shows the app its own ids and metadata. It
searches without naming a distance type whatever its ``distance`` (which only picks the
relevance function): by the vector index's metric, l2 (squared) without one; its scores are
LanceDB's distances.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.vectorstores import VectorStore

from nudge_rag.errors import BadInputError
from nudge_rag.langchain.backends.base import REGISTRY, Backend, ScoredDocs, group_children
from nudge_rag.stores.base import Metric, StoreAdapter
from nudge_rag.stores.qdrant import ORIGINAL_ID_KEY

__all__ = ["LanceDBBackend"]


@REGISTRY.register
class LanceDBBackend(Backend):
    """LanceDB (embedded, a folder), with ``mode="append"``."""

    stores = ("langchain_community.LanceDB",)
    embeddings_attr = "_embedding"

    def __init__(self, store: VectorStore, adapter: StoreAdapter | None = None) -> None:
        if getattr(store, "mode", None) == "overwrite":
            msg = (
                "store: LanceDB(mode='overwrite') (its default) replaces the whole table on "
                "every add, dropping earlier documents and their versions; construct it with "
                "LanceDB(..., mode='append')."
            )
            raise BadInputError(msg)
        super().__init__(store, adapter)

    def build_adapter(self) -> StoreAdapter:
        from nudge_rag.stores.lancedb import LanceDBAdapter

        s: Any = self.store
        return LanceDBAdapter(
            s._connection,
            s._table_name,
            id_column=s._id_key,
            vector_column=s._vector_key,
            metric=None,  # the vector index's metric, l2 without one: what LanceDB searches by
        )

    def score_kind(self, metric: Metric) -> str:
        return "distance"  # LangChain's LanceDB returns LanceDB's _distance, lower nearer

    def vector_search(self) -> Callable[..., ScoredDocs] | None:
        s: Any = self.store

        def search(embedding: list[float], k: int = 4, **kwargs: Any) -> ScoredDocs:
            if self._table() is None:  # no add yet: LanceDB itself fails on the missing table
                return []
            return list(s.similarity_search_by_vector(embedding, k=k, score=True, **kwargs))

        return search

    def own(self, doc: Document) -> tuple[str | None, dict[str, Any] | None]:
        meta = dict(doc.metadata or {})
        return meta.pop(ORIGINAL_ID_KEY, doc.id), meta

    def prepare_add(
        self, ids: list[str], metadatas: list[dict] | None, n: int
    ) -> list[dict] | None:
        metas = metadatas or [{} for _ in range(n)]
        return [{**(m or {}), ORIGINAL_ID_KEY: i} for m, i in zip(metas, ids, strict=True)]

    def before_overwrite(self, present: set[str], ids: list[str]) -> None:
        # LanceDB keeps ids apart only by convention: an overwrite is a delete and an add
        self.store.delete([i for i in ids if i in present])

    def _table(self) -> Any:
        return self.store.get_table()  # type: ignore[attr-defined]

    def get_by_ids(self, ids: Sequence[str]) -> list[Document]:
        table = self._table()
        if table is None or not ids:
            return []
        s: Any = self.store
        quoted = ", ".join("'" + str(i).replace("'", "''") + "'" for i in ids)
        got = (
            table.search()
            .where(f"`{s._id_key}` IN ({quoted})")
            .select([s._id_key, s._text_key, "metadata"])
            .limit(None)
            .to_arrow()
            .to_pylist()
        )
        out = []
        for row in got:
            meta = dict(row.get("metadata") or {})
            meta.pop(ORIGINAL_ID_KEY, None)
            out.append(Document(id=row[s._id_key], page_content=row[s._text_key], metadata=meta))
        return out

    def children_of(self, parent_ids: Sequence[str], key: str) -> dict[str, list[str]]:
        table = self._table()
        if table is None:
            return {}
        s: Any = self.store
        rows = table.search().select([s._id_key, "metadata"]).limit(None).to_arrow().to_pylist()
        pairs = [(r[s._id_key], (r.get("metadata") or {}).get(key)) for r in rows]
        return group_children(pairs, parent_ids)
