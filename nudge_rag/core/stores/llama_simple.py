"""Adapter for LlamaIndex's in-memory ``SimpleVectorStore`` (its ``data.embedding_dict``).

The store is duck-typed (anything with ``.data.embedding_dict``), so this module imports no
framework. The dict is looked up on every call because ``SimpleVectorStore.clear()`` replaces
``data`` with a fresh object. ``SimpleVectorStore`` ranks by cosine similarity only.

The dict holds Python floats (float64): ``get_exact`` reads them as they are and ``put`` writes
float64 values, so a rollback restores the original lists bit for bit.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

import numpy as np

from nudge_rag.core.errors import NudgeError
from nudge_rag.core.stores.base import Metric, as_float32_matrix, raise_unknown


class LlamaSimpleAdapter:
    """Vectors by id in a LlamaIndex ``SimpleVectorStore``.

    Args:
        store: the ``SimpleVectorStore`` (or any object whose ``data.embedding_dict`` maps
            node ids to lists of floats).
    """

    metric = Metric.COSINE

    def __init__(self, store: Any) -> None:
        data = getattr(store, "data", None)
        if not isinstance(getattr(data, "embedding_dict", None), MutableMapping):
            msg = (
                f"store: expected a LlamaIndex SimpleVectorStore (with data.embedding_dict), "
                f"found {type(store).__name__}; pass the SimpleVectorStore itself."
            )
            raise NudgeError(msg)
        self.store = store

    @property
    def _dict(self) -> MutableMapping[str, list[float]]:
        return self.store.data.embedding_dict

    @property
    def dim(self) -> int | None:
        """The vectors' dimension, or None while the store is empty."""
        first = next(iter(self._dict.values()), None)
        return None if first is None else len(first)

    def get(self, ids: Sequence[str]) -> np.ndarray:
        """Return the stored vectors of ``ids`` (float32, in the order given)."""
        return self.get_exact(ids).astype(np.float32)

    def get_exact(self, ids: Sequence[str]) -> np.ndarray:
        """Return the stored vectors of ``ids`` as the float64 values the dict holds."""
        table = self._dict
        raise_unknown([i for i in ids if i not in table], "SimpleVectorStore")
        if not ids:
            return np.zeros((0, self.dim or 0), dtype=np.float64)
        return np.asarray([table[i] for i in ids], dtype=np.float64)

    def put(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Overwrite the vectors of existing ``ids``; unknown ids change nothing."""
        table = self._dict
        as_float32_matrix(vectors, len(ids), self.dim, "vectors")  # shape and finiteness
        raise_unknown([i for i in ids if i not in table], "SimpleVectorStore")
        for i, row in zip(ids, np.asarray(vectors, dtype=np.float64), strict=True):
            table[i] = row.tolist()

    def present(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the store holds."""
        table = self._dict
        return {i for i in ids if i in table}

    def ids(self) -> list[str]:
        """Every node id the store holds."""
        return list(self._dict)
