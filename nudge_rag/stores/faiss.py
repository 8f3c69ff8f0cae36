"""Adapter for a flat faiss index plus its row → id map (LangChain's ``FAISS`` keeps both).

faiss has no public overwrite, so vectors are written into an index's raw buffer, by row
(``IndexFlat.get_xb``), and the L2 norms cache is cleared. Only flat indexes (exact search) are
supported: an IVF, HNSW or PQ index stores codes, not vectors. The row map may be replaced by its
owner (LangChain's FAISS rebuilds it on delete), so the adapter reads it through a callable and
checks its cached reverse map on every use (cost proportional to the ids asked).

What a concurrent search sees: faiss searches without the GIL, so rows written in place while a
search runs can be read half old, half new. When the adapter can replace the index (``set_index``,
given by :meth:`FaissAdapter.for_holder`), ``put`` writes into a copy and swaps it in with one
attribute assignment: a search uses the old index or the new one, never a mix (the cost: one copy
of the index per write, ``N·d`` floats). Without ``set_index`` rows are written in place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from nudge_rag.errors import BadInputError, NudgeError
from nudge_rag.fit.checks import check_vectors
from nudge_rag.stores.base import (
    BaseStoreAdapter,
    Metric,
    StoreDescription,
    missing_ids,
    raise_unknown,
    search_queries,
)

__all__ = ["FaissAdapter"]


def _as_getter(x: Any) -> Callable[[], Any]:
    return x if callable(x) and not hasattr(x, "ntotal") else (lambda: x)


class FaissAdapter(BaseStoreAdapter):
    """Vectors by id for a flat faiss index.

    Example:
        .. code-block:: python

            adapter = FaissAdapter(index, {0: "doc-a", 1: "doc-b"})
            # LangChain's FAISS (whose index and map it may replace):
            adapter = FaissAdapter.for_holder(store, normalize=store._normalize_L2)
    """

    can_search = True

    def __init__(
        self,
        index: Any,
        id_map: Mapping[int, str] | Callable[[], Mapping[int, str]],
        *,
        normalize: bool = False,
        metric: Metric | str | None = None,
        set_index: Callable[[Any], None] | None = None,
    ):
        import faiss

        self._faiss = faiss
        self._index = _as_getter(index)
        self._id_map = _as_getter(id_map)
        self._set_index = set_index
        self.normalize = bool(normalize)
        flat = self._flat()
        if metric is None:
            if flat.metric_type == faiss.METRIC_INNER_PRODUCT:
                metric = Metric.COSINE if self.normalize else Metric.IP
            else:
                metric = Metric.L2
        self.metric = Metric(metric)
        self._map_ref: Mapping[int, str] | None = None
        self._rows: dict[str, int] = {}

    @classmethod
    def for_holder(cls, holder: Any, *, normalize: bool = False, **kw: Any) -> FaissAdapter:
        """An adapter over ``holder.index`` and ``holder.index_to_docstore_id`` (read each time).

        Writes swap in a new ``holder.index`` (one assignment), so searches see whole versions.
        """
        kw.pop("strategy", None)
        return cls(
            lambda: holder.index,
            lambda: holder.index_to_docstore_id,
            normalize=normalize,
            set_index=lambda index: setattr(holder, "index", index),
            **kw,
        )

    def _flat(self, raw: Any = None) -> Any:
        """The flat index (``raw``, or the current one), refused if it stores codes."""
        index = self._faiss.downcast_index(self._index() if raw is None else raw)
        if not isinstance(index, self._faiss.IndexFlat):
            msg = (
                f"index: found {type(index).__name__}, which stores codes rather than vectors; "
                "nudge-rag writes vectors into flat indexes only (IndexFlatIP / IndexFlatL2)."
            )
            raise BadInputError(msg)
        return index

    def _buffer(self, index: Any) -> np.ndarray:
        n, d = index.ntotal, index.d
        if n == 0:
            return np.zeros((0, d), dtype=np.float32)
        return self._faiss.rev_swig_ptr(index.get_xb(), n * d).reshape(n, d)

    def _row_of(self, ids: Sequence[str]) -> dict[str, int]:
        """Rows of the ``ids`` present; the reverse map is rebuilt when the owner changed it."""
        id_map = self._id_map()
        stale = id_map is not self._map_ref
        if not stale:
            for i in ids:
                r = self._rows.get(i)
                if r is not None and id_map.get(r) != i:
                    stale = True
                    break
                if r is None and len(self._rows) != len(id_map):
                    stale = True
                    break
        if stale:
            self._rows = {v: k for k, v in id_map.items()}
            self._map_ref = id_map
        return {i: self._rows[i] for i in ids if i in self._rows}

    def get(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``ids``, float32, in the order given."""
        ids = [str(i) for i in ids]
        index = self._flat()
        rows = self._row_of(ids)
        raise_unknown(missing_ids(ids, set(rows)), "the faiss index")
        return self._buffer(index)[[rows[i] for i in ids]].copy()

    def put(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Overwrite the vectors of existing ``ids`` (normalised if the store normalises on add;
        unknown ids: nothing written): into a copy swapped in whole when the adapter can replace
        the index, else in place."""
        ids = [str(i) for i in ids]
        raw = self._index()
        index = self._flat(raw)
        mat = check_vectors(vectors, what="vectors", n_rows=len(ids), dim=index.d).copy()
        rows = self._row_of(ids)
        raise_unknown(missing_ids(ids, set(rows)), "the faiss index")
        if not ids:
            return
        if self.normalize:
            self._faiss.normalize_L2(mat)
        where = [rows[i] for i in ids]
        if self._set_index is None:
            self._write_rows(index, where, mat)
            return
        new = self._faiss.clone_index(index)  # the same flat type, owning its copy
        self._write_rows(new, where, mat)
        if self._index() is not raw or index.ntotal != new.ntotal:
            msg = (
                "the faiss index changed while its rows were written (documents added or "
                "deleted at the same time); nothing was written; retry the apply or rollback."
            )
            raise NudgeError(msg)
        self._set_index(new)  # one assignment: a search uses the old index or the new one

    def _write_rows(self, index: Any, rows: list[int], mat: np.ndarray) -> None:
        self._buffer(index)[rows] = mat
        if hasattr(index, "clear_l2norms"):
            index.clear_l2norms()

    # approximate_search: False (the default), flat indexes only

    def describe(self) -> StoreDescription:
        """A faiss index lives in this process's memory."""
        return StoreDescription("FAISS index (held in this process's memory)", False)

    @property
    def dim(self) -> int:
        """The index's dimension."""
        return int(self._flat().d)

    def count(self) -> int:
        """How many ids the index holds."""
        return len(self._id_map())

    def search(self, queries: np.ndarray, k: int) -> tuple[list[list[str]], list[list[float]]]:
        """faiss's own batched search: top-``k`` ids and similarities per query, best first
        (queries normalised when the store normalises; L2: minus the squared distance)."""
        index = self._flat()
        q, k = search_queries(queries, k, index.d)
        q = np.ascontiguousarray(q, dtype=np.float32).copy()
        if self.normalize:
            self._faiss.normalize_L2(q)
        id_map = self._id_map()
        dist, rows = index.search(q, min(k, max(1, index.ntotal)))
        sims = -dist if self.metric is Metric.L2 else dist
        out_ids, out_scores = [], []
        for r_row, s_row in zip(rows, sims, strict=True):
            keep = [n for n, r in enumerate(r_row) if r >= 0 and int(r) in id_map]
            out_ids.append([id_map[int(r_row[n])] for n in keep])
            out_scores.append([float(s_row[n]) for n in keep])
        return out_ids, out_scores

    def present(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the index holds."""
        return set(self._row_of([str(i) for i in ids]))

    def ids(self) -> list[str]:
        """Every id in the index, in row order."""
        id_map = self._id_map()
        return [id_map[r] for r in sorted(id_map)]
