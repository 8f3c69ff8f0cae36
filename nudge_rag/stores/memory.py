"""Adapter for the frameworks' in-memory stores: a dict of records keyed by id.

LangChain's ``InMemoryVectorStore`` keeps ``store.store[id] = {"id", "vector", "text",
"metadata"}`` with the vector as a list of Python floats (its public add re-embeds, so vectors are
written into the dict directly). LlamaIndex's ``SimpleVectorStore`` keeps
``store.data.embedding_dict[id] = [floats]``: pass ``vector_key=None`` for such a dict.

``put`` writes all rows with one ``dict.update`` (records are replaced, not mutated), which no
other Python thread can interleave with. A search that snapshots the records first
(``InMemoryVectorStore``: ``list(store.values())``) sees one version whole; one that iterates the
dict while reading vectors (``SimpleVectorStore.query``) can straddle the update.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

import numpy as np

from nudge_rag.errors import BadInputError
from nudge_rag.fit.checks import check_vectors
from nudge_rag.stores.base import (
    BaseStoreAdapter,
    Metric,
    StoreDescription,
    missing_ids,
    raise_unknown,
    search_queries,
)

__all__ = ["MemoryAdapter"]


class MemoryAdapter(BaseStoreAdapter):
    """Vectors by id for a dict ``{id: record}`` (or ``{id: vector}`` with ``vector_key=None``).

    Vectors are stored as lists of Python floats, like the frameworks do; ``get_exact`` returns
    them as float64 so a rollback restores them bit for bit.

    Example:
        .. code-block:: python

            from langchain_core.vectorstores import InMemoryVectorStore
            store = InMemoryVectorStore(embeddings)
            adapter = MemoryAdapter(store.store)          # cosine, like the store's search
            adapter.put(["a"], vecs)
    """

    can_search = True

    def __init__(
        self,
        records: MutableMapping[str, Any],
        *,
        vector_key: str | None = "vector",
        metric: Metric | str = Metric.COSINE,
    ):
        if not isinstance(records, MutableMapping):
            msg = (
                f"records: expected the store's dict of records, found {type(records).__name__}; "
                "pass e.g. InMemoryVectorStore(...).store."
            )
            raise BadInputError(msg)
        self._records = records
        self.name = "the in-memory store"  # how errors name the store
        self.vector_key = vector_key
        self.metric = Metric(metric)

    @property
    def records(self) -> MutableMapping[str, Any]:
        """The store's dict (a subclass may look it up anew on every call)."""
        return self._records

    @property
    def dim(self) -> int | None:
        """The vectors' dimension, or None while the store is empty."""
        first = next(iter(self.records.values()), None)
        return None if first is None else len(self._vector(first))

    def _vector(self, rec: Any) -> Any:
        return rec if self.vector_key is None else rec[self.vector_key]

    def get(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``ids``, float32, in the order given."""
        return self.get_exact(ids).astype(np.float32)

    def get_exact(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``ids`` as float64 (exactly the stored Python floats)."""
        ids = [str(i) for i in ids]
        raise_unknown(missing_ids(ids, self.present(ids)), self.name)
        if not ids:
            return np.zeros((0, self.dim or 0), dtype=np.float64)
        records = self.records
        return np.asarray([self._vector(records[i]) for i in ids], dtype=np.float64)

    def put(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Overwrite the vectors of existing ``ids`` (unknown ids: nothing written)."""
        ids = [str(i) for i in ids]
        # float64: the stored Python floats are exactly the values given
        mat = check_vectors(
            vectors, what="vectors", n_rows=len(ids), dim=self.dim, dtype=np.float64
        )
        raise_unknown(missing_ids(ids, self.present(ids)), self.name)
        records = self.records
        key = self.vector_key
        rows = mat.tolist()
        if key is None:
            new: dict[str, Any] = dict(zip(ids, rows, strict=True))
        else:  # new record objects: a search holding the old ones reads the old version whole
            new = {i: {**records[i], key: row} for i, row in zip(ids, rows, strict=True)}
        records.update(new)  # one C call on a dict: no other Python thread runs in between

    # approximate_search: False (the default), a scan of every record

    def describe(self) -> StoreDescription:
        """A dict in this process's memory."""
        return StoreDescription("in-memory store (held in this process's memory)", False)

    def count(self) -> int:
        """How many ids the store holds."""
        return len(self.records)

    def search(self, queries: np.ndarray, k: int) -> tuple[list[list[str]], list[list[float]]]:
        """Exact top-``k`` ids and similarities per query under ``metric``, best first."""
        from nudge_rag.fit.metrics import exact_knn

        records = dict(self.records)  # one snapshot: a concurrent put swaps records whole
        q, k = search_queries(queries, k, self.dim)
        if not records:
            return [[] for _ in q], [[] for _ in q]
        ids = list(records)
        mat = np.asarray([self._vector(records[i]) for i in ids], dtype=np.float32)
        scores, rows = exact_knn(q, mat, k, metric=self.metric)
        return [[ids[r] for r in row] for row in rows], scores.tolist()

    def present(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the store holds."""
        records = self.records
        return {str(i) for i in ids if str(i) in records}

    def ids(self) -> list[str]:
        """Every id in the store."""
        return list(self.records)
