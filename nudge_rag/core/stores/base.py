"""The store adapter protocol: the few operations NUDGE needs from any vector store.

An adapter wraps a *native* client (a chromadb Collection, a QdrantClient and a collection
name, a faiss index and its id map, a framework's in-memory dict) and exposes:

- ``get(ids)``: the vectors the store holds now, float32 ``(len(ids), dim)``;
- ``put(ids, vectors)``: overwrite those vectors in place, nothing re-embedded, documents and
  metadata untouched; every id is checked first, so an unknown id changes nothing;
- ``ids()``: every id the store holds; ``metric``: how the store compares vectors.

Optional extras an adapter may offer (used through the helpers at the end of this module):
``present(ids)`` (which of ``ids`` the store holds, cheaply), ``get_exact(ids)`` (the vectors in
the store's own precision, e.g. float64 for a dict of Python floats), ``exact_readback``
(False when the store does not read back the bits it was given), ``count()`` (how many ids,
without listing them) and ``search(queries, k)``: the store's own batched nearest-neighbour
search, ``(ids, scores)`` per query, best first, scores as similarities under ``metric``
(cosine similarity, inner product, or minus the squared L2 distance), with
``approximate_search`` True when an index (HNSW, IVF) answers it with less than full recall.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Protocol, runtime_checkable

import numpy as np

from nudge_rag.core.checks import check_vectors
from nudge_rag.core.errors import NudgeError, UnknownIdError


class Metric(str, Enum):
    """How a store compares a query with a stored vector."""

    COSINE = "cosine"
    IP = "ip"
    L2 = "l2"


@runtime_checkable
class StoreAdapter(Protocol):
    """Vectors by id, in place, for one native vector store."""

    @property
    def metric(self) -> Metric:
        """How the store compares vectors."""
        ...

    def get(self, ids: Sequence[str]) -> np.ndarray:
        """Return the stored vectors of ``ids`` (float32, in the order given)."""
        ...

    def put(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Overwrite the vectors of existing ``ids``; raise ``UnknownIdError`` before any write."""
        ...

    def ids(self) -> list[str]:
        """Every id the store holds."""
        ...


def missing_ids(requested: Sequence[str], present: Sequence[str] | set[str]) -> list[str]:
    """The ids of ``requested`` that are not in ``present``, in request order."""
    have = present if isinstance(present, set) else set(present)
    return [i for i in requested if i not in have]


def raise_unknown(missing: Sequence[str], store: str) -> None:
    """Raise ``UnknownIdError`` naming (at most ten of) the ``missing`` ids."""
    if missing:
        shown = ", ".join(repr(i) for i in list(missing)[:10])
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        msg = f"{store} does not hold id(s) {shown}{more}; add the documents first."
        raise UnknownIdError(msg)


def as_float32_matrix(vectors: np.ndarray, n: int, dim: int | None, what: str) -> np.ndarray:
    """Deprecated: :func:`nudge_rag.core.checks.check_vectors` (kept for adapters not yet moved)."""
    return check_vectors(vectors, what=what, n_rows=n, dim=dim)


def search_queries(queries: np.ndarray, k: int, dim: int | None) -> tuple[np.ndarray, int]:
    """Checked query vectors (float32, ``(Q, dim)``) and ``k`` for an adapter's ``search``."""
    mat = check_vectors(queries, what="queries", dim=dim)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        msg = f"k: found {k!r}, expected an integer >= 1 (results per query), e.g. 10."
        raise NudgeError(msg)
    return mat, int(k)


def store_count(adapter: StoreAdapter) -> int:
    """How many ids ``adapter`` holds: its optional ``count()``, else ``len(adapter.ids())``."""
    count = getattr(adapter, "count", None)
    return int(count()) if callable(count) else len(adapter.ids())


def present_ids(adapter: StoreAdapter, ids: Sequence[str]) -> set[str]:
    """The ids of ``ids`` that ``adapter`` holds.

    Uses the adapter's optional ``present(ids)`` (cost proportional to ``ids``) and falls back to
    scanning ``adapter.ids()``.
    """
    present = getattr(adapter, "present", None)
    if callable(present):
        return set(present(ids))
    have = set(adapter.ids())
    return {i for i in ids if i in have}


def exact_readback(adapter: StoreAdapter) -> bool:
    """Whether the store reads back exactly the bits it was given (adapter attribute, default True).

    Cosine stores that normalise on write (Chroma or Qdrant cosine collections) do not; for them
    the faces keep the vectors as inserted, so that a rollback to the base is exact.
    """
    return bool(getattr(adapter, "exact_readback", True))
