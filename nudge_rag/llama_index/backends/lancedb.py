"""``LanceDBVectorStore``: one LanceDB table with columns ``id`` (the node id), ``doc_id`` (its
document), ``vector``, ``text`` and ``metadata`` (a struct: the node's flat metadata and
``_node_content``, the node serialised).

It searches without naming a distance type, so LanceDB compares by the vector index's metric
(``store.create_index(metric=...)``) or, with no index, by squared l2; its similarities are
``exp(-distance)``, higher nearer, for every metric. It keeps one table handle, which does not
see later commits (ours, or another process's): the face checks the latest version out before
each call. Its ``get_nodes``, ``delete`` and ``delete_nodes`` by id fail under LanceDB's SQL
(0.6.0 quotes ids with ``"``, which names a column), bare or wrapped alike; the backend reads
the table itself, and forgets nudges only for nodes a delete did remove.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.vector_stores.types import MetadataFilters

from nudge_rag.llama_index.backends.base import REGISTRY, Backend
from nudge_rag.stores.base import Metric, StoreAdapter

__all__ = ["LanceDBBackend"]

_BATCH = 1000  # ids per filtered read


def _in(column: str, values: Sequence[str]) -> str:
    """``column IN ('a', 'b')`` with the values as SQL string literals."""
    quoted = ", ".join("'" + str(v).replace("'", "''") + "'" for v in values)
    return f"`{column}` IN ({quoted})"


@REGISTRY.register
class LanceDBBackend(Backend):
    """``LanceDBVectorStore`` (embedded, a folder; or LanceDB Cloud)."""

    stores = ("llama_index.LanceDBVectorStore",)
    forget_before_delete = False  # the store's own deletes by id fail (see the module)

    def build_adapter(self) -> StoreAdapter:
        from nudge_rag.stores.lancedb import LanceDBAdapter

        return LanceDBAdapter(
            self.store.client,
            self.store._table_name,
            vector_column=self.store.vector_column_name,
            metric=None,  # the vector index's metric, l2 without one: what the store searches by
        )

    def score_kind(self, metric: Metric) -> str:
        """``exp(-distance)`` whatever the metric: similarities."""
        return "similarity"

    def refresh(self) -> None:
        table = self.store._table
        if table is not None and callable(getattr(table, "checkout_latest", None)):
            table.checkout_latest()

    def dim(self) -> int | None:
        return self.adapter().dim  # type: ignore[attr-defined]

    def _table(self) -> Any:
        return self.adapter()._table()  # type: ignore[attr-defined]

    def _select(self, where: str | None, columns: list[str]) -> list[dict[str, Any]]:
        table = self._table()
        if table is None:
            return []
        query = table.search()
        if where is not None:
            query = query.where(where)
        return list(query.select(columns).limit(None).to_arrow().to_pylist())

    def _rows(self, ids: Sequence[str], columns: list[str]) -> list[dict[str, Any]]:
        ids = list(dict.fromkeys(str(i) for i in ids))
        out: list[dict[str, Any]] = []
        for s in range(0, len(ids), _BATCH):
            out.extend(self._select(_in("id", ids[s : s + _BATCH]), ["id", *columns]))
        return out

    def matching(self, filters: MetadataFilters) -> list[str]:
        from llama_index.vector_stores.lancedb.base import _to_lance_filter

        where = _to_lance_filter(filters, self.store._metadata_keys)
        return [r["id"] for r in self._select(where, ["id"])]

    def ref_doc_ids(self, ref_doc_id: str) -> list[str]:
        """The nodes whose ``doc_id`` column is ``ref_doc_id`` (what ``delete`` names)."""
        return [r["id"] for r in self._select(_in(self.store.doc_id_key, [ref_doc_id]), ["id"])]

    def documents(self, ref_doc_ids: Sequence[str]) -> dict[str, list[str]]:
        """One read of the ``doc_id`` column per batch of document ids."""
        wanted = list(dict.fromkeys(ref_doc_ids))
        key = self.store.doc_id_key
        out: dict[str, list[str]] = {}
        for s in range(0, len(wanted), _BATCH):
            for r in self._select(_in(key, wanted[s : s + _BATCH]), ["id", key]):
                out.setdefault(str(r[key]), []).append(r["id"])
        return out

    def texts(self, ids: Sequence[str]) -> list[str | None]:
        """The ``text`` column of each id (None for ids the table does not hold)."""
        key = self.store.text_key
        by_id = {r["id"]: r[key] for r in self._rows(ids, [key])}
        return [by_id.get(str(i)) for i in ids]

    def parents(self, node_ids: Sequence[str]) -> dict[str, str]:
        """Each node's PARENT, read from the node serialised in its metadata."""
        from llama_index.core.schema import NodeRelationship
        from llama_index.core.vector_stores.utils import metadata_dict_to_node

        out = {}
        for row in self._rows(node_ids, ["metadata"]):
            try:
                node = metadata_dict_to_node(row["metadata"] or {})
            except ValueError:  # a row written without ``_node_content``: no relationships
                continue
            parent = node.relationships.get(NodeRelationship.PARENT)
            if parent is not None and not isinstance(parent, list):
                out[row["id"]] = parent.node_id
        return out
