"""What the LlamaIndex face needs from one wrapped store, beyond the core adapter.

One class per store, one file each (``simple.py``, ``chroma.py``, ``qdrant.py``, ``milvus.py``,
...), registered with :data:`REGISTRY` by ``@REGISTRY.register`` and found by the store
classes it names in ``stores``: which core adapter reads and writes its vectors, which node
ids a delete is about to remove (so the version log forgets them), the stored dimension (to
refuse bad input before anything is written), the chunk texts (for labelling), and whether its
async methods work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from llama_index.core.vector_stores.types import BasePydanticVectorStore, MetadataFilters

from nudge_rag.stores.base import Metric, StoreAdapter, present_ids
from nudge_rag.stores.registry import BackendRegistry

__all__ = ["REGISTRY", "Backend"]


class Backend:
    """What the face asks of one wrapped store; subclasses fill in the store-specific parts."""

    #: the store classes served, ``"module_prefix.ClassName"``
    #: (e.g. ``"llama_index.ChromaVectorStore"``); their subclasses too
    stores: ClassVar[tuple[str, ...]] = ()
    #: whether a delete forgets the nudges of the nodes it names before the store deletes them
    #: (crash-safe); False: only those the store then no longer holds (a delete the store
    #: refuses, as LanceDB's does, keeps them)
    forget_before_delete: ClassVar[bool] = True

    def __init__(self, store: BasePydanticVectorStore) -> None:
        self.store: Any = store  # each backend reads its own store class's attributes
        self._adapter: StoreAdapter | None = None

    def adapter(self) -> StoreAdapter:
        """The core adapter over the store's native client (built once; it may exist before the
        store's collection does)."""
        if self._adapter is None:
            self._adapter = self.build_adapter()
        return self._adapter

    def build_adapter(self) -> StoreAdapter:
        """A new core adapter over the store's native client."""
        raise NotImplementedError

    def metric(self) -> Metric:
        """How the store compares vectors."""
        return Metric(self.adapter().metric)

    def score_kind(self, metric: Metric) -> str:
        """What the store's query similarities are: ``"similarity"`` (higher is nearer) or
        ``"distance"`` (what l2 stores return by default)."""
        return "distance" if metric is Metric.L2 else "similarity"

    def refresh(self) -> None:
        """Bring the store's own handles up to the latest commit: called before each call the
        face makes into the store and after each vector write (a store that caches a handle
        blind to later commits, as LanceDB's table, refreshes it here)."""

    def dim(self) -> int | None:
        """The dimension of the stored vectors, or None while the store holds none."""
        raise NotImplementedError

    def existing(self, ids: Sequence[str]) -> set[str]:
        """The ids of ``ids`` the store holds."""
        if not ids:
            return set()
        return present_ids(self.adapter(), ids)

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

    def documents(self, ref_doc_ids: Sequence[str]) -> dict[str, list[str]]:
        """The node ids of each document id the store holds nodes of (``ref_doc_ids``'s)."""
        found = {d: self.ref_doc_ids(d) for d in dict.fromkeys(ref_doc_ids)}
        return {d: ids for d, ids in found.items() if ids}

    def parents(self, node_ids: Sequence[str]) -> dict[str, str]:
        """Each node's PARENT node id (``HierarchicalNodeParser``) among ``node_ids``, read from
        the nodes the store keeps (none for a store that keeps no nodes, e.g. Simple)."""
        if not node_ids or not self.store.stores_text:
            return {}
        from llama_index.core.schema import NodeRelationship

        out = {}
        for node in self.store.get_nodes(list(node_ids)):
            parent = node.relationships.get(NodeRelationship.PARENT)
            if parent is not None and not isinstance(parent, list):
                out[node.node_id] = parent.node_id
        return out

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


#: the LlamaIndex face's backends, one module each in this package
REGISTRY: BackendRegistry[Backend] = BackendRegistry("nudge_rag.llama_index.backends")
