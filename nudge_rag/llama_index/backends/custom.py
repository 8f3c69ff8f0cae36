"""Any other LlamaIndex store, wrapped with ``adapter=``: the caller's adapter reads and writes
its vectors; node lookups go through the store's own ``get_nodes``."""

from __future__ import annotations

from typing import Any

from llama_index.core.vector_stores.types import BasePydanticVectorStore, MetadataFilters

from nudge_rag.errors import BadInputError, NudgeError
from nudge_rag.llama_index.backends.base import Backend
from nudge_rag.stores.base import StoreAdapter

__all__ = ["AdapterBackend"]


class AdapterBackend(Backend):
    """A store nudge-rag has no backend for, with the :class:`StoreAdapter` the caller passed."""

    def __init__(self, store: BasePydanticVectorStore, adapter: StoreAdapter) -> None:
        super().__init__(store)
        self._adapter = adapter

    def build_adapter(self) -> StoreAdapter:
        assert self._adapter is not None  # given at construction
        return self._adapter

    def dim(self) -> int | None:
        dim = getattr(self._adapter, "dim", None)
        if isinstance(dim, int):
            return dim
        ids = self.adapter().ids()[:1]
        return int(self.adapter().get(ids).shape[1]) if ids else None

    def matching(self, filters: MetadataFilters) -> list[str]:
        try:
            nodes: list[Any] = self.store.get_nodes(filters=filters)
        except NotImplementedError:
            msg = (
                f"filters: {type(self.store).__name__} (wrapped with adapter=) cannot list nodes "
                "by metadata (its get_nodes is not implemented), so nudge-rag cannot tell which "
                "nodes a filtered delete removes; delete by node_ids instead."
            )
            raise BadInputError(msg) from None
        return [n.node_id for n in nodes]

    def ref_doc_ids(self, ref_doc_id: str) -> list[str]:
        """The nodes of ``ref_doc_id`` (every id when the store cannot filter: a superset)."""
        try:
            return self.matching(self.ref_doc_filters(ref_doc_id))
        except NudgeError:
            return self.all_ids()
