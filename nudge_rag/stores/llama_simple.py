"""Adapter for LlamaIndex's in-memory ``SimpleVectorStore`` (its ``data.embedding_dict``).

The store is duck-typed (anything with ``.data.embedding_dict``), so this module imports no
framework. It is a :class:`MemoryAdapter` over ``{id: [floats]}`` whose dict is looked up on
every call, because ``SimpleVectorStore.clear()`` replaces ``data`` with a fresh object.
``SimpleVectorStore`` ranks by cosine similarity only.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from nudge_rag.errors import BadInputError
from nudge_rag.stores.base import Metric
from nudge_rag.stores.memory import MemoryAdapter

__all__ = ["LlamaSimpleAdapter"]


class LlamaSimpleAdapter(MemoryAdapter):
    """Vectors by id in a LlamaIndex ``SimpleVectorStore`` (float64 lists, restored bitwise).

    Args:
        store: the ``SimpleVectorStore`` (or any object whose ``data.embedding_dict`` maps
            node ids to lists of floats).
    """

    def __init__(self, store: Any) -> None:
        data = getattr(store, "data", None)
        table = getattr(data, "embedding_dict", None)
        if not isinstance(table, MutableMapping):
            msg = (
                f"store: expected a LlamaIndex SimpleVectorStore (with data.embedding_dict), "
                f"found {type(store).__name__}; pass the SimpleVectorStore itself."
            )
            raise BadInputError(msg)
        super().__init__(table, vector_key=None, metric=Metric.COSINE)
        self.store = store
        self.name = "SimpleVectorStore"

    @property
    def records(self) -> MutableMapping[str, Any]:
        """The store's current ``embedding_dict``."""
        return self.store.data.embedding_dict
