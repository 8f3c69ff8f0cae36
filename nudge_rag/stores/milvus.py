"""Adapter for a Milvus collection through ``pymilvus.MilvusClient`` (Milvus Lite or a cluster).

Vectors are read with ``client.query(ids=...)`` and written with
``client.upsert(..., partial_update=True)``, which overwrites the vector field alone: text,
metadata and every other field stay as they are (needs pymilvus >= 2.6 and a Milvus that
supports partial updates; Milvus Lite does).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
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

__all__ = ["MilvusAdapter"]

_METRICS = {"COSINE": Metric.COSINE, "IP": Metric.IP, "L2": Metric.L2}
_INT_TYPES = {"INT8", "INT16", "INT32", "INT64"}
_SEARCH_BATCH = 64  # query vectors per search request
# rows per query_iterator page of ids (Milvus's limit); floats per page of vectors (they arrive
# as Python floats: ~50 MB a page, 4,096 rows at 384-d)
_SCAN_PAGE = 16384
_PAGE_FLOATS = 4096 * 384


class MilvusAdapter(BaseStoreAdapter):
    """Vectors by id in one Milvus collection.

    Args:
        client: a ``pymilvus.MilvusClient`` (``MilvusVectorStore.client`` in LlamaIndex).
        collection_name: the collection that holds the vectors.
        vector_field: the dense vector field (LlamaIndex's default is ``"embedding"``).
        batch_size: ids per read or write request.

    The metric is read from the vector field's index; the primary key may be a VARCHAR
    (LlamaIndex's node ids) or an integer field (ids are then passed as decimal strings).
    """

    can_search = True
    can_scan = True

    def __init__(
        self,
        client: Any,
        collection_name: str,
        *,
        vector_field: str = "embedding",
        batch_size: int = 1000,
        metric: Metric | str | None = None,
    ) -> None:
        """``metric``: the collection's metric while it does not exist yet (a framework that
        creates it on its first add); without it, a missing collection is an error."""
        self.client = client
        self.collection_name = collection_name
        self.vector_field = vector_field
        self.batch_size = batch_size
        self._planned = None if metric is None else Metric(metric)
        self._schema: tuple[str, bool, int | None, Metric] | None = None
        if self._planned is None and not self._exists():
            msg = (
                f"collection_name: Milvus holds no collection {collection_name!r}; "
                "create it (add nodes through the store) first."
            )
            raise BadInputError(msg)
        if self._exists():
            self._read_schema()  # a collection NUDGE cannot use is refused now

    def _exists(self) -> bool:
        return bool(self.client.has_collection(self.collection_name))

    def _read_schema(self) -> tuple[str, bool, int | None, Metric]:
        """Primary key field, whether it is an integer, dimension and metric (read once)."""
        if self._schema is None:
            info = self.client.describe_collection(self.collection_name)
            fields = {f["name"]: f for f in info["fields"]}
            if self.vector_field not in fields:
                msg = (
                    f"vector_field: collection {self.collection_name!r} has no field "
                    f"{self.vector_field!r} (fields: {sorted(fields)}); pass the dense vector "
                    "field's name."
                )
                raise BadInputError(msg)
            dim = int(fields[self.vector_field].get("params", {}).get("dim", 0)) or None
            primary = next(f for f in info["fields"] if f.get("is_primary"))
            int_ids = getattr(primary["type"], "name", str(primary["type"])) in _INT_TYPES
            self._schema = (primary["name"], int_ids, dim, self._read_metric())
        return self._schema

    @property
    def id_field(self) -> str:
        """The primary key field."""
        return self._read_schema()[0] if self._exists() else "id"

    @property
    def _int_ids(self) -> bool:
        return self._read_schema()[1]

    @property
    def dim(self) -> int | None:
        """The stored dimension (None before the collection exists)."""
        return self._read_schema()[2] if self._exists() else None

    @property
    def metric(self) -> Metric:
        """The index's metric (the planned one before the collection exists)."""
        if self._planned is not None and not self._exists():
            return self._planned
        return self._read_schema()[3]

    def _read_metric(self) -> Metric:
        names = self.client.list_indexes(self.collection_name, field_name=self.vector_field)
        if not names:
            msg = (
                f"collection {self.collection_name!r}: field {self.vector_field!r} has no "
                "index, so its metric is unknown; create an index (COSINE, IP or L2) first."
            )
            raise BadInputError(msg)
        found = str(self.client.describe_index(self.collection_name, names[0])["metric_type"])
        if found.upper() not in _METRICS:
            msg = (
                f"collection {self.collection_name!r}: metric {found!r} is not one of "
                f"{sorted(_METRICS)}; NUDGE needs a dense float metric."
            )
            raise BadInputError(msg)
        return _METRICS[found.upper()]

    def _keys(self, ids: Sequence[str]) -> list[Any]:
        """The primary keys of ``ids`` (an id that is not an integer cannot be an integer key)."""
        if not self._int_ids:
            return [str(i) for i in ids]
        return [int(i) for i in map(str, ids) if i.lstrip("-").isdigit()]

    def _batches(self, ids: Sequence[str]) -> Iterator[Sequence[str]]:
        for start in range(0, len(ids), self.batch_size):
            yield ids[start : start + self.batch_size]

    def _fetch(self, ids: Sequence[str], fields: list[str]) -> dict[str, dict]:
        rows: dict[str, dict] = {}
        key = self.id_field  # a property that asks the server: read it once, not per row
        for chunk in self._batches(list(ids)):
            expr = self.ids_filter(chunk)
            if expr is None:
                continue
            for row in self.client.query(self.collection_name, filter=expr, output_fields=fields):
                rows[str(row[key])] = row
        return rows

    def ids_filter(self, ids: Sequence[str]) -> str | None:
        """A filter expression selecting ``ids``, every string escaped (pymilvus's own ``ids=``
        quotes keys without escaping: an id holding a quote breaks it, or rewrites the filter);
        None when no id can be a key."""
        keys = self._keys(ids)
        values = ", ".join(str(k) if self._int_ids else json.dumps(k) for k in keys)
        return f"{self.id_field} in [{values}]" if keys else None

    def get(self, ids: Sequence[str]) -> np.ndarray:
        """Return the stored vectors of ``ids`` (float32, in the order given)."""
        ids = list(ids)
        found: dict[str, np.ndarray] = {}  # float32 per batch: no list of Python floats piles up
        key, vec = (self.id_field, self.vector_field) if self._exists() else ("", "")
        for chunk in self._batches(ids) if key else ():
            expr = self.ids_filter(chunk)
            if expr is None:
                continue
            for row in self.client.query(
                self.collection_name, filter=expr, output_fields=[key, vec]
            ):
                found[str(row[key])] = np.asarray(row[vec], np.float32)
        raise_unknown(missing_ids(ids, set(found)), f"Milvus collection {self.collection_name!r}")
        if not ids:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        return np.stack([found[i] for i in ids])

    def put(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Overwrite existing ``ids`` by partial upsert; unknown ids change nothing."""
        ids = list(ids)
        arr = check_vectors(vectors, what="vectors", n_rows=len(ids), dim=self.dim)
        present = self.present(ids)
        raise_unknown(missing_ids(ids, set(present)), f"Milvus collection {self.collection_name!r}")
        keys = self._keys(ids)
        key, vec = self.id_field, self.vector_field
        for start in range(0, len(ids), self.batch_size):
            rows = [
                {key: k, vec: v.tolist()}
                for k, v in zip(
                    keys[start : start + self.batch_size],
                    arr[start : start + self.batch_size],
                    strict=True,
                )
            ]
            self.client.upsert(self.collection_name, rows, partial_update=True)

    #: HNSW ``ef`` for :meth:`search` (at least ``k``): the fine-tune's few thousand searches
    #: can afford more than the index's default (Milvus Lite: 64), as pgvector's ``search_ef``.
    search_ef = 400

    def _index_type(self) -> str:
        """The vector field's index type, upper case ("" when it has none)."""
        names = self.client.list_indexes(self.collection_name, field_name=self.vector_field)
        if not names:
            return ""
        info = self.client.describe_index(self.collection_name, names[0])
        return str(info.get("index_type", "")).upper()

    @property
    def approximate_search(self) -> bool:
        """Whether the vector field's index answers searches approximately (all but FLAT)."""
        return self._exists() and self._index_type() not in ("", "FLAT", "BIN_FLAT")

    def describe(self) -> StoreDescription:
        """Milvus Lite (a ``.db`` file) serves this process only; a cluster client is shared."""
        uri = str(getattr(self.client, "_uri", "") or "")
        if uri.endswith(".db"):
            return StoreDescription("Milvus Lite", False)
        return StoreDescription("Milvus client", True)

    def count(self) -> int:
        """How many rows the collection holds."""
        if not self._exists():
            return 0
        got = self.client.query(self.collection_name, filter="", output_fields=["count(*)"])
        return int(got[0]["count(*)"])

    def search(self, queries: np.ndarray, k: int) -> tuple[list[list[str]], list[list[float]]]:
        """Milvus's own batched ``search``: top-``k`` ids and similarities per query, best first
        (COSINE, IP: the score; L2: minus the squared distance). ``k`` is capped at 16,384,
        Milvus's limit; an HNSW index searches with ``ef = max(search_ef, k)``."""
        q, k = search_queries(queries, k, self.dim)
        if not self._exists():
            return [[] for _ in q], [[] for _ in q]
        k = min(k, 16384)
        l2 = self.metric is Metric.L2
        hnsw = self._index_type().startswith("HNSW")  # HNSW, HNSW_SQ, HNSW_PQ, HNSW_PRQ
        params = {"params": {"ef": min(32768, max(int(self.search_ef), k))}} if hnsw else None
        key = self.id_field
        out_ids: list[list[str]] = []
        out_scores: list[list[float]] = []
        for start in range(0, len(q), _SEARCH_BATCH):
            hits = self.client.search(
                self.collection_name,
                data=q[start : start + _SEARCH_BATCH].tolist(),
                limit=k,
                anns_field=self.vector_field,
                # the key only: `[]` (or None) makes Milvus Lite return every hit's vector
                # (0.3 MB a query; 2.8x slower)
                output_fields=[key],
                search_params=params,
            )
            for row in hits:
                out_ids.append([str(h[key]) for h in row])  # the key field, named as it is
                sign = -1.0 if l2 else 1.0
                out_scores.append([sign * float(h["distance"]) for h in row])
        return out_ids, out_scores

    def present(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the collection holds."""
        return set(self._fetch(list(ids), [self.id_field])) if self._exists() else set()

    def ids(self) -> list[str]:
        """Every id in the collection."""
        return [i for page, _ in self._pages([self.id_field]) for i in page]

    def scan(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """Every ``(ids, vectors)`` in pages of one pass over the collection (float32): reading
        a whole collection this way costs one pass, not one filtered query per 1,000 ids."""
        yield from self._pages([self.id_field, self.vector_field])

    def _pages(self, fields: list[str]) -> Iterator[tuple[list[str], np.ndarray]]:
        if not self._exists():
            return
        key, vec = self.id_field, self.vector_field
        vectors = vec in fields
        page_rows = _SCAN_PAGE
        if vectors:  # as many rows as make _PAGE_FLOATS, whatever the dimension
            page_rows = min(_SCAN_PAGE, max(64, _PAGE_FLOATS // max(1, self.dim or 384)))
        it = self.client.query_iterator(
            self.collection_name, batch_size=page_rows, output_fields=fields
        )
        try:
            while page := it.next():
                ids = [str(row[key]) for row in page]
                mat = (
                    np.asarray([row[vec] for row in page], np.float32)
                    if vectors
                    else np.zeros((len(page), 0), np.float32)
                )
                yield ids, mat
        finally:
            it.close()
