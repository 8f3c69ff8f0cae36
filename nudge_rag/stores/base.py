"""The store adapter protocol, and the base class every adapter here subclasses.

An adapter wraps a *native* client (a chromadb Collection, a QdrantClient and a collection
name, a faiss index and its id map, a framework's in-memory dict) and exposes:

- ``get(ids)``: the vectors the store holds now, float32 ``(len(ids), dim)``;
- ``put(ids, vectors)``: overwrite those vectors in place, nothing re-embedded, documents and
  metadata untouched; every id is checked first, so an unknown id changes nothing;
- ``ids()``: every id the store holds; ``metric``: how the store compares vectors.

:class:`BaseStoreAdapter` declares what else an adapter can do, as class attributes, and gives
defaults for the rest:

- ``can_search``: it has ``search(queries, k)``, the store's own batched nearest-neighbour
  search, ``(ids, scores)`` per query, best first, scores as similarities under ``metric``
  (cosine similarity, inner product, or minus the squared L2 distance);
- ``can_scan``: it has ``scan()``, every ``(ids, vectors)`` in pages of one pass;
- ``approximate_search``: an index (HNSW, IVF) answers ``search`` with less than full recall;
- ``exact_readback``: the store reads back the bits it was given (False for cosine stores that
  normalise on write);
- ``count()``, ``present(ids)``, ``get_exact(ids)`` (the vectors in the store's own precision)
  and ``describe()`` (the store's kind in words, and whether other processes see its writes),
  each with a default an adapter overrides when its store does better.

Callers ask through the helpers at the end of this module, which also serve an adapter written
against the :class:`StoreAdapter` protocol alone (its abilities are then found by probing).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from nudge_rag.errors import BadInputError, UnknownIdError
from nudge_rag.fit.checks import check_vectors
from nudge_rag.fit.metrics import Metric  # defined with the math; re-exported here for adapters

__all__ = [
    "BaseStoreAdapter",
    "StoreAdapter",
    "StoreDescription",
    "approximate_search",
    "as_float32_matrix",
    "can_scan",
    "can_search",
    "describe",
    "exact_readback",
    "missing_ids",
    "present_ids",
    "raise_unknown",
    "read_exact",
    "scan",
    "search_queries",
    "store_count",
]


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


@dataclass(frozen=True)
class StoreDescription:
    """What a store is, for messages: ``kind`` in words, and whether it is ``shared``: whether
    its readers in this process see what other processes write into it."""

    kind: str
    shared: bool


class BaseStoreAdapter(ABC):
    """The base of every adapter: declared abilities, and defaults for the optional operations.

    A subclass implements ``get``, ``put``, ``ids`` and ``metric`` (an attribute or a
    property), declares ``can_search`` /
    ``can_scan`` with ``search`` / ``scan`` (checked when the class is made; defining the
    method declares it), and
    overrides ``approximate_search``, ``exact_readback`` or the defaults below where its store
    differs.

    Example:
        .. code-block:: python

            class MyAdapter(BaseStoreAdapter):
                can_search = True
                def __init__(self, client): self.client, self.metric = client, Metric.COSINE
                def get(self, ids): ...
                def put(self, ids, vectors): ...
                def ids(self): ...
                def search(self, queries, k): ...
                def describe(self):
                    return StoreDescription("MyDB server client", shared=True)
    """

    #: ``search(queries, k)``: the store's own batched nearest-neighbour search
    can_search: ClassVar[bool] = False
    #: ``scan()``: every ``(ids, vectors)`` in pages of one pass over the store
    can_scan: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Check the declarations: ``can_X = True`` needs method ``X``; a subclass that
        defines ``X`` without saying otherwise declares ``can_X = True``."""
        super().__init_subclass__(**kwargs)
        for flag, method in (("can_search", "search"), ("can_scan", "scan")):
            has = callable(getattr(cls, method, None))
            if has and flag not in cls.__dict__:
                setattr(cls, flag, True)
            if getattr(cls, flag) and not has:
                msg = (
                    f"{cls.__name__}: {flag} is True but the class has no {method}(); "
                    f"define {method}() or declare {flag} = False."
                )
                raise TypeError(msg)

    @abstractmethod
    def get(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``ids`` (float32, in the order given)."""

    @abstractmethod
    def put(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Overwrite the vectors of existing ``ids``; raise ``UnknownIdError`` before any write."""

    @abstractmethod
    def ids(self) -> list[str]:
        """Every id the store holds."""

    @property
    def approximate_search(self) -> bool:
        """Whether ``search`` answers from an index with less than full recall (default False)."""
        return False

    @property
    def exact_readback(self) -> bool:
        """Whether the store reads back exactly the bits it was given (default True)."""
        return True

    def count(self) -> int:
        """How many ids the store holds (default: lists them)."""
        return len(self.ids())

    def present(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the store holds (default: lists every id)."""
        have = set(self.ids())
        return {str(i) for i in ids if str(i) in have}

    def get_exact(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``ids`` in the store's own precision, as float64 (default:
        ``get``, whose float32 values float64 holds exactly)."""
        return np.asarray(self.get(ids), dtype=np.float64)

    def describe(self) -> StoreDescription:
        """The store's kind in words, and whether other processes' writes reach its readers
        here (default: a store served to every process, named by the adapter's class)."""
        return StoreDescription(f"{type(self).__name__} store", True)


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
    """Deprecated: :func:`nudge_rag.fit.checks.check_vectors` (kept for adapters not yet moved)."""
    return check_vectors(vectors, what=what, n_rows=n, dim=dim)


def search_queries(queries: np.ndarray, k: int, dim: int | None) -> tuple[np.ndarray, int]:
    """Checked query vectors (float32, ``(Q, dim)``) and ``k`` for an adapter's ``search``."""
    mat = check_vectors(queries, what="queries", dim=dim)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        msg = f"k: found {k!r}, expected an integer >= 1 (results per query), e.g. 10."
        raise BadInputError(msg)
    return mat, int(k)


def can_search(adapter: Any) -> bool:
    """Whether ``adapter`` offers the store's own batched ``search(queries, k)``."""
    if isinstance(adapter, BaseStoreAdapter):
        return adapter.can_search
    return callable(getattr(adapter, "search", None))


def can_scan(adapter: Any) -> bool:
    """Whether ``adapter`` offers ``scan()``: pages of ids and vectors in one pass."""
    if isinstance(adapter, BaseStoreAdapter):
        return adapter.can_scan
    return callable(getattr(adapter, "scan", None))


def approximate_search(adapter: Any) -> bool:
    """Whether ``adapter``'s ``search`` answers from an index with less than full recall."""
    return bool(getattr(adapter, "approximate_search", False))


def scan(adapter: Any) -> Iterator[tuple[list[str], np.ndarray]]:
    """``adapter.scan()`` (check :func:`can_scan` first)."""
    return adapter.scan()  # type: ignore[no-any-return]


def store_count(adapter: StoreAdapter) -> int:
    """How many ids ``adapter`` holds: its ``count()``, else ``len(adapter.ids())``."""
    if isinstance(adapter, BaseStoreAdapter):
        return int(adapter.count())
    count = getattr(adapter, "count", None)
    return int(count()) if callable(count) else len(adapter.ids())


def present_ids(adapter: StoreAdapter, ids: Sequence[str]) -> set[str]:
    """The ids of ``ids`` that ``adapter`` holds (its ``present(ids)``, whose cost follows
    ``ids``; an adapter without one: a scan of ``adapter.ids()``)."""
    if isinstance(adapter, BaseStoreAdapter):
        return set(adapter.present(ids))
    present = getattr(adapter, "present", None)
    if callable(present):
        return set(present(ids))
    have = set(adapter.ids())
    return {i for i in ids if i in have}


def read_exact(adapter: StoreAdapter, ids: Sequence[str]) -> np.ndarray:
    """The stored vectors of ``ids`` in the store's own precision, as float64."""
    if isinstance(adapter, BaseStoreAdapter):
        return np.asarray(adapter.get_exact(ids), dtype=np.float64)
    getter = getattr(adapter, "get_exact", None) or adapter.get
    return np.asarray(getter(ids), dtype=np.float64)


def exact_readback(adapter: StoreAdapter) -> bool:
    """Whether the store reads back exactly the bits it was given (default True).

    Cosine stores that normalise on write (Chroma or Qdrant cosine collections) do not; for them
    the faces keep the vectors as inserted, so that a rollback to the base is exact.
    """
    return bool(getattr(adapter, "exact_readback", True))


def describe(adapter: Any) -> StoreDescription:
    """``adapter.describe()``; an adapter without one is named by its class and taken as
    shared (served to every process)."""
    if isinstance(adapter, BaseStoreAdapter):
        return adapter.describe()
    own = getattr(adapter, "describe", None)
    if callable(own):
        return own()  # type: ignore[no-any-return]
    return StoreDescription(f"{type(adapter).__name__} store", True)
