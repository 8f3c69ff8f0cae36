"""Adapter for a Qdrant collection through ``qdrant_client.QdrantClient`` (local mode or server).

Qdrant point ids are UUIDs or unsigned integers, so string ids are mapped to point ids: by
default a UUID string is kept (canonical form) and any other string becomes ``uuid5`` of it; the
LangChain face keeps the original id in the point's payload (``metadata._nudge_id``). Pass
``id_to_point`` / ``point_to_id`` for other conventions (LlamaIndex uses node-id UUIDs directly:
``id_to_point=str``). Vectors are written with ``update_vectors``, which keeps the payload (an
upsert would replace it). A cosine collection stores vectors normalised, so it does not read back
what it was given (``exact_readback`` is False).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
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

__all__ = ["ORIGINAL_ID_KEY", "QdrantAdapter", "default_doc_id", "default_point_id"]

ORIGINAL_ID_KEY = "_nudge_id"
_NAMESPACE = uuid.UUID("5c1f3f0e-8f7a-4a53-9d5e-6b8c0d1e2f30")  # nudge-rag's uuid5 namespace
_PAGE = 1024


def default_point_id(doc_id: str) -> str:
    """The Qdrant point id of ``doc_id``: itself if it is a UUID (canonical form), else uuid5."""
    try:
        return str(uuid.UUID(str(doc_id)))
    except ValueError:
        return str(uuid.uuid5(_NAMESPACE, str(doc_id)))


def default_doc_id(record: Any) -> str:
    """A point's document id: payload or payload metadata ``_nudge_id``, else the point id."""
    payload = getattr(record, "payload", None) or {}
    if ORIGINAL_ID_KEY in payload:
        return str(payload[ORIGINAL_ID_KEY])
    meta = payload.get("metadata")
    if isinstance(meta, dict) and ORIGINAL_ID_KEY in meta:
        return str(meta[ORIGINAL_ID_KEY])
    return str(record.id)


class QdrantAdapter(BaseStoreAdapter):
    """Vectors by id for one Qdrant collection (dense vectors, unnamed or named).

    Example:
        .. code-block:: python

            from qdrant_client import QdrantClient
            client = QdrantClient(path="qdrant_db")          # local mode, on disk
            adapter = QdrantAdapter(client, "docs")
            adapter.put(["doc-1"], vecs)                      # payload untouched
    """

    can_search = True

    def __init__(
        self,
        client: Any,
        collection_name: str,
        *,
        id_to_point: Callable[[str], str | int] | None = None,
        point_to_id: Callable[[Any], str] | None = None,
        vector_name: str | Callable[[], str] = "",
        metric: Metric | str | None = None,
    ):
        """``metric``: the collection's metric while it does not exist yet (a framework that
        creates it on its first add); without it, a missing collection is an error.
        ``vector_name``: the dense vector's name, or a callable that gives it."""
        from qdrant_client import models

        self.client = client
        self.collection_name = collection_name
        self.id_to_point = id_to_point or default_point_id
        self.point_to_id = point_to_id or default_doc_id
        self._vector_name = vector_name
        self._models = models
        self._planned = None if metric is None else Metric(metric)
        if self._planned is None and not self._exists():
            msg = (
                f"collection_name: Qdrant has no collection {collection_name!r}; create it "
                "first, e.g. through langchain_qdrant.QdrantVectorStore.from_texts."
            )
            raise BadInputError(msg)
        self._params()  # a collection NUDGE cannot use is refused now

    def _exists(self) -> bool:
        return bool(self.client.collection_exists(self.collection_name))

    @property
    def vector_name(self) -> str:
        """The dense vector's name ("" when unnamed); a callable is asked each time (LlamaIndex
        settles the name when it creates the collection)."""
        name = self._vector_name() if callable(self._vector_name) else self._vector_name
        return name or ""

    def _params(self) -> tuple[Metric, int | None]:
        """The collection's metric and dimension (read each time: it may be dropped, remade)."""
        if not self._exists():
            if self._planned is None:
                msg = f"Qdrant collection {self.collection_name!r} no longer exists."
                raise NudgeError(msg)
            return self._planned, None
        vectors = self.client.get_collection(self.collection_name).config.params.vectors
        if isinstance(vectors, dict):
            if self.vector_name not in vectors:
                msg = (
                    f"vector_name: collection {self.collection_name!r} has vectors "
                    f"{sorted(vectors)}, found {self.vector_name!r}; pass one of them."
                )
                raise BadInputError(msg)
            params = vectors[self.vector_name]
        else:
            params = vectors
        spaces = {
            self._models.Distance.COSINE: Metric.COSINE,
            self._models.Distance.DOT: Metric.IP,
            self._models.Distance.EUCLID: Metric.L2,
        }
        if params.distance not in spaces:
            msg = (
                f"collection {self.collection_name!r} uses distance {params.distance}; expected "
                "Cosine, Dot or Euclid."
            )
            raise BadInputError(msg)
        return spaces[params.distance], int(params.size)

    @property
    def metric(self) -> Metric:
        """How the collection compares vectors (the planned metric before it exists)."""
        return self._params()[0]

    @property
    def dim(self) -> int | None:
        """The stored dimension (None before the collection exists)."""
        return self._params()[1]

    @property
    def exact_readback(self) -> bool:
        """Cosine collections store vectors normalised: they do not read back what was given."""
        return self.metric is not Metric.COSINE

    def _retrieve(self, ids: Sequence[str], vectors: bool) -> dict[str, Any]:
        points = [self.id_to_point(i) for i in ids]
        with_vectors: bool | list[str] = (
            ([self.vector_name] if self.vector_name else True) if vectors else False
        )
        recs = self.client.retrieve(
            self.collection_name, points, with_vectors=with_vectors, with_payload=False
        )
        back = {str(p): i for p, i in zip(points, ids, strict=True)}
        return {back[str(r.id)]: r for r in recs if str(r.id) in back}

    def get(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``ids``, float32, in the order given."""
        ids = [str(i) for i in ids]
        if not ids:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        recs = self._retrieve(ids, vectors=True) if self._exists() else {}
        raise_unknown(missing_ids(ids, set(recs)), f"Qdrant collection {self.collection_name!r}")
        rows = []
        for i in ids:
            v = recs[i].vector
            rows.append(v[self.vector_name] if isinstance(v, dict) else v)
        return np.asarray(rows, dtype=np.float32)

    def put(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Overwrite the vectors of existing ``ids`` (payload kept; unknown ids: no write)."""
        ids = [str(i) for i in ids]
        mat = check_vectors(vectors, what="vectors", n_rows=len(ids), dim=self.dim)
        if not ids:
            return
        if len(set(ids)) != len(ids):
            msg = "ids: found duplicates; pass each id once."
            raise BadInputError(msg)
        raise_unknown(
            missing_ids(ids, self.present(ids)), f"Qdrant collection {self.collection_name!r}"
        )
        pv = self._models.PointVectors
        points = [
            pv(id=self.id_to_point(i), vector={self.vector_name: row} if self.vector_name else row)
            for i, row in zip(ids, mat.tolist(), strict=True)
        ]
        self.client.update_vectors(self.collection_name, points=points, wait=True)

    @property
    def approximate_search(self) -> bool:
        """A Qdrant server answers from its HNSW index; local mode scans every point (exact)."""
        return type(getattr(self.client, "_client", None)).__name__ != "QdrantLocal"

    def describe(self) -> StoreDescription:
        """Local mode serves this process only; a server client is shared."""
        if "Local" in type(getattr(self.client, "_client", None)).__name__:
            return StoreDescription("Qdrant local mode", False)
        return StoreDescription("Qdrant server client", True)

    def count(self) -> int:
        """How many points the collection holds."""
        if not self._exists():
            return 0
        return int(self.client.count(self.collection_name, exact=True).count)

    def search(self, queries: np.ndarray, k: int) -> tuple[list[list[str]], list[list[float]]]:
        """Qdrant's batch query (``query_batch_points``): top-``k`` document ids and similarities
        per query, best first (Cosine, Dot: the score; Euclid: minus the squared distance)."""
        q, k = search_queries(queries, k, self.dim)
        if not self._exists():
            return [[] for _ in q], [[] for _ in q]
        l2 = self.metric is Metric.L2
        out_ids: list[list[str]] = []
        out_scores: list[list[float]] = []
        for s in range(0, len(q), _PAGE):
            requests = [
                self._models.QueryRequest(
                    query=row, limit=k, using=self.vector_name or None, with_payload=True
                )
                for row in q[s : s + _PAGE].tolist()
            ]
            for res in self.client.query_batch_points(self.collection_name, requests=requests):
                out_ids.append([self.point_to_id(p) for p in res.points])
                out_scores.append([-(p.score**2) if l2 else float(p.score) for p in res.points])
        return out_ids, out_scores

    def present(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the collection holds."""
        ids = [str(i) for i in ids]
        return set(self._retrieve(ids, vectors=False)) if ids and self._exists() else set()

    def ids(self) -> list[str]:
        """Every document id in the collection."""
        out: list[str] = []
        if not self._exists():
            return out
        offset = None
        while True:
            recs, offset = self.client.scroll(
                self.collection_name,
                limit=_PAGE,
                offset=offset,
                with_payload=True,
                with_vectors=False,
            )
            out.extend(self.point_to_id(r) for r in recs)
            if offset is None:
                return out
